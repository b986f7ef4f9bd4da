"""The results store: Zarr v3, with the same group paths as the input layout.

Results go to ``/xrf/elemental_maps``, ``/reconstructed``, ... of a Zarr store, written through
xarray. A group is written under a temporary directory beside the store and renamed into place
once complete, so a group that exists is always whole; an interrupted run leaves earlier groups
intact. Every result group carries provenance attributes (xmulti version, stage, options, input
path and checksum, time). The store reopens with ``xr.open_datatree(store, engine="zarr")``.

Local (POSIX) stores only: the atomic rename needs one file system.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .sharding import shard_encoding

__all__ = [
    "STORE_MARKER",
    "create_store",
    "write_group",
    "read_group",
    "has_group",
    "provenance",
    "file_checksum",
    "stage_is_done",
]

#: Root attribute that marks a Zarr store as an xmulti results store (value: results layout version).
STORE_MARKER = "xmulti_results_version"
_RESULTS_VERSION = 1


def _is_xmulti_store(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return STORE_MARKER in attrs


def create_store(path: str | os.PathLike) -> Path:
    """Open an xmulti results store, creating it when absent.

    Raises
    ------
    InvalidInputError
        When ``path`` exists but is not an xmulti results store (nothing is overwritten), or
        cannot be written.
    """
    import zarr

    path = Path(path)
    if path.exists():
        if not _is_xmulti_store(path):
            raise InvalidInputError(
                f"{path}: exists and is not an xmulti results store; choose another --out or remove it"
            )
        if not os.access(path, os.W_OK):
            raise InvalidInputError(f"{path}: results store is not writable")
        return path
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise InvalidInputError(f"{path}: parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InvalidInputError(f"{path}: cannot create the results store, {parent} is not writable")
    from .. import __version__

    try:
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        group.attrs[STORE_MARKER] = _RESULTS_VERSION
        group.attrs["xmulti_version"] = __version__
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)
        raise InvalidInputError(f"{path}: cannot create the results store: {exc.strerror or exc}") from None
    return path


@functools.lru_cache(maxsize=16)
def _checksum_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksum(path: str | os.PathLike) -> str:
    """SHA-256 of a file (cached per path, size and modification time)."""
    stat = os.stat(path)
    return "sha256:" + _checksum_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def provenance(stage: str, options: Mapping[str, Any], input_path: str | os.PathLike | None) -> dict[str, Any]:
    """Provenance attributes for a result group.

    Parameters
    ----------
    stage : str
        The pipeline stage or command that made the result (e.g. ``"fit-xrf"``).
    options : mapping
        The options used (JSON-serialisable); stored as a JSON string.
    input_path : path-like or None
        The scan file the result was computed from.
    """
    from .. import __version__

    record: dict[str, Any] = {
        "xmulti_version": __version__,
        "xmulti_stage": stage,
        "xmulti_options": json.dumps(dict(options), sort_keys=True, default=str),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if input_path is not None:
        record["input_path"] = str(Path(input_path).resolve())
        record["input_checksum"] = file_checksum(input_path)
    return record


def _ensure_parents(store: Path, group: str) -> Path:
    """Create the intermediate Zarr groups of ``group``; return the group's directory."""
    import zarr

    root = zarr.open_group(str(store), mode="a", zarr_format=3)
    parts = [p for p in group.strip("/").split("/") if p]
    if not parts:
        raise InvalidInputError("a result group path cannot be the store root")
    node = root
    for part in parts[:-1]:
        node = node.require_group(part)
    return store.joinpath(*parts)


def write_group(
    store: str | os.PathLike,
    group: str,
    dataset,
    *,
    provenance: Mapping[str, Any] | None = None,
    encoding: Mapping[str, Any] | None = None,
) -> str:
    """Write an ``xarray.Dataset`` as one group of the results store, atomically.

    The dataset is written (computing any Dask arrays, chunk by chunk) to a temporary directory
    beside the store, then renamed into place, replacing a previous version of the group; the
    store's consolidated metadata is then refreshed.

    Parameters
    ----------
    store : path-like
        Results store (created when absent; see :func:`create_store`).
    group : str
        Group path, e.g. ``"/xrf/elemental_maps"``.
    dataset : xarray.Dataset
        What to write; its variables should carry ``units`` attributes.
    provenance : mapping, optional
        Attributes from :func:`provenance`, added to the group's attributes.
    encoding : mapping, optional
        Per-variable Zarr encoding (chunks, shards, compressors). Variables not named get one
        shard per Dask chunk (:func:`xmulti.io.sharding.shard_encoding`).

    Returns
    -------
    str
        The group path written.
    """
    store = create_store(store)
    target = _ensure_parents(store, group)
    ds, encoding = shard_encoding(dataset.copy(), encoding)
    ds.attrs = {**ds.attrs, **dict(provenance or {})}
    tmp = Path(tempfile.mkdtemp(prefix=f".{store.name}.", suffix=".partial", dir=store.parent))
    staging = tmp / "group"
    try:
        ds.to_zarr(str(staging), mode="w", zarr_format=3, consolidated=False, encoding=encoding)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _consolidate(store)
    return "/" + group.strip("/")


def _consolidate(store: Path) -> None:
    import warnings

    import zarr

    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not yet in the v3 spec; xarray reads it
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(str(store))


def has_group(store: str | os.PathLike, group: str) -> bool:
    """True when the results store holds the (complete: groups appear whole) group ``group``."""
    return Path(store).joinpath(*group.strip("/").split("/"), "zarr.json").is_file()


def read_group(store: str | os.PathLike, group: str):
    """Open one result group as an ``xarray.Dataset`` (lazy)."""
    import xarray as xr

    store = Path(store)
    if not _is_xmulti_store(store):
        raise InvalidInputError(f"{store}: not an xmulti results store")
    if not has_group(store, group):
        raise InvalidInputError(f"{store}: {group}: no such result group")
    return xr.open_zarr(str(store), group=group.strip("/"), consolidated=False, zarr_format=3)


def stage_is_done(store: str | os.PathLike, group: str, stage: str, options: Mapping[str, Any]) -> bool:
    """True when ``group`` exists, was made by ``stage`` with the same options and input."""
    path = Path(store).joinpath(*group.strip("/").split("/"), "zarr.json")
    if not path.is_file():
        return False
    attrs = json.loads(path.read_text()).get("attributes", {})
    return attrs.get("xmulti_stage") == stage and attrs.get("xmulti_options") == json.dumps(
        dict(options), sort_keys=True, default=str
    )
