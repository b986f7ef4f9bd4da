"""Zarr v3 chunk and shard shapes for result variables, aligned with their Dask chunks.

A Zarr shard is the unit one writer owns; its inner chunks are the unit a reader decompresses.
Making each Dask chunk exactly one shard lets every Dask task write its own shard in parallel
without two tasks ever touching the same object, while inner chunks of at most
``inner_target`` elements per dimension keep partial reads (a region of a map, one probe mode)
cheap. Arrays held in memory (numpy) get one shard per ``shard_target`` elements per dimension.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["shard_encoding", "variable_encoding"]

#: Inner chunk edge (elements per dimension) targeted for reading.
INNER_TARGET = 256
#: Shard edge for in-memory arrays (elements per dimension).
SHARD_TARGET = 2048


def _inner(shard_edge: int, target: int) -> int:
    """The largest divisor of ``shard_edge`` not above ``target`` (inner chunks tile the shard)."""
    if shard_edge <= target:
        return shard_edge
    for size in range(target, 0, -1):
        if shard_edge % size == 0:
            return size
    return 1


def variable_encoding(shape: tuple[int, ...], dask_chunks: tuple[tuple[int, ...], ...] | None,
                      inner_target: int = INNER_TARGET, shard_target: int = SHARD_TARGET) -> dict[str, Any]:
    """Zarr v3 ``{"shards": ..., "chunks": ...}`` for one array.

    Parameters
    ----------
    shape : tuple of int
        Array shape.
    dask_chunks : tuple of tuples, optional
        The Dask chunks (``array.chunks``); each dimension's first chunk becomes the shard edge,
        so all chunks but the last fill whole shards (Dask's regular chunking) and the last one a
        partial shard at the array's end.
    inner_target, shard_target : int
        Inner chunk edge and in-memory shard edge targets (elements per dimension).

    Returns
    -------
    dict
        Encoding for ``Dataset.to_zarr``; empty for 0-d arrays.
    """
    if len(shape) == 0 or 0 in shape:
        return {}
    if dask_chunks is not None:
        shards = tuple(max(1, int(dims[0])) for dims in dask_chunks)
    else:
        shards = tuple(max(1, min(int(n), shard_target)) for n in shape)
    chunks = tuple(_inner(s, inner_target) for s in shards)
    return {"shards": shards, "chunks": chunks}


def _regular(chunks: tuple[tuple[int, ...], ...]) -> bool:
    """True when every chunk but the last of each dimension has the first chunk's size."""
    return all(all(c == dims[0] for c in dims[:-1]) and dims[-1] <= dims[0] for dims in chunks)


def shard_encoding(dataset, given: Mapping[str, Any] | None = None):
    """The dataset (irregular Dask chunks made regular) and its per-variable shard encoding.

    Variables named in ``given`` keep the caller's encoding. Returns ``(dataset, encoding)``.
    """
    given = dict(given or {})
    encoding: dict[str, Any] = {}
    for name, var in dataset.variables.items():
        if name in given:
            encoding[name] = given[name]
            continue
        chunks = var.chunks if getattr(var, "chunks", None) else None
        if chunks is not None and not _regular(chunks):
            # a shard per chunk needs regular chunks: rechunk to the largest chunk per dimension
            var = var.chunk({dim: max(dims) for dim, dims in zip(var.dims, chunks, strict=True)})
            dataset = dataset.assign({name: var}) if name in dataset.data_vars else dataset.assign_coords({name: var})
            chunks = var.chunks
        spec = variable_encoding(tuple(var.shape), chunks)
        if spec:
            encoding[name] = spec
    return dataset, encoding
