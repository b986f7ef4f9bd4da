"""Physical constants and xraylib-backed quantities shared by every modality.

Units are in the names: ``_keV``, ``_m``, ``_nm``, ``_um``, ``_cm2_g``, ``_g_cm3``.
xraylib is imported inside the functions that need it so ``import xmulti`` stays fast.

References
----------
- Schoonjans et al., "The xraylib library for X-ray-matter interactions. Recent developments",
  Spectrochim. Acta B 66, 776 (2011).
- Reed & Ware, "Escape peaks and internal fluorescence in X-ray spectra recorded with lithium
  drifted silicon detectors", J. Phys. E 5, 582 (1972) (Si escape fraction).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "HC_KEV_M",
    "ELECTRON_RADIUS_M",
    "SI_PAIR_ENERGY_KEV",
    "FWHM_PER_SIGMA",
    "SI_KA_ESCAPE_KEV",
    "Matrix",
    "PROTEIN",
    "ICE",
    "EmissionLine",
    "wavelength_m",
    "object_pixel_size_m",
    "atomic_number",
    "emission_lines",
    "detector_sigma_keV",
    "compton_energy_keV",
    "si_escape_fraction",
    "refractive_index",
    "mass_attenuation_cm2_g",
    "detector_efficiency",
]

#: h * c in keV * m: wavelength[m] = HC_KEV_M / E[keV].
HC_KEV_M = 12.398419843320026e-10
#: Classical electron radius (m).
ELECTRON_RADIUS_M = 2.8179403262e-15
#: Mean energy to create one electron-hole pair in Si (keV); sets the Fano term of peak widths.
SI_PAIR_ENERGY_KEV = 0.00385
#: FWHM / sigma of a Gaussian.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: Energy of the Si K-alpha photon that escapes the detector (keV): escape peaks sit this far
#: below their parent line.
SI_KA_ESCAPE_KEV = 1.740


@dataclass(frozen=True)
class Matrix:
    """A sample matrix: chemical formula (xraylib syntax) and density (g/cm3)."""

    name: str
    formula: str
    density_g_cm3: float


#: Average protein, H50C30N9O10S1 (<Z/A> = 0.5336), at 1.35 g/cm3.
PROTEIN = Matrix("protein", "H50C30N9O10S1", 1.35)
#: Vitreous ice, at 0.92 g/cm3.
ICE = Matrix("ice", "H2O", 0.92)


@dataclass(frozen=True)
class EmissionLine:
    """One fluorescence line of an element excited at a given incident energy.

    Attributes
    ----------
    element : str
        Element symbol, e.g. ``"Fe"``.
    family : str
        ``"K"``, ``"L"`` or ``"M"``.
    name : str
        IUPAC name of the transition, e.g. ``"KL3"`` (K-alpha1).
    energy_keV : float
        Line energy (keV).
    cross_section_cm2_g : float
        Fluorescence production cross-section at the incident energy (cm2/g), from
        ``xraylib.CS_FluorLine_Kissel`` (cascade included). Its ratios are the relative line
        intensities within an element.
    """

    element: str
    family: str
    name: str
    energy_keV: float
    cross_section_cm2_g: float


def wavelength_m(energy_keV: float) -> float:
    """Photon wavelength (m) for a photon energy (keV)."""
    if not energy_keV > 0:
        raise InvalidInputError(f"photon energy must be positive, got {energy_keV} keV")
    return HC_KEV_M / energy_keV


def object_pixel_size_m(
    energy_keV: float, distance_m: float, n_pixels: int, detector_pixel_m: float
) -> float:
    """Far-field object pixel size ``dx = lambda * z / (N * p)`` (m).

    Parameters
    ----------
    energy_keV : float
        Photon energy (keV).
    distance_m : float
        Sample-to-detector distance (m).
    n_pixels : int
        Width of the (square) diffraction frame in pixels.
    detector_pixel_m : float
        Detector pixel size (m).
    """
    return wavelength_m(energy_keV) * distance_m / (n_pixels * detector_pixel_m)


@functools.cache
def atomic_number(symbol: str) -> int:
    """Atomic number of an element symbol; raises InvalidInputError for unknown symbols."""
    import xraylib

    try:
        z = xraylib.SymbolToAtomicNumber(str(symbol))
    except ValueError:
        z = 0
    if z <= 0:
        raise InvalidInputError(f"unknown element symbol {symbol!r}")
    return int(z)


@functools.cache
def _iupac_lines() -> dict[str, list[tuple[str, int]]]:
    """All IUPAC line macros of xraylib, grouped by family (K, L, M)."""
    import xraylib

    families: dict[str, list[tuple[str, int]]] = {"K": [], "L": [], "M": []}
    for attr in dir(xraylib):
        if not attr.endswith("_LINE"):
            continue
        name = attr[: -len("_LINE")]
        # IUPAC names are two shell names, e.g. KL3, L3M5, M5N7; Siegbahn names (KA, LA1...) are
        # combinations of those and would be double counted.
        shells = _split_shells(name)
        if shells is None:
            continue
        family = shells[0][0]
        if family in families:
            families[family].append((name, getattr(xraylib, attr)))
    return families


def _split_shells(name: str) -> tuple[str, str] | None:
    """Split an IUPAC transition name into its two shells, or None when it is not one."""
    import re

    match = re.fullmatch(r"(K|L[1-3]|M[1-5])((?:K|L[1-3]|M[1-5]|N[1-7]|O[1-7]|P[1-5]|Q[1-3]))", name)
    return None if match is None else (match.group(1), match.group(2))


@functools.cache
def emission_lines(
    symbol: str,
    incident_energy_keV: float,
    families: tuple[str, ...] = ("K", "L", "M"),
    min_relative: float = 1e-3,
    min_energy_keV: float = 0.5,
) -> tuple[EmissionLine, ...]:
    """Fluorescence lines of an element excited at an incident energy, from xraylib.

    Lines whose shell is not excited below the incident energy are absent (xraylib raises
    ValueError for them; that means "not excited", not an error).

    Parameters
    ----------
    symbol : str
        Element symbol.
    incident_energy_keV : float
        Incident photon energy (keV).
    families : tuple of str
        Line families to consider.
    min_relative : float
        Drop lines weaker than this fraction of the strongest line of their family.
    min_energy_keV : float
        Drop lines below this energy (keV): they are absorbed before the detector.

    Returns
    -------
    tuple of EmissionLine
        Sorted by energy; empty when no line is excited.
    """
    import xraylib

    z = atomic_number(symbol)
    out: list[EmissionLine] = []
    for family, lines in _iupac_lines().items():
        if family not in families:
            continue
        found = []
        for name, macro in lines:
            try:
                cs = xraylib.CS_FluorLine_Kissel(z, macro, float(incident_energy_keV))
                energy = xraylib.LineEnergy(z, macro)
            except ValueError:
                continue
            if cs > 0 and energy >= min_energy_keV and energy < incident_energy_keV:
                found.append(EmissionLine(symbol, family, name, float(energy), float(cs)))
        if not found:
            continue
        strongest = max(line.cross_section_cm2_g for line in found)
        out.extend(line for line in found if line.cross_section_cm2_g >= min_relative * strongest)
    return tuple(sorted(out, key=lambda line: line.energy_keV))


def detector_sigma_keV(energy_keV, noise_fwhm_keV: float = 0.1, fano: float = 0.114):
    """Gaussian width (sigma, keV) of an energy-dispersive Si detector's response.

    ``sigma^2 = (noise / 2.3548)^2 + 0.00385 * fano * E``, E in keV.

    Parameters
    ----------
    energy_keV : float or ndarray
        Photon energy (keV).
    noise_fwhm_keV : float
        Electronic noise, as a FWHM (keV).
    fano : float
        Fano factor of silicon (about 0.114).
    """
    energy = np.asarray(energy_keV, dtype=float)
    return np.sqrt((noise_fwhm_keV / FWHM_PER_SIGMA) ** 2 + SI_PAIR_ENERGY_KEV * fano * energy)


def compton_energy_keV(incident_energy_keV: float, scattering_angle_deg: float = 90.0) -> float:
    """Energy (keV) of a photon Compton-scattered by a free electron at rest."""
    cos_theta = np.cos(np.deg2rad(scattering_angle_deg))
    return float(incident_energy_keV / (1.0 + incident_energy_keV / 510.99895 * (1.0 - cos_theta)))


def si_escape_fraction(energy_keV):
    """Fraction of photons of an energy that lose a Si K-alpha photon out of the detector.

    Reed & Ware (1972) for normal incidence on a thick Si detector:
    ``f = omega_K (1 - 1/r) / 2 * [1 - (mu_K / mu) ln(1 + mu / mu_K)]``, with ``omega_K`` the Si
    K fluorescence yield, ``r`` the K-edge jump ratio, ``mu`` and ``mu_K`` the Si attenuation at
    the photon energy and at Si K-alpha. Zero below the Si K edge. About 1 % at K K-alpha and
    0.3 % at Fe K-alpha.

    Parameters
    ----------
    energy_keV : float or ndarray
        Photon energy (keV).
    """
    import xraylib

    energy = np.atleast_1d(np.asarray(energy_keV, dtype=float))
    omega = xraylib.FluorYield(14, xraylib.K_SHELL)
    jump = xraylib.JumpFactor(14, xraylib.K_SHELL)
    edge = xraylib.EdgeEnergy(14, xraylib.K_SHELL)
    mu_k = xraylib.CS_Total(14, xraylib.LineEnergy(14, xraylib.KA_LINE))
    out = np.zeros_like(energy)
    for i, e in enumerate(energy):
        if e > edge:
            mu = xraylib.CS_Total(14, float(e))
            out[i] = 0.5 * omega * (1.0 - 1.0 / jump) * (1.0 - mu_k / mu * np.log1p(mu / mu_k))
    return out if np.ndim(energy_keV) else float(out[0])


def refractive_index(formula: str, energy_keV: float, density_g_cm3: float) -> tuple[float, float]:
    """Refractive index decrement ``delta`` and absorption index ``beta`` (n = 1 - delta + i beta).

    From xraylib's ``Refractive_Index_Re/Im``; xraylib's beta includes incoherent (Compton)
    scattering in the attenuation, about 10 % above tables that count photoabsorption only.

    Parameters
    ----------
    formula : str
        Chemical formula in xraylib syntax, e.g. ``"H2O"``.
    energy_keV : float
        Photon energy (keV).
    density_g_cm3 : float
        Density (g/cm3).
    """
    import xraylib

    try:
        re = xraylib.Refractive_Index_Re(formula, float(energy_keV), float(density_g_cm3))
        im = xraylib.Refractive_Index_Im(formula, float(energy_keV), float(density_g_cm3))
    except ValueError as exc:
        raise InvalidInputError(f"cannot compute the refractive index of {formula!r}: {exc}") from exc
    return 1.0 - re, im


def mass_attenuation_cm2_g(formula: str, energy_keV) -> np.ndarray | float:
    """Total mass attenuation coefficient (cm2/g) of a compound, from ``xraylib.CS_Total_CP``."""
    import xraylib

    energy = np.atleast_1d(np.asarray(energy_keV, dtype=float))
    out = np.array([xraylib.CS_Total_CP(formula, float(e)) for e in energy])
    return out if np.ndim(energy_keV) else float(out[0])


def detector_efficiency(energy_keV, be_window_um: float = 8.0, si_thickness_mm: float = 0.35):
    """Detection efficiency of a Si drift detector behind a Be window.

    ``exp(-mu_Be rho_Be t_Be) * (1 - exp(-mu_Si rho_Si t_Si))``: the window absorbs soft lines
    (P, S, and the L lines of transition metals), the thin Si crystal lets hard photons through.

    Parameters
    ----------
    energy_keV : float or ndarray
        Photon energy (keV).
    be_window_um : float
        Be window thickness (um).
    si_thickness_mm : float
        Si crystal thickness (mm).
    """
    import xraylib

    energy = np.atleast_1d(np.asarray(energy_keV, dtype=float))
    rho_be, rho_si = 1.848, 2.33  # g/cm3
    out = np.empty_like(energy)
    for i, e in enumerate(energy):
        window = np.exp(-xraylib.CS_Total(4, float(e)) * rho_be * be_window_um * 1e-4)
        absorbed = -np.expm1(-xraylib.CS_Photo(14, float(e)) * rho_si * si_thickness_mm * 0.1)
        out[i] = window * absorbed
    return out if np.ndim(energy_keV) else float(out[0])
