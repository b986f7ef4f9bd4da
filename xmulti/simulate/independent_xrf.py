"""An XRF spectrum generator whose physics deliberately differ from xmulti's fitter.

xmulti's own simulator (:mod:`xmulti.simulate.spectra`) shares the fitter's model: line
intensities from xraylib's Kissel cross-sections with cascades, pure Gaussian peaks, Reed & Ware
escape fractions. A fit that passes on it may still fail on data from any other source. This
module is "another XRF code": it imports nothing from :mod:`xmulti.xrf` (nor from
:mod:`xmulti.physics`) and makes different, equally defensible choices at every step:

- **line intensities** from the jump-ratio approximation of sub-shell photoionisation (the
  fraction of the photoelectric cross-section ``tau`` taken by a shell with jump factor ``J``
  whose edge lies below ``E0`` is ``(J - 1) / J`` of what the deeper shells left), Coster-Kronig
  transfers within the L and M shells, fluorescence yields and radiative rates, all from xraylib
  (``CS_Photo``, ``JumpFactor``, ``CosKronTransProb``, ``FluorYield``, ``RadRate``,
  ``LineEnergy``); radiative K -> L cascades are left out. See Van Grieken & Markowicz (eds.),
  *Handbook of X-Ray Spectrometry*, 2nd ed. (2002), ch. 1 (fundamental parameters);
  Schoonjans et al., Spectrochim. Acta B 66, 776 (2011) (xraylib);
- **detector efficiency** from xraylib ``CS_Total`` of a Be window, an optional Si dead layer
  and the Si crystal;
- **peak shape**: a Hypermet-like response (Gaussian + low-energy exponential tail + flat step,
  Van Espen, *Handbook of X-Ray Spectrometry* ch. 4; Phillips & Marlow, Nucl. Instrum. Methods
  137, 525 (1976)) with configurable area fractions, plus an incomplete-charge shelf rising
  linearly towards the peak (Campbell et al., Nucl. Instrum. Methods B 63, 353 (1992)); every
  shape is sampled at sub-channel points (midpoint rule), not integrated with erf differences;
- **resolution** in the MAPS form ``sigma^2 = (FWHM_OFFSET / 2.3548)^2 + 3.58 E FANOPRIME``;
- **Si escape peaks** with one configurable fraction for every line above the Si K edge, at
  ``E - E(Si KL3)``;
- **pile-up** sum peaks of every pair of strong lines for a configurable fraction of events;
- **scatter**: elastic at ``E0``, Compton at ``E0 / (1 + (E0 / m c^2)(1 - cos theta))`` with a
  Gaussian, Voigt (``scipy.special.voigt_profile``) or split-Gaussian (asymmetric) profile; either
  can be absent or outside the recorded range;
- **continuum**: a lognormal hump, an exponential fall, a linear ramp (no B-splines), all
  ending at ``E0`` (or above it, on request);
- **Poisson noise** from a seeded :class:`numpy.random.Generator`.

Units are in the names (keV, um, mm, deg). Counts given for an element are its detected counts
in the whole response (all lines, tails, steps, shelves and escape peaks, also the part falling
outside the recorded channels), before pile-up.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import erf, erfc, erfcx, voigt_profile

__all__ = [
    "Detector",
    "PeakShape",
    "Scatter",
    "Continuum",
    "Line",
    "IndependentSpectrum",
    "IndependentMap",
    "OutsideCase",
    "element_lines",
    "detector_efficiency",
    "compton_energy_keV",
    "element_response",
    "relative_sensitivity",
    "counts_from_concentrations",
    "independent_spectrum",
    "independent_map",
    "smooth_fields",
    "write_map_scan",
    "outside_cases",
]

#: Electron rest energy (keV).
ELECTRON_MASS_KEV = 510.99895
#: FWHM / sigma of a Gaussian.
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: Densities (g/cm3) of the detector materials.
_RHO_BE_G_CM3 = 1.848
_RHO_SI_G_CM3 = 2.33
#: Sub-channel samples of the midpoint rule.
_OVERSAMPLE = 8
#: Lines weaker than this fraction of an element's total are dropped.
_MIN_LINE_FRACTION = 1e-4

_SUBSHELLS = {
    "K": ("K",),
    "L": ("L1", "L2", "L3"),
    "M": ("M1", "M2", "M3", "M4", "M5"),
}
_UPPER_SHELLS = (
    "L1", "L2", "L3", "M1", "M2", "M3", "M4", "M5", "N1", "N2", "N3", "N4", "N5", "N6", "N7",
    "O1", "O2", "O3", "O4", "O5", "O6", "O7", "P1", "P2", "P3", "P4", "P5", "Q1", "Q2", "Q3",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detector:
    """An energy-dispersive Si detector and its MCA.

    Attributes
    ----------
    n_channels : int
        Number of MCA channels.
    offset_keV, gain_keV, quadratic_keV : float
        ``E(ch) = offset + gain * ch + quadratic * ch^2`` (keV) at channel centres.
    fwhm_offset_keV : float
        Electronic noise as a FWHM (keV) (MAPS ``FWHM_OFFSET``).
    fanoprime : float
        MAPS ``FWHM_FANOPRIME``: ``sigma^2 = (fwhm_offset / 2.3548)^2 + 3.58 E fanoprime``
        (keV^2, E in keV).
    be_window_um : float
        Be window thickness (um).
    si_dead_layer_um : float
        Inactive Si in front of the crystal (um).
    si_thickness_um : float
        Active Si thickness (um).
    """

    n_channels: int = 2048
    offset_keV: float = 0.0
    gain_keV: float = 0.01
    quadratic_keV: float = 0.0
    fwhm_offset_keV: float = 0.1
    fanoprime: float = 1.2e-4
    be_window_um: float = 8.0
    si_dead_layer_um: float = 0.0
    si_thickness_um: float = 450.0

    def energy_keV(self, channel) -> np.ndarray:
        """Energy (keV) at (fractional) channel positions."""
        ch = np.asarray(channel, dtype=float)
        return self.offset_keV + self.gain_keV * ch + self.quadratic_keV * ch**2

    @property
    def channel_energy_keV(self) -> np.ndarray:
        """Energy (keV) of every channel centre."""
        return self.energy_keV(np.arange(self.n_channels))

    def sigma_keV(self, energy_keV) -> np.ndarray:
        """Gaussian sigma (keV) of the detector response at a photon energy (keV)."""
        e = np.maximum(np.asarray(energy_keV, dtype=float), 0.0)
        return np.sqrt((self.fwhm_offset_keV / _FWHM_PER_SIGMA) ** 2 + 3.58 * e * self.fanoprime)

    @property
    def equivalent_fano(self) -> float:
        """The Fano factor of the form ``sigma^2 = noise^2 + 0.00385 keV * fano * E``."""
        return 3.58 * self.fanoprime / 0.00385


@dataclass(frozen=True)
class PeakShape:
    """Hypermet-like detector response of one line (area fractions of its counts).

    Attributes
    ----------
    tail_fraction : float
        Area fraction in the low-energy exponential tail.
    tail_gamma : float
        Tail slope in units of the Gaussian sigma (the tail falls by ``e`` over
        ``tail_gamma * sigma``).
    step_fraction : float
        Area fraction in the flat step from 0 keV to the line (incomplete charge).
    shelf_fraction : float
        Area fraction in a shelf rising linearly from 0 keV to the line (incomplete charge
        collection near the entrance window).
    escape_fraction : float
        Fraction of each line above the Si K edge that loses a Si K-alpha photon (0 - 0.02).

    All zero: a pure Gaussian.
    """

    tail_fraction: float = 0.0
    tail_gamma: float = 2.0
    step_fraction: float = 0.0
    shelf_fraction: float = 0.0
    escape_fraction: float = 0.0

    def __post_init__(self):
        fractions = (self.tail_fraction, self.step_fraction, self.shelf_fraction)
        if min(fractions) < 0 or sum(fractions) >= 1:
            raise ValueError(f"peak-shape fractions must be >= 0 and sum below 1, got {fractions}")
        if not 0 <= self.escape_fraction < 0.5:
            raise ValueError(f"escape_fraction must be in [0, 0.5), got {self.escape_fraction}")
        if self.tail_gamma <= 0:
            raise ValueError("tail_gamma must be positive")


@dataclass(frozen=True)
class Scatter:
    """Elastic and Compton scatter of the incident beam.

    Attributes
    ----------
    elastic_counts, compton_counts : float
        Detected counts of each peak (0: absent).
    angle_deg : float
        Scattering angle (degrees).
    compton_profile : {"gaussian", "voigt", "asymmetric"}
        Gaussian of sigma ``hypot(detector, compton_sigma_keV)``; Voigt with that Gaussian and a
        Lorentzian of half width ``compton_lorentz_hwhm_keV``; or a split Gaussian whose low side
        is ``compton_low_side_factor`` times wider (Doppler profile skewed to low energy).
    compton_sigma_keV : float
        Extra Gaussian sigma of the Compton peak (keV).
    compton_lorentz_hwhm_keV : float
        Lorentzian half width (keV) of the Voigt profile.
    compton_low_side_factor : float
        Ratio of low- to high-side sigma of the asymmetric profile.
    """

    elastic_counts: float = 0.0
    compton_counts: float = 0.0
    angle_deg: float = 90.0
    compton_profile: str = "gaussian"
    compton_sigma_keV: float = 0.12
    compton_lorentz_hwhm_keV: float = 0.08
    compton_low_side_factor: float = 2.0

    def __post_init__(self):
        if self.compton_profile not in ("gaussian", "voigt", "asymmetric"):
            raise ValueError(f"unknown compton_profile {self.compton_profile!r}")


@dataclass(frozen=True)
class Continuum:
    """Smooth continuum shapes, each given by its counts (0: absent).

    Attributes
    ----------
    hump_counts : float
        Counts of a lognormal hump in energy (density ``exp(-ln(E/Ec)^2 / 2 w^2) / E``).
    hump_centre_keV : float
        Its median energy ``Ec`` (keV).
    hump_log_width : float
        Its width ``w`` in ln(E).
    exp_counts : float
        Counts of an exponential fall ``exp(-E / decay)`` above ``low_keV``.
    exp_decay_keV : float
        Its decay energy (keV).
    ramp_counts : float
        Counts of a linear ramp falling from ``low_keV`` to zero at ``ramp_end_keV``.
    ramp_end_keV : float or None
        End of the ramp (keV); None: the incident energy.
    low_keV : float
        Every continuum is cut below this energy (keV) with a soft edge (window absorption).
    high_keV : float or None
        ... and above this energy (keV), smoothed by the detector resolution there. None: the
        incident energy (a monochromatic beam deposits no more than ``E0`` per photon, apart
        from pile-up); ``inf``: no cut.
    """

    hump_counts: float = 0.0
    hump_centre_keV: float = 4.0
    hump_log_width: float = 0.5
    exp_counts: float = 0.0
    exp_decay_keV: float = 2.0
    ramp_counts: float = 0.0
    ramp_end_keV: float | None = None
    low_keV: float = 0.5
    high_keV: float | None = None


@dataclass(frozen=True)
class Line:
    """One emission line as detected.

    Attributes
    ----------
    element, name : str
        Element symbol and IUPAC transition, e.g. ``"Fe"``, ``"KL3"``.
    family : str
        ``"K"``, ``"L"`` or ``"M"``.
    energy_keV : float
    fraction : float
        Fraction of the element's detected counts in this line (the lines sum to 1).
    """

    element: str
    name: str
    family: str
    energy_keV: float
    fraction: float


# --------------------------------------------------------------------------------------------
# physics from xraylib
# --------------------------------------------------------------------------------------------


def _z(symbol: str) -> int:
    import xraylib

    try:
        z = int(xraylib.SymbolToAtomicNumber(str(symbol)))
    except ValueError:
        z = 0
    if z <= 0:
        raise ValueError(f"unknown element symbol {symbol!r}")
    return z


def compton_energy_keV(incident_energy_keV: float, angle_deg: float = 90.0) -> float:
    """Energy (keV) of a photon Compton-scattered by a free electron at rest.

    ``E0 / (1 + (E0 / m c^2)(1 - cos theta))`` (Compton, Phys. Rev. 21, 483 (1923)).
    """
    return float(incident_energy_keV / (1 + incident_energy_keV / ELECTRON_MASS_KEV * (1 - np.cos(np.deg2rad(angle_deg)))))


def detector_efficiency(energy_keV, detector: Detector) -> np.ndarray:
    """Fraction of photons of an energy (keV) detected: window and dead-layer transmission
    times absorption in the crystal, from xraylib ``CS_Total`` (cm2/g)."""
    import xraylib

    e = np.atleast_1d(np.asarray(energy_keV, dtype=float))
    out = np.zeros_like(e)
    for i, energy in enumerate(e):
        try:
            mu_be = xraylib.CS_Total(4, float(energy))
            mu_si = xraylib.CS_Total(14, float(energy))
        except ValueError:  # below xraylib's tables (~0.1 keV): absorbed before the crystal
            continue
        window = np.exp(-mu_be * _RHO_BE_G_CM3 * detector.be_window_um * 1e-4)
        dead = np.exp(-mu_si * _RHO_SI_G_CM3 * detector.si_dead_layer_um * 1e-4)
        out[i] = window * dead * -np.expm1(-mu_si * _RHO_SI_G_CM3 * detector.si_thickness_um * 1e-4)
    return out if np.ndim(energy_keV) else out[0]


@functools.cache
def _vacancies(z: int, incident_energy_keV: float) -> dict[str, float]:
    """Primary vacancies per photoabsorption in each K, L, M sub-shell (jump-ratio model),
    after Coster-Kronig transfers within the L and M shells."""
    import xraylib

    remaining = 1.0
    primary: dict[str, float] = {}
    for family in ("K", "L", "M"):
        for shell in _SUBSHELLS[family]:
            macro = getattr(xraylib, f"{shell}_SHELL")
            try:
                edge = xraylib.EdgeEnergy(z, macro)
                jump = xraylib.JumpFactor(z, macro)
            except ValueError:
                primary[shell] = 0.0
                continue
            if edge <= 0 or edge >= incident_energy_keV or jump <= 1:
                primary[shell] = 0.0
                continue
            primary[shell] = remaining * (jump - 1) / jump
            remaining /= jump
    vac = dict(primary)
    for family, trans in (("L", "FL"), ("M", "FM")):
        shells = _SUBSHELLS[family]
        for i, si in enumerate(shells):
            for j in range(i + 1, len(shells)):
                name = f"{trans}{i + 1}{j + 1}_TRANS"
                if not hasattr(xraylib, name):
                    continue
                try:
                    f = xraylib.CosKronTransProb(z, getattr(xraylib, name))
                except ValueError:
                    continue
                vac[shells[j]] += f * vac[si]
    return vac


@functools.cache
def _emitted_lines(symbol: str, incident_energy_keV: float) -> tuple[tuple[str, str, float, float], ...]:
    """(name, family, energy_keV, photons per unit photoabsorption) of every excited line."""
    import xraylib

    z = _z(symbol)
    vac = _vacancies(z, float(incident_energy_keV))
    out = []
    for family, shells in _SUBSHELLS.items():
        for shell in shells:
            if vac.get(shell, 0.0) <= 0:
                continue
            try:
                omega = xraylib.FluorYield(z, getattr(xraylib, f"{shell}_SHELL"))
            except ValueError:
                continue
            for upper in _UPPER_SHELLS:
                name = f"{shell}{upper}"
                macro = getattr(xraylib, f"{name}_LINE", None)
                if macro is None:
                    continue
                try:
                    rate = xraylib.RadRate(z, macro)
                    energy = xraylib.LineEnergy(z, macro)
                except ValueError:
                    continue
                if rate <= 0 or energy <= 0:
                    continue
                out.append((name, family, float(energy), float(vac[shell] * omega * rate)))
    return tuple(out)


def element_lines(
    symbol: str, incident_energy_keV: float, detector: Detector, min_energy_keV: float = 0.2
) -> list[Line]:
    """Detected lines of an element excited at ``incident_energy_keV`` (keV).

    Intensities: jump-ratio sub-shell vacancies times fluorescence yield times radiative rate,
    times the detector efficiency (see the module doc); normalised to sum 1. Empty when no
    shell with a line above ``min_energy_keV`` is excited.
    """
    raw = [r for r in _emitted_lines(str(symbol), float(incident_energy_keV)) if r[2] >= min_energy_keV]
    if not raw:
        return []
    energies = np.array([r[2] for r in raw])
    weights = np.array([r[3] for r in raw]) * detector_efficiency(energies, detector)
    total = weights.sum()
    if total <= 0:
        return []
    keep = weights / total >= _MIN_LINE_FRACTION
    weights = weights[keep] / weights[keep].sum()
    kept = [r for r, k in zip(raw, keep, strict=True) if k]
    return [
        Line(str(symbol), name, family, energy, float(w))
        for (name, family, energy, _), w in zip(kept, weights, strict=True)
    ]


def relative_sensitivity(
    symbol: str, incident_energy_keV: float, detector: Detector, min_energy_keV: float = 0.2
) -> float:
    """Detected photons per unit mass fraction (arbitrary common units): photoelectric cross
    section ``CS_Photo`` (cm2/g) times the detected photons per photoabsorption."""
    import xraylib

    z = _z(symbol)
    raw = [r for r in _emitted_lines(str(symbol), float(incident_energy_keV)) if r[2] >= min_energy_keV]
    if not raw:
        return 0.0
    energies = np.array([r[2] for r in raw])
    yields = np.array([r[3] for r in raw])
    return float(xraylib.CS_Photo(z, float(incident_energy_keV)) * np.sum(yields * detector_efficiency(energies, detector)))


def _si_escape_keV() -> float:
    import xraylib

    return float(xraylib.LineEnergy(14, xraylib.KL3_LINE))


def _si_k_edge_keV() -> float:
    import xraylib

    return float(xraylib.EdgeEnergy(14, xraylib.K_SHELL))


# --------------------------------------------------------------------------------------------
# detector response
# --------------------------------------------------------------------------------------------


@functools.cache
def _subsamples(detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    """Energies (C, S) of sub-channel midpoints and the channel width dE/dch there (keV)."""
    offsets = (np.arange(_OVERSAMPLE) + 0.5) / _OVERSAMPLE - 0.5
    ch = np.arange(detector.n_channels)[:, None] + offsets[None, :]
    energy = detector.energy_keV(ch)
    width = detector.gain_keV + 2 * detector.quadratic_keV * ch
    return energy, width


def _integrate(density, detector: Detector) -> np.ndarray:
    """Counts per channel of a density in energy (per keV), by the midpoint rule."""
    energy, width = _subsamples(detector)
    return np.mean(density(energy) * width, axis=1)


def _gaussian_density(e, centre, sigma):
    return np.exp(-0.5 * ((e - centre) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)


def _tail_density(e, centre, sigma, gamma):
    """Unit-area exponentially modified Gaussian extending to low energy."""
    x = (e - centre) / sigma
    b = x / np.sqrt(2) + 1 / (np.sqrt(2) * gamma)
    with np.errstate(over="ignore", under="ignore"):
        safe = np.exp(-0.5 * x**2) * erfcx(np.maximum(b, 0.0))
        direct = np.exp(np.minimum(x / gamma + 0.5 / gamma**2, 700.0)) * erfc(np.minimum(b, 0.0))
    return np.where(b > 0, safe, direct) / (2 * gamma * sigma)


def _step_density(e, centre, sigma):
    """Unit-area (for centre >> sigma) flat step from 0 keV to the line, smoothed by sigma."""
    return 0.5 * erfc((e - centre) / (np.sqrt(2) * sigma)) * (e > 0) / centre


def _shelf_density(e, centre, sigma):
    """Unit-area shelf rising linearly from 0 keV to the line, smoothed by sigma."""
    return np.clip(e, 0.0, None) / centre**2 * erfc((e - centre) / (np.sqrt(2) * sigma))


def _line_response(energy_keV: float, detector: Detector, shape: PeakShape) -> np.ndarray:
    """Counts per channel of one detected photon of a line (escape peak included)."""
    sigma = float(detector.sigma_keV(energy_keV))
    fg = 1.0 - shape.tail_fraction - shape.step_fraction - shape.shelf_fraction

    def density(e, centre=energy_keV, s=sigma):
        out = fg * _gaussian_density(e, centre, s)
        if shape.tail_fraction:
            out = out + shape.tail_fraction * _tail_density(e, centre, s, shape.tail_gamma)
        if shape.step_fraction:
            out = out + shape.step_fraction * _step_density(e, centre, s)
        if shape.shelf_fraction:
            out = out + shape.shelf_fraction * _shelf_density(e, centre, s)
        return out

    escape = shape.escape_fraction if energy_keV > _si_k_edge_keV() else 0.0
    counts = (1.0 - escape) * _integrate(density, detector)
    if escape:
        e_esc = energy_keV - _si_escape_keV()
        s_esc = float(detector.sigma_keV(e_esc))
        counts += escape * _integrate(lambda e: _gaussian_density(e, e_esc, s_esc), detector)
    return counts


def element_response(
    symbol: str, incident_energy_keV: float, detector: Detector, shape: PeakShape = PeakShape()
) -> np.ndarray:
    """Counts per channel of one detected count of an element (all its lines).

    Sums to less than 1 when part of the response (tails, steps, lines) falls outside the
    recorded channels.
    """
    lines = element_lines(symbol, incident_energy_keV, detector)
    if not lines:
        raise ValueError(f"{symbol} has no line excited at {incident_energy_keV} keV")
    out = np.zeros(detector.n_channels)
    for line in lines:
        out += line.fraction * _line_response(line.energy_keV, detector, shape)
    return out


def _scatter_responses(incident_energy_keV: float, detector: Detector, shape: PeakShape, scatter: Scatter):
    """Unit responses (counts per channel) of the elastic and the Compton peak."""
    e0 = float(incident_energy_keV)
    elastic = _line_response(e0, detector, shape)
    ec = compton_energy_keV(e0, scatter.angle_deg)
    s_det = float(detector.sigma_keV(ec))
    s = float(np.hypot(s_det, scatter.compton_sigma_keV))
    if scatter.compton_profile == "gaussian":
        def density(e):
            return _gaussian_density(e, ec, s)
    elif scatter.compton_profile == "voigt":
        def density(e):
            return voigt_profile(e - ec, s, scatter.compton_lorentz_hwhm_keV)
    else:
        lo, hi = s * scatter.compton_low_side_factor, s

        def density(e):
            width = np.where(e < ec, lo, hi)
            return np.exp(-0.5 * ((e - ec) / width) ** 2) * 2 / (np.sqrt(2 * np.pi) * (lo + hi))
    escape = shape.escape_fraction
    compton = (1 - escape) * _integrate(density, detector)
    if escape:
        e_esc = ec - _si_escape_keV()
        compton += escape * _integrate(lambda e: _gaussian_density(e, e_esc, s), detector)
    return elastic, compton, ec


def _continuum_shapes(incident_energy_keV: float, detector: Detector, continuum: Continuum) -> dict[str, np.ndarray]:
    """Unit-area (over 0 keV .. infinity) continuum shapes, counts per channel."""
    low = continuum.low_keV
    edge_width = 0.1
    high = incident_energy_keV if continuum.high_keV is None else continuum.high_keV
    high_width = float(detector.sigma_keV(high)) if np.isfinite(high) else 1.0

    def cut(e):
        upper = 0.5 * erfc((e - high) / (np.sqrt(2) * high_width)) if np.isfinite(high) else 1.0
        return 0.5 * (1 + erf((e - low) / edge_width)) * upper

    shapes = {}
    grid = np.linspace(1e-3, max(4 * incident_energy_keV, 50.0), 200001)  # for normalisation
    dgrid = grid[1] - grid[0]

    def normalised(f):
        area = float(np.sum(f(grid)) * dgrid)
        return _integrate(lambda e: f(e) / area, detector)

    if continuum.hump_counts:
        ec, w = continuum.hump_centre_keV, continuum.hump_log_width

        def hump(e):
            pos = np.maximum(e, 1e-6)
            return cut(e) * np.exp(-0.5 * (np.log(pos / ec) / w) ** 2) / pos * (e > 0)

        shapes["hump"] = normalised(hump)
    if continuum.exp_counts:
        def fall(e):
            return cut(e) * np.exp(-np.clip(e, 0, None) / continuum.exp_decay_keV) * (e > 0)

        shapes["exponential"] = normalised(fall)
    if continuum.ramp_counts:
        end = continuum.ramp_end_keV or incident_energy_keV

        def ramp(e):
            return cut(e) * np.clip(end - e, 0.0, None) * (e > 0)

        shapes["ramp"] = normalised(ramp)
    return shapes


# --------------------------------------------------------------------------------------------
# one spectrum
# --------------------------------------------------------------------------------------------


@dataclass
class IndependentSpectrum:
    """A generated spectrum and its truth.

    Attributes
    ----------
    counts : ndarray (C,) int64
        Poisson counts (or the expected counts rounded when ``noise=False``).
    expected : ndarray (C,) float64
        Noise-free counts.
    energy_keV : ndarray (C,)
        True channel energies.
    incident_energy_keV : float
    detector : Detector
    shape : PeakShape
    scatter : Scatter
    continuum : Continuum
    element_counts : dict of str to float
        Detected counts of each element (all lines, whole response, before pile-up).
    element_counts_in_range : dict of str to float
        The part of each element's counts inside the recorded channels (after pile-up losses).
    lines : list of Line
        Every element line (fractions within each element).
    compton_energy_keV : float
    pileup_fraction : float
    components : dict of str to ndarray (C,)
        Expected counts of each part: elements, ``elastic``, ``compton``, continuum shapes,
        ``pileup``.
    """

    counts: np.ndarray
    expected: np.ndarray
    energy_keV: np.ndarray
    incident_energy_keV: float
    detector: Detector
    shape: PeakShape
    scatter: Scatter
    continuum: Continuum
    element_counts: dict[str, float]
    element_counts_in_range: dict[str, float]
    lines: list[Line]
    compton_energy_keV: float
    pileup_fraction: float
    components: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def elements(self) -> tuple[str, ...]:
        """The true element list."""
        return tuple(self.element_counts)


def _pileup(peaks: list[tuple[float, float]], detector: Detector, fraction: float, max_lines: int = 16) -> np.ndarray:
    """Sum peaks (Gaussian) of pairs of the strongest lines: ``fraction`` of the recorded
    events are sums, ``counts(i + j) = fraction * M * w_i * w_j`` over ordered pairs."""
    peaks = sorted((p for p in peaks if p[1] > 0), key=lambda p: -p[1])
    total = sum(c for _, c in peaks)
    top = peaks[:max_lines]
    out = np.zeros(detector.n_channels)
    if total <= 0 or fraction <= 0:
        return out
    recorded = total / (1 + fraction)
    for ei, ci in top:
        for ej, cj in top:
            e_sum = ei + ej
            s = float(detector.sigma_keV(e_sum))
            out += fraction * recorded * (ci / total) * (cj / total) * _integrate(
                lambda e, c=e_sum, s=s: _gaussian_density(e, c, s), detector
            )
    return out


def independent_spectrum(
    element_counts: Mapping[str, float],
    incident_energy_keV: float,
    *,
    detector: Detector = Detector(),
    shape: PeakShape = PeakShape(),
    scatter: Scatter = Scatter(),
    continuum: Continuum = Continuum(),
    pileup_fraction: float = 0.0,
    seed: int | None = 0,
    noise: bool = True,
) -> IndependentSpectrum:
    """One summed spectrum from the independent model.

    Parameters
    ----------
    element_counts : mapping of str to float
        Detected counts of each element (all lines, escape peaks, tails), e.g.
        ``{"Fe": 1e6, "Zn": 2e5}``. See :func:`counts_from_concentrations` for weights.
    incident_energy_keV : float
        Incident photon energy (keV).
    detector, shape, scatter, continuum
        Detector/MCA, peak shape, scatter and continuum settings.
    pileup_fraction : float
        Fraction of recorded events that are pile-up sums of two photons (0: none).
    seed : int or None
        Seed of the Poisson draw (``numpy.random.default_rng``).
    noise : bool
        False: ``counts`` is the expected spectrum rounded to integers.

    Returns
    -------
    IndependentSpectrum
    """
    e0 = float(incident_energy_keV)
    components: dict[str, np.ndarray] = {}
    lines: list[Line] = []
    peaks: list[tuple[float, float]] = []  # (energy, counts) for pile-up
    for symbol, n in element_counts.items():
        element_lines_ = element_lines(symbol, e0, detector)
        if not element_lines_:
            raise ValueError(f"{symbol} has no line excited at {e0} keV")
        lines.extend(element_lines_)
        components[symbol] = float(n) * element_response(symbol, e0, detector, shape)
        peaks.extend((line.energy_keV, float(n) * line.fraction) for line in element_lines_)
    elastic, compton, ec = _scatter_responses(e0, detector, shape, scatter)
    if scatter.elastic_counts:
        components["elastic"] = scatter.elastic_counts * elastic
        peaks.append((e0, scatter.elastic_counts))
    if scatter.compton_counts:
        components["compton"] = scatter.compton_counts * compton
        peaks.append((ec, scatter.compton_counts))
    if pileup_fraction:
        # recorded single events are (1 - p) M of M = N / (1 + p) recorded events
        keep = (1 - pileup_fraction) / (1 + pileup_fraction)
        components = {k: v * keep for k, v in components.items()}
        components["pileup"] = _pileup(peaks, detector, pileup_fraction)
    for name, unit in _continuum_shapes(e0, detector, continuum).items():
        components[name] = getattr(continuum, f"{'exp' if name == 'exponential' else name}_counts") * unit
    expected = np.sum(list(components.values()), axis=0) if components else np.zeros(detector.n_channels)
    rng = np.random.default_rng(seed)
    counts = rng.poisson(expected) if noise else np.rint(expected).astype(np.int64)
    return IndependentSpectrum(
        counts=counts.astype(np.int64),
        expected=expected,
        energy_keV=detector.channel_energy_keV,
        incident_energy_keV=e0,
        detector=detector,
        shape=shape,
        scatter=scatter,
        continuum=continuum,
        element_counts={str(k): float(v) for k, v in element_counts.items()},
        element_counts_in_range={k: float(components[k].sum()) for k in element_counts},
        lines=lines,
        compton_energy_keV=ec,
        pileup_fraction=float(pileup_fraction),
        components=components,
    )


def counts_from_concentrations(
    concentrations: Mapping[str, float], incident_energy_keV: float, total_counts: float, detector: Detector = Detector()
) -> dict[str, float]:
    """Element counts from mass-fraction-like weights: each weight times the element's
    :func:`relative_sensitivity`, scaled so the elements sum to ``total_counts``."""
    raw = {k: float(v) * relative_sensitivity(k, incident_energy_keV, detector) for k, v in concentrations.items()}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("no element is excited")
    return {k: total_counts * v / total for k, v in raw.items()}


# --------------------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------------------


def smooth_fields(shape: tuple[int, int], n_fields: int, rng: np.random.Generator, correlation_px: float = 8.0, contrast: float = 1.0) -> np.ndarray:
    """Smooth positive random fields with mean 1, shape ``(n_fields, ny, nx)``: the exponential
    of Gaussian-filtered white noise (unit variance after filtering) times ``contrast``, plus a
    few Gaussian blobs, normalised to mean 1."""
    from scipy.ndimage import gaussian_filter

    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    out = np.empty((n_fields, ny, nx))
    for k in range(n_fields):
        z = gaussian_filter(rng.standard_normal(shape), min(correlation_px, min(ny, nx) / 4), mode="wrap")
        z -= z.mean()
        z = np.clip(z / z.std(), -4.0, 4.0) if z.std() > 1e-12 else np.zeros(shape)
        field_ = np.exp(contrast * z)
        for _ in range(3):
            cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
            r = rng.uniform(0.05, 0.15) * min(ny, nx)
            field_ += rng.uniform(1.0, 3.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        out[k] = field_ / field_.mean()
    return out


@dataclass
class IndependentMap:
    """A generated map and its truth.

    Attributes
    ----------
    counts : ndarray (ny, nx, C) uint32
        Poisson counts per pixel.
    element_counts : ndarray (n_elements, ny, nx)
        Expected detected counts of each element per pixel (all lines, whole response).
    continuum_counts : ndarray (ny, nx)
        Expected continuum counts per pixel.
    elements : tuple of str
    energy_keV : ndarray (C,)
        True (exact) channel energies.
    incident_energy_keV : float
    detector : Detector
    shape : PeakShape
    scatter : Scatter
    continuum : Continuum
    step_um : float
        Pixel step (um).
    seed : int
    """

    counts: np.ndarray
    element_counts: np.ndarray
    continuum_counts: np.ndarray
    elements: tuple[str, ...]
    energy_keV: np.ndarray
    incident_energy_keV: float
    detector: Detector
    shape: PeakShape
    scatter: Scatter
    continuum: Continuum
    step_um: float
    seed: int | None

    @property
    def summed(self) -> np.ndarray:
        """The summed spectrum (float64)."""
        return self.counts.sum(axis=(0, 1), dtype=np.float64)


def independent_map(
    shape: tuple[int, int] = (128, 128),
    elements: Sequence[str] = ("Ca", "Fe", "Cu", "Zn"),
    mean_counts: Mapping[str, float] | Sequence[float] = (400.0, 150.0, 25.0, 60.0),
    incident_energy_keV: float = 10.0,
    *,
    detector: Detector = Detector(),
    peak_shape: PeakShape = PeakShape(),
    scatter: Scatter = Scatter(),
    continuum: Continuum = Continuum(hump_counts=300.0, hump_centre_keV=5.0, hump_log_width=0.45),
    step_um: float = 0.5,
    correlation_px: float = 8.0,
    seed: int | None = 0,
) -> IndependentMap:
    """A map of spectra (the "other XRF code's benchmark map").

    Every element has its own smooth random concentration field (mean 1, see
    :func:`smooth_fields`) times its mean counts per pixel; the continuum follows one more field
    (a matrix) with weaker contrast. Scatter, when given, scales with the matrix field too.

    Parameters
    ----------
    shape : (ny, nx)
        Pixels.
    elements : sequence of str
    mean_counts : mapping or sequence of float
        Mean detected counts per pixel of each element.
    incident_energy_keV : float
    detector, peak_shape, scatter, continuum
        As in :func:`independent_spectrum`; counts of the scatter and continuum are per pixel
        on average.
    step_um : float
        Raster step (um).
    correlation_px : float
        Correlation length of the fields (pixels).
    seed : int or None

    Returns
    -------
    IndependentMap
    """
    elements = tuple(str(e) for e in elements)
    if isinstance(mean_counts, Mapping):
        means = np.array([float(mean_counts[e]) for e in elements])
    else:
        means = np.asarray(mean_counts, dtype=float)
    if means.shape != (len(elements),):
        raise ValueError("mean_counts must give one value per element")
    rng = np.random.default_rng(seed)
    e0 = float(incident_energy_keV)
    ny, nx = shape
    fields = smooth_fields((ny, nx), len(elements) + 1, rng, correlation_px)
    matrix = 0.7 + 0.3 * fields[-1]
    element_counts = means[:, None, None] * fields[:-1]
    responses = [element_response(e, e0, detector, peak_shape) for e in elements]
    columns = list(responses)
    amounts = [element_counts[i].ravel() for i in range(len(elements))]
    cont_total = np.zeros(ny * nx)
    for name, unit in _continuum_shapes(e0, detector, continuum).items():
        level = getattr(continuum, f"{'exp' if name == 'exponential' else name}_counts")
        columns.append(unit)
        amounts.append(level * matrix.ravel())
        cont_total += level * matrix.ravel()
    elastic, compton, _ = _scatter_responses(e0, detector, peak_shape, scatter)
    for counts_, unit in ((scatter.elastic_counts, elastic), (scatter.compton_counts, compton)):
        if counts_:
            columns.append(unit)
            amounts.append(counts_ * matrix.ravel())
    design = np.asarray(columns, dtype=np.float64)  # (k, C)
    weights = np.asarray(amounts, dtype=np.float64).T  # (P, k)
    counts = np.empty((ny * nx, detector.n_channels), dtype=np.uint32)
    block = 1024
    for start in range(0, ny * nx, block):
        sl = slice(start, min(start + block, ny * nx))
        counts[sl] = rng.poisson(weights[sl] @ design)
    return IndependentMap(
        counts=counts.reshape(ny, nx, detector.n_channels),
        element_counts=element_counts,
        continuum_counts=cont_total.reshape(ny, nx),
        elements=elements,
        energy_keV=detector.channel_energy_keV,
        incident_energy_keV=e0,
        detector=detector,
        shape=peak_shape,
        scatter=scatter,
        continuum=continuum,
        step_um=float(step_um),
        seed=seed,
    )


def write_map_scan(
    result: IndependentMap,
    path: str | os.PathLike,
    *,
    calibration_keV: tuple[float, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a map in xmulti's combined-scan layout (XRF only), truth in ``/truth``.

    Parameters
    ----------
    result : IndependentMap
    path : path-like
    calibration_keV : (offset, gain), optional
        Nominal calibration to write instead of the exact energy axis (``/xrf/energy``).
    overwrite : bool

    Returns
    -------
    Path
    """
    from ..io.layout import XRFData, write_scan

    ny, nx, n_ch = result.counts.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    positions = np.stack([yy.ravel(), xx.ravel()], axis=1) * result.step_um
    xrf = XRFData(
        spectra=result.counts.reshape(ny * nx, n_ch),
        positions_um=positions,
        energy_keV=None if calibration_keV else result.energy_keV,
        calibration_keV=calibration_keV,
    )
    truth = {
        "@attrs": {
            "source": "xmulti.simulate.independent_xrf",
            "seed": -1 if result.seed is None else int(result.seed),
            "description": "element_counts = expected detected counts of all lines of each element "
            "per pixel (whole detector response, escape peaks included)",
            **{f"detector_{k}": v for k, v in dataclasses.asdict(result.detector).items()},
            **{f"peak_shape_{k}": v for k, v in dataclasses.asdict(result.shape).items()},
        },
        "elements": (("element",), np.array(result.elements, dtype="S")),
        "element_counts": (("element", "y", "x"), result.element_counts.astype(np.float32)),
        "continuum_counts": (("y", "x"), result.continuum_counts.astype(np.float32)),
        "channel_energy": (("channel",), result.energy_keV),
    }
    return write_scan(
        path,
        incident_energy_keV=result.incident_energy_keV,
        scan_shape=(ny, nx),
        xrf=xrf,
        extra_groups={"truth": truth},
        attrs={"source": "xmulti.simulate.independent_xrf"},
        overwrite=overwrite,
    )


# --------------------------------------------------------------------------------------------
# named cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutsideCase:
    """A named outside test case and its truth.

    Attributes
    ----------
    name : str
    description : str
    elements : tuple of str
        The true element list.
    incident_energy_keV : float
    kind : {"spectrum", "map"}
    settings : dict
        Keyword arguments of :func:`independent_spectrum` (``element_counts``, ``detector``...)
        or :func:`independent_map`.
    nominal_calibration_keV : (offset, gain)
        The "MCA calibration" a user would start from (off the truth by a stated amount).
    alternatives : dict of str to tuple of str
        For ambiguous overlaps: each true element and the elements that could be read instead.
    """

    name: str
    description: str
    elements: tuple[str, ...]
    incident_energy_keV: float
    kind: str
    settings: dict
    nominal_calibration_keV: tuple[float, float]
    alternatives: dict = field(default_factory=dict)

    @property
    def detector(self) -> Detector:
        """The true detector."""
        return self.settings.get("detector", Detector())

    def make(self, seed: int = 0, **overrides):
        """Generate the case: an :class:`IndependentSpectrum` or :class:`IndependentMap`."""
        settings = {**self.settings, **overrides}
        if self.kind == "map":
            return independent_map(incident_energy_keV=self.incident_energy_keV, seed=seed, **settings)
        return independent_spectrum(incident_energy_keV=self.incident_energy_keV, seed=seed, **settings)


def outside_cases() -> dict[str, OutsideCase]:
    """The named outside cases, each with its true element list.

    Every case's nominal calibration is off the truth (offset by +15 eV, gain by +0.4 %, unless
    stated), as an MCA's nominal calibration is.
    """
    det = Detector(n_channels=2048, offset_keV=-0.02, gain_keV=0.01, fwhm_offset_keV=0.1, fanoprime=1.2e-4)
    shape = PeakShape(tail_fraction=0.03, tail_gamma=2.5, step_fraction=0.003, escape_fraction=0.01)
    bio = {"P": 2e5, "S": 3e5, "K": 4e5, "Ca": 5e5, "Fe": 3e5, "Cu": 4e4, "Zn": 1e5}
    bio_scatter = Scatter(elastic_counts=2e5, compton_counts=1.2e6, angle_deg=90.0)
    bio_cont = Continuum(hump_counts=1.5e6, hump_centre_keV=5.0, hump_log_width=0.6, exp_counts=3e5, exp_decay_keV=1.5)

    def nominal(d: Detector, offset_shift_keV: float = 0.015, gain_scale: float = 1.004):
        return (d.offset_keV + offset_shift_keV, d.gain_keV * gain_scale)

    def spectrum_case(name, description, counts, e0, *, detector=det, shape_=shape, scatter=bio_scatter,
                      continuum=bio_cont, pileup=0.0, alternatives=None, nominal_=None):
        return OutsideCase(
            name=name,
            description=description,
            elements=tuple(counts),
            incident_energy_keV=e0,
            kind="spectrum",
            settings=dict(element_counts=dict(counts), detector=detector, shape=shape_, scatter=scatter,
                          continuum=continuum, pileup_fraction=pileup),
            nominal_calibration_keV=nominal_ or nominal(detector),
            alternatives=alternatives or {},
        )

    cases = [
        spectrum_case("bio7", "biological cell: P S K Ca Fe Cu Zn, elastic + Compton at 10 keV, 90 deg, escape 1 %",
                      bio, 10.0),
        spectrum_case("bio7_escape0", "bio7 without escape peaks", bio, 10.0,
                      shape_=dataclasses.replace(shape, escape_fraction=0.0)),
        spectrum_case("bio7_escape2", "bio7 with 2 % escape", bio, 10.0,
                      shape_=dataclasses.replace(shape, escape_fraction=0.02)),
        spectrum_case("bio7_voigt_compton", "bio7 with a Voigt Compton peak (Lorentz HWHM 0.2 keV)", bio, 10.0,
                      scatter=dataclasses.replace(bio_scatter, compton_profile="voigt", compton_lorentz_hwhm_keV=0.2)),
        spectrum_case("bio7_asymmetric_compton", "bio7 with a split-Gaussian Compton (low side 2.5x wider)", bio, 10.0,
                      scatter=dataclasses.replace(bio_scatter, compton_profile="asymmetric", compton_low_side_factor=2.5)),
        spectrum_case("bio7_strong_tails", "bio7 with strong low-energy tails (15 %, gamma 3), step 1 %, shelf 2 %",
                      bio, 10.0, shape_=PeakShape(tail_fraction=0.15, tail_gamma=3.0, step_fraction=0.01,
                                                  shelf_fraction=0.02, escape_fraction=0.01)),
        spectrum_case("bio7_no_scatter", "bio7 with neither elastic nor Compton peak", bio, 10.0, scatter=Scatter()),
        spectrum_case("bio7_continuum_above_e0", "bio7 with the continuum not cut at E0 (hump and fall go on above it)",
                      bio, 10.0, continuum=dataclasses.replace(bio_cont, high_keV=float("inf"))),
        spectrum_case("l_lines", "L lines of Ba, Au, Pb with K lines of Ca, Fe, Zn at 16 keV",
                      {"Ca": 3e5, "Fe": 5e5, "Zn": 2e5, "Ba": 2e5, "Au": 1e5, "Pb": 3e5}, 16.0,
                      scatter=Scatter(elastic_counts=3e5, compton_counts=8e5, angle_deg=90.0)),
        spectrum_case("pileup", "Ca, Fe, Zn at 15 keV with 1 % pile-up (Fe+Fe sum at 12.8 keV)",
                      {"Ca": 1e6, "Fe": 3e6, "Zn": 5e5}, 15.0, pileup=0.01,
                      scatter=Scatter(elastic_counts=2e5, compton_counts=8e5)),
        spectrum_case("scatter_outside_range", "E0 = 25 keV above the recorded range (0 - 20.5 keV): Ca Fe Zn Sr Mo",
                      {"Ca": 2e5, "Fe": 5e5, "Zn": 2e5, "Sr": 3e5, "Mo": 2e5}, 25.0,
                      scatter=Scatter(elastic_counts=5e5, compton_counts=2e6)),
        spectrum_case("ti_vs_ba_is_ti", "Ti K (4.51 keV) where Ba L (4.47 keV) could be read; truth Ti",
                      {"Ca": 3e5, "Ti": 2e5, "Fe": 3e5}, 10.0, alternatives={"Ti": ("Ba",)}),
        spectrum_case("ti_vs_ba_is_ba", "Ba L (4.47 keV) where Ti K (4.51 keV) could be read; truth Ba",
                      {"Ca": 3e5, "Ba": 3e5, "Fe": 3e5}, 10.0, alternatives={"Ba": ("Ti",)}),
        spectrum_case("s_pb_mo_is_s", "S K (2.31) vs Pb M (2.35) vs Mo L (2.29) at 10 keV; truth S",
                      {"S": 3e5, "Ca": 2e5, "Fe": 3e5}, 10.0, alternatives={"S": ("Pb", "Mo")}),
        spectrum_case("s_pb_mo_is_pb", "S K vs Pb M vs Mo L at 10 keV (Pb L not excited); truth Pb",
                      {"Pb": 3e5, "Ca": 2e5, "Fe": 3e5}, 10.0, alternatives={"Pb": ("S", "Mo")}),
        spectrum_case("s_pb_mo_is_mo", "S K vs Pb M vs Mo L at 10 keV (Mo K not excited); truth Mo",
                      {"Mo": 3e5, "Ca": 2e5, "Fe": 3e5}, 10.0, alternatives={"Mo": ("S", "Pb")}),
        spectrum_case("as_vs_pb_is_as", "As K (10.54) vs Pb L (10.55) at 15 keV; truth As",
                      {"As": 2e5, "Fe": 5e5, "Zn": 3e5}, 15.0, alternatives={"As": ("Pb",)},
                      scatter=Scatter(elastic_counts=2e5, compton_counts=8e5)),
        spectrum_case("as_vs_pb_is_pb", "As K (10.54) vs Pb L (10.55) at 15 keV; truth Pb",
                      {"Pb": 3e5, "Fe": 5e5, "Zn": 3e5}, 15.0, alternatives={"Pb": ("As",)},
                      scatter=Scatter(elastic_counts=2e5, compton_counts=8e5)),
    ]
    map_detector = Detector(n_channels=2048, offset_keV=0.0, gain_keV=0.01, fwhm_offset_keV=0.1, fanoprime=1.2e-4)
    cases.append(
        OutsideCase(
            name="hump_map",
            description="benchmark map 128 x 128 x 2048: Ca Fe Cu Zn, broad continuum hump, no scatter, exact energy axis",
            elements=("Ca", "Fe", "Cu", "Zn"),
            incident_energy_keV=10.0,
            kind="map",
            settings=dict(
                shape=(128, 128),
                elements=("Ca", "Fe", "Cu", "Zn"),
                mean_counts=(400.0, 150.0, 25.0, 60.0),
                detector=map_detector,
                peak_shape=PeakShape(),
                scatter=Scatter(),
                continuum=Continuum(hump_counts=300.0, hump_centre_keV=5.0, hump_log_width=0.45),
            ),
            nominal_calibration_keV=(map_detector.offset_keV, map_detector.gain_keV),
        )
    )
    return {case.name: case for case in cases}
