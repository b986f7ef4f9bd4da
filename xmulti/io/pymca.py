"""Readers for PyMca's spectrum files and fit configurations (plain numpy and dicts out).

Spectra (:func:`read_mca`):

- the ``.spe`` / ``.mca`` ``$DATA:`` block (as in PyMca's ``Steel.spe``): a line ``$DATA:``,
  then a line ``first last`` (channel numbers), then ``last - first + 1`` counts, any number
  per line; other ``$KEY:`` sections are skipped;
- a single column of numbers after ``#`` comment lines (PyMca's ``XRFSpectrum.mca``, "the
  simplest file format recognized by PyMca"): channel numbers from 0;
- SPEC-style MCA lines (``#@CALIB a b c`` calibration, ``@A`` counts with ``\\`` continuation).

Fit configurations (:func:`read_fit_config`): PyMca's ConfigDict files (INI-like: ``[section]``,
``key = value``, comma-separated lists, dotted sub-sections such as ``[materials.Water]``). The
fields used: ``[detector]`` ``zero`` (keV), ``gain`` (keV/channel), ``noise`` (keV FWHM),
``fano``; ``[fit]`` ``energy`` (the first value is the excitation energy in keV; ``None``
entries are unused slots), ``xmin``/``xmax`` (fitted channels); ``[peaks]`` ``Element = K, L``
(the elements and line families fitted).

Every reader opens its file read-only; bad input raises
:class:`xmulti.errors.InvalidInputError` naming the file and the problem.

Reference: V. A. Sole et al., "A multiplatform code for the analysis of energy-dispersive
X-ray fluorescence spectra", Spectrochim. Acta B 62, 63 (2007) (PyMca).
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError

__all__ = ["PymcaSpectrum", "PymcaConfig", "read_mca", "read_fit_config"]


@dataclass
class PymcaSpectrum:
    """A spectrum read from a PyMca-style file.

    Attributes
    ----------
    path : Path
    counts : ndarray (C,) float64
        Counts per channel.
    channels : ndarray (C,) int64
        Channel numbers of the counts.
    offset_keV, gain_keV, quadratic_keV : float or None
        Calibration stored in the file (``#@CALIB``), ``E = a + b ch + c ch^2``; None when the
        file has none.
    format : str
        ``"$DATA"``, ``"column"`` or ``"spec"``.
    comments : list of str
        Header comment lines (without the leading ``#``).
    """

    path: Path
    counts: np.ndarray
    channels: np.ndarray
    offset_keV: float | None = None
    gain_keV: float | None = None
    quadratic_keV: float | None = None
    format: str = "$DATA"
    comments: list[str] = field(default_factory=list)


@dataclass
class PymcaConfig:
    """The fields of a PyMca fit configuration that describe the measurement.

    Attributes
    ----------
    path : Path
    offset_keV, gain_keV : float
        Detector calibration ``E = zero + gain * ch`` (keV).
    noise_fwhm_keV : float or None
        Electronic noise (FWHM, keV).
    fano : float or None
    incident_energy_keV : float or None
        First excitation energy of ``[fit] energy`` (None when the configuration has none).
    energies_keV : list of float
        All excitation energies given.
    peaks : dict of str to tuple of str
        Element to the line families fitted (``("K",)``, ``("L", "M")``, ``("Ka", "Kb")``...).
    xmin, xmax : int or None
        Fitted channel range.
    sections : dict of str to dict of str to str
        Every section as raw strings (dotted names for sub-sections).
    """

    path: Path
    offset_keV: float
    gain_keV: float
    noise_fwhm_keV: float | None
    fano: float | None
    incident_energy_keV: float | None
    energies_keV: list[float]
    peaks: dict[str, tuple[str, ...]]
    xmin: int | None
    xmax: int | None
    sections: dict[str, dict[str, str]]

    @property
    def elements(self) -> tuple[str, ...]:
        """The elements fitted, in the file's order."""
        return tuple(self.peaks)


def _read_text(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:  # read-only
            return path, f.read()
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{path}: is a directory, not a spectrum file") from None
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot be read ({error.strerror or error})") from None


def _numbers(tokens: list[str], path: Path, what: str) -> np.ndarray:
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise InvalidInputError(f"{path}: {what}: non-numeric count {bad!r}") from None
    if not np.all(np.isfinite(values)):
        raise InvalidInputError(f"{path}: {what}: counts are not all finite")
    if np.any(values < 0):
        raise InvalidInputError(f"{path}: {what}: negative counts")
    return values


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_mca(path: str | os.PathLike) -> PymcaSpectrum:
    """Read one spectrum from a PyMca ``.mca`` / ``.spe`` file (see the module doc).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    PymcaSpectrum

    Raises
    ------
    InvalidInputError
        Missing file, no counts, a ``$``-section file without ``$DATA``, a channel range that
        does not match the number of counts, non-numeric, negative or non-finite counts.
    """
    path, text = _read_text(path)
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise InvalidInputError(f"{path}: empty file")
    comments = [line.lstrip("#").rstrip() for line in lines if line.startswith("#")]
    calib = _spec_calibration(lines)
    dollar = [i for i, line in enumerate(lines) if re.match(r"^\$[A-Z_]+:", line.strip())]
    if dollar:
        return _read_dollar_data(path, lines, dollar, comments, calib)
    if any(line.startswith("@A") for line in lines):
        return _read_spec_mca(path, lines, comments, calib)
    tokens = [t for line in lines if line.strip() and not line.lstrip().startswith("#") for t in line.split()]
    if not tokens:
        raise InvalidInputError(f"{path}: no counts (only comment lines)")
    counts = _numbers(tokens, path, "counts column")
    return PymcaSpectrum(path, counts, np.arange(counts.size), *calib, format="column", comments=comments)


def _spec_calibration(lines: list[str]) -> tuple[float | None, float | None, float | None]:
    for line in lines:
        if line.startswith("#@CALIB"):
            parts = line.split()[1:4]
            try:
                a, b, c = (float(v) for v in (parts + ["0", "0", "0"])[:3])
            except ValueError:
                return None, None, None
            return a, b, c
    return None, None, None


def _read_dollar_data(path, lines, dollar, comments, calib) -> PymcaSpectrum:
    start = next((i for i in dollar if lines[i].strip().upper().startswith("$DATA:")), None)
    if start is None:
        names = ", ".join(lines[i].strip() for i in dollar[:5])
        raise InvalidInputError(f"{path}: no $DATA block (sections found: {names})")
    end = next((i for i in dollar if i > start), len(lines))
    body = [line for line in lines[start + 1 : end] if line.strip()]
    if not body:
        raise InvalidInputError(f"{path}: $DATA block is empty")
    header = body[0].split()
    if len(header) != 2 or not all(re.fullmatch(r"[+-]?\d+", h) for h in header):
        raise InvalidInputError(
            f"{path}: $DATA block must start with the line 'first last' (channel numbers), got {body[0].strip()!r}"
        )
    first, last = int(header[0]), int(header[1])
    if last < first:
        raise InvalidInputError(f"{path}: $DATA channel range {first} .. {last} is empty")
    counts = _numbers([t for line in body[1:] for t in line.split()], path, "$DATA")
    expected = last - first + 1
    if counts.size != expected:
        raise InvalidInputError(
            f"{path}: $DATA declares channels {first} .. {last} ({expected} counts) but holds {counts.size}"
        )
    offset, gain, quad = calib
    if offset is None:
        offset, gain, quad = _spe_calibration(path, lines, dollar)
    return PymcaSpectrum(path, counts, np.arange(first, last + 1), offset, gain, quad, format="$DATA", comments=comments)


def _spe_calibration(path, lines, dollar) -> tuple[float | None, float | None, float | None]:
    """``$MCA_CAL:`` block of an ORTEC .spe file: a line with the number of coefficients, then
    ``a b [c]`` (keV)."""
    start = next((i for i in dollar if lines[i].strip().upper().startswith("$MCA_CAL:")), None)
    if start is None or start + 2 >= len(lines):
        return None, None, None
    try:
        n = int(lines[start + 1].split()[0])
        coefficients = [float(v) for v in lines[start + 2].split()[:n]]
    except (ValueError, IndexError):
        raise InvalidInputError(f"{path}: $MCA_CAL block is not 'n' then n numbers") from None
    coefficients += [0.0] * (3 - len(coefficients))
    return coefficients[0], coefficients[1], coefficients[2]


def _read_spec_mca(path, lines, comments, calib) -> PymcaSpectrum:
    start = next(i for i, line in enumerate(lines) if line.startswith("@A"))
    tokens: list[str] = []
    line = lines[start][2:]
    i = start
    while True:
        more = line.rstrip().endswith("\\")
        tokens.extend(line.rstrip().rstrip("\\").split())
        i += 1
        if not more or i >= len(lines):
            break
        line = lines[i]
    counts = _numbers(tokens, path, "@A")
    return PymcaSpectrum(path, counts, np.arange(counts.size), *calib, format="spec", comments=comments)


def _float_or_none(value: str) -> float | None:
    value = value.strip()
    if value in ("", "None", "none"):
        return None
    return float(value)


def read_fit_config(path: str | os.PathLike) -> PymcaConfig:
    """Read a PyMca fit configuration (``.cfg``, see the module doc).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    PymcaConfig

    Raises
    ------
    InvalidInputError
        Missing file, not INI-like, no ``[detector]`` ``zero``/``gain``, or non-numeric values.
    """
    path, text = _read_text(path)
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # element symbols keep their case
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as error:
        raise InvalidInputError(f"{path}: not a PyMca configuration file ({error.__class__.__name__}: {error})") from None
    sections = {name: dict(parser.items(name)) for name in parser.sections()}
    detector = sections.get("detector")
    if detector is None:
        raise InvalidInputError(f"{path}: no [detector] section (calibration zero and gain)")

    def number(section: str, key: str, required: bool = True) -> float | None:
        raw = sections.get(section, {}).get(key)
        if raw is None:
            if required:
                raise InvalidInputError(f"{path}: [{section}] has no '{key}'")
            return None
        try:
            return _float_or_none(raw)
        except ValueError:
            raise InvalidInputError(f"{path}: [{section}] {key} = {raw.strip()!r} is not a number") from None

    offset, gain = number("detector", "zero"), number("detector", "gain")
    if offset is None or gain is None or not gain > 0:
        raise InvalidInputError(f"{path}: [detector] needs numeric zero and a positive gain (keV/channel)")
    energies: list[float] = []
    raw_energy = sections.get("fit", {}).get("energy")
    if raw_energy is not None:
        for token in raw_energy.split(","):
            try:
                value = _float_or_none(token)
            except ValueError:
                raise InvalidInputError(f"{path}: [fit] energy has a non-numeric value {token.strip()!r}") from None
            if value is not None:
                energies.append(value)
    peaks = {
        element.strip(): tuple(p.strip() for p in families.split(",") if p.strip())
        for element, families in sections.get("peaks", {}).items()
    }
    xmin, xmax = number("fit", "xmin", False), number("fit", "xmax", False)
    return PymcaConfig(
        path=path,
        offset_keV=float(offset),
        gain_keV=float(gain),
        noise_fwhm_keV=number("detector", "noise", False),
        fano=number("detector", "fano", False),
        incident_energy_keV=energies[0] if energies else None,
        energies_keV=energies,
        peaks=peaks,
        xmin=None if xmin is None else int(xmin),
        xmax=None if xmax is None else int(xmax),
        sections=sections,
    )
