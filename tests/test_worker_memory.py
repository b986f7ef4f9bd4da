"""Allocator settings of Dask workers: medium temporaries must not fault pages on every call."""

from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


def _page_faults_per_cycle(cycles: int = 200) -> float:
    """Minor page faults per allocate-touch-free cycle of a 256 kB array, as numpy kernels do."""
    import resource

    import numpy as np

    np.ones(32768)  # warm up
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(cycles):
        np.ones(32768).sum()  # 256 kB temporary
    return (resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / cycles


@pytest.mark.cluster
def test_dask_workers_reuse_freed_memory_after_tuning():
    from dask.distributed import Client, LocalCluster

    from xmulti.worker_memory import tune_workers

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        # Dask's nanny default (trim threshold 64 kB): every cycle grows and trims the heap
        untuned = client.submit(_page_faults_per_cycle, pure=False).result()
        tune_workers(client)
        tuned = client.submit(_page_faults_per_cycle, pure=False).result()
    # 64 pages per 256 kB cycle when the heap is trimmed each time
    assert untuned >= 30, f"untuned workers fault {untuned} pages per cycle: is the premise still true?"
    assert tuned < 1, tuned


def test_local_client_workers_are_tuned():
    from xmulti.cluster import dask_client

    with dask_client(n_workers=1) as client:
        assert client.submit(_page_faults_per_cycle, pure=False).result() < 1


@pytest.mark.cluster
def test_xmulti_tunes_a_client_made_elsewhere(tmp_path, monkeypatch):
    """A Client the user made (not through xmulti) gets tuned workers as soon as an xmulti
    computation runs on it, once per client."""
    from dask.distributed import Client, LocalCluster

    import xmulti
    from xmulti.worker_memory import _TUNED_CLIENTS, tune_active_client

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        assert client.submit(_page_faults_per_cycle, pure=False).result() >= 30  # Dask's default
        tree = xmulti.open_scan(xmulti.simulate_scan(tmp_path / "scan.h5", preset="tiny", seed=0))
        xmulti.fit_xrf(tree, ["Fe", "Zn"])  # finds the active client
        assert client.id in _TUNED_CLIENTS
        assert client.submit(_page_faults_per_cycle, pure=False).result() < 1
        calls = []
        monkeypatch.setattr(client, "register_plugin", lambda plugin: calls.append(plugin))
        tune_active_client(client)  # again: no second round trip to the scheduler
        xmulti.fit_xrf(tree, ["Fe", "Zn"])
        assert calls == []
    tune_active_client()  # no client active: nothing to do, no error
