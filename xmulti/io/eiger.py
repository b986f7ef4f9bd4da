"""Dectris Eiger NeXus files: a master file plus data files, or data files alone.

Master ``<prefix>_master.h5``::

    /entry/data/data_000001 ...     external links to <prefix>_data_00000N.h5:/entry/data/data
    /entry/instrument/detector/{x_pixel_size, y_pixel_size, detector_distance}   m
    /entry/instrument/detector/{beam_center_x, beam_center_y}                     pixels
    /entry/instrument/detector/{count_time, frame_time}                           s
    /entry/instrument/beam/incident_wavelength                                    Angstrom
    /entry/instrument/detector/detectorSpecific/{pixel_mask (0 = good), photon_energy (eV),
                                                 saturation_value}

Frames are compressed with Bitshuffle+LZ4 (HDF5 filter 32008) or LZ4 (32004); ``hdf5plugin``
is imported wherever a file is opened. Frames are read through :class:`EigerFrames`, a
path-based array-like (it stores file names only and reopens the files on every read), so it can
be wrapped by ``dask.array.from_array`` and shipped to worker processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, InvalidScanError
from .layout import PtychoData

__all__ = [
    "EigerGeometry",
    "EigerFrames",
    "EigerScan",
    "read_eiger",
    "crop_slices",
    "find_beam_center",
    "ptycho_from_eiger",
]

_DET = "entry/instrument/detector"
_ANGSTROM_KEV = 12.398419843320026  # h c in keV * Angstrom


@dataclass(frozen=True)
class EigerGeometry:
    """Detector geometry from an Eiger master file (SI units; beam centre in pixels, (x, y))."""

    detector_distance_m: float
    x_pixel_size_m: float
    y_pixel_size_m: float
    beam_center_x_px: float
    beam_center_y_px: float
    energy_keV: float | None
    count_time_s: float | None = None
    frame_time_s: float | None = None
    saturation_value: int | None = None


@dataclass(frozen=True)
class EigerFrames:
    """Path-based, lazily read stack of frames (N, H, W), optionally cropped.

    Holds only file names, so it pickles cheaply and never puts an h5py object in a Dask graph.
    Supports ``len``, ``shape``, ``dtype``, ``ndim`` and ``frames[i]``, ``frames[a:b]``,
    ``frames[a:b, ys, xs]`` (basic indexing), which is what ``dask.array.from_array`` needs.

    Attributes
    ----------
    blocks : tuple of (str, str, int)
        (data file, dataset path, number of frames) in frame order.
    frame_shape : (int, int)
        Full detector frame (H, W).
    dtype : numpy dtype
        Stored pixel type.
    crop : (int, int, int, int) or None
        (y0, y1, x0, x1) window applied to every frame.
    """

    blocks: tuple[tuple[str, str, int], ...]
    frame_shape: tuple[int, int]
    dtype: np.dtype
    crop: tuple[int, int, int, int] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        n = sum(b[2] for b in self.blocks)
        if self.crop is None:
            return (n, *self.frame_shape)
        y0, y1, x0, x1 = self.crop
        return (n, y1 - y0, x1 - x0)

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def cropped(self, center_yx: tuple[float, float], size: int) -> EigerFrames:
        """The same frames cropped to ``size`` x ``size`` with ``center_yx`` at (size//2, size//2)."""
        sy, sx = crop_slices(center_yx, size, self.frame_shape)
        return replace(self, crop=(sy.start, sy.stop, sx.start, sx.stop))

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        first, rest = key[0], key[1:]
        n = len(self)
        if isinstance(first, int | np.integer):
            index = int(first) + (n if first < 0 else 0)
            if not 0 <= index < n:
                raise IndexError(f"frame {first} out of range for {n} frames")
            return self._read(index, index + 1)[(0, *rest)]
        if isinstance(first, slice):
            start, stop, step = first.indices(n)
            return self._read(start, max(start, stop))[(slice(None, None, step), *rest)]
        raise TypeError(f"unsupported index {first!r} (use an int or a slice)")

    def read(self) -> np.ndarray:
        """All frames as one array."""
        return self._read(0, len(self))

    def _read(self, start: int, stop: int) -> np.ndarray:
        import h5py
        import hdf5plugin  # noqa: F401  (registers Bitshuffle/LZ4 in this process)

        y0, y1, x0, x1 = self.crop or (0, self.frame_shape[0], 0, self.frame_shape[1])
        out = np.empty((stop - start, y1 - y0, x1 - x0), dtype=self.dtype)
        offset = 0
        for file_name, dataset, count in self.blocks:
            lo, hi = max(start, offset), min(stop, offset + count)
            if lo < hi:
                with h5py.File(file_name, "r", locking=False) as f:
                    out[lo - start : hi - start] = f[dataset][
                        lo - offset : hi - offset, y0:y1, x0:x1
                    ]
            offset += count
        return out


@dataclass
class EigerScan:
    """An Eiger acquisition: frames (lazy), geometry and mask (None without a master file)."""

    source: Path
    frames: EigerFrames
    geometry: EigerGeometry | None
    mask: np.ndarray | None  # (H, W) bool, True = bad pixel; cropped like the frames


def crop_slices(
    center_yx: tuple[float, float], size: int, frame_shape: tuple[int, int]
) -> tuple[slice, slice]:
    """Slices of a ``size`` x ``size`` window putting pixel ``center_yx`` at (size//2, size//2).

    The direct beam (zero spatial frequency) then sits where ``fftshift`` puts it, the
    convention of xmulti's far-field model. ``center_yx`` is rounded to the nearest pixel.

    Raises
    ------
    InvalidInputError
        The window does not fit on the detector.
    """
    size = int(size)
    if size <= 0:
        raise InvalidInputError(f"crop size must be positive, got {size}")
    cy, cx = (int(np.floor(c + 0.5)) for c in center_yx)
    y0, x0 = cy - size // 2, cx - size // 2
    h, w = frame_shape
    if y0 < 0 or x0 < 0 or y0 + size > h or x0 + size > w:
        raise InvalidInputError(
            f"a {size} x {size} crop centred on pixel (y={cy}, x={cx}) does not fit a {h} x {w} detector"
        )
    return slice(y0, y0 + size), slice(x0, x0 + size)


def find_beam_center(
    frames: np.ndarray, mask: np.ndarray | None = None, radius_px: int = 5
) -> tuple[float, float]:
    """Direct-beam position (y, x) in pixels from the summed frames.

    Parameters
    ----------
    frames : ndarray (N, H, W) or (H, W)
        Diffraction frames.
    mask : ndarray (H, W) bool, optional
        True marks pixels to ignore.
    radius_px : int
        Half-width of the window around the brightest pixel used for the centroid.

    Notes
    -----
    The intensity centroid, after subtracting the median background, is taken in a
    ``(2 r + 1)^2`` window around the brightest pixel: the central lobe of a focused probe's
    far field dominates it, and distant speckle or hot pixels far away do not pull it.
    """
    total = np.asarray(frames, dtype=np.float64)
    if total.ndim == 3:
        total = total.sum(axis=0)
    valid = np.ones(total.shape, dtype=bool) if mask is None else ~np.asarray(mask, dtype=bool)
    total = np.where(valid, total, 0.0)
    if not total.max() > 0:
        raise InvalidInputError("cannot locate the direct beam: the frames are empty")
    py, px = np.unravel_index(np.argmax(total), total.shape)
    r = int(radius_px)
    ys = slice(max(0, py - r), py + r + 1)
    xs = slice(max(0, px - r), px + r + 1)
    window = np.clip(total[ys, xs] - np.median(total[valid]), 0.0, None) * valid[ys, xs]
    yy, xx = np.indices(window.shape)
    weight = window.sum()
    return float(ys.start + (window * yy).sum() / weight), float(
        xs.start + (window * xx).sum() / weight
    )


def _value(group, name: str, default=None):
    if name not in group:
        return default
    return np.asarray(group[name][()]).ravel()[0].item()


def read_eiger(path: str | os.PathLike) -> EigerScan:
    """Open an Eiger master file (with its data files) or a data file alone.

    Parameters
    ----------
    path : path-like
        ``<prefix>_master.h5``, or a ``<prefix>_data_00000N.h5`` (no geometry, no mask).

    Returns
    -------
    EigerScan
        Lazy frames plus geometry and pixel mask from the master.

    Raises
    ------
    InvalidScanError
        The file is unreadable, has no frames, or a master's data file is missing.
    """
    import h5py
    import hdf5plugin  # noqa: F401

    path = Path(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise InvalidScanError(path, "/", f"cannot open Eiger file: {exc}") from None
    with f:
        if "entry/data" not in f:
            raise InvalidScanError(path, "/entry/data", "missing group: not an Eiger NeXus file")
        data_group = f["entry/data"]
        names = sorted(n for n in data_group if n.startswith("data_"))
        blocks = []
        if names:  # master file
            for name in names:
                link = data_group.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    target = Path(link.filename)
                    if not target.is_absolute():
                        target = path.parent / target
                    dataset = link.path
                    if not target.exists():
                        raise InvalidScanError(
                            path,
                            f"/entry/data/{name}",
                            f"external data file {target.name} is missing",
                        )
                else:
                    target, dataset = path, f"/entry/data/{name}"
                blocks.append((target, dataset))
            geometry, mask = _master_metadata(f, path)
        elif "data" in data_group:  # data file alone
            blocks.append((path, "/entry/data/data"))
            geometry, mask = None, None
        else:
            raise InvalidScanError(
                path, "/entry/data/data", "missing dataset: no frames in this file"
            )
    described = []
    frame_shape, dtype = None, None
    for target, dataset in blocks:
        try:
            with h5py.File(target, "r", locking=False) as g:
                if dataset not in g:
                    raise InvalidScanError(target, dataset, "missing dataset in Eiger data file")
                d = g[dataset]
                if d.ndim != 3:
                    raise InvalidScanError(
                        target, dataset, f"expected frames (N, H, W), got {d.shape}"
                    )
                if frame_shape is None:
                    frame_shape, dtype = tuple(d.shape[1:]), d.dtype
                elif tuple(d.shape[1:]) != frame_shape:
                    raise InvalidScanError(
                        target, dataset, f"frame shape {d.shape[1:]} differs from {frame_shape}"
                    )
                described.append((str(target), dataset, int(d.shape[0])))
        except OSError as exc:
            raise InvalidScanError(target, "/", f"cannot open Eiger data file: {exc}") from None
    if mask is not None and mask.shape != frame_shape:
        raise InvalidScanError(
            path,
            f"/{_DET}/detectorSpecific/pixel_mask",
            f"shape {mask.shape} != frames {frame_shape}",
        )
    frames = EigerFrames(tuple(described), frame_shape, np.dtype(dtype))
    return EigerScan(source=path, frames=frames, geometry=geometry, mask=mask)


def _master_metadata(f, path: Path) -> tuple[EigerGeometry, np.ndarray | None]:
    if _DET not in f:
        raise InvalidScanError(
            path, "/" + _DET, "missing group: the master file has no detector geometry"
        )
    det = f[_DET]
    for name in ("x_pixel_size", "y_pixel_size", "detector_distance"):
        if name not in det:
            raise InvalidScanError(path, f"/{_DET}/{name}", "missing dataset")
    spec = det["detectorSpecific"] if "detectorSpecific" in det else {}
    energy_keV = None
    photon_eV = _value(spec, "photon_energy") if spec else None
    if photon_eV:
        energy_keV = float(photon_eV) / 1e3
    elif "entry/instrument/beam/incident_wavelength" in f:
        energy_keV = _ANGSTROM_KEV / float(
            np.asarray(f["entry/instrument/beam/incident_wavelength"][()]).ravel()[0]
        )
    geometry = EigerGeometry(
        detector_distance_m=float(_value(det, "detector_distance")),
        x_pixel_size_m=float(_value(det, "x_pixel_size")),
        y_pixel_size_m=float(_value(det, "y_pixel_size")),
        beam_center_x_px=float(_value(det, "beam_center_x", np.nan)),
        beam_center_y_px=float(_value(det, "beam_center_y", np.nan)),
        energy_keV=energy_keV,
        count_time_s=_value(det, "count_time"),
        frame_time_s=_value(det, "frame_time"),
        saturation_value=_value(spec, "saturation_value") if spec else None,
    )
    mask = None
    if spec and "pixel_mask" in spec:
        mask = np.asarray(spec["pixel_mask"][()]) != 0
    return geometry, mask


def ptycho_from_eiger(
    path: str | os.PathLike,
    positions_um: np.ndarray,
    crop_size: int | None = None,
    beam_center_yx: tuple[float, float] | str | None = None,
    energy_keV: float | None = None,
    detector_distance_m: float | None = None,
    detector_pixel_size_m: float | None = None,
    fallback_energy_keV: float | None = None,
) -> PtychoData:
    """Ptychography from Eiger frames, one frame per position, optionally cropped around the beam.

    Parameters
    ----------
    path : path-like
        Master file (geometry, mask) or a data file (then give the geometry explicitly).
    positions_um : ndarray (N, 2)
        Beam positions (y, x) in um, e.g. from the MDA of the same scan.
    crop_size : int, optional
        Crop every frame to ``crop_size`` squared pixels with the beam at the centre.
    beam_center_yx : (y, x) pixels, "auto", or None
        Beam centre for cropping: explicit, found from the data, or (None) the master's.
    energy_keV, detector_distance_m, detector_pixel_size_m : float, optional
        Override or supply the geometry.
    fallback_energy_keV : float, optional
        Photon energy used when neither ``energy_keV`` nor the master file gives one.
    """
    scan = read_eiger(path)
    geom = scan.geometry
    energy = energy_keV if energy_keV is not None else (geom.energy_keV if geom else None)
    energy = fallback_energy_keV if energy is None else energy
    distance = (
        detector_distance_m
        if detector_distance_m is not None
        else (geom.detector_distance_m if geom else None)
    )
    pixel = (
        detector_pixel_size_m
        if detector_pixel_size_m is not None
        else (geom.x_pixel_size_m if geom else None)
    )
    if energy is None or distance is None or pixel is None:
        raise InvalidInputError(
            f"{path}: no master file geometry; give the energy, detector distance and pixel size explicitly"
        )
    positions_um = np.asarray(positions_um, dtype=np.float64)
    if len(scan.frames) != len(positions_um):
        raise InvalidScanError(
            path, "/entry/data", f"{len(scan.frames)} frames but {len(positions_um)} scan positions"
        )
    frames, mask = scan.frames, scan.mask
    if crop_size is not None:
        if isinstance(beam_center_yx, str):
            center = find_beam_center(frames[: min(len(frames), 256)], mask)  # bounded memory
        elif beam_center_yx is not None:
            center = tuple(float(c) for c in beam_center_yx)
        elif geom is not None and np.isfinite(geom.beam_center_y_px):
            center = (geom.beam_center_y_px, geom.beam_center_x_px)
        else:
            raise InvalidInputError(f"{path}: no beam centre recorded; give one or use 'auto'")
        frames = frames.cropped(center, crop_size)
        if mask is not None:
            y0, y1, x0, x1 = frames.crop
            mask = mask[y0:y1, x0:x1]
    return PtychoData(
        diffraction=frames.read(),
        positions_um=positions_um,
        energy_keV=float(energy),
        detector_distance_m=float(distance),
        detector_pixel_size_m=float(pixel),
        mask=mask,
    )
