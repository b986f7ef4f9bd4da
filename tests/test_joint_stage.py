"""The joint stage: ``xmulti joint RESULTS.zarr`` and the pipeline's ``joint`` stage on a store."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xmulti.cli import main

ELEMENTS = "P,S,K,Ca,Fe,Cu,Zn"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny scan of thick cells, fitted and reconstructed (one process)."""
    from xmulti.simulate import simulate_scan

    root = tmp_path_factory.mktemp("joint-stage")
    scan = simulate_scan(root / "scan.h5", "tiny", seed=5, cell_thickness_um=4.0)
    out = root / "results.zarr"
    code = main(["run", str(scan), "--out", str(out), "--elements", ELEMENTS, "--iterations", "40",
                 "--workers", "1", "--stages", "fit-xrf,reconstruct"])
    assert code == 0
    return scan, out


def test_joint_command_writes_three_groups(store, capsys):
    scan, out = store
    assert main(["joint", str(out), "--iterations", "8"]) == 0
    printed = capsys.readouterr().out
    assert "self-absorption correction of the map means" in printed
    tree = xr.open_datatree(out, engine="zarr")
    recon = tree["reconstructed"].to_dataset()
    corrected = tree["joint/self_absorption"].to_dataset()
    bridged = tree["joint/bridged"].to_dataset()
    joint = tree["joint/reconstruction"].to_dataset()
    maps = tree["xrf/elemental_maps"].to_dataset()
    # bridged and joint maps on the phase grid, self-absorption-corrected maps on the scan grid
    for ds in (bridged, joint):
        np.testing.assert_allclose(ds["y"].values, recon["y"].values)
        np.testing.assert_allclose(ds["x"].values, recon["x"].values)
    np.testing.assert_allclose(corrected["y"].values, maps["y"].values)
    assert joint["thickness"].attrs["units"] == "um"
    assert "not quantified" in joint["Fe"].attrs["units"]
    # the correction only ever raises a map, and raises the soft P K line far more than Zn K
    gain = {el: float(corrected[el].mean() / maps[el].mean()) for el in ("P", "Zn")}
    assert gain["P"] > 1.0 and gain["Zn"] >= 1.0 and gain["P"] - 1 > 5 * (gain["Zn"] - 1)
    # thickness follows the simulated cells
    truth = xr.open_datatree(scan, engine="xmulti")["truth"].to_dataset()
    thickness = joint["thickness"].values
    true = truth["thickness"].values
    ny, nx = min(thickness.shape[0], true.shape[0]), min(thickness.shape[1], true.shape[1])
    assert thickness.shape == true.shape, (thickness.shape, true.shape)
    covered = joint["thickness"].notnull().values & (recon["illumination"].values > 0.2 * float(recon["illumination"].max()))
    assert np.corrcoef(thickness[covered], true[:ny, :nx][covered])[0, 1] > 0.8
    assert joint["objective"].values[-1] < joint["objective"].values[0]


def test_joint_needs_a_reconstruction(tmp_path, capsys):
    from xmulti.simulate import simulate_scan

    scan = simulate_scan(tmp_path / "scan.h5", "tiny", seed=1)
    out = tmp_path / "r.zarr"
    assert main(["run", str(scan), "--out", str(out), "--elements", "K,Fe", "--workers", "1",
                 "--stages", "fit-xrf"]) == 0
    capsys.readouterr()
    assert main(["joint", str(out), "--scan", str(scan)]) == 2
    err = capsys.readouterr().err
    assert "/reconstructed" in err and "Traceback" not in err
    assert main(["joint", str(out), "--exit-angle", "120"]) == 2
    assert "exit_angle_deg" in capsys.readouterr().err


@pytest.mark.cluster
def test_bridging_on_workers_gives_the_sequential_maps(process_cluster):
    """The joint stage hands groups of elements to the workers: same maps as one process."""
    from xmulti.grid import image_axes_um
    from xmulti.joint.bridge import bridge_resolution
    from xmulti.joint.stage import _bridge
    from xmulti.simulate import make_scan

    scan = make_scan("tiny", seed=0, i0_fluctuation=0.0, dead_time_fraction=0.0)
    ny, nx = scan.config.scan_shape
    y, x = image_axes_um(scan.object.shape, scan.pixel_size_um, scan.origin_um)
    # a smeared probe, as an unconverged reconstruction gives: the footprint power is not 1
    smeared = np.abs(scan.probe) ** 0.7 * np.exp(1j * np.angle(scan.probe))
    recon = xr.Dataset({"phase": (("y", "x"), np.angle(scan.object)), "probe": (("probe_y", "probe_x"), smeared)},
                       coords={"y": y, "x": x})
    counts = np.random.default_rng(1).poisson(scan.line_counts).astype(float)
    pos = scan.true_positions_um
    maps = xr.Dataset(
        {el: (("y", "x"), counts[:, j].reshape(ny, nx), {"units": "counts"}) for j, el in enumerate(scan.elements)},
        coords={"y": pos[:, 0].reshape(ny, nx).mean(axis=1), "x": pos[:, 1].reshape(ny, nx).mean(axis=0)},
    )
    elements = ["S", "Fe", "K"]
    lines: list[str] = []
    on_workers = _bridge(maps, recon, elements, process_cluster, lines.append)
    here = bridge_resolution(maps, recon, elements=elements)
    # progress reaches the log: the footprint choice, then each group of elements as it is done
    assert any("footprint power" in line for line in lines)
    assert sum("groups) at" in line for line in lines) == 2
    assert list(on_workers.data_vars) == elements + ["coverage"]
    for el in elements:
        np.testing.assert_allclose(on_workers[el].values, here[el].values, rtol=1e-5, atol=1e-6 * float(here[el].max()))
        assert on_workers[el].attrs["structure_weight"] == pytest.approx(here[el].attrs["structure_weight"], abs=1e-6)
        # one footprint for all the elements, chosen before the groups are sent
        assert on_workers[el].attrs["footprint_power"] == here[el].attrs["footprint_power"]
        assert on_workers[el].attrs["footprint_powers_tried"] == here[el].attrs["footprint_powers_tried"]
    assert here.attrs["footprint_power"] > 1.0
