"""The labelled op ``reconstruct`` and the ``xmulti reconstruct`` command on simulated scans.

Checks the coordinate conventions end to end: the reconstruction, placed by its um coordinates
on the simulator's object grid, matches the true object.
"""

from __future__ import annotations

import numpy as np
import pytest

from xmulti.cli import main
from xmulti.errors import InvalidInputError
from xmulti.metrics import phase_error
from xmulti.ptycho import FFT2
from xmulti.ptycho.reconstruct import reconstruct
from xmulti.ptycho.shift import shift_images
from xmulti.simulate import make_scan


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from xmulti.io.scan import open_scan

    sim = make_scan("tiny", seed=0)
    path = sim.write(tmp_path_factory.mktemp("ptycho") / "scan.h5")
    return sim, path, open_scan(path)


def on_truth_grid(ds, sim):
    """The reconstruction resampled (Fourier shift) on the truth's pixel grid, and its weight."""
    dx = float(ds.pixel_size) * 1e-3
    assert dx == pytest.approx(sim.pixel_size_um, rel=1e-9)
    off = (np.array([ds.y.values[0], ds.x.values[0]]) - np.asarray(sim.origin_um)) / dx
    k = np.floor(off).astype(int)
    f = off - k
    obj = (ds.amplitude * np.exp(1j * ds.phase)).values.astype(np.complex64)
    stack = np.stack([obj, ds.illumination.values.astype(np.complex64)])
    shifted = shift_images(stack, np.array([f, f]), FFT2())
    # truth pixel j <-> shifted pixel j - k
    out = np.zeros((2,) + sim.object.shape, np.complex64)
    ty, tx = sim.object.shape
    j0 = np.maximum(k, 0)
    j1 = np.minimum(k + np.array(obj.shape), (ty, tx))
    out[:, j0[0] : j1[0], j0[1] : j1[1]] = shifted[:, j0[0] - k[0] : j1[0] - k[0], j0[1] - k[1] : j1[1] - k[1]]
    return out[0], (out[1].real > 0.3).astype(float)


def test_reconstruct_matches_truth_in_stage_coordinates(scan):
    sim, _, tree = scan
    ds = reconstruct(tree, "lsqml", iterations=60, probe=sim.probe)
    assert set(ds.data_vars) >= {"phase", "amplitude", "probe", "pixel_size", "error", "illumination"}
    assert ds.phase.dims == ("y", "x") and ds.y.attrs["units"] == "um"
    assert ds.error.sizes["iteration"] == 60 and ds.error[-1] < ds.error[0]
    np.testing.assert_allclose(ds.corrected_position_y.values, sim.positions_um[:, 0])
    recon, w = on_truth_grid(ds, sim)
    err = phase_error(recon, sim.object, w)
    print("phase error on the truth grid", err)
    assert err < 0.06, err
    # one pixel off would be much worse: the coordinates are right to well within a pixel
    assert phase_error(np.roll(recon, 1, axis=1), sim.object, w) > 1.5 * err
    # material has negative phase after the ambiguity normalisation
    assert np.percentile(ds.phase.values[ds.illumination.values >= 0.1], 98) == pytest.approx(0, abs=1e-3)


def test_reconstruct_accepts_dataset_and_modes(scan):
    sim, _, tree = scan
    ds = reconstruct(tree["ptychography"].to_dataset(), "rpie", iterations=3, probe_modes=2)
    assert ds.probe.dims == ("probe_mode", "probe_y", "probe_x")
    assert ds.attrs["engine"] == "rpie"


def test_reconstruct_bad_input(scan):
    sim, _, tree = scan
    with pytest.raises(InvalidInputError, match="unknown engine"):
        reconstruct(tree, engine="dm", iterations=1)
    with pytest.raises(InvalidInputError, match="larger than the diffraction frames"):
        reconstruct(tree, iterations=1, probe=np.ones((40, 40), np.complex64))
    ds = tree["ptychography"].to_dataset().compute()
    ds["position_x"] = ds.position_x.copy(data=np.where(np.arange(ds.sizes["position"]) == 4, np.nan, ds.position_x))
    with pytest.raises(InvalidInputError, match="NaN"):
        reconstruct(ds, iterations=1)
    with pytest.raises(InvalidInputError, match="DataTree"):
        reconstruct(np.zeros((3, 8, 8)), iterations=1)


def test_cli_writes_results_store(scan, tmp_path, capsys):
    import xarray as xr

    _, path, _ = scan
    store = tmp_path / "out.zarr"
    code = main(["reconstruct", str(path), "--out", str(store), "--iterations", "4", "--engine", "rpie"])
    assert code == 0
    assert "reconstruct [" in capsys.readouterr().err
    ds = xr.open_zarr(store, group="reconstructed", consolidated=False)
    assert ds.phase.dims == ("y", "x") and ds.sizes["iteration"] == 4
    assert ds.attrs["xmulti_stage"] == "reconstruct"
    assert main(["reconstruct", str(path), "--out", str(store), "--iterations", "0"]) == 2
    assert main(["reconstruct", str(tmp_path / "missing.h5"), "--out", str(store)]) == 2


@pytest.mark.parametrize("diameter_px", [12.0, None])
def test_reconstruct_from_data_probe_guess(scan, diameter_px):
    """No probe given: aperture from the mean pattern, defocus from the nominal footprint or
    from the trial search; the engine refines it towards the truth."""
    sim, _, tree = scan
    kw = {} if diameter_px is None else {"probe_diameter_um": diameter_px * sim.pixel_size_um}
    ds = reconstruct(tree, "lsqml", iterations=100, **kw)
    recon, w = on_truth_grid(ds, sim)
    err = phase_error(recon, sim.object, w)
    print("phase error from a data-derived probe", diameter_px, err)
    assert err < 0.2
    probe = ds.probe.values
    overlap = abs(np.vdot(probe, sim.probe)) / (np.linalg.norm(probe) * np.linalg.norm(sim.probe))
    assert overlap > 0.65  # up to the phase ramp the probe and object can trade
