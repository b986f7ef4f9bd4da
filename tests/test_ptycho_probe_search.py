"""Starting probe from the data alone: defocus and astigmatism by parallax (probe_search)."""

from __future__ import annotations

import numpy as np
import pytest

from xmulti.metrics import phase_error, region_phase_contrast
from xmulti.ptycho import prepare_frames
from xmulti.ptycho.probe_search import parallax_defocus, search_probe
from xmulti.ptycho.reconstruct import reconstruct
from xmulti.simulate import make_scan


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from xmulti.io.scan import open_scan

    sim = make_scan("tiny", seed=0)
    return sim, open_scan(sim.write(tmp_path_factory.mktemp("probe_search") / "scan.h5"))


def test_parallax_reads_defocus_and_astigmatism(tiny):
    """The simulated zone-plate probe is defocused (footprint 12 px) with astigmatism: the
    pupil phase is ``pi q^T A q / N`` with A = diag(1.05, 0.45). Parallax finds the sign,
    the longer axis and the size to within about 25 % (measured: diag 1.28, 0.66)."""
    sim, _ = tiny
    a, significance = parallax_defocus(prepare_frames(sim.diffraction), sim.fractional_positions() + 4)
    assert significance > 3
    assert a[0, 0] > a[1, 1] > 0
    assert 0.8 < a[0, 0] / 1.05 < 1.35 and abs(a[0, 1]) < 0.2
    assert 0.5 < np.trace(a) / 1.5 < 1.4


def test_start_probe_from_parallax_beats_the_trials(tiny):
    """The start probe's overlap with the true probe: 0.90 by parallax against 0.68 by the
    trial footprints (measured)."""
    sim, _ = tiny
    frames = prepare_frames(sim.diffraction)
    pos = sim.fractional_positions() + 4
    shape = (sim.object.shape[0] + 8, sim.object.shape[1] + 8)
    parallax, _ = search_probe(frames, pos, shape)
    trials, _ = search_probe(frames, pos, shape, min_significance=np.inf)
    assert _overlap(parallax[0], sim.probe) > 0.85
    assert _overlap(parallax[0], sim.probe) > _overlap(trials[0], sim.probe) + 0.1


def test_reconstruct_without_probe_keeps_cell_contrast(tiny):
    """No probe given: the data-derived probe lets LSQ-ML keep every cell's mean phase within
    5 % and the probe close to the truth."""
    from test_ptycho_reconstruct import on_truth_grid

    sim, tree = tiny
    ds = reconstruct(tree, "lsqml", iterations=60)
    recon, w = on_truth_grid(ds, sim)
    contrast = region_phase_contrast(recon, sim.object, sim.phantom.cell_labels, w)
    err = phase_error(recon, sim.object, w)
    print("cells", contrast, "phase error", err, "probe overlap", _overlap(ds.probe.values, sim.probe))
    assert contrast and all(0.95 <= r <= 1.05 for r in contrast.values()), contrast
    assert _overlap(ds.probe.values, sim.probe) > 0.85
    assert err < 0.09
