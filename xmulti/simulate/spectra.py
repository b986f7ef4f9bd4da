"""Simulated fluorescence spectra: detector response of lines, escape peaks, scatter, continuum.

This is the simulator's own, deliberately plain model (independent of the fitting code in
:mod:`xmulti.xrf`, so fits are tested against physics, not against themselves). Peaks are
integrated over each channel's energy interval (erf differences), not sampled at its centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf, erfc

from .. import physics

__all__ = ["DetectorModel", "channel_energies_keV", "gaussian_counts", "element_components", "scatter_components"]


@dataclass(frozen=True)
class DetectorModel:
    """An energy-dispersive detector: MCA calibration, resolution, window and crystal."""

    n_channels: int
    offset_keV: float
    gain_keV: float
    quadratic_keV: float
    noise_fwhm_keV: float
    fano: float
    be_window_um: float
    si_thickness_mm: float


def channel_energies_keV(detector: DetectorModel, edges: bool = False) -> np.ndarray:
    """Energy of channel centres (or of the n + 1 channel edges) (keV)."""
    ch = np.arange(detector.n_channels + 1) - 0.5 if edges else np.arange(detector.n_channels)
    return detector.offset_keV + detector.gain_keV * ch + detector.quadratic_keV * ch**2


def gaussian_counts(edges_keV: np.ndarray, centre_keV: float, sigma_keV: float) -> np.ndarray:
    """Fraction of a unit-area Gaussian falling in each channel (from the n + 1 edges)."""
    cdf = 0.5 * (1.0 + erf((edges_keV - centre_keV) / (np.sqrt(2.0) * sigma_keV)))
    return np.diff(cdf)


def element_components(
    elements: tuple[str, ...], incident_energy_keV: float, detector: DetectorModel
) -> np.ndarray:
    """Per-element spectrum of one detected count, shape (n_elements, n_channels).

    Line intensities: xraylib fluorescence cross-sections at the incident energy times the
    detector efficiency at the line energy, normalised to one detected count per element. Each
    line loses its Si escape fraction into an escape peak 1.740 keV lower.
    """
    edges = channel_energies_keV(detector, edges=True)
    out = np.zeros((len(elements), detector.n_channels))
    for i, symbol in enumerate(elements):
        lines = physics.emission_lines(symbol, incident_energy_keV)
        energies = np.array([line.energy_keV for line in lines])
        weights = np.array([line.cross_section_cm2_g for line in lines]) * physics.detector_efficiency(
            energies, detector.be_window_um, detector.si_thickness_mm
        )
        escape = physics.si_escape_fraction(energies)
        for energy, weight, esc in zip(energies, weights, escape, strict=True):
            sigma = physics.detector_sigma_keV(energy, detector.noise_fwhm_keV, detector.fano)
            out[i] += weight * (1.0 - esc) * gaussian_counts(edges, energy, sigma)
            if esc > 0:
                e_esc = energy - physics.SI_KA_ESCAPE_KEV
                sigma_esc = physics.detector_sigma_keV(e_esc, detector.noise_fwhm_keV, detector.fano)
                out[i] += weight * esc * gaussian_counts(edges, e_esc, sigma_esc)
        out[i] /= weights.sum()
    return out


def scatter_components(
    incident_energy_keV: float, detector: DetectorModel, compton_extra_sigma_keV: float
) -> np.ndarray:
    """Unit-area elastic peak, Compton peak and continuum shape, shape (3, n_channels).

    The scatter peaks include their Si escape peaks, 1.740 keV lower.

    The continuum (incomplete charge collection and multiple scattering) is a smooth shelf below
    the scatter peaks that rises towards low energy; it is not one of any fit's basis functions.
    """
    edges = channel_energies_keV(detector, edges=True)
    centres = channel_energies_keV(detector)
    e0 = incident_energy_keV
    e_compton = physics.compton_energy_keV(e0, 90.0)
    sigma_el = physics.detector_sigma_keV(e0, detector.noise_fwhm_keV, detector.fano)
    sigma_c = np.hypot(
        physics.detector_sigma_keV(e_compton, detector.noise_fwhm_keV, detector.fano),
        compton_extra_sigma_keV,
    )
    # scatter photons lose Si K-alpha photons out of the detector too (about 0.1 % at 10 keV)
    esc_el, esc_c = physics.si_escape_fraction(np.array([e0, e_compton]))
    elastic = (1 - esc_el) * gaussian_counts(edges, e0, sigma_el) + esc_el * gaussian_counts(
        edges, e0 - physics.SI_KA_ESCAPE_KEV, physics.detector_sigma_keV(e0 - physics.SI_KA_ESCAPE_KEV, detector.noise_fwhm_keV, detector.fano))
    compton = (1 - esc_c) * gaussian_counts(edges, e_compton, sigma_c) + esc_c * gaussian_counts(
        edges, e_compton - physics.SI_KA_ESCAPE_KEV, sigma_c)
    shelf = 0.5 * erfc((centres - e_compton) / (np.sqrt(2.0) * sigma_c))
    continuum = shelf * (0.35 + np.exp(-np.clip(centres, 0.0, None) / 2.2)) * (centres > 0.3)
    continuum = continuum / continuum.sum()
    return np.stack([elastic, compton, continuum])


def scatter_cross_sections_cm2_g(
    formula: str, incident_energy_keV: float, cone_half_angle_deg: float = 20.0
) -> tuple[float, float]:
    """Rayleigh and Compton cross-sections (cm2/g) into a detector at 90 degrees in the
    polarisation plane, averaged over a cone of directions around it and multiplied by 4 pi
    (so that ``counts = flux * areal_mass * cross_section`` with the detector's solid-angle
    fraction already inside ``flux``). Linearly polarised beam: xraylib ``DCSP_*_CP``.
    """
    import xraylib

    half = np.deg2rad(cone_half_angle_deg)
    offsets = np.linspace(-half, half, 5)
    rayl, compt = [], []
    for dtheta in offsets:
        for dphi in offsets:
            theta, phi = np.pi / 2 + dtheta, dphi
            rayl.append(xraylib.DCSP_Rayl_CP(formula, incident_energy_keV, theta, phi))
            compt.append(xraylib.DCSP_Compt_CP(formula, incident_energy_keV, theta, phi))
    return 4 * np.pi * float(np.mean(rayl)), 4 * np.pi * float(np.mean(compt))
