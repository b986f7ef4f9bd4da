"""xarray backend: ``xr.open_datatree(path, engine="xmulti")`` and
``xr.open_dataset(path, engine="xmulti", group="xrf")`` for combined-scan files."""

from __future__ import annotations

import os
from collections.abc import Iterable

from xarray.backends import BackendEntrypoint

__all__ = ["XmultiBackendEntrypoint"]


class XmultiBackendEntrypoint(BackendEntrypoint):
    """Opens combined XRF + ptychography HDF5 scans lazily through :func:`xmulti.open_scan`."""

    description = "Combined XRF + ptychography scans (xmulti layout v1), lazy and distributed-safe"
    url = "https://github.com/xmulti/xmulti"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "group", "positions_per_chunk")

    def open_datatree(self, filename_or_obj, *, drop_variables: str | Iterable[str] | None = None,
                      positions_per_chunk: int | None = None, **kwargs):
        from .scan import open_scan

        tree = open_scan(_path(filename_or_obj), chunks=positions_per_chunk)
        if drop_variables:
            drop = [drop_variables] if isinstance(drop_variables, str) else list(drop_variables)
            tree = tree.map_over_datasets(lambda ds: ds.drop_vars(drop, errors="ignore"))
        return tree

    def open_groups_as_dict(self, filename_or_obj, *, drop_variables=None, positions_per_chunk=None, **kwargs):
        tree = self.open_datatree(filename_or_obj, drop_variables=drop_variables,
                                  positions_per_chunk=positions_per_chunk)
        return {node.path: node.to_dataset(inherit=False) for node in tree.subtree}

    def open_dataset(self, filename_or_obj, *, drop_variables=None, group: str | None = None,
                     positions_per_chunk: int | None = None, **kwargs):
        tree = self.open_datatree(filename_or_obj, drop_variables=drop_variables,
                                  positions_per_chunk=positions_per_chunk)
        node = tree[group] if group not in (None, "", "/") else tree
        return node.to_dataset(inherit=True)

    def guess_can_open(self, filename_or_obj) -> bool:
        try:
            path = _path(filename_or_obj)
        except TypeError:
            return False
        if not str(path).endswith((".h5", ".hdf5", ".hdf", ".nxs")) or not os.path.isfile(path):
            return False
        try:
            from .hdf5 import open_h5

            with open_h5(path) as f:
                return "xrf" in f or "ptychography" in f
        except Exception:
            return False


def _path(filename_or_obj) -> str:
    if isinstance(filename_or_obj, str | os.PathLike):
        return os.fspath(filename_or_obj)
    raise TypeError("the xmulti engine opens files by path")
