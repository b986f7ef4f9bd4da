"""Position correction on the cell phantom (weak, smooth phase object)."""

from __future__ import annotations

import numpy as np
import pytest

from xmulti.ptycho import FFT2, ReconState, prepare_frames
from xmulti.ptycho.batch import exit_wave_update
from xmulti.ptycho.positions import position_shifts
from xmulti.ptycho.reconstruct import reconstruct
from xmulti.simulate import make_scan


def _rms(d: np.ndarray) -> float:
    d = d - d.mean(axis=0)  # a common shift of all positions is a shift of the object
    return float(np.sqrt((d**2).sum(axis=1).mean()))


def test_detector_shift_estimate_is_unbiased_on_a_weak_object():
    """True object and probe, every window 0.5 px off in x: the detector-amplitude estimate
    recovers most of the offset, the exit-wave estimate about a tenth (measured 0.9x / 0.1x)."""
    sim = make_scan("tiny", seed=0)
    frames = prepare_frames(sim.diffraction)
    pos = sim.fractional_positions(sim.true_positions_um)
    state = ReconState(sim.object.astype(np.complex64), sim.probe[None].astype(np.complex64),
                       pos + np.array([0.0, 0.5]))
    fft = FFT2(np, 1)
    idx = np.arange(len(pos))
    work = exit_wave_update(state, frames, idx, fft, "poisson")
    chi_est, _ = position_shifts(work)
    det_est, strength = position_shifts(work, np, 0.0, frames.amplitude[idx], fft)
    seen = strength[:, 1] > np.percentile(strength[:, 1], 50)  # windows that see structure
    print("x shift: detector", np.median(det_est[seen, 1]), "exit wave", np.median(chi_est[seen, 1]))
    assert -0.6 < np.median(det_est[seen, 1]) < -0.4
    assert abs(np.median(det_est[seen, 0])) < 0.1
    assert abs(np.median(chi_est[seen, 1])) < 0.25


@pytest.fixture(scope="module")
def shaken(tmp_path_factory):
    from xmulti.io.scan import open_scan

    # 3 px RMS (2-D) position errors: 2.12 px per axis
    sim = make_scan("tiny", seed=0, position_error_px=3 / np.sqrt(2))
    return sim, open_scan(sim.write(tmp_path_factory.mktemp("positions") / "scan.h5"))


def test_position_correction_on_the_cell_phantom(shaken):
    """reconstruct() with position correction (probe from the data) on the tiny cell phantom:
    the windows that see a cell end within 0.5 px RMS of the truth (measured 0.41, from 3.00;
    about 1.5 with the exit-wave estimator). Windows over vacuum have no information and stay near
    their recorded positions, damped (all windows: 1.60 from 3.07)."""
    sim, tree = shaken
    ds = reconstruct(tree, "lsqml", iterations=100, position_correction=True)
    dx = sim.pixel_size_um
    true = sim.true_positions_um / dx
    recorded = sim.positions_um / dx
    corrected = np.stack([ds.corrected_position_y.values, ds.corrected_position_x.values], 1) / dx
    tp = sim.fractional_positions(sim.true_positions_um)
    yy, xx = np.nonzero(sim.phantom.cell_labels > 0)
    r2 = (sim.config.probe_diameter_px / 2) ** 2
    sees = np.array([np.any((yy - p[0]) ** 2 + (xx - p[1]) ** 2 < r2) for p in tp])
    before, after = _rms((recorded - true)[sees]), _rms((corrected - true)[sees])
    print("RMS on windows seeing cells", before, "->", after, "all", _rms(corrected - true))
    assert sees.sum() > 30 and before > 2.5
    assert after < 0.5
    assert _rms(corrected - true) < 0.7 * _rms(recorded - true)
