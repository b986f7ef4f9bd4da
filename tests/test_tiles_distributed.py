"""Tile-parallel reconstruction on a real process cluster: accuracy against a single tile,
independence from the number of workers."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from xmulti.metrics import phase_error
from xmulti.ptycho.data import prepare_frames
from xmulti.ptycho.distributed import default_halo_px, reconstruct_tiles
from xmulti.ptycho.engine import run_engine
from xmulti.ptycho.reconstruct import illumination_map
from xmulti.ptycho.state import EngineOptions, ReconState
from xmulti.ptycho.tiles import split_tiles
from xmulti.simulate import make_scan

pytestmark = pytest.mark.cluster
ITERATIONS = 40


@pytest.fixture(scope="module")
def problem():
    scan = make_scan("tiny", seed=2, scan_shape=(14, 14), cell_thickness_um=4.0, photons_per_frame=1e7)
    positions = scan.fractional_positions(scan.positions_um)
    probe = scan.probe[None].astype(np.complex64)
    shape = scan.object.shape
    illum = illumination_map(probe, positions, shape)
    weight = (illum > 0.3 * illum.max()).astype(float)
    return scan, positions, probe, shape, weight


def _tiled(problem, client, grid, sync_every, options):
    scan, positions, probe, shape, _ = problem
    n = scan.config.frame_size
    halo = default_halo_px(positions, probe)
    tiles = split_tiles(positions, n, shape, grid=grid, halo_px=halo)
    frames = da.from_array(scan.diffraction, chunks=(50, n, n))
    return reconstruct_tiles(frames, positions, shape, probe, tiles, halo, iterations=ITERATIONS,
                             sync_every=sync_every, options=options, client=client)


@pytest.mark.parametrize("grid, sync_every", [((2, 2), None), ((2, 2), 10), ((3, 3), 10)])
def test_stitched_error_within_1_1x_of_one_tile(problem, process_cluster, grid, sync_every):
    scan, positions, probe, shape, weight = problem
    options = EngineOptions(update_probe=False)
    single = ReconState(np.ones(shape, np.complex64), probe.copy(), positions.copy())
    run_engine(single, prepare_frames(scan.diffraction), "lsqml", ITERATIONS, options)
    reference = phase_error(single.obj, scan.object, weight)
    obj, _, _, errors, _ = _tiled(problem, process_cluster, grid, sync_every, options)
    assert len(errors) == ITERATIONS
    assert phase_error(obj, scan.object, weight) <= 1.1 * reference


def test_result_does_not_depend_on_the_number_of_workers(problem, process_cluster):
    from dask.distributed import Client, LocalCluster

    options = EngineOptions(probe_update_start=2)  # probe refined and shared every round
    two = _tiled(problem, process_cluster, (2, 2), 10, options)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        one = _tiled(problem, client, (2, 2), 10, options)
    np.testing.assert_allclose(one[0], two[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one[1], two[1], rtol=1e-5, atol=1e-6)


def test_reconstruct_with_tiles_through_the_public_api(tmp_path, process_cluster):
    """Scan file -> open_scan -> reconstruct(tiles=...) on the cluster: the probe is searched from
    a subset of frames, the result has the /reconstructed shape and is close to one tile's."""
    import xmulti

    path = xmulti.simulate_scan(tmp_path / "scan.h5", "tiny", seed=2, scan_shape=(14, 14),
                                cell_thickness_um=4.0, photons_per_frame=1e7)
    tree = xmulti.open_scan(path)
    single = xmulti.reconstruct(tree, iterations=ITERATIONS)
    tiled = xmulti.reconstruct(tree, iterations=ITERATIONS, tiles=(2, 2), sync_every=10, client=process_cluster)
    assert tiled.phase.shape == single.phase.shape and tiled.attrs["tiles"] == [2, 2]
    np.testing.assert_allclose(tiled["y"], single["y"])
    truth = tree["truth"].ds["object"]

    def error(ds):
        true = truth.sel(y=ds["y"], x=ds["x"], method="nearest").values
        weight = (ds["illumination"] > 0.3).values.astype(float)
        return phase_error(ds["amplitude"].values * np.exp(1j * ds["phase"].values), true, weight)

    # measured 0.086 tiled vs 0.077 single (probe refined from a guess in both)
    assert error(tiled) <= 1.25 * error(single)


def test_reconstruct_command_with_tiles(tmp_path):
    import subprocess
    import sys

    import xarray as xr

    from xmulti.simulate import simulate_scan

    scan = simulate_scan(tmp_path / "scan.h5", "tiny", seed=1)
    store = tmp_path / "r.zarr"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "xmulti.cli", "reconstruct", str(scan), "--out", str(store),
                               *args], capture_output=True, text=True)

    done = cli("--iterations", "6", "--tiles", "2x2", "--sync-every", "3", "--quiet")
    assert done.returncode == 0, done.stderr
    rec = xr.open_zarr(store, group="reconstructed", consolidated=False)
    assert rec.attrs["tiles"] == [2, 2] and rec.sizes["iteration"] == 6
    for bad in (("--tiles", "2"), ("--sync-every", "3")):
        result = cli("--iterations", "2", *bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr
