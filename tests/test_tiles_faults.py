"""Faults: a worker process killed while it reconstructs a tile; the run completes with the same
result as without the fault (tiles are pure tasks, recomputed from the graph)."""

from __future__ import annotations

import os
import signal
import threading
import time

import dask.array as da
import numpy as np
import pytest

from xmulti.ptycho.distributed import default_halo_px, reconstruct_tiles
from xmulti.ptycho.state import EngineOptions
from xmulti.ptycho.tiles import split_tiles
from xmulti.simulate import make_scan

pytestmark = pytest.mark.cluster
ITERATIONS = 8
SYNC = 4


def _run(client, scan, result: dict, resident: bool) -> None:
    positions = scan.fractional_positions(scan.positions_um)
    probe = scan.probe[None].astype(np.complex64)
    n = scan.config.frame_size
    halo = default_halo_px(positions, probe)
    tiles = split_tiles(positions, n, scan.object.shape, grid=(2, 2), halo_px=halo)
    # frames from a lazy array (as from the scan file): a lost worker's frames are recomputed
    frames = da.from_array(scan.diffraction, chunks=(40, n, n))
    result["out"] = reconstruct_tiles(frames, positions, scan.object.shape, probe, tiles, halo,
                                      iterations=ITERATIONS, sync_every=SYNC,
                                      options=EngineOptions(probe_update_start=1), client=client,
                                      resident_frames=resident)


def _tile_worker(client, timeout: float = 60.0) -> str:
    """Address of a worker that is running a tile's epochs right now."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for address, keys in client.processing().items():
            if any("_run_tile" in str(k) for k in keys):
                return address
        time.sleep(0.02)
    raise AssertionError("no tile task seen running")


@pytest.mark.parametrize("resident", [True, False])
def test_a_killed_worker_does_not_change_the_result(resident):
    """Resident: the frames the dead worker held are recomputed from the lazy scan's graph;
    streamed: the tile's task reads them again."""
    from dask.distributed import Client, LocalCluster

    scan = make_scan("tiny", seed=5, scan_shape=(12, 12), photons_per_frame=1e6)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=50) as cluster, Client(cluster) as client:
        clean: dict = {}
        _run(client, scan, clean, resident)
        faulty: dict = {}
        runner = threading.Thread(target=_run, args=(client, scan, faulty, resident))
        runner.start()
        victim = _tile_worker(client)
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        runner.join(timeout=120)
        assert not runner.is_alive() and "out" in faulty
        # the nanny restarted a new worker process: the old one is gone
        assert pid not in client.run(os.getpid).values()
    obj, probe, positions, errors, _ = faulty["out"]
    np.testing.assert_allclose(obj, clean["out"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probe, clean["out"][1], rtol=1e-5, atol=1e-4 * np.abs(probe).max())
    np.testing.assert_allclose(errors, clean["out"][3], rtol=1e-5)
    assert len(errors) == ITERATIONS
