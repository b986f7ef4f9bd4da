"""Lazy, distributed-safe HDF5 arrays.

A :class:`LazyHDF5Array` holds only the file path and the dataset path (plus shape and dtype),
so it pickles into any Dask graph and reopens the file in whichever worker process reads it:
read-only, without HDF5 file locking (many processes read one file), with the hdf5plugin filters
(Bitshuffle, LZ4...) registered first. No h5py object ever enters a graph.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ..errors import InvalidScanError

__all__ = ["open_h5", "LazyHDF5Array", "lazy_dask_array", "position_chunks"]


@functools.lru_cache(maxsize=1)
def _register_filters() -> None:
    import hdf5plugin  # noqa: F401  (importing registers the compression filters with HDF5)


def open_h5(path: str | os.PathLike):
    """Open an HDF5 file read-only without file locking, filters registered.

    Raises
    ------
    InvalidScanError
        When the file is missing, not HDF5, truncated or corrupt.
    """
    import h5py

    _register_filters()
    path = Path(path)
    if not path.exists():
        raise InvalidScanError(path, "/", "no such file")
    if path.is_dir():
        raise InvalidScanError(path, "/", "is a directory, not an HDF5 file")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        if not h5py.is_hdf5(path):
            raise InvalidScanError(path, "/", "not an HDF5 file") from None
        raise InvalidScanError(path, "/", f"cannot be opened (truncated or corrupt?): {exc}") from None


@functools.lru_cache(maxsize=8)
def _cached_file(path: str, mtime_ns: int, pid: int):
    # one open handle per file per process; the pid keeps forked workers from sharing it
    return open_h5(path)


class LazyHDF5Array:
    """Array-like view of one HDF5 dataset that reads on indexing (for ``dask.array.from_array``).

    Parameters
    ----------
    path : path-like
        The HDF5 file.
    name : str
        The dataset's path inside the file.
    shape : tuple of int
    dtype : numpy dtype
    """

    def __init__(self, path: str | os.PathLike, name: str, shape: tuple[int, ...], dtype) -> None:
        self.path = str(Path(path).resolve())
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        try:
            handle = _cached_file(self.path, os.stat(self.path).st_mtime_ns, os.getpid())
            return np.asarray(handle[self.name][key])
        except InvalidScanError:
            raise
        except (OSError, KeyError) as exc:
            raise InvalidScanError(self.path, self.name, f"cannot read data: {exc}") from None

    def __reduce__(self):
        return (LazyHDF5Array, (self.path, self.name, self.shape, self.dtype.str))

    def __repr__(self) -> str:
        return f"LazyHDF5Array({self.path!r}, {self.name!r}, shape={self.shape}, dtype={self.dtype})"


def position_chunks(n_positions: int, bytes_per_position: int, hdf5_chunk: int | None,
                    target_bytes: int = 64 << 20) -> int:
    """Positions per Dask chunk: whole spectra/frames, about ``target_bytes``, and a whole
    multiple of the HDF5 chunk along positions so no HDF5 chunk is decompressed twice."""
    per_chunk = max(1, target_bytes // max(1, bytes_per_position))
    if hdf5_chunk:
        per_chunk = max(hdf5_chunk, (per_chunk // hdf5_chunk) * hdf5_chunk)
    return int(min(n_positions, per_chunk))


def lazy_dask_array(path: str | os.PathLike, dataset, chunks=None):
    """A Dask array reading ``dataset`` (an open h5py Dataset, used only for its metadata).

    Parameters
    ----------
    path : path-like
        The file holding the dataset.
    dataset : h5py.Dataset
        Only its name, shape, dtype and chunking are used; the graph holds the path.
    chunks : int, tuple or None
        Positions per chunk along the first axis (int), full Dask chunks (tuple), or None for
        :func:`position_chunks`. Trailing axes are never split.
    """
    import dask.array as da

    source = LazyHDF5Array(path, dataset.name, dataset.shape, dataset.dtype)
    # an explicit meta keeps dask from slicing the array to learn its type (that would read)
    meta = np.empty((0,) * dataset.ndim, dtype=dataset.dtype)
    if dataset.ndim == 0:
        return da.from_array(source, chunks=(), lock=False, asarray=True, meta=meta)
    if chunks is None:
        per_position = int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize
        h5_chunk = dataset.chunks[0] if dataset.chunks else None
        chunks = position_chunks(dataset.shape[0], per_position, h5_chunk)
    if isinstance(chunks, int | np.integer):
        chunks = (int(chunks), *dataset.shape[1:])
    name = f"hdf5-{Path(path).name}-{dataset.name}-{da.core.tokenize(source.path, os.stat(path).st_mtime_ns, chunks)}"
    return da.from_array(source, chunks=chunks, lock=False, asarray=True, name=name, meta=meta)
