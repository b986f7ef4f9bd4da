"""Open and validate combined-scan HDF5 files as lazy ``xarray.DataTree`` objects.

The layout comes from ``schemas/combined_scan.schema.json`` (:mod:`xmulti.schema`). Opening reads
metadata and the (small) position arrays only; spectra and frames stay on disk behind Dask arrays
that hold the file path, never an h5py object, so the tree works under any Dask scheduler,
including process-based distributed clusters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import physics
from ..errors import InvalidInputError, InvalidScanError
from ..grid import image_axes_um, raster_axes_um
from ..schema import POSITION_UNITS_TO_UM, combined_scan_schema
from .hdf5 import lazy_dask_array, open_h5

__all__ = ["open_scan", "validate_scan", "ScanSummary"]

_DTYPE_KINDS = {"integer": "iu", "float": "f", "complex": "c", "bool": "b"}
_ROOT_GROUPS = ("xrf", "ptychography", "reconstructed")


@dataclass
class ScanSummary:
    """What validation learnt about a file: enough to build the tree without re-reading."""

    path: Path
    n_positions: int | None = None
    n_channels: int | None = None
    frame_shape: tuple[int, int] | None = None
    scan_shape: tuple[int, int] | None = None
    positions_um: dict[str, np.ndarray] = field(default_factory=dict)
    energy_keV: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


def _attr_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_dataset(path: Path, dset, spec: dict[str, Any]) -> None:
    """Rank, fixed shape entries and dtype of one dataset against its schema entry."""
    dims = spec.get("dims")
    alt = spec.get("alt_dims")
    if dims is not None and dset.ndim != len(dims) and not (alt and dset.ndim == len(alt)):
        expected = f"{len(dims)}" + (f" or {len(alt)}" if alt else "")
        raise InvalidScanError(
            path, dset.name, f"has rank {dset.ndim}, expected {expected} ({', '.join(dims)})"
        )
    for axis, size in enumerate(spec.get("shape") or []):
        if size is not None and dset.shape[axis] != size:
            raise InvalidScanError(path, dset.name, f"has shape {dset.shape}, axis {axis} must be {size}")
    kinds = "".join(_DTYPE_KINDS[k] for k in spec.get("dtype", []))
    if kinds and dset.dtype.kind not in kinds:
        raise InvalidScanError(
            path, dset.name, f"has dtype {dset.dtype}, expected {' or '.join(spec['dtype'])}"
        )


def _read_positions(path: Path, dset) -> np.ndarray:
    """Positions converted to um, checked finite."""
    units = _attr_str(dset.attrs.get("units", "um"))
    if units not in POSITION_UNITS_TO_UM:
        raise InvalidScanError(
            path, f"{dset.name}@units", f"unknown units {units!r}; use one of {', '.join(POSITION_UNITS_TO_UM)}"
        )
    positions = np.asarray(dset[()], dtype=np.float64) * POSITION_UNITS_TO_UM[units]
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        raise InvalidScanError(
            path, dset.name, f"{int(bad.sum())} non-finite position(s), first at index {int(np.argmax(bad))}"
        )
    return positions


def _positive_attr(path: Path, obj, name: str, required: bool) -> float | None:
    if name not in obj.attrs:
        if required:
            raise InvalidScanError(path, f"{obj.name}@{name}", "required attribute is missing")
        return None
    try:
        value = float(np.asarray(obj.attrs[name]).reshape(()))
    except (TypeError, ValueError):
        raise InvalidScanError(path, f"{obj.name}@{name}", "must be a number") from None
    if not np.isfinite(value) or value <= 0:
        raise InvalidScanError(path, f"{obj.name}@{name}", f"must be a positive number, got {value}")
    return value


def _validate_group(path: Path, f, group_name: str, summary: ScanSummary) -> None:
    spec = combined_scan_schema()["groups"][f"/{group_name}"]
    group = f[group_name]
    for attr, attr_spec in spec.get("attrs", {}).items():
        if attr_spec.get("positive") or attr_spec.get("required"):
            _positive_attr(path, group, attr, required=bool(attr_spec.get("required")))
    for name, dspec in spec.get("datasets", {}).items():
        if name not in group:
            if dspec.get("required"):
                raise InvalidScanError(path, f"/{group_name}/{name}", "required dataset is missing")
            continue
        dset = group[name]
        if not hasattr(dset, "dtype"):
            raise InvalidScanError(path, dset.name, "is a group, expected a dataset")
        _check_dataset(path, dset, dspec)
    if "positions" in group:
        summary.positions_um[group_name] = _read_positions(path, group["positions"])


def _validate_xrf(path: Path, f, summary: ScanSummary) -> None:
    _positive_attr(path, f["/"], "incident_energy_keV", required=True)
    g = f["xrf"]
    n_pos, n_ch = g["spectra"].shape
    summary.n_channels = n_ch
    summary.n_positions = n_pos
    if summary.positions_um["xrf"].shape[0] != n_pos:
        raise InvalidScanError(
            path, "/xrf/positions",
            f"has {summary.positions_um['xrf'].shape[0]} positions but /xrf/spectra has {n_pos}",
        )
    for name in ("i0", "live_time", "real_time"):
        if name in g and g[name].shape[0] != n_pos:
            raise InvalidScanError(path, f"/xrf/{name}", f"has {g[name].shape[0]} values, expected {n_pos}")
    if "energy" in g:
        energy = np.asarray(g["energy"][()], dtype=np.float64)
        if energy.shape != (n_ch,):
            raise InvalidScanError(path, "/xrf/energy", f"has {energy.shape[0]} values, expected {n_ch}")
    elif "energy_gain_keV" in g.attrs:
        offset = float(g.attrs.get("energy_offset_keV", 0.0))
        gain = float(g.attrs["energy_gain_keV"])
        quad = float(g.attrs.get("energy_quadratic_keV", 0.0))
        ch = np.arange(n_ch, dtype=np.float64)
        energy = offset + gain * ch + quad * ch**2
    else:
        raise InvalidScanError(
            path, "/xrf/energy",
            "no energy axis: give /xrf/energy (keV) or the attributes energy_offset_keV and "
            "energy_gain_keV on /xrf",
        )
    if not np.all(np.isfinite(energy)) or np.any(np.diff(energy) <= 0):
        raise InvalidScanError(path, "/xrf/energy", "channel energies must be finite and increasing")
    summary.energy_keV = energy


def _validate_ptycho(path: Path, f, summary: ScanSummary) -> None:
    g = f["ptychography"]
    n_pos, ndy, ndx = g["diffraction"].shape
    summary.frame_shape = (ndy, ndx)
    positions = summary.positions_um["ptychography"]
    if positions.shape[0] != n_pos:
        raise InvalidScanError(
            path, "/ptychography/positions",
            f"has {positions.shape[0]} positions but /ptychography/diffraction has {n_pos}",
        )
    if summary.n_positions is None:
        summary.n_positions = n_pos
    elif not np.allclose(positions, summary.positions_um["xrf"], rtol=0, atol=1e-6):
        raise InvalidScanError(
            path, "/ptychography/positions",
            "differ from /xrf/positions (both modalities share one scan; positions must match)",
        )
    if "mask" in g and g["mask"].shape != (ndy, ndx):
        raise InvalidScanError(path, "/ptychography/mask", f"has shape {g['mask'].shape}, frames are {(ndy, ndx)}")
    if "probe" in g and g["probe"].shape[-2:] != (ndy, ndx):
        raise InvalidScanError(
            path, "/ptychography/probe", f"has shape {g['probe'].shape[-2:]}, frames are {(ndy, ndx)}"
        )


def _validate(path: Path, f) -> ScanSummary:
    summary = ScanSummary(path=path)
    present = [name for name in _ROOT_GROUPS if name in f]
    if not {"xrf", "ptychography"} & set(present):
        raise InvalidScanError(
            path, "/", "neither /xrf nor /ptychography found: not a combined-scan file "
            "(use `xmulti convert` for beamline formats)",
        )
    for name in present:
        if not hasattr(f[name], "keys"):
            raise InvalidScanError(path, f"/{name}", "is a dataset, expected a group")
        _validate_group(path, f, name, summary)
    if "xrf" in present:
        _validate_xrf(path, f, summary)
    if "ptychography" in present:
        _validate_ptycho(path, f, summary)
    if "scan_shape" in f.attrs:
        shape = np.asarray(f.attrs["scan_shape"]).ravel()
        if shape.size != 2 or np.any(shape < 1) or shape.dtype.kind not in "iu":
            raise InvalidScanError(path, "/@scan_shape", f"must be two positive integers, got {shape.tolist()}")
        if int(np.prod(shape)) != summary.n_positions:
            raise InvalidScanError(
                path, "/@scan_shape", f"{shape.tolist()} holds {int(np.prod(shape))} positions, the scan has {summary.n_positions}"
            )
        summary.scan_shape = (int(shape[0]), int(shape[1]))
    if "xrf" in present and "elemental_maps" in f["xrf"]:
        for name, dset in f["xrf/elemental_maps"].items():
            _check_dataset(path, dset, {"dims": ["y", "x"], "dtype": ["integer", "float"]})
            try:
                physics.atomic_number(name)
            except InvalidInputError:
                raise InvalidScanError(path, dset.name, "name is not an element symbol") from None
            if summary.scan_shape and dset.shape != summary.scan_shape:
                raise InvalidScanError(path, dset.name, f"has shape {dset.shape}, scan_shape is {summary.scan_shape}")
    return summary


def validate_scan(path: str | os.PathLike) -> ScanSummary:
    """Check a file against the combined-scan layout without reading spectra or frames.

    Parameters
    ----------
    path : path-like
        The HDF5 file.

    Returns
    -------
    ScanSummary
        Sizes, positions (um) and channel energies (keV) found.

    Raises
    ------
    InvalidScanError
        Naming the file, the path inside it and the problem.
    """
    path = Path(path)
    with open_h5(path) as f:
        return _validate(path, f)


def _lazy(path, dset, chunks):
    return lazy_dask_array(path, dset, chunks)


#: Numeric datasets above this size (bytes) open as Dask arrays; smaller ones are read at once.
_EAGER_MAX_BYTES = 1 << 16


def _worth_lazy(dset) -> bool:
    """Whether to open ``dset`` lazily: numeric arrays above :data:`_EAGER_MAX_BYTES`, so that
    opening a scan costs no memory that grows with its size (truth images, input phase)."""
    return dset.ndim >= 1 and dset.dtype.kind in "biufc" and dset.size * dset.dtype.itemsize > _EAGER_MAX_BYTES


def _xrf_dataset(path: Path, f, summary: ScanSummary, chunks):
    import xarray as xr

    g = f["xrf"]
    positions = summary.positions_um["xrf"]
    coords = {
        "energy": ("channel", summary.energy_keV, {"units": "keV", "long_name": "channel energy"}),
        "position_y": ("position", positions[:, 0], {"units": "um", "long_name": "beam position y"}),
        "position_x": ("position", positions[:, 1], {"units": "um", "long_name": "beam position x"}),
    }
    data = {
        "spectra": (("position", "channel"), _lazy(path, g["spectra"], chunks), {"units": "counts"}),
    }
    for name, units in (("i0", "counts"), ("live_time", "s"), ("real_time", "s")):
        if name in g:
            data[name] = (("position",), np.asarray(g[name][()]), {"units": units})
    attrs = {k: _plain(v) for k, v in g.attrs.items()}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _maps_dataset(path: Path, f, summary: ScanSummary):
    import xarray as xr

    g = f["xrf/elemental_maps"]
    data = {name: (("y", "x"), np.asarray(dset[()]), {k: _plain(v) for k, v in dset.attrs.items()})
            for name, dset in g.items()}
    coords = {}
    shapes = {np.asarray(v[1]).shape for v in data.values()}
    if summary.scan_shape and shapes == {summary.scan_shape}:
        y, x = raster_axes_um(summary.positions_um["xrf"], summary.scan_shape)
        coords = {"y": ("y", y, {"units": "um"}), "x": ("x", x, {"units": "um"})}
    return xr.Dataset(data, coords=coords)


def _ptycho_dataset(path: Path, f, summary: ScanSummary, chunks):
    import xarray as xr

    g = f["ptychography"]
    positions = summary.positions_um["ptychography"]
    ndy, ndx = summary.frame_shape
    energy = float(g.attrs["energy_keV"])
    distance = float(g.attrs["detector_distance_m"])
    pixel = float(g.attrs["detector_pixel_size_m"])
    attrs = {k: _plain(v) for k, v in g.attrs.items()}
    attrs["wavelength_m"] = physics.wavelength_m(energy)
    attrs["object_pixel_size_m"] = physics.object_pixel_size_m(energy, distance, ndx, pixel)
    attrs["object_pixel_size_yx_m"] = [
        physics.object_pixel_size_m(energy, distance, ndy, pixel), attrs["object_pixel_size_m"]
    ]
    coords = {
        "position_y": ("position", positions[:, 0], {"units": "um", "long_name": "beam position y"}),
        "position_x": ("position", positions[:, 1], {"units": "um", "long_name": "beam position x"}),
    }
    data = {
        "diffraction": (
            ("position", "det_y", "det_x"), _lazy(path, g["diffraction"], chunks), {"units": "counts"}
        )
    }
    if "mask" in g:
        data["mask"] = (("det_y", "det_x"), np.asarray(g["mask"][()]) != 0, {"description": "True = bad pixel"})
    if "probe" in g:
        probe = np.asarray(g["probe"][()]).astype(np.complex64)
        dims = ("probe_y", "probe_x") if probe.ndim == 2 else ("probe_mode", "probe_y", "probe_x")
        data["probe"] = (dims, probe, {"units": "sqrt(photons)"})
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _reconstructed_dataset(path: Path, f, summary: ScanSummary):
    import xarray as xr

    g = f["reconstructed"]
    data, coords = {}, {}
    for name, units in (("phase", "rad"), ("amplitude", "1")):
        if name in g:
            value = _lazy(path, g[name], None) if _worth_lazy(g[name]) else np.asarray(g[name][()])
            data[name] = (("y", "x"), value, {"units": units})
    if "pixel_size" in g:
        pixel_nm = float(np.asarray(g["pixel_size"][()]))
        data["pixel_size"] = ((), pixel_nm, {"units": "nm"})
        shape = next((np.asarray(v[1]).shape for v in data.values() if np.ndim(v[1]) == 2), None)
        if shape is not None:
            if "origin" in g:
                origin = tuple(np.asarray(g["origin"][()], dtype=float))
            else:
                # no origin recorded: centre the image on the scan (documented in the schema)
                positions = next(iter(summary.positions_um.values()), np.zeros((1, 2)))
                centre = positions.mean(axis=0)
                origin = tuple(centre - pixel_nm * 1e-3 * (np.asarray(shape) - 1) / 2)
            y, x = image_axes_um(shape, pixel_nm * 1e-3, origin)
            coords = {"y": ("y", y, {"units": "um"}), "x": ("x", x, {"units": "um"})}
    return xr.Dataset(data, coords=coords)


def _generic_group(path: Path, group, chunks):
    """Datasets of a group outside the layout (e.g. /truth), lazily, dims from a ``dims`` attr."""
    import xarray as xr

    data = {}
    for name, dset in group.items():
        if not hasattr(dset, "dtype"):
            continue
        dims = dset.attrs.get("dims")
        dims = tuple(_attr_str(d) for d in dims) if dims is not None else tuple(
            f"{name}_dim{i}" for i in range(dset.ndim)
        )
        value = _lazy(path, dset, None) if _worth_lazy(dset) else np.asarray(dset[()])
        if value.dtype.kind == "S":
            value = value.astype(str)
        data[name] = (dims, value, {k: _plain(v) for k, v in dset.attrs.items() if k != "dims"})
    ds = xr.Dataset(data, attrs={k: _plain(v) for k, v in group.attrs.items()})
    if {"y", "x"} <= set(ds.dims) and "origin_um" in ds.attrs and "pixel_size_nm" in ds.attrs:
        y, x = image_axes_um((ds.sizes["y"], ds.sizes["x"]), ds.attrs["pixel_size_nm"] * 1e-3,
                             tuple(ds.attrs["origin_um"]))
        ds = ds.assign_coords(y=("y", y, {"units": "um"}), x=("x", x, {"units": "um"}))
    return ds


def _plain(value):
    """HDF5 attribute value as a plain Python/numpy value (bytes decoded)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return value.astype(str).tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_scan(path: str | os.PathLike, chunks: int | None = None):
    """Open a combined XRF + ptychography scan as a lazy ``xarray.DataTree``.

    Parameters
    ----------
    path : path-like
        HDF5 file in the combined-scan layout (``schemas/combined_scan.schema.json``).
    chunks : int, optional
        Positions per Dask chunk of ``spectra`` and ``diffraction``; default about 64 MB per
        chunk, a whole multiple of the file's HDF5 chunk. Chunks always hold whole spectra and
        whole frames.

    Returns
    -------
    xarray.DataTree
        ``/`` (attrs: incident_energy_keV, scan_shape, layout_version, source),
        ``/xrf`` (``spectra (position, channel)``; coords ``energy`` keV, ``position_y``,
        ``position_x`` um; ``i0``, ``live_time``, ``real_time`` when present),
        ``/xrf/elemental_maps`` (``(y, x)`` um), ``/ptychography`` (``diffraction (position,
        det_y, det_x)``, ``mask``, ``probe``; attrs energy_keV, detector_distance_m,
        detector_pixel_size_m, wavelength_m, object_pixel_size_m), ``/reconstructed``
        (``phase``, ``amplitude`` on ``(y, x)`` um, ``pixel_size`` nm), and any other group
        (e.g. ``/truth``) as found. Positions are beam-centre positions in the stage frame.

    Raises
    ------
    InvalidScanError
        When the file does not follow the layout; nothing is ever written to the file.
    """
    import xarray as xr

    path = Path(path)
    with open_h5(path) as f:
        summary = _validate(path, f)
        root_attrs = {k: _plain(v) for k, v in f.attrs.items()}
        root_attrs["source"] = str(path.resolve())
        if summary.scan_shape is not None:
            root_attrs["scan_shape"] = list(summary.scan_shape)
        groups: dict[str, Any] = {"/": xr.Dataset(attrs=root_attrs)}
        if "xrf" in f:
            groups["/xrf"] = _xrf_dataset(path, f, summary, chunks)
            if "elemental_maps" in f["xrf"]:
                groups["/xrf/elemental_maps"] = _maps_dataset(path, f, summary)
        if "ptychography" in f:
            groups["/ptychography"] = _ptycho_dataset(path, f, summary, chunks)
        if "reconstructed" in f:
            groups["/reconstructed"] = _reconstructed_dataset(path, f, summary)
        for name, group in f.items():
            if name not in _ROOT_GROUPS and hasattr(group, "keys"):
                groups[f"/{name}"] = _generic_group(path, group, chunks)
    return xr.DataTree.from_dict(groups)
