"""``--write-hdf5``: copy results from the Zarr store into the scan file's result groups.

Only ``/xrf/elemental_maps`` and ``/reconstructed`` are (re)written; raw data (spectra, frames,
positions, metadata) stay byte for byte. HDF5 has no journal, so writing in place could corrupt
the file if interrupted: the file is copied beside itself, the copy is updated, and it replaces
the original in one rename. The original is never modified in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["write_results_to_scan"]


def write_results_to_scan(scan_path: str | os.PathLike, store: str | os.PathLike) -> list[str]:
    """Write the store's elemental maps and reconstruction into the scan file.

    Parameters
    ----------
    scan_path : path-like
        Combined-scan HDF5 file.
    store : path-like
        xmulti results store.

    Returns
    -------
    list of str
        The HDF5 groups written.
    """
    import h5py

    from ..errors import InvalidInputError
    from .hdf5 import open_h5
    from .results import read_group

    scan_path = Path(scan_path)
    open_h5(scan_path).close()  # a clear error for a missing or broken file
    if not os.access(scan_path.parent, os.W_OK) or not os.access(scan_path, os.W_OK):
        raise InvalidInputError(f"{scan_path}: not writable; --write-hdf5 needs to replace the file")
    parts = {}
    for group in ("/xrf/elemental_maps", "/reconstructed"):
        try:
            parts[group] = read_group(store, group).load()
        except InvalidInputError:
            continue
    if not parts:
        return []
    fd, tmp = tempfile.mkstemp(prefix=f".{scan_path.name}.", suffix=".partial", dir=scan_path.parent)
    os.close(fd)
    try:
        shutil.copy2(scan_path, tmp)
        with h5py.File(tmp, "a") as f:
            maps = parts.get("/xrf/elemental_maps")
            if maps is not None and "xrf" in f:
                if "elemental_maps" in f["xrf"]:
                    del f["xrf/elemental_maps"]
                group = f["xrf"].create_group("elemental_maps")
                for name in maps.data_vars:
                    group.create_dataset(name, data=np.asarray(maps[name].values, dtype=np.float32))
                    group[name].attrs["units"] = str(maps[name].attrs.get("units", ""))
            rec = parts.get("/reconstructed")
            if rec is not None:
                if "reconstructed" in f:
                    del f["reconstructed"]
                group = f.create_group("reconstructed")
                for name, units in (("phase", "rad"), ("amplitude", "1")):
                    if name in rec:
                        group.create_dataset(name, data=np.asarray(rec[name].values, dtype=np.float32))
                        group[name].attrs["units"] = units
                if "pixel_size" in rec:
                    group.create_dataset("pixel_size", data=float(rec["pixel_size"].values))
                    group["pixel_size"].attrs["units"] = "nm"
                if "y" in rec.coords and "x" in rec.coords:
                    group.create_dataset("origin", data=np.array([float(rec["y"][0]), float(rec["x"][0])]))
                    group["origin"].attrs["units"] = "um"
        os.replace(tmp, scan_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return [g for g in parts if g != "/xrf/elemental_maps" or maps is not None]
