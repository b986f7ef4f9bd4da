"""open_scan arrays under a real process-based Dask cluster: map_blocks and map_overlap."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from xmulti import open_scan

pytestmark = pytest.mark.cluster


def test_graph_holds_no_h5py_object(tiny_scan):
    _, path = tiny_scan
    tree = open_scan(path, chunks=32)
    graph = dict(tree["ptychography"].ds["diffraction"].data.__dask_graph__())
    blob = pickle.dumps(graph)
    assert b"h5py" not in blob


def test_map_blocks_on_process_cluster(tiny_scan, process_cluster):
    scan, path = tiny_scan
    xrf = open_scan(path, chunks=32)["xrf"].to_dataset()

    def per_position_total(block: xr.Dataset) -> xr.DataArray:
        return block["spectra"].sum("channel").astype(np.float64)

    template = xrf["spectra"].sum("channel").astype(np.float64)
    totals = xr.map_blocks(per_position_total, xrf, template=template)
    result = process_cluster.compute(totals).result()
    np.testing.assert_array_equal(result.values, scan.spectra.sum(axis=1))
    # the work really ran in other processes
    assert len(process_cluster.scheduler_info()["workers"]) == 2


def test_map_overlap_on_process_cluster(tiny_scan, process_cluster):
    scan, path = tiny_scan
    frames = open_scan(path, chunks=16)["ptychography"].ds["diffraction"].data.astype(np.float64)

    def neighbour_mean(block):
        # mean of each frame with its neighbours along the scan: needs the halo from other chunks
        return (block[:-2] + block[1:-1] + block[2:]) / 3.0

    def with_halo(block):
        core = neighbour_mean(block)
        return np.concatenate([block[:1] * np.nan, core, block[-1:] * np.nan])

    smoothed = da.map_overlap(with_halo, frames, depth={0: 1, 1: 0, 2: 0}, boundary="none", dtype=np.float64)
    result = process_cluster.compute(smoothed).result()
    expected = neighbour_mean(scan.diffraction.astype(np.float64))
    np.testing.assert_allclose(result[1:-1], expected)
