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

import functools
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
#: Slope of the low-energy tail of a line, in detector sigmas (MAPS' 2-ID-E settings use 2.2).
TAIL_SLOPE_SIGMAS = 2.5
#: Lines lighter than this (fraction of their component's counts) get no tail.
_TAIL_MIN_WEIGHT = 0.01
#: Pile-up is built from this many of the strongest lines.
_PILEUP_LINES = 24
#: Pairs of lines whose pile-up rate is below this fraction of the strongest pair's are left out.
_PILEUP_MIN_RELATIVE = 1e-4
#: Half-width (in sigmas) of the window over which a line's channel integrals are evaluated;
#: beyond it a Gaussian holds less than 2e-9 of its area.
_WINDOW_SIGMAS = 6.0


@functools.lru_cache(maxsize=4096)
def _efficiency(energies_keV: tuple[float, ...], be_window_um: float, si_thickness_mm: float) -> np.ndarray:
    """Cached :func:`xmulti.physics.detector_efficiency` (xraylib per energy is slow)."""
    return physics.detector_efficiency(np.asarray(energies_keV), be_window_um, si_thickness_mm)


@functools.lru_cache(maxsize=4096)
def _escape_fraction(energies_keV: tuple[float, ...]) -> np.ndarray:
    """Cached :func:`xmulti.physics.si_escape_fraction`, zero below the Si K edge."""
    energies = np.asarray(energies_keV)
    return np.where(energies > _SI_K_EDGE_KEV, physics.si_escape_fraction(energies), 0.0)


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


#: Energy (keV) at which ``escape_power`` leaves the escape fraction unchanged.
_ESCAPE_PIVOT_KEV = 5.0


def escape_fractions(reed_ware, calibration: Calibration) -> np.ndarray:
    """Si escape fraction of lines from their Reed & Ware fractions and the calibration:
    ``scale * f_RW(5 keV) * (f_RW / f_RW(5 keV))^power`` (0 where ``f_RW`` is 0), at most 0.5.

    ``power = 1`` is Reed & Ware's energy dependence scaled (thick sensor, normal incidence);
    smaller powers flatten it, as thin sensors, grazing geometry and detector models with a
    constant fraction do; both are fitted on the summed spectrum.
    """
    f = np.asarray(reed_ware, dtype=float)
    if calibration.escape_power == 1.0:
        return np.minimum(f * calibration.escape_scale, 0.5)
    pivot = float(_escape_fraction((_ESCAPE_PIVOT_KEV,))[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        shaped = np.where(f > 0, pivot * (f / pivot) ** calibration.escape_power, 0.0)
    return np.minimum(shaped * calibration.escape_scale, 0.5)


def element_line_table(components, be_window_um: float, si_thickness_mm: float, escape: bool = True):
    """The lines of element components as flat arrays, for :func:`lines_with_escape`.

    Returns
    -------
    energies_keV, weights, reed_ware, columns : ndarray (n_lines,)
        Line energies; detected weights (emitted weight times the detector efficiency,
        normalised per component: an amplitude counts detected photons); Reed & Ware escape
        fractions (0 with ``escape=False``); the position of each line's component in
        ``components``.
    """
    energies, weights, fractions, columns = [], [], [], []
    for k, comp in enumerate(components):
        e = np.asarray(comp.line_energies_keV, dtype=float)
        w = np.asarray(comp.line_weights) * _efficiency(comp.line_energies_keV, float(be_window_um),
                                                        float(si_thickness_mm))
        energies.append(e)
        weights.append(w / w.sum())
        fractions.append(_escape_fraction(comp.line_energies_keV) if escape else np.zeros(e.size))
        columns.append(np.full(e.size, k))
    if not energies:
        return tuple(np.zeros(0, dtype=int if i == 3 else float) for i in range(4))
    return tuple(np.concatenate(a) for a in (energies, weights, fractions, columns))


def lines_with_escape(energies_keV, weights, reed_ware, columns, calibration: Calibration):
    """Lines expanded into parent and Si escape peaks (:func:`escape_fractions` of their
    counts 1.740 keV below): centres (keV), detector sigmas (keV), weights and columns."""
    energies = np.asarray(energies_keV, dtype=float)
    weights = np.asarray(weights, dtype=float)
    columns = np.asarray(columns)
    f = escape_fractions(reed_ware, calibration)
    esc = f > 0
    centres = np.concatenate([energies, energies[esc] - physics.SI_KA_ESCAPE_KEV])
    sigmas = physics.detector_sigma_keV(np.maximum(centres, 0.0), calibration.noise_fwhm_keV, calibration.fano)
    return (centres, sigmas, np.concatenate([weights * (1.0 - f), (weights * f)[esc]]),
            np.concatenate([columns, columns[esc]]).astype(int))


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
    columns = np.zeros((len(channels), len(components)))
    elements = [k for k, comp in enumerate(components) if comp.kind == "element"]
    if elements:
        energies, weights, reed_ware, index = element_line_table(
            [components[k] for k in elements], be_window_um, si_thickness_mm, escape)
        centres, sigmas, w, index = lines_with_escape(energies, weights, reed_ware, np.asarray(elements)[index],
                                                      calibration)
        columns += windowed_peaks(channels, calibration, centres, sigmas, w, index, len(components),
                                  calibration.tail_fraction)
    # the scatter peaks apart: the broad Compton peak would widen every line's window
    for k, comp in enumerate(components):
        if comp.kind == "element":
            continue
        if comp.name == "elastic":
            centre, extra_sigma = float(incident_energy_keV), 0.0
        elif comp.name == "compton":
            centre = (physics.compton_energy_keV(incident_energy_keV, scattering_angle_deg)
                      + calibration.compton_shift_keV)
            extra_sigma = calibration.compton_width_keV
        else:
            raise InvalidInputError(f"component {comp.name!r} is not a peak component")
        reed_ware = _escape_fraction((centre,)) if escape and scatter_escape else np.zeros(1)
        centres, sigmas, w, index = lines_with_escape([centre], [1.0], reed_ware, [k], calibration)
        columns += windowed_peaks(channels, calibration, centres, np.hypot(sigmas, extra_sigma), w, index,
                                  len(components))
    return columns


def windowed_peaks(channels, calibration: Calibration, centres_keV, sigmas_keV, weights, column_index,
                   n_columns: int, tail_fraction: float = 0.0) -> np.ndarray:
    """Weighted sums of channel-integrated Gaussians, each evaluated only within
    ``_WINDOW_SIGMAS`` of its centre: the same columns as ``gaussian_peaks(...) @ weights`` per
    column, at a fraction of the error-function evaluations (a line covers tens of channels of
    a thousand).

    With ``tail_fraction`` each peak gives that fraction of its counts to a low-energy
    exponential tail (the Hypermet tail of incomplete charge collection, Van Espen in Van
    Grieken & Markowicz, *Handbook of X-Ray Spectrometry*, 2nd ed. (2002), ch. 4):
    ``T(x) = exp(d / (g s) + 1 / (2 g^2)) erfc(d / (sqrt(2) s) + 1 / (sqrt(2) g)) / (2 g s)``,
    ``d = x - E``, with slope ``g = TAIL_SLOPE_SIGMAS`` widths; unit area.

    Parameters
    ----------
    channels : ndarray (n,)
        Consecutive channel numbers of the rows.
    calibration : Calibration
    centres_keV, sigmas_keV, weights : ndarray (n_peaks,)
        Peaks and their weights.
    column_index : ndarray (n_peaks,) int
        Column each peak adds to.
    n_columns : int
    tail_fraction : float
        Fraction of each peak's counts in its low-energy tail.

    Returns
    -------
    ndarray (n, n_columns) float64
    """
    from scipy.special import erf, erfc

    channels = np.asarray(channels)
    n = channels.size
    centres = np.asarray(centres_keV, dtype=float)
    sigmas = np.asarray(sigmas_keV, dtype=float)
    first = int(channels[0])
    gain = abs(float(calibration.gain_keV)) or 1e-3
    half = int(np.ceil(_WINDOW_SIGMAS * sigmas.max() / gain)) + 2 if centres.size else 0
    # edges of channels first - half - 1 ... last + half + 1, so every window lies inside
    edge_channels = np.arange(first - half - 1, first + n + half + 1) - 0.5
    edges = channel_energies_keV(edge_channels, calibration)
    start = np.searchsorted(edges, centres) - half - 1  # index into edges
    start = np.clip(start, 0, edges.size - 2 * half - 2)
    window = start[:, None] + np.arange(2 * half + 2)[None, :]
    w = np.asarray(weights, dtype=float)
    # tails on the lines that carry counts (>= 1 % of their component): a weak line's tail is
    # below the noise of its neighbours', and each tail costs a wide window; a tailed line's
    # Gaussian keeps 1 - tail_fraction of its counts
    strong = w >= _TAIL_MIN_WEIGHT if tail_fraction > 0 else np.zeros(w.size, dtype=bool)
    cdf = erf((edges[window] - centres[:, None]) / (np.sqrt(2.0) * sigmas[:, None]))
    values = 0.5 * np.diff(cdf, axis=1) * (w * np.where(strong, 1.0 - tail_fraction, 1.0))[:, None]
    rows = window[:, :-1] - (half + 1)  # edge index i is the lower edge of row i - half - 1
    inside = (rows >= 0) & (rows < n)
    flat = rows[inside] * n_columns + np.broadcast_to(np.asarray(column_index)[:, None], rows.shape)[inside]
    out = np.bincount(flat, weights=values[inside], minlength=n * n_columns).reshape(n, n_columns)
    if strong.any():
        g = TAIL_SLOPE_SIGMAS
        below = int(np.ceil((_WINDOW_SIGMAS + 8 * g) * sigmas[strong].max() / gain)) + 2
        above = int(np.ceil(_WINDOW_SIGMAS * sigmas[strong].max() / gain)) + 2
        centre_row = np.searchsorted(channel_energies_keV(channels, calibration), centres[strong])
        rows = centre_row[:, None] + np.arange(-below, above + 1)[None, :]
        inside = (rows >= 0) & (rows < n)
        x = channel_energies_keV(first + rows, calibration)
        s = sigmas[strong][:, None]
        d = (x - centres[strong][:, None]) / s
        density = np.exp(np.minimum(d / g + 0.5 / g**2, 700.0)) * erfc((d + 1.0 / g) / np.sqrt(2.0)) / (2 * g)
        shifted = tail_fraction * density * (gain / s) * w[strong][:, None]
        flat = rows[inside] * n_columns + np.broadcast_to(np.asarray(column_index)[strong][:, None], rows.shape)[inside]
        out += np.bincount(flat, weights=shifted[inside], minlength=n * n_columns).reshape(n, n_columns)
    return out


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

    Only the ``_PILEUP_LINES`` strongest lines enter (pairs of weaker ones are far below the
    noise of the strong pairs).

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
    strongest = np.argsort(-n)[:_PILEUP_LINES]
    e, n = e[strongest], n[strongest]
    i, j = np.triu_indices(e.size)  # unordered pairs, each once, with its multiplicity
    sums = e[i] + e[j]
    rates = n[i] * n[j] * np.where(i == j, 1.0, 2.0)
    keep = rates > _PILEUP_MIN_RELATIVE * rates.max() if rates.size else np.zeros(0, bool)
    channels = np.asarray(channels)
    if not keep.any():
        return np.zeros(channels.size)
    sig = physics.detector_sigma_keV(sums[keep], calibration.noise_fwhm_keV, calibration.fano)
    w = rates[keep] / rates[keep].sum()
    return windowed_peaks(channels, calibration, sums[keep], sig, w, np.zeros(w.size, dtype=int), 1)[:, 0]
