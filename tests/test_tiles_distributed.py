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
