"""Clients for notebooks and scripts: who closes the local cluster."""

from __future__ import annotations

import pytest


@pytest.mark.cluster
def test_start_client_owns_its_local_cluster():
    import xmulti

    client = xmulti.start_client(n_workers=1)
    cluster = client.cluster
    assert len(client.scheduler_info()["workers"]) == 1
    assert client.submit(sum, [1, 2], pure=False).result() == 3
    client.close()
    assert cluster.status.name == "closed"  # no worker process left behind


@pytest.mark.cluster
def test_dask_client_closes_its_cluster_and_not_a_joined_one():
    import xmulti

    with xmulti.dask_client(n_workers=1) as owner:
        address = owner.scheduler.address
        with xmulti.dask_client(scheduler=address) as joined:
            assert joined.submit(sum, [2, 3], pure=False).result() == 5
        # leaving the inner block closed only the joined client
        assert owner.submit(sum, [3, 4], pure=False).result() == 7
        cluster = owner.cluster
    assert cluster.status.name == "closed"


def test_start_client_rejects_two_targets():
    import xmulti

    with pytest.raises(xmulti.InvalidInputError, match="either a scheduler address or a cluster profile"):
        xmulti.start_client(scheduler="tcp://127.0.0.1:1", profile="slurm-generic")
