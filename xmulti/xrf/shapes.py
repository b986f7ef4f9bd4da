"""Detector response shapes: channel energies, channel-integrated Gaussian peaks with Si escape,
scatter peaks, the smooth continuum basis and pile-up (kernels used by :mod:`xmulti.xrf.model`).

Detector response: every line is a Gaussian with
``sigma^2 = (noise / 2.3548)^2 + 0.00385 * fano * E`` (keV), integrated over each channel's
energy bin, and loses a fraction ``f(E)`` (Reed & Ware, J. Phys. E 5, 582 (1972),
:func:`xmulti.physics.si_escape_fraction`) of its counts to a Si escape peak 1.740 keV below.
Channel energies: ``E(ch) = offset + gain * ch + quadratic * ch^2`` (keV) at the channel centre;
channel ``ch`` covers ``[E(ch - 1/2), E(ch + 1/2)]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import physics
from ..errors import InvalidInputError

if TYPE_CHECKING:
    from .model import Calibration

__all__ = [
    "channel_energies_keV",
    "channel_edges_keV",
    "gaussian_peaks",
    "peak_columns",
    "continuum_basis",
    "pileup_column",
]

#: Si K edge (keV): escape peaks exist only for photons above it.
_SI_K_EDGE_KEV = 1.8389


def channel_energies_keV(channels, calibration: Calibration, xp=np):
    """Energy (keV) at the centre of channels: ``offset + gain * ch + quadratic * ch^2``."""
    ch = xp.asarray(channels, dtype=xp.float64)
    return calibration.offset_keV + calibration.gain_keV * ch + calibration.quadratic_keV * ch**2


def channel_edges_keV(channels, calibration: Calibration, xp=np):
    """Lower and upper energy (keV) of each channel's bin, ``E(ch -/+ 1/2)``."""
    ch = xp.asarray(channels, dtype=xp.float64)
    return (
        channel_energies_keV(ch - 0.5, calibration, xp),
        channel_energies_keV(ch + 0.5, calibration, xp),
    )


def gaussian_peaks(edges_lo, edges_hi, centres_keV, sigmas_keV, xp=np):
    """Channel-integrated unit-area Gaussians.

    Parameters
    ----------
    edges_lo, edges_hi : ndarray (n_channels,)
        Channel bin edges (keV).
    centres_keV, sigmas_keV : ndarray (n_peaks,)
        Peak centres and widths (keV).

    Returns
    -------
    ndarray (n_channels, n_peaks)
        Fraction of each peak's counts falling in each channel.
    """
    from scipy.special import erf

    centres = xp.asarray(centres_keV, dtype=xp.float64)[None, :]
    scale = 1.0 / (np.sqrt(2.0) * xp.asarray(sigmas_keV, dtype=xp.float64)[None, :])
    hi = erf((xp.asarray(edges_hi)[:, None] - centres) * scale)
    lo = erf((xp.asarray(edges_lo)[:, None] - centres) * scale)
    return 0.5 * (hi - lo)


def _lines_with_escape(energies, weights, calibration: Calibration, escape: bool):
    """Expand lines into (centre, sigma, weight) of parent and escape peaks."""
    energies = np.asarray(energies, dtype=float)
    weights = np.asarray(weights, dtype=float)
    sigmas = physics.detector_sigma_keV(energies, calibration.noise_fwhm_keV, calibration.fano)
    if not escape:
        return energies, sigmas, weights
    fraction = np.where(energies > _SI_K_EDGE_KEV, physics.si_escape_fraction(energies), 0.0)
    esc_e = energies - physics.SI_KA_ESCAPE_KEV
    keep = fraction > 0
    esc_sigma = physics.detector_sigma_keV(
        np.maximum(esc_e[keep], 0.0), calibration.noise_fwhm_keV, calibration.fano
    )
    return (
        np.concatenate([energies, esc_e[keep]]),
        np.concatenate([sigmas, esc_sigma]),
        np.concatenate([weights * (1.0 - fraction), (weights * fraction)[keep]]),
    )


def peak_columns(
    components,
    channels,
    calibration: Calibration,
    incident_energy_keV: float,
    scattering_angle_deg: float = 90.0,
    escape: bool = True,
    be_window_um: float = 8.0,
    si_thickness_mm: float = 0.35,
    scatter_escape: bool = True,
) -> np.ndarray:
    """Design-matrix columns of element and scatter components.

    Each column has unit total area over the whole energy axis (counts outside ``channels`` are
    counted in the amplitude but not in the column), so an amplitude is the number of detected
    counts of the component. Within an element family the emitted line weights are multiplied by
    the detector efficiency and renormalised: the amplitude counts detected photons.

    Parameters
    ----------
    components : sequence of Component
        Element and scatter components (``"elastic"``, ``"compton"``).
    channels : ndarray (n,)
        Channel numbers of the rows.
    calibration : Calibration
    incident_energy_keV : float
    scattering_angle_deg : float
        Detector angle from the beam (90 degrees at 2-ID-E).
    escape : bool
        Include Si escape peaks.
    be_window_um, si_thickness_mm : float
        Detector window and sensor thickness for the efficiency.
    scatter_escape : bool
        Escape peaks of the elastic and Compton peaks too (about 0.1 % of them at 10 keV,
        landing near Cu K-alpha).

    Returns
    -------
    ndarray (n, len(components)) float64
    """
    lo, hi = channel_edges_keV(channels, calibration)
    columns = np.zeros((len(lo), len(components)))
    for k, comp in enumerate(components):
        if comp.kind == "element":
            energies = np.asarray(comp.line_energies_keV)
            eff = physics.detector_efficiency(energies, be_window_um, si_thickness_mm)
            weights = np.asarray(comp.line_weights) * eff
            weights = weights / weights.sum()
            centres, sigmas, w = _lines_with_escape(energies, weights, calibration, escape)
        elif comp.name == "elastic":
            centres, sigmas, w = _lines_with_escape(
                [incident_energy_keV], [1.0], calibration, escape and scatter_escape
            )
        elif comp.name == "compton":
            ec = (
                physics.compton_energy_keV(incident_energy_keV, scattering_angle_deg)
                + calibration.compton_shift_keV
            )
            centres, sigmas, w = _lines_with_escape([ec], [1.0], calibration, escape and scatter_escape)
            sigmas = np.sqrt(sigmas**2 + calibration.compton_width_keV**2)
        else:
            raise InvalidInputError(f"component {comp.name!r} is not a peak component")
        columns[:, k] = gaussian_peaks(lo, hi, centres, sigmas) @ w
    return columns


def continuum_basis(
    channels, n_basis: int, edge_channel: float | None = None, edge_width_channels: float = 0.0
) -> np.ndarray:
    """Smooth continuum basis: ``n_basis`` cubic B-splines, optionally ending at a scatter edge.

    Uniform knots, clamped at both ends, so the functions are non-negative, sum to one at every
    channel, and are smooth on a scale of ``range / (n_basis - 3)`` channels - far wider than a
    peak, so they absorb the continuum but not the lines.

    The continuum of a fluorescence spectrum (incomplete charge collection and multiple
    scattering of the scattered photons, bremsstrahlung of photoelectrons) stops at the energy
    of the scattered photons. With ``edge_channel`` the splines span the channels up to that edge
    and are multiplied by a step ``erfc((ch - edge) / (sqrt(2) width)) / 2`` that falls there
    with the scatter peak's width, so a sharp edge needs no extra smooth functions.

    Parameters
    ----------
    channels : ndarray (n,)
        Channel numbers (increasing).
    n_basis : int
        Number of functions (>= 1; 1 gives a constant, 2 a straight line, 3 a quadratic).
    edge_channel : float, optional
        Channel (fractional) of the high-energy edge of the continuum (the Compton peak).
    edge_width_channels : float
        Gaussian width of the edge (channels).

    Returns
    -------
    ndarray (n, n_basis) float64
    """
    from scipy.interpolate import BSpline
    from scipy.special import erfc

    x = np.asarray(channels, dtype=float)
    if n_basis < 1:
        raise InvalidInputError(f"n_continuum must be >= 1, got {n_basis}")
    degree = min(3, n_basis - 1)
    lo, hi = x[0], x[-1]
    if edge_channel is not None and lo + 16 < edge_channel < hi:
        hi = float(edge_channel)
    n_inner = n_basis - degree - 1
    inner = np.linspace(lo, hi, n_inner + 2)[1:-1]
    knots = np.concatenate([[lo] * (degree + 1), inner, [hi] * (degree + 1)])
    basis = BSpline.design_matrix(np.clip(x, lo, hi), knots, degree).toarray()
    if edge_channel is not None:
        width = max(float(edge_width_channels), 1e-3)
        basis *= 0.5 * erfc((x - float(edge_channel)) / (np.sqrt(2.0) * width))[:, None]
    return basis


def pileup_column(
    line_energies_keV, line_counts, channels, calibration: Calibration
) -> np.ndarray:
    """Pile-up (sum peak) shape: pairs of detected photons recorded as one.

    The rate of a pair (i, j) is proportional to ``n_i n_j`` and it appears at ``E_i + E_j``
    with the detector width at that energy. Normalised to unit area.

    Parameters
    ----------
    line_energies_keV, line_counts : ndarray (n_lines,)
        Energies and detected counts of the main lines (e.g. from the summed-spectrum fit).
    channels : ndarray
        Channel numbers of the rows.
    calibration : Calibration
    """
    e = np.asarray(line_energies_keV, dtype=float)
    n = np.asarray(line_counts, dtype=float)
    sums = (e[:, None] + e[None, :]).ravel()
    rates = (n[:, None] * n[None, :]).ravel()
    keep = rates > 1e-6 * rates.max() if rates.size else np.zeros(0, bool)
    lo, hi = channel_edges_keV(channels, calibration)
    if not keep.any():
        return np.zeros(len(lo))
    sig = physics.detector_sigma_keV(sums[keep], calibration.noise_fwhm_keV, calibration.fano)
    w = rates[keep] / rates[keep].sum()
    return gaussian_peaks(lo, hi, sums[keep], sig) @ w
