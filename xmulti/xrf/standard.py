"""Thin-film standards: fitted once with their own elements, saved, reused.

A standard (e.g. an AXO film) is fitted with **its own elements** - those it is certified for
(``maps_standardinfo.txt`` or the densities given) plus what element identification finds in
its spectrum - never with the sample's list: an element of the film left out of the fit leaks
into its neighbours' components (fitted with a cell's P, S, K, Ca, Fe, Cu, Zn list, the AXO
film's Ca came out 20-44 % low, with two versions of the spectral model). The mean fitted
counts per i0 count of each certified element over the film, divided by its certified areal
density, give the sensitivities (counts per ug/cm2 per i0 count,
:func:`xmulti.xrf.quantify.calibrate_standard`); other elements are interpolated in Z by the
thin-film cross-section shape.

Fitting a standard (calibration and identification on its summed spectrum, then every pixel)
takes seconds to minutes, and nothing about it changes between the samples of a beamtime, so a
calibration is saved to a small JSON file
(:func:`save_standard_calibration`, schema below) and applied to any number of samples measured
with the same incident energy and geometry (:func:`load_standard_calibration`,
:func:`quantify_maps`). :func:`cached_standard_calibration` keeps such a file beside a results
store and refits only when the standard's scan (its checksum), densities or fit options change.

File schema (``format`` ``"xmulti-standard-calibration"``, ``version`` 1), a JSON object:

``format``, ``version``
    ``"xmulti-standard-calibration"`` and ``1``.
``units``
    ``{"sensitivity": "counts per (ug/cm2) per i0 count", "density": "ug/cm2", "energy": "keV"}``.
``incident_energy_keV``
    Incident energy of the standard's scan (keV).
``geometry``
    What the scan records of the geometry: its attributes whose names hold ``angle``,
    ``detector``, ``distance``, ``geometry`` or ``solid``, keyed ``/@name`` (root) or
    ``/xrf/@name``; ``{}`` when none is recorded (as in the 2-ID-E MDA conversions).
``detector``
    ``be_window_um``, ``si_thickness_mm``: the detector of the Z interpolation.
``energy_calibration``
    The fitted calibration of the standard's summed spectrum (``offset_keV``, ``gain_keV``,
    ``quadratic_keV``, ``noise_fwhm_keV``, ``fano``, ``compton_shift_keV``,
    ``compton_width_keV``, ``escape_scale``).
``fit``
    ``elements`` (every fitted element), ``identified_elements`` (those of them identification
    added to the certified ones), ``summed_reduced_chi_square``, ``summed_fit_quality``
    (``"good"``/``"poor"`` as fit_xrf judged it, or null), ``n_pixels`` and the
    fit options (``background``, ``n_continuum``, ``energy_range_keV`` or null, ``pileup``: as
    given, null for fit_xrf's default).
``certified_densities_ug_cm2``
    ``{symbol: areal density}`` of the certified elements.
``sensitivities``
    ``{symbol: {"value": s, "sigma": ds, "fit_sigma": dsf or null}}`` per certified element:
    ``value`` the mean over the film's pixels of the fitted counts per i0 count divided by the
    density; ``sigma`` its 1-sigma standard error **from the pixel-to-pixel spread** (sample
    standard deviation / sqrt(pixels) / density: counting noise and film non-uniformity as
    sampled); ``fit_sigma`` the same from the per-pixel fit uncertainties alone (Poisson). The
    certificate's own uncertainty is not included.
``provenance``
    ``xmulti_version``, ``standard_scan`` (absolute path), ``standard_checksum``
    (``sha256:...``), ``standard_info`` (path of the densities file, or null), ``created_utc``.

The file is written atomically (temporary file, then rename): a reader never sees half of it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .quantify import StandardCalibration, areal_density_maps, calibrate_standard

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ENERGY_TOLERANCE_KEV",
    "read_standard_info",
    "parse_densities",
    "check_densities",
    "scan_geometry",
    "fit_standard_maps",
    "calibration_from_maps",
    "fit_standard",
    "standard_provenance",
    "save_standard_calibration",
    "load_standard_calibration",
    "check_compatible",
    "check_standard_scan",
    "scan_energy_keV",
    "cached_standard_calibration",
    "quantify_maps",
]

FORMAT_NAME = "xmulti-standard-calibration"
FORMAT_VERSION = 1
#: Largest difference of incident energy (keV) between standard and sample. Sensitivities follow
#: the photo-absorption cross-sections, about E^-2.7 away from edges: 0.01 keV at 10 keV moves
#: them by 0.3 %, below the standard's own statistics; a larger gap (or an absorption edge
#: crossed between the two energies) needs a standard measured at the sample's energy.
ENERGY_TOLERANCE_KEV = 0.01
#: Relative tolerance on numeric geometry attributes recorded by both scans (motor readbacks).
GEOMETRY_RELATIVE_TOLERANCE = 1e-3
#: A certified element whose film mean is below this many standard errors is "not in the spectrum".
MIN_SIGNAL_SIGMA = 5.0
#: Fit options recorded in (and compared by the cache of) a calibration file.
_FIT_OPTION_KEYS = ("background", "n_continuum", "energy_range_keV", "pileup")
_GEOMETRY_WORDS = re.compile(r"angle|detector|distance|geometry|solid")
_UNITS = {"sensitivity": "counts per (ug/cm2) per i0 count", "density": "ug/cm2", "energy": "keV"}

Log = Callable[[str], None] | None


def read_standard_info(path: str | os.PathLike) -> dict[str, float]:
    """Certified areal densities (ug/cm2) from a MAPS ``maps_standardinfo.txt`` file.

    The file lists ``ELEMENTS_IN_STANDARD: Ca, Fe, Cu`` and ``WEIGHT: 1.931, 0.504, 0.284``
    (ug/cm2) among other keys. Unknown element symbols and non-positive weights are refused.
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the standard's description ({exc.strerror})") from None
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key.strip() in ("ELEMENTS_IN_STANDARD", "WEIGHT"):
            fields[key.strip()] = [v.strip() for v in value.split(",") if v.strip()]
    if "ELEMENTS_IN_STANDARD" not in fields or "WEIGHT" not in fields:
        raise InvalidInputError(f"{path}: no ELEMENTS_IN_STANDARD and WEIGHT lines (a MAPS standard description)")
    elements, weights = fields["ELEMENTS_IN_STANDARD"], fields["WEIGHT"]
    if len(elements) != len(weights):
        raise InvalidInputError(f"{path}: {len(elements)} elements but {len(weights)} weights")
    try:
        densities = {el: float(w) for el, w in zip(elements, weights, strict=True)}
    except ValueError as exc:
        raise InvalidInputError(f"{path}: WEIGHT: {exc}") from None
    return check_densities(densities, f"{path}: ELEMENTS_IN_STANDARD")


def parse_densities(text: str) -> dict[str, float]:
    """``"Ca=1.931,Fe=0.504"`` -> ``{"Ca": 1.931, "Fe": 0.504}`` (ug/cm2), symbols checked."""
    out = {}
    for item in text.split(","):
        symbol, sep, value = item.strip().partition("=")
        try:
            if not sep:
                raise ValueError
            out[symbol.strip()] = float(value)
        except ValueError:
            raise InvalidInputError(f"standard densities must look like Ca=1.93,Fe=0.50 (ug/cm2), got {item!r}") from None
    if not out:
        raise InvalidInputError("no standard densities given")
    return check_densities(out, "standard densities")


def check_densities(densities: Mapping[str, float], where: str = "standard densities") -> dict[str, float]:
    """The densities as a dict, refusing unknown element symbols and non-positive values.

    Parameters
    ----------
    densities : mapping of str to float
        Certified areal densities (ug/cm2).
    where : str
        Names the source in the error (a file and key, or an option).
    """
    from .. import physics

    out = {}
    if not densities:
        raise InvalidInputError(f"{where}: no element given")
    for symbol, value in densities.items():
        try:
            physics.atomic_number(symbol)
        except InvalidInputError:
            raise InvalidInputError(f"{where}: {symbol!r} is not an element symbol") from None
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise InvalidInputError(f"{where}: {symbol}: areal density must be positive and finite, got {value}")
        out[str(symbol)] = value
    return out


def scan_geometry(tree) -> dict[str, Any]:
    """Geometry a scan records: root and ``/xrf`` attributes named like a geometry quantity.

    Keys are ``/@name`` and ``/xrf/@name``; names hold ``angle``, ``detector``, ``distance``,
    ``geometry`` or ``solid`` (e.g. a scattering angle, a detector element count). Values are
    made JSON-friendly (numbers, strings, lists). Empty when the scan records none.
    """
    found: dict[str, Any] = {}
    sources = [("/", dict(tree.attrs))]
    if "xrf" in getattr(tree, "children", {}):
        sources.append(("/xrf/", dict(tree["xrf"].attrs)))
    for prefix, attrs in sources:
        for name, value in sorted(attrs.items()):
            if _GEOMETRY_WORDS.search(str(name).lower()):
                found[f"{prefix}@{name}"] = _plain(value)
    return found


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of an attribute value."""
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in np.asarray(value).ravel().tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def _log(log: Log, line: str) -> None:
    if log is not None:
        log(line)


def fit_standard_maps(tree, densities_ug_cm2: Mapping[str, float], *, log: Log = None, **fit_options):
    """The standard's per-pixel fit, with the standard's own elements (computed, not lazy).

    Parameters
    ----------
    tree : xarray.DataTree
        The standard's scan (combined layout, with i0).
    densities_ug_cm2 : mapping of str to float
        Its certified areal densities: their elements are always fitted.
    log : callable, optional
        Receives one line per step.
    **fit_options
        Passed to :func:`xmulti.xrf.maps.fit_xrf` (``background``, ``n_continuum``,
        ``energy_range_keV``, ``pileup``...); not ``elements`` (the standard's own are used).

    Returns
    -------
    xarray.Dataset
        :func:`~xmulti.xrf.maps.fit_xrf` maps, normalised by i0 and dead time.
    """
    from .maps import fit_xrf

    if "elements" in fit_options or "known_elements" in fit_options:
        raise InvalidInputError("a standard is fitted with its own elements (certified plus identified): "
                                "do not pass elements")
    standard_elements = list(densities_ug_cm2)
    n = int(tree["xrf"].ds.sizes.get("position", 0)) if "xrf" in tree.children else 0
    _log(log, f"standard: fitting the summed spectrum and {n} spectra: the certified "
              f"{', '.join(standard_elements)} and what identification finds")
    start = time.perf_counter()
    # elements=None with known elements: never the beamline's or the sample's list
    maps = fit_xrf(tree, elements=None, known_elements=standard_elements, normalize=True,
                   **fit_options).compute()
    identified = [str(e) for e in maps.attrs.get("identified_elements", [])]
    _log(log, f"standard: fitted {', '.join(maps.attrs.get('elements', []))} in "
              f"{time.perf_counter() - start:.1f} s (identified: {', '.join(identified) or 'none'}; "
              f"summed-spectrum reduced chi-square {float(maps.attrs.get('summed_reduced_chi_square', np.nan)):.1f})")
    for line in _unexplained(maps.attrs):
        _log(log, f"standard: {line}")
    return maps


def _unexplained(attrs: Mapping[str, Any]) -> list[str]:
    """What the standard's fit reports besides its elements: its ambiguous identifications."""
    lines = []
    try:
        ambiguous = json.loads(attrs.get("ambiguous_elements", "[]") or "[]")
    except (TypeError, ValueError):
        ambiguous = []
    readings = []
    for entry in ambiguous if isinstance(ambiguous, list) else []:
        if not isinstance(entry, dict):
            continue
        others = [r.get("element") for r in entry.get("readings", []) if isinstance(r, dict)
                  and r.get("element") != entry.get("chosen")]
        readings.append(f"{entry.get('energy_keV', '?')} keV read as {entry.get('chosen') or 'nothing'}"
                        + (f" (or {', '.join(map(str, others))})" if others else ""))
    if readings:
        lines.append("ambiguous identification: " + "; ".join(readings))
    return lines  # a poor summed fit: fit_xrf warns itself (logger xmulti.xrf)


def calibration_from_maps(
    maps,
    densities_ug_cm2: Mapping[str, float],
    *,
    geometry: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    fit_options: Mapping[str, Any] | None = None,
    where: str = "the standard",
) -> StandardCalibration:
    """Sensitivities (with uncertainties) from the fitted maps of a standard.

    Parameters
    ----------
    maps : xarray.Dataset
        The standard's :func:`~xmulti.xrf.maps.fit_xrf` maps, normalised by i0, computed.
    densities_ug_cm2 : mapping of str to float
        Certified areal densities (ug/cm2).
    geometry, provenance, fit_options : mapping, optional
        Recorded in the calibration's metadata (see the module's file schema).
    where : str
        Names the standard in errors.

    Returns
    -------
    StandardCalibration
        ``measured`` the film mean of counts per i0 count over the density, ``measured_sigma``
        its standard error from the pixel-to-pixel spread; ``metadata`` as saved.

    Raises
    ------
    InvalidInputError
        Maps not normalised by i0, or a certified element the spectrum shows no signal of
        (film mean below :data:`MIN_SIGNAL_SIGMA` standard errors).
    """
    if maps.attrs.get("normalisation") != "counts per i0 count":
        raise InvalidInputError(f"{where}: the scan has no i0: its counts cannot be compared with the sample's")
    means, spread_sem, fit_sem, n_pixels = {}, {}, {}, 0
    for el in densities_ug_cm2:
        if el not in maps:
            raise InvalidInputError(f"{where}: {el} is certified but was not fitted (no line of it in the fitted range)")
        values = np.asarray(maps[el].values, dtype=float).ravel()
        sigma = np.asarray(maps[f"{el}_sigma"].values, dtype=float).ravel() if f"{el}_sigma" in maps else None
        ok = np.isfinite(values) & (np.isfinite(sigma) if sigma is not None else True)
        n = int(ok.sum())
        if n < 2:
            raise InvalidInputError(f"{where}: {el}: fewer than 2 pixels with a finite fit")
        mean = float(values[ok].mean())
        sem = float(values[ok].std(ddof=1) / math.sqrt(n))
        fsem = float(math.sqrt(np.sum(sigma[ok] ** 2)) / n) if sigma is not None else float("nan")
        noise = max(sem, fsem) if math.isfinite(fsem) else sem
        if not mean > MIN_SIGNAL_SIGMA * noise:
            raise InvalidInputError(
                f"{where}: the spectrum shows no {el} signal (film mean {mean:.3g} +- {noise:.2g} counts "
                f"per i0 count over {n} pixels, below {MIN_SIGNAL_SIGMA:g} sigma) although {el} is "
                "listed as certified: wrong standard file or densities"
            )
        means[el], spread_sem[el], fit_sem[el], n_pixels = mean, sem, fsem, n
    energy = float(maps.attrs["incident_energy_keV"])
    model = {k: fit_options[k] for k in ("be_window_um", "si_thickness_mm") if fit_options and k in fit_options}
    calibration = calibrate_standard(means, densities_ug_cm2, energy, fitted_sigma=spread_sem, **model)
    prefix = "calibration_"
    calibration.metadata = {
        "geometry": dict(geometry or {}),
        "energy_calibration": {k[len(prefix):]: float(v) for k, v in maps.attrs.items() if k.startswith(prefix)},
        "fit": {
            "elements": [str(e) for e in maps.attrs.get("elements", [])],
            "identified_elements": [str(e) for e in maps.attrs.get("identified_elements", [])],
            "summed_reduced_chi_square": float(maps.attrs.get("summed_reduced_chi_square", np.nan)),
            "summed_fit_quality": maps.attrs.get("summed_fit_quality"),
            "n_pixels": n_pixels,
            **_fit_record(fit_options or {}),
        },
        "fit_sigma": {el: fit_sem[el] / float(densities_ug_cm2[el]) for el in means},
        "provenance": dict(provenance or {}),
    }
    return calibration


def _fit_record(fit_options: Mapping[str, Any]) -> dict[str, Any]:
    """The fit options a calibration records (defaults of fit_xrf filled in)."""
    # pileup None: fit_xrf's default (not given)
    defaults = {"background": "linear", "n_continuum": 8, "energy_range_keV": None, "pileup": None}
    record = {k: fit_options.get(k, defaults[k]) for k in _FIT_OPTION_KEYS}
    if record["energy_range_keV"] is not None:
        record["energy_range_keV"] = [float(v) for v in record["energy_range_keV"]]
    record["n_continuum"] = int(record["n_continuum"])
    if record["pileup"] is not None and not isinstance(record["pileup"], str):
        record["pileup"] = bool(record["pileup"])
    return record


def fit_standard(
    standard_scan,
    densities_ug_cm2: Mapping[str, float],
    *,
    standard_info: str | os.PathLike | None = None,
    log: Log = None,
    **fit_options,
) -> StandardCalibration:
    """Sensitivities from a scan over a thin-film standard, fitted with its own elements.

    Parameters
    ----------
    standard_scan : str or path
        The standard's scan (combined layout, with i0). A DataTree is accepted too (then the
        provenance has no path or checksum and the calibration cannot be cached).
    densities_ug_cm2 : mapping of str to float
        Certified areal densities (ug/cm2), e.g. from :func:`read_standard_info`.
    standard_info : path, optional
        The file the densities came from, recorded in the provenance.
    log : callable, optional
        Receives one line per step (opening, fitting, sensitivities).
    **fit_options
        Passed to :func:`xmulti.xrf.maps.fit_xrf` (``background``, ``n_continuum``,
        ``energy_range_keV``, ``pileup``...), not ``elements``.

    Returns
    -------
    StandardCalibration
        With uncertainties and the metadata :func:`save_standard_calibration` writes.
    """
    from ..io.scan import open_scan

    densities = check_densities(densities_ug_cm2)
    if isinstance(standard_scan, str | os.PathLike):
        _log(log, f"standard: opening {standard_scan}")
        tree = open_scan(standard_scan)
        where = f"standard {standard_scan}"
        provenance = standard_provenance(standard_scan, standard_info)
    else:
        tree, where = standard_scan, "the standard"
        provenance = standard_provenance(None, standard_info)
    maps = fit_standard_maps(tree, densities, log=log, **fit_options)
    calibration = calibration_from_maps(maps, densities, geometry=scan_geometry(tree), provenance=provenance,
                                        fit_options=fit_options, where=where)
    _log(log, "standard: sensitivities (counts per ug/cm2 per i0 count) "
              + ", ".join(f"{el} {calibration.measured[el]:.4g} +- {calibration.measured_sigma[el]:.2g}"
                          for el in calibration.measured))
    return calibration


def standard_provenance(standard_scan: str | os.PathLike | None,
                        standard_info: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``provenance`` a calibration records: xmulti version, the standard's scan (absolute
    path and SHA-256), the densities file, the time (UTC)."""
    from .. import __version__
    from ..io.results import file_checksum

    record: dict[str, Any] = {"xmulti_version": __version__, "standard_scan": None, "standard_checksum": None,
                              "standard_info": str(Path(standard_info).resolve()) if standard_info else None}
    if standard_scan is not None:
        try:
            record["standard_checksum"] = file_checksum(standard_scan)
        except OSError as exc:
            raise InvalidInputError(f"{standard_scan}: cannot read the standard's scan ({exc.strerror or exc})") \
                from None
        record["standard_scan"] = str(Path(standard_scan).resolve())
    record["created_utc"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return record


def _document(calibration: StandardCalibration) -> dict[str, Any]:
    """The JSON object of a calibration (the module's file schema)."""
    meta = calibration.metadata
    fit_sigma = meta.get("fit_sigma", {})
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "units": dict(_UNITS),
        "incident_energy_keV": float(calibration.incident_energy_keV),
        "geometry": meta.get("geometry", {}),
        "detector": {"be_window_um": float(calibration.be_window_um),
                     "si_thickness_mm": float(calibration.si_thickness_mm)},
        "energy_calibration": meta.get("energy_calibration", {}),
        "fit": meta.get("fit", {}),
        "certified_densities_ug_cm2": {el: float(v) for el, v in calibration.densities_ug_cm2.items()},
        "sensitivities": {
            el: {"value": float(value),
                 "sigma": float(calibration.measured_sigma.get(el, math.nan)),
                 "fit_sigma": _finite_or_none(fit_sigma.get(el))}
            for el, value in calibration.measured.items()
        },
        "provenance": meta.get("provenance", {}),
    }


def _finite_or_none(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def save_standard_calibration(calibration: StandardCalibration, path: str | os.PathLike) -> Path:
    """Write a calibration to a JSON file (module's schema), atomically.

    The text goes to a temporary file in the same directory, then replaces ``path`` in one
    rename: an interrupted write leaves the old file (or none), never half of one.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    document = _document(calibration)
    _validate(document, path)  # never write a file the reader would refuse
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    if not path.parent.is_dir():
        raise InvalidInputError(f"{path}: the directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidInputError(f"{path}: cannot write the standard calibration ({exc.strerror or exc})") from None
    return path


def load_standard_calibration(path: str | os.PathLike) -> StandardCalibration:
    """Read and validate a calibration file written by :func:`save_standard_calibration`.

    Raises
    ------
    InvalidInputError
        One message naming the file and the key: unreadable or not JSON, another format or
        version, a missing key, a non-finite or non-positive value, an unknown element.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the standard calibration ({exc.strerror or exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not a JSON file (line {exc.lineno}: {exc.msg})") from None
    _validate(document, path)
    from .. import physics
    from .quantify import physical_sensitivity

    energy = float(document["incident_energy_keV"])
    detector = document["detector"]
    be, si = float(detector["be_window_um"]), float(detector["si_thickness_mm"])
    sens = document["sensitivities"]
    measured = {el: float(v["value"]) for el, v in sens.items()}
    sigma = {el: float(v["sigma"]) for el, v in sens.items()}
    # log k is derived, not stored: recomputed exactly as calibrate_standard does
    z = np.array([physics.atomic_number(el) for el in measured], dtype=float)
    log_k = np.array([np.log(measured[el] / physical_sensitivity(el, energy, be, si)) for el in measured])
    order = np.argsort(z)
    return StandardCalibration(
        incident_energy_keV=energy,
        measured=measured,
        log_k_by_z=(z[order], log_k[order]),
        be_window_um=be,
        si_thickness_mm=si,
        measured_sigma=sigma,
        densities_ug_cm2={el: float(v) for el, v in document["certified_densities_ug_cm2"].items()},
        metadata={
            "geometry": document["geometry"],
            "energy_calibration": document["energy_calibration"],
            "fit": document["fit"],
            "fit_sigma": {el: float(v["fit_sigma"]) for el, v in sens.items() if v["fit_sigma"] is not None},
            "provenance": document["provenance"],
            "path": str(path),
        },
    )


def _validate(document: Any, path: Path) -> None:
    """Check a calibration document against the schema; one error naming the file and key."""
    from .. import physics

    def fail(key: str, problem: str) -> None:
        raise InvalidInputError(f"{path}: {key}: {problem}")

    def positive(value: Any, key: str) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not (math.isfinite(value) and value > 0):
            fail(key, f"must be a positive finite number, got {value!r}")

    if not isinstance(document, dict):
        raise InvalidInputError(f"{path}: not a standard calibration (a JSON object is expected)")
    if document.get("format") != FORMAT_NAME:
        fail("format", f"expected {FORMAT_NAME!r}, got {document.get('format')!r} (not an xmulti standard calibration)")
    if document.get("version") != FORMAT_VERSION:
        fail("version", f"version {document.get('version')!r} is not supported (this xmulti reads {FORMAT_VERSION})")
    for key, kind in (("incident_energy_keV", (int, float)), ("geometry", dict), ("detector", dict),
                      ("energy_calibration", dict), ("fit", dict), ("certified_densities_ug_cm2", dict),
                      ("sensitivities", dict), ("provenance", dict)):
        if key not in document:
            fail(key, "missing")
        if not isinstance(document[key], kind):
            fail(key, f"expected {'an object' if kind is dict else 'a number'}, got {document[key]!r}")
    positive(document["incident_energy_keV"], "incident_energy_keV")
    for key in ("be_window_um", "si_thickness_mm"):
        if key not in document["detector"]:
            fail(f"detector.{key}", "missing")
        positive(document["detector"][key], f"detector.{key}")
    for key, value in document["energy_calibration"].items():
        if not isinstance(value, int | float) or not math.isfinite(value):
            fail(f"energy_calibration.{key}", f"must be a finite number, got {value!r}")
    densities = document["certified_densities_ug_cm2"]
    for el, value in densities.items():
        positive(value, f"certified_densities_ug_cm2.{el}")
    sens = document["sensitivities"]
    if not sens:
        fail("sensitivities", "no element")
    for el, entry in sens.items():
        try:
            physics.atomic_number(el)
        except InvalidInputError:
            fail(f"sensitivities.{el}", "not an element symbol")
        if el not in densities:
            fail(f"certified_densities_ug_cm2.{el}", "missing (every sensitivity needs its certified density)")
        if not isinstance(entry, dict):
            fail(f"sensitivities.{el}", f"expected an object with value and sigma, got {entry!r}")
        for key in ("value", "sigma", "fit_sigma"):
            if key not in entry:
                fail(f"sensitivities.{el}.{key}", "missing")
        positive(entry["value"], f"sensitivities.{el}.value")
        positive(entry["sigma"], f"sensitivities.{el}.sigma")
        if entry["fit_sigma"] is not None:  # null: the fit gave no per-pixel uncertainties
            positive(entry["fit_sigma"], f"sensitivities.{el}.fit_sigma")


def check_compatible(
    standard: StandardCalibration,
    incident_energy_keV: float | None,
    geometry: Mapping[str, Any] | None = None,
    *,
    sample: str = "the sample",
) -> None:
    """Refuse a standard measured at another incident energy or geometry than the sample.

    Parameters
    ----------
    standard : StandardCalibration
    incident_energy_keV : float or None
        The sample's (None: not checked).
    geometry : mapping, optional
        The sample's :func:`scan_geometry`; attributes recorded by both must agree (numbers
        within :data:`GEOMETRY_RELATIVE_TOLERANCE`, others exactly).
    sample : str
        Names the sample in the error.
    """
    origin = standard.metadata.get("path") or standard.metadata.get("provenance", {}).get("standard_scan") \
        or "the standard"
    _check_setup(standard.incident_energy_keV, standard.metadata.get("geometry", {}), incident_energy_keV,
                 geometry or {}, origin, sample)


def check_standard_scan(standard_scan, incident_energy_keV: float | None, geometry: Mapping[str, Any] | None,
                        *, sample: str = "the sample") -> None:
    """:func:`check_compatible` on the standard's scan itself, before it is fitted (cheap: attributes only)."""
    from ..io.scan import open_scan

    tree = open_scan(standard_scan) if isinstance(standard_scan, str | os.PathLike) else standard_scan
    _check_setup(scan_energy_keV(tree), scan_geometry(tree), incident_energy_keV, geometry or {},
                 str(standard_scan) if isinstance(standard_scan, str | os.PathLike) else "the standard", sample)


def scan_energy_keV(tree) -> float | None:
    """Incident energy (keV) a scan records (root, else ``/xrf``), or None."""
    for attrs in (tree.attrs, tree["xrf"].attrs if "xrf" in tree.children else {}):
        if "incident_energy_keV" in attrs:
            return float(attrs["incident_energy_keV"])
    return None


def _check_setup(standard_energy: float | None, standard_geometry: Mapping[str, Any], energy: float | None,
                 geometry: Mapping[str, Any], origin: str, sample: str) -> None:
    """The energy and geometry comparison behind :func:`check_compatible`."""
    if energy is not None and standard_energy is not None and \
            abs(float(energy) - float(standard_energy)) > ENERGY_TOLERANCE_KEV:
        raise InvalidInputError(
            f"{sample} was measured at {float(energy):.3f} keV but the standard ({origin}) at "
            f"{float(standard_energy):.3f} keV (tolerance {ENERGY_TOLERANCE_KEV} keV): sensitivities "
            "do not transfer; measure the standard at the sample's energy"
        )
    for key, value in geometry.items():
        if key not in standard_geometry or _same(value, standard_geometry[key]):
            continue
        raise InvalidInputError(
            f"{sample} records {key} = {value!r} but the standard ({origin}) {standard_geometry[key]!r}: "
            "another geometry, sensitivities do not transfer"
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        a, b = np.ravel(a).tolist(), np.ravel(b).tolist()
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=GEOMETRY_RELATIVE_TOLERANCE, abs_tol=1e-12)
    return a == b


def _cache_matches(cached: StandardCalibration, checksum: str, densities: Mapping[str, float],
                   fit_options: Mapping[str, Any]) -> str | None:
    """Why a cached calibration cannot be reused (None: it can)."""
    prov = cached.metadata.get("provenance", {})
    if prov.get("standard_checksum") != checksum:
        return "the standard's scan changed (checksum)"
    if cached.densities_ug_cm2 != dict(densities):
        return "other certified densities"
    fit = cached.metadata.get("fit", {})
    wanted = _fit_record(fit_options)
    if any(fit.get(k) != v for k, v in wanted.items()):
        return "other fit options"
    return None


def _is_ours(path: Path) -> bool:
    """True for a JSON object that names this format (any version, possibly damaged inside)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("format") == FORMAT_NAME


def cached_standard_calibration(
    standard_scan: str | os.PathLike,
    densities_ug_cm2: Mapping[str, float],
    cache: str | os.PathLike,
    *,
    standard_info: str | os.PathLike | None = None,
    log: Log = None,
    **fit_options,
) -> StandardCalibration:
    """The standard's calibration from the file ``cache`` when it matches, else fitted and saved there.

    The file is reused when it was made from a scan with the same checksum, with the same
    certified densities and fit options; otherwise the standard is fitted
    (:func:`fit_standard`) and the file (re)written atomically; so is a calibration file that
    cannot be read (another format version, a damaged value). A file at ``cache`` that is not a
    calibration, or a calibration of another standard scan (another path), is refused rather
    than overwritten.
    """
    from ..io.results import file_checksum

    cache = Path(cache)
    densities = check_densities(densities_ug_cm2)
    if not cache.parent.is_dir():  # before minutes of fitting, not after
        raise InvalidInputError(f"{cache}: the directory {cache.parent} does not exist")
    try:
        checksum = file_checksum(standard_scan)
    except OSError as exc:
        raise InvalidInputError(f"{standard_scan}: cannot read the standard's scan ({exc.strerror or exc})") from None
    if cache.exists():
        try:
            cached = load_standard_calibration(cache)
        except InvalidInputError as exc:
            if not _is_ours(cache):  # not a calibration file: never overwritten
                raise
            cached = None
            _log(log, f"standard: {cache} cannot be reused ({str(exc).removeprefix(f'{cache}: ')}): fitting again")
        if cached is not None:
            previous = cached.metadata.get("provenance", {}).get("standard_scan")
            if previous and Path(previous) != Path(standard_scan).resolve():
                raise InvalidInputError(
                    f"{cache}: holds the calibration of another standard ({previous}), not {standard_scan}: "
                    "remove it or choose another file"
                )
            why = _cache_matches(cached, checksum, densities, fit_options)
            if why is None:
                _log(log, f"standard: reusing {cache} (same scan checksum, densities and fit options)")
                return cached
            _log(log, f"standard: {cache} is out of date ({why}): fitting again")
    calibration = fit_standard(standard_scan, densities, standard_info=standard_info, log=log, **fit_options)
    save_standard_calibration(calibration, cache)
    calibration.metadata["path"] = str(cache)
    _log(log, f"standard: saved {cache}")
    return calibration


def quantify_maps(maps, standard: StandardCalibration, geometry: Mapping[str, Any] | None = None):
    """Areal densities (ug/cm2) of the sample's maps, checked against the standard's energy.

    The maps must be normalised by i0 (``fit_xrf(..., normalize=True)``) and measured at the
    standard's incident energy and geometry (sensitivities change with them,
    :func:`check_compatible`).

    Parameters
    ----------
    maps : xarray.Dataset
        The sample's :func:`~xmulti.xrf.maps.fit_xrf` maps.
    standard : StandardCalibration
    geometry : mapping, optional
        The sample scan's :func:`scan_geometry`, compared with the standard's.

    Returns
    -------
    xarray.Dataset
        Element variables in ug/cm2 (:func:`~xmulti.xrf.quantify.areal_density_maps`); attributes
        name the sensitivities used and the standard they came from.
    """
    energy = maps.attrs.get("incident_energy_keV")
    check_compatible(standard, energy, geometry)
    density = areal_density_maps(maps, standard)
    density.attrs["standard_sensitivity_counts_per_ug_cm2"] = [
        f"{el}={value:.6g}" for el, value in standard.measured.items()
    ]
    prov = standard.metadata.get("provenance", {})
    for key in ("standard_scan", "standard_checksum"):
        if prov.get(key):
            density.attrs[key] = prov[key]
    if standard.metadata.get("path"):
        density.attrs["standard_calibration"] = standard.metadata["path"]
    return density
