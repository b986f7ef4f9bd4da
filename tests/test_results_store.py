"""The Zarr results store: atomic groups, provenance, round trips, refusal to clobber."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from xmulti.errors import InvalidInputError
from xmulti.io.results import (
    create_store,
    has_group,
    provenance,
    read_group,
    stage_is_done,
    write_group,
)


def _maps():
    y = 3.0 + 0.1 * np.arange(4)
    x = -1.0 + 0.1 * np.arange(5)
    data = np.arange(20.0).reshape(4, 5)
    return xr.Dataset(
        {"Fe": (("y", "x"), data, {"units": "counts"}), "Zn": (("y", "x"), 2 * data, {"units": "counts"})},
        coords={"y": ("y", y, {"units": "um"}), "x": ("x", x, {"units": "um"})},
    )


def test_round_trip_with_provenance(tmp_path, tiny_scan):
    _, scan_path = tiny_scan
    store = tmp_path / "results.zarr"
    prov = provenance("fit-xrf", {"elements": ["Fe", "Zn"]}, scan_path)
    write_group(store, "/xrf/elemental_maps", _maps(), provenance=prov)
    back = read_group(store, "/xrf/elemental_maps").load()
    xr.testing.assert_identical(back.drop_attrs(), _maps().drop_attrs())
    assert back["Fe"].attrs["units"] == "counts" and back["y"].attrs["units"] == "um"
    assert back.attrs["xmulti_stage"] == "fit-xrf"
    assert back.attrs["input_checksum"].startswith("sha256:")
    assert json.loads(back.attrs["xmulti_options"]) == {"elements": ["Fe", "Zn"]}
    tree = xr.open_datatree(store, engine="zarr")
    assert "elemental_maps" in tree["xrf"].children
    assert stage_is_done(store, "/xrf/elemental_maps", "fit-xrf", {"elements": ["Fe", "Zn"]})
    assert not stage_is_done(store, "/xrf/elemental_maps", "fit-xrf", {"elements": ["Fe"]})


def test_rewrite_replaces_group_and_keeps_others(tmp_path):
    store = tmp_path / "r.zarr"
    write_group(store, "/xrf/elemental_maps", _maps())
    write_group(store, "/reconstructed", xr.Dataset({"phase": (("y", "x"), np.zeros((3, 3)))}))
    write_group(store, "/xrf/elemental_maps", _maps() * 3)
    assert float(read_group(store, "/xrf/elemental_maps")["Fe"][1, 1]) == 3 * 6.0
    assert read_group(store, "/reconstructed")["phase"].shape == (3, 3)
    assert not list(tmp_path.glob("*.partial"))  # no temporary directories left


def test_failed_write_leaves_previous_group_intact(tmp_path):
    store = tmp_path / "r.zarr"
    write_group(store, "/xrf/elemental_maps", _maps())
    bad = _maps().assign(bad=(("y", "x"), np.full((4, 5), object())))
    with pytest.raises(Exception):  # noqa: B017 - whatever zarr raises for object dtype
        write_group(store, "/xrf/elemental_maps", bad)
    assert set(read_group(store, "/xrf/elemental_maps").data_vars) == {"Fe", "Zn"}
    assert not list(tmp_path.glob("*.partial"))
    # only whole groups exist: the failed one is not there, its parent is no result group
    assert has_group(store, "/xrf/elemental_maps") and has_group(store, "xrf/elemental_maps")
    assert not has_group(store, "/reconstructed") and not has_group(tmp_path / "absent.zarr", "/xrf")


def test_refuses_a_path_that_is_not_an_xmulti_store(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="not an xmulti results store"):
        write_group(other, "/xrf/elemental_maps", _maps())
    assert (other / "precious.txt").read_text() == "keep me"
    with pytest.raises(InvalidInputError, match="does not exist"):
        create_store(tmp_path / "missing" / "r.zarr")


def test_dask_chunks_become_zarr_shards(tmp_path):
    """Each Dask chunk is written as one whole shard; irregular chunks are made regular first."""
    import dask.array as da

    from xmulti.io.sharding import variable_encoding

    regular = da.arange(3000 * 70, dtype="f4").reshape(3000, 70).rechunk((1024, 70))
    irregular = regular.rechunk(((1000, 1000, 500, 500), (70,)))
    ds = xr.Dataset({"a": (("y", "x"), regular), "b": (("y", "x"), irregular),
                     "c": (("y", "x"), np.ones((3000, 70), "f4"))})
    write_group(tmp_path / "r.zarr", "/g", ds)
    meta = {v: json.loads((tmp_path / "r.zarr" / "g" / v / "zarr.json").read_text()) for v in "abc"}
    shards = {v: m["chunk_grid"]["configuration"]["chunk_shape"] for v, m in meta.items()}
    assert shards == {"a": [1024, 70], "b": [1000, 70], "c": [2048, 70]}
    inner = meta["a"]["codecs"][0]["configuration"]["chunk_shape"]
    assert all(s % i == 0 for s, i in zip(shards["a"], inner, strict=True)) and inner[0] <= 256
    back = read_group(tmp_path / "r.zarr", "/g").load()
    np.testing.assert_array_equal(back["b"].values, regular.compute())
    assert variable_encoding((5, 7), None) == {"shards": (5, 7), "chunks": (5, 7)}
