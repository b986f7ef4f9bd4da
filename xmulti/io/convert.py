"""Assemble beamline files into xmulti's combined-scan layout (:func:`xmulti.io.layout.write_scan`).

Sources handled (classified by content, not by name):

- an MDA step scan of rank 3 (spectra stored in the MDA): XRF on its own;
- an MDA fly scan of rank 2 with its ``flyXRF/`` files beside it, as at 2-ID-E;
- a MAPS HDF5 file (v9 or v10) with per-pixel spectra;
- an Eiger master (or data) file, or a CXI file: the ptychography part.

Conventions of the result: positions are where the beam centre hits the sample in the stage
frame, (y, x) in um, row by row (y = outer scan positioner, x = inner); fly scans lose the two
junk columns at the end of each row; ``i0`` is the upstream ion chamber (``US_IC``) scaler;
spectra are the raw detector-element sum (integer counts, so their Poisson statistics are
kept); ``real_time`` is the MCA real time averaged over the summed elements and ``live_time`` is
by default the *effective* live time ``real_time / F``, ``F`` the output-count-weighted mean of
the elements' ``ICR / OCR``, so that the usual ``counts * real_time / live_time`` applies the
pulse processor's dead-time correction (root attribute ``xrf_live_time`` says which live time
was written; the MCA's elapsed live time can be chosen instead); the energy calibration is the
first summed element's MCA PVs (``<prefix>:mcaN.CALO/.CALS/.CALQ``; at 2-ID-E the elements
differ by 0.1 eV in offset, 1 % of a channel).

Fly-scan x positions are the fly-scan drive values recorded in the MDA for each pixel, as MAPS
uses them; the first pixel of each row also integrates the acceleration (its dwell is longer),
which ``i0`` normalisation accounts for.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, InvalidScanError
from .cxi import read_cxi
from .eiger import ptycho_from_eiger
from .layout import XRFData, write_scan
from .mda import MDAFile, read_mda

__all__ = [
    "ConvertedXRF",
    "read_fit_override",
    "beamline_fit_settings",
    "xrf_from_mda",
    "xrf_from_maps",
    "ptycho_from_eiger",
    "classify",
    "convert",
    "LIVE_TIME_SOURCES",
]

OVERRIDE_NAME = "maps_fit_parameters_override.txt"
#: Choices of the live time written with the spectra, and how the file describes each.
LIVE_TIME_SOURCES = {
    "icr-ocr": "effective: real_time * OCR / ICR from the pulse processor's input/output counters",
    "mca": "MCA elapsed live time as recorded",
}
_LENGTH_TO_UM = {"mm": 1e3, "um": 1.0, "microns": 1.0, "micron": 1.0, "nm": 1e-3, "m": 1e6}


@dataclass
class ConvertedXRF:
    """XRF part of a scan, ready for ``write_scan``, with the raster and the beam energy."""

    xrf: XRFData
    scan_shape: tuple[int, int]
    incident_energy_keV: float | None
    attrs: dict


def read_fit_override(path: str | os.PathLike) -> dict[str, str]:
    """Parse a MAPS ``maps_fit_parameters_override.txt`` into ``{KEY: value}`` (first occurrence)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        match = re.match(r"^([A-Za-z0-9_\[\]]+):\s*(.*?)\s*$", line)
        if match and match.group(1) not in out:
            out[match.group(1)] = match.group(2)
    return out


def _find_override(path: Path) -> dict[str, str]:
    """The beamline's fit settings beside the scan (or one folder up), with ``__file__`` set."""
    for folder in (path.parent, path.parent.parent):
        candidate = folder / OVERRIDE_NAME
        if candidate.is_file():
            return {**read_fit_override(candidate), "__file__": str(candidate)}
    return {}


def beamline_fit_settings(override: dict[str, str]) -> dict:
    """Root attributes from the beamline's fit settings: the elements it fits
    (``ELEMENTS_TO_FIT``; ``_L``/``_M`` suffixes name a family, the element is fitted with all
    its excited families), its energy calibration (``CAL_OFFSET``, ``CAL_SLOPE``, ``CAL_QUAD``,
    keV) and peak widths (``FWHM_OFFSET`` keV, ``FWHM_FANOPRIME``). ``fit_xrf`` starts from that
    calibration and fits that list when the user gives none.

    Raises
    ------
    InvalidInputError
        ``ELEMENTS_TO_FIT`` names an unknown element, or a calibration value is not a number.
    """
    from ..physics import atomic_number

    if not override:
        return {}
    where = override.get("__file__", OVERRIDE_NAME)
    attrs: dict = {"beamline_settings_file": where}
    listed = [v.strip() for v in override.get("ELEMENTS_TO_FIT", "").split(",") if v.strip()]
    if listed:
        symbols = []
        for item in listed:
            symbol = re.sub(r"_(K|L|M)$", "", item)
            try:
                atomic_number(symbol)
            except InvalidInputError:
                raise InvalidInputError(
                    f"{where}: ELEMENTS_TO_FIT names {item!r}, not an element symbol (use e.g. Fe, Au_L)"
                ) from None
            if symbol not in symbols:
                symbols.append(symbol)
        attrs["beamline_elements_to_fit"] = symbols
    keys = {"CAL_OFFSET_[E_OFFSET]": 0, "CAL_SLOPE_[E_LINEAR]": 1, "CAL_QUAD_[E_QUADRATIC]": 2}
    values = [None, None, 0.0]
    for key, index in keys.items():
        if key in override and override[key].strip():
            try:
                values[index] = float(override[key])
            except ValueError:
                raise InvalidInputError(f"{where}: {key} is not a number: {override[key]!r}") from None
    if values[0] is not None and values[1] is not None and values[1] > 0:
        attrs["beamline_calibration_keV"] = [float(v) for v in values]
    for key, name in (("FWHM_OFFSET", "beamline_fwhm_offset_keV"), ("FWHM_FANOPRIME", "beamline_fwhm_fanoprime")):
        try:
            value = float(override.get(key, "nan"))
        except ValueError:
            raise InvalidInputError(f"{where}: {key} is not a number: {override[key]!r}") from None
        if np.isfinite(value) and value > 0:
            attrs[name] = value
    return attrs


def _to_um(values: np.ndarray, unit: str, what: str) -> np.ndarray:
    unit = unit.strip().lower()
    if unit == "":
        unit = (
            "mm"  # 2-ID-E stage motors and fly-scan drive calcs are in mm when no unit is recorded
        )
    if unit not in _LENGTH_TO_UM:
        raise InvalidInputError(f"{what}: unknown length unit {unit!r}")
    return np.asarray(values, dtype=np.float64) * _LENGTH_TO_UM[unit]


def _incident_energy(energy_keV: float | None, override: dict[str, str], path: Path) -> float:
    if energy_keV is not None:
        return float(energy_keV)
    if "COHERENT_SCT_ENERGY" in override:
        return float(override["COHERENT_SCT_ENERGY"])
    raise InvalidInputError(
        f"{path}: the incident energy is not recorded in this file and no {OVERRIDE_NAME} sits beside "
        "it; give it explicitly (CLI: --energy-keV)"
    )


def _mca_prefix(mda: MDAFile) -> tuple[str, list[int]]:
    """The MCA record prefix (e.g. ``dxpXMAP2xfm3``) and the element numbers with a calibration."""
    found: dict[str, list[int]] = {}
    for name in mda.extra_pvs:
        match = re.match(r"^(.*):mca(\d+)\.CALO$", name)
        if match:
            found.setdefault(match.group(1), []).append(int(match.group(2)))
    if not found:
        raise InvalidScanError(
            mda.path, "/extra_pvs", "no MCA energy calibration PV (<prefix>:mcaN.CALO)"
        )
    prefix = max(found, key=lambda k: len(found[k]))
    return prefix, sorted(found[prefix])


def _calibration(mda: MDAFile, prefix: str, element: int) -> tuple[float, float, float]:
    values = []
    for field in ("CALO", "CALS", "CALQ"):
        value = mda.extra(f"{prefix}:mca{element}.{field}", 0.0 if field == "CALQ" else None)
        if value is None:
            raise InvalidScanError(
                mda.path, f"/extra_pvs/{prefix}:mca{element}.{field}", "missing extra PV"
            )
        values.append(float(value))
    return values[0], values[1], values[2]


def _i0(mda: MDAFile, level: int, override: dict[str, str]) -> np.ndarray | None:
    """Upstream ion chamber counts at scan ``level``: the override's US_IC PV, else the scaler named
    "US Ion..." (``<ioc>:scaler1.NMk``) read through the fly-scan MCS channel k or the scaler."""
    dim = mda.dimension(level)
    pv = override.get("US_IC")
    if pv and pv in dim.detectors:
        return dim.detectors[pv]
    for name, extra in mda.extra_pvs.items():
        match = re.match(r"^(.*):scaler1\.NM(\d+)$", name)
        label = str(extra.scalar).upper()
        upstream = label.startswith("US") or "UPSTREAM" in label
        if match and upstream and ("ION" in label or "IC" in label):
            ioc, k = match.groups()
            for candidate in (
                f"{ioc}:mcs:mca{k}.VAL",
                f"{ioc}:scaler1.S{k}",
                f"{ioc}:scaler1_cts1.{k}",
            ):
                if candidate in dim.detectors:
                    return dim.detectors[candidate]
    return None


def _complete_rows(mda: MDAFile) -> int:
    """Rows (outer points) whose inner scan ran to its end; an aborted scan keeps those only."""
    scan, rows = mda.scan, 0
    for i in range(min(scan.current_point, len(scan.sub_scans))):
        sub = scan.sub_scans[i]
        if sub is None or sub.current_point < sub.npts:
            break
        rows += 1
    return rows


def _raster_positions(
    mda: MDAFile, n_cols: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    outer, inner = mda.dimension(0), mda.dimension(1)
    if not outer.positioners or not inner.positioners:
        raise InvalidScanError(mda.path, "/scan", "the outer or inner scan has no positioner")
    y_name, x_name = next(iter(outer.positioners)), next(iter(inner.positioners))
    y = _to_um(outer.positioners[y_name], outer.positioner_info[y_name].unit, y_name)
    x = _to_um(inner.positioners[x_name], inner.positioner_info[x_name].unit, x_name)
    if n_cols is not None:
        x = x[:, :n_cols]
    ny, nx = x.shape
    yy = np.broadcast_to(y[:, None], (ny, nx))
    return np.stack([yy.ravel(), x.ravel()], axis=1), (ny, nx)


def xrf_from_mda(
    path: str | os.PathLike,
    energy_keV: float | None = None,
    live_time: str = "icr-ocr",
    elements: list[int] | None = None,
) -> ConvertedXRF:
    """XRF of a 2-ID-E scan from its MDA file (step scan) or MDA + flyXRF files (fly scan).

    Parameters
    ----------
    path : path-like
        The MDA file. A rank-3 file holds the spectra; a rank-2 fly scan needs its
        ``flyXRF/<stem>_*__k.h5`` files beside it (see :func:`xmulti.io.flyscan.find_flyscan_files`).
    energy_keV : float, optional
        Incident energy (keV); default from ``maps_fit_parameters_override.txt`` in the dataset.
    live_time : {"icr-ocr", "mca"}
        Live time written beside the raw counts: the effective live time from the pulse
        processor's input/output counters (default; ``real_time / live_time`` is then the
        ICR/OCR dead-time correction), or the MCA's elapsed live time as recorded.
    elements : list of int, optional
        MCA element numbers (1-based, as in the PV names) to sum; default all.
    """
    path = Path(path)
    mda = read_mda(path)
    override = _find_override(path)
    energy = _incident_energy(energy_keV, override, path)
    prefix, numbers = _mca_prefix(mda)
    if elements is not None:
        missing = sorted(set(elements) - set(numbers))
        if missing:
            raise InvalidInputError(f"{path}: no MCA element(s) {missing}; the file has {numbers}")
        numbers = sorted(elements)
    calibration = _calibration(mda, prefix, numbers[0])
    if live_time not in LIVE_TIME_SOURCES:
        raise InvalidInputError(f"live_time must be one of {LIVE_TIME_SOURCES}, got {live_time!r}")
    attrs = {"source_format": "", "xrf_live_time": LIVE_TIME_SOURCES[live_time], **beamline_fit_settings(override)}
    if mda.rank == 3:
        spectra, live, real, shape = _step_scan_spectra(mda, prefix, numbers, live_time)
        positions, _ = _raster_positions(mda)
        i0 = _i0(mda, 1, override)
        attrs["source_format"] = "aps-mda-step"
    elif mda.rank == 2:
        from .flyscan import (
            dead_time_factor,
            effective_live_time,
            find_flyscan_files,
            read_flyscan_xrf,
        )

        files = find_flyscan_files(path)
        if not files:
            raise InvalidScanError(
                path,
                "/",
                "a fly-scan MDA needs its flyXRF/<scan>_*__0.h5 files beside it; none found",
            )
        fly = read_flyscan_xrf(files)
        rows, cols = fly.shape
        ny, nx_mda = mda.dimensions
        if rows > ny or cols > nx_mda:
            raise InvalidScanError(
                files[0],
                "/MAPS_RAW",
                f"{rows} x {cols} pixels do not fit the MDA's {ny} x {nx_mda} raster",
            )
        index = [n - 1 for n in numbers if n - 1 < fly.n_elements]
        if not index:
            raise InvalidInputError(f"{files[0]}: no detector element among {numbers}")
        spectra = fly.spectra[index].sum(axis=0, dtype=np.uint32).reshape(rows * cols, -1)
        real = fly.real_time_s[index].mean(axis=0).ravel()
        if live_time == "icr-ocr":
            factor = dead_time_factor(
                fly.input_counts[index],
                fly.output_counts[index],
                fly.live_time_s[index],
                fly.real_time_s[index],
            )
            live = effective_live_time(
                fly.real_time_s[index], factor, fly.output_counts[index]
            ).ravel()
        else:
            live = fly.live_time_s[index].mean(axis=0).ravel()
        positions, shape = _raster_positions(mda, n_cols=cols)  # drops the junk columns
        positions, shape = positions[: rows * cols], (rows, cols)  # rows in the XRF files
        i0 = _i0(mda, 1, override)
        if i0 is not None:
            i0 = i0[:rows, :cols]
        attrs["source_format"] = "aps-2ide-flyscan"
        attrs["junk_columns_dropped"] = int(nx_mda - cols)
    else:
        raise InvalidScanError(
            path, "/", f"an XRF map needs an MDA of rank 2 or 3, this one has rank {mda.rank}"
        )
    if i0 is not None:
        i0 = np.nan_to_num(np.asarray(i0, dtype=np.float64)).ravel()
    else:
        warnings.warn(
            f"{path}: no upstream ion chamber (US_IC) found; i0 not written", stacklevel=2
        )
    rows = min(_complete_rows(mda), shape[0])
    if rows == 0:
        raise InvalidScanError(path, "/scan", "the scan has no complete row")
    if rows < shape[0]:
        warnings.warn(
            f"{path}: the scan stopped after {rows} of {shape[0]} rows; converting the complete rows",
            stacklevel=2,
        )
        n = rows * shape[1]
        spectra, positions = spectra[:n], positions[:n]
        i0, live, real = (None if a is None else a[:n] for a in (i0, live, real))
        shape = (rows, shape[1])
    channels = np.arange(spectra.shape[1])
    xrf = XRFData(
        spectra=spectra,
        positions_um=positions,
        calibration_keV=calibration,
        energy_keV=calibration[0] + calibration[1] * channels + calibration[2] * channels**2,
        i0=i0,
        live_time_s=live,
        real_time_s=real,
    )
    return ConvertedXRF(xrf, shape, energy, attrs)


def _step_scan_spectra(mda: MDAFile, prefix: str, numbers: list[int], live_time: str):
    """Raw element sum (ny*nx, nch) uint32, live time and real time (s) of a rank-3 step scan."""
    from .flyscan import effective_live_time

    ny, nx, _ = mda.dimensions
    inner, spectra_dim = mda.dimension(1), mda.dimension(2)
    total = None
    per_element: dict[str, list[np.ndarray]] = {"ELTM": [], "ERTM": [], "f": [], "out": []}
    for n in numbers:
        name = f"{prefix}:mca{n}.VAL"
        if name not in spectra_dim.detectors:
            raise InvalidScanError(
                mda.path, f"/scan/level2/{name}", "missing detector: no spectra for this element"
            )
        spectrum = np.rint(np.nan_to_num(spectra_dim.detectors[name])).astype(np.uint32)
        total = spectrum if total is None else total + spectrum
        for field in ("ELTM", "ERTM"):
            pv = f"{prefix}:mca{n}.{field}"
            if pv not in inner.detectors:
                raise InvalidScanError(
                    mda.path, f"/scan/level1/{pv}", "missing detector (MCA clock)"
                )
            per_element[field].append(np.nan_to_num(inner.detectors[pv]).astype(np.float64))
        if live_time == "icr-ocr":
            icr = inner.detectors.get(f"{prefix}:dxp{n}:InputCountRate")
            ocr = inner.detectors.get(f"{prefix}:dxp{n}:OutputCountRate")
            if icr is None or ocr is None:
                raise InvalidScanError(
                    mda.path,
                    f"/scan/level1/{prefix}:dxp{n}:InputCountRate",
                    "missing detector: no input/output count rates (use the MCA live time)",
                )
            icr, ocr = (np.nan_to_num(np.asarray(v, dtype=np.float64)) for v in (icr, ocr))
            valid = (icr > 0) & (ocr > 0)
            per_element["f"].append(np.where(valid, icr / np.where(valid, ocr, 1.0), 1.0))
            per_element["out"].append(ocr * per_element["ERTM"][-1])
    real = np.mean(per_element["ERTM"], axis=0)
    if live_time == "icr-ocr":
        live = effective_live_time(per_element["ERTM"], per_element["f"], per_element["out"])
    else:
        live = np.mean(per_element["ELTM"], axis=0)
    return total.reshape(ny * nx, -1), live.ravel(), real.ravel(), (ny, nx)


def xrf_from_maps(path: str | os.PathLike, energy_keV: float | None = None) -> ConvertedXRF:
    """XRF of a MAPS (v9/v10) file: its per-pixel spectra, axes (um), US_IC and fitted maps."""
    from .maps import read_maps

    path = Path(path)
    maps = read_maps(path)
    if maps.spectra is None:
        raise InvalidScanError(
            path, "/MAPS/Spectra/mca_arr", "missing dataset: the file has no per-pixel spectra"
        )
    override = _find_override(path)
    energy = _incident_energy(energy_keV, override, path)
    ny, nx = maps.shape
    yy, xx = np.meshgrid(maps.y_um, maps.x_um, indexing="ij")
    fitted = maps.maps.get("Fitted") or maps.maps.get("NNLS") or {}
    elemental = {k: v for k, v in fitted.items() if re.fullmatch(r"[A-Z][a-z]?", k)}
    energy_axis = maps.energy_keV
    xrf = XRFData(
        spectra=maps.spectra.reshape(ny * nx, -1),
        positions_um=np.stack([yy.ravel(), xx.ravel()], axis=1),
        energy_keV=energy_axis,
        calibration_keV=maps.calibration_keV,
        i0=maps.scalers["US_IC"].ravel().astype(np.float64) if "US_IC" in maps.scalers else None,
        live_time_s=None if maps.live_time_s is None else maps.live_time_s.ravel(),
        real_time_s=None if maps.real_time_s is None else maps.real_time_s.ravel(),
        elemental_maps=elemental,
    )
    attrs = {
        "source_format": f"aps-maps-v{maps.version}",
        "xrf_live_time": "MAPS Elapsed_Livetime",
        "junk_columns_dropped": int(maps.junk_columns_dropped),
        "elemental_maps_units": "counts/s (MAPS Counts_Per_Sec)",
    }
    return ConvertedXRF(xrf, (ny, nx), energy, attrs)


def classify(path: str | os.PathLike) -> str:
    """Kind of a source file: ``"mda"``, ``"maps"``, ``"flyxrf"``, ``"eiger"``, ``"cxi"`` or ``"xmulti"``."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        # MDA files start with their saveData version as a big-endian float (1.3)
        looks_like_mda = len(magic) >= 4 and 1.0 <= struct.unpack(">f", magic[:4])[0] < 2.0
        if path.suffix.lower() == ".mda" or looks_like_mda:
            return "mda"
        raise InvalidInputError(f"{path}: neither an MDA nor an HDF5 file")
    with h5py.File(path, "r", locking=False) as f:
        if "MAPS" in f:
            return "maps"
        if "MAPS_RAW" in f:
            return "flyxrf"
        if "entry_1" in f:
            return "cxi"
        if "entry" in f and "data" in f["entry"]:
            return "eiger"
        if "layout_version" in f.attrs:
            return "xmulti"
    raise InvalidInputError(
        f"{path}: HDF5 file of an unrecognised kind (not MAPS, flyXRF, Eiger, CXI)"
    )


def convert(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    energy_keV: float | None = None,
    live_time: str = "icr-ocr",
    crop_size: int | None = None,
    beam_center_yx: tuple[float, float] | str | None = None,
    detector_distance_m: float | None = None,
    detector_pixel_size_m: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert beamline files into one combined-layout scan file.

    Parameters
    ----------
    sources : list of path-like
        At most one XRF source (MDA, MAPS) and at most one ptychography source (Eiger, CXI).
        Eiger frames take their positions from the XRF source (one frame per position).
    out : path-like
        The file to write. A ``.cxi`` name exports the ptychography of one combined-layout
        source file to CXI instead (see :func:`xmulti.io.cxi.export_cxi`).
    energy_keV : float, optional
        Incident energy (keV) when the files do not record it.
    live_time : {"icr-ocr", "mca"}
        Live time written with the raw XRF counts (see :func:`xrf_from_mda`).
    crop_size, beam_center_yx : optional
        Crop Eiger frames around the direct beam (see :func:`ptycho_from_eiger`).
    detector_distance_m, detector_pixel_size_m : float, optional
        Geometry for Eiger data files without a master.
    overwrite : bool
        Replace an existing output.

    Returns
    -------
    Path
        The written file.
    """
    kinds = [(Path(s), classify(s)) for s in sources]
    if Path(out).suffix.lower() == ".cxi":
        if len(kinds) != 1 or kinds[0][1] != "xmulti":
            raise InvalidInputError("a .cxi output is exported from one combined-layout scan file")
        from .cxi import export_cxi

        return export_cxi(kinds[0][0], out, overwrite=overwrite)
    xrf_sources = [(p, k) for p, k in kinds if k in ("mda", "maps")]
    ptycho_sources = [(p, k) for p, k in kinds if k in ("eiger", "cxi")]
    other = [(p, k) for p, k in kinds if k not in ("mda", "maps", "eiger", "cxi")]
    if other:
        p, k = other[0]
        hint = (
            " (pass the fly scan's MDA file; its flyXRF files are found beside it)"
            if k == "flyxrf"
            else ""
        )
        raise InvalidInputError(f"{p}: a {k} file cannot be converted on its own{hint}")
    if len(xrf_sources) > 1 or len(ptycho_sources) > 1:
        raise InvalidInputError(
            "give at most one XRF source (MDA or MAPS) and one ptychography source (Eiger or CXI)"
        )
    if not xrf_sources and not ptycho_sources:
        raise InvalidInputError("nothing to convert")
    converted = None
    if xrf_sources:
        p, k = xrf_sources[0]
        converted = (
            xrf_from_mda(p, energy_keV, live_time) if k == "mda" else xrf_from_maps(p, energy_keV)
        )
    ptycho = None
    if ptycho_sources:
        p, k = ptycho_sources[0]
        if k == "cxi":
            ptycho = read_cxi(p)
        else:
            if converted is None:
                raise InvalidInputError(
                    f"{p}: Eiger frames need positions: also give the scan's MDA or MAPS file"
                )
            ptycho = ptycho_from_eiger(
                p,
                converted.xrf.positions_um,
                crop_size=crop_size,
                beam_center_yx=beam_center_yx,
                detector_distance_m=detector_distance_m,
                detector_pixel_size_m=detector_pixel_size_m,
                fallback_energy_keV=converted.incident_energy_keV,
            )
    attrs = dict(converted.attrs) if converted else {}
    attrs["converted_from"] = ";".join(str(p) for p, _ in kinds)
    incident = converted.incident_energy_keV if converted else (energy_keV or ptycho.energy_keV)
    return write_scan(
        out,
        incident_energy_keV=incident,
        scan_shape=converted.scan_shape if converted else None,
        xrf=converted.xrf if converted else None,
        ptychography=ptycho,
        attrs=attrs,
        overwrite=overwrite,
    )
