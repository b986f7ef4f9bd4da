"""Shared fixtures: small simulated scans and one real process-based Dask cluster per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_scan(tmp_path_factory):
    """A tiny simulated scan: (SimulatedScan, path of its HDF5 file)."""
    from xmulti.simulate import make_scan

    scan = make_scan("tiny", seed=3, bad_pixel_fraction=0.01)
    path = scan.write(tmp_path_factory.mktemp("scans") / "tiny.h5")
    return scan, path


@pytest.fixture(scope="session")
def process_cluster():
    """A LocalCluster of two worker *processes* (not threads) and a client on it, with the
    allocator settings :func:`xmulti.dask_client` gives its workers."""
    from dask.distributed import Client, LocalCluster

    from xmulti.worker_memory import tune_workers

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
    )
    client = Client(cluster)
    tune_workers(client)
    yield client
    client.close()
    cluster.close()
