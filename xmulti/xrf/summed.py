"""The summed-spectrum fit's linear part: physical (non-negative) amplitudes, a smooth continuum.

The summed spectrum of a scan holds 10^6 - 10^10 counts, so its fit must be physical where a
per-pixel fit need not be: every component (element, scatter, pile-up) adds counts, and the
continuum is a count density. Unconstrained least squares on such a spectrum trades a negative
Compton peak against continuum splines of alternating sign whenever the peak shapes are not
exactly right (real detectors have tails and steps). Here:

- **element, scatter and pile-up amplitudes are non-negative** (Lawson & Hanson's NNLS,
  ``scipy.optimize.nnls``);
- **the continuum is a non-negative P-spline**: cubic B-splines on knots a few detector widths
  apart with non-negative coefficients (B-splines are non-negative, so their sum is), and a
  weak second-difference roughness penalty on the coefficients (Eilers & Marx, Stat. Sci. 11,
  89 (1996)) appended as extra rows of the least-squares problem;
- **weights include a model-shape tolerance**: the variance of a channel is its Poisson variance
  plus ``(tolerance * mu)^2``. A summed spectrum's peaks are so strong that a 1 % mismatch of
  line shape (a low-energy tail, an incomplete-charge step) is hundreds of Poisson sigmas; with
  the tolerance the fit, the element search and the goodness-of-fit gate judge what the model
  cannot explain beyond its known approximations (Van Grieken & Markowicz, *Handbook of X-Ray
  Spectrometry*, 2nd ed., ch. 4, on systematic residuals of peak-shape models).

Kernels only: arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SummedSolution",
    "continuum_pspline",
    "solve_nonnegative",
    "solve_with_model_variance",
    "channel_variance",
    "DEFAULT_SHAPE_TOLERANCE",
]

#: Relative model-shape tolerance in the channel variance (see module doc).
DEFAULT_SHAPE_TOLERANCE = 0.02
#: Knot spacing of the continuum P-spline (keV): wider than any peak (sigma <= 0.1 keV up to
#: 20 keV), so the continuum cannot take a line's counts.
CONTINUUM_KNOT_SPACING_KEV = 0.5
#: Roughness penalty weight of the P-spline, on coefficients scaled to unit weighted column
#: norm: an alternating wiggle of size ``d`` costs about ``16 * roughness * d^2`` against ``d^2``
#: of data fit, so the penalty only settles coefficients the data leave undetermined (empty or
#: overlapping channels); the knot spacing sets the smoothness.
CONTINUUM_ROUGHNESS = 1e-3
#: Floor of the Poisson variance (counts).
_MIN_VARIANCE = 1.0


@dataclass
class SummedSolution:
    """Non-negative amplitudes of a summed-spectrum model.

    Attributes
    ----------
    amplitudes : ndarray (k,)
        Non-negative amplitudes of the columns.
    sigmas : ndarray (k,)
        1-sigma uncertainties (from the free columns' normal matrix; 0 for columns at 0).
    fitted : ndarray (n,)
        Model counts.
    chi_square : float
        ``sum (y - mu)^2 / variance`` with the variance the fit used.
    """

    amplitudes: np.ndarray
    sigmas: np.ndarray
    fitted: np.ndarray
    chi_square: float


def _warm_solution(a, rhs, usable, free_hint):
    """The NNLS solution from a guessed free set when it satisfies the KKT conditions, else None."""
    if free_hint is None:
        return None
    free = np.asarray(free_hint, dtype=bool) & usable
    if not free.any():
        return None
    sub = a[:, free]
    try:
        u_free = np.linalg.solve(sub.T @ sub, sub.T @ rhs)
    except np.linalg.LinAlgError:
        return None
    if np.any(u_free <= 0):
        return None
    u = np.zeros(a.shape[1])
    u[free] = u_free
    gradient = a.T @ (rhs - a @ u)  # must be <= 0 on the columns held at zero
    if np.any(gradient[usable & ~free] > 1e-9 * np.linalg.norm(rhs)):
        return None
    return u


def channel_variance(model_counts, tolerance: float = DEFAULT_SHAPE_TOLERANCE, spread_channels: int = 0) -> np.ndarray:
    """Variance of each channel: Poisson (floored at 1 count) plus ``(tolerance * envelope)^2``.

    The envelope is the largest model count within ``spread_channels`` of the channel: a line
    shape wrong by a fraction of its height is wrong on its flanks too, where the model's own
    counts are much smaller (a tail under a strong line is not a weak line beside it).
    """
    mu = np.maximum(np.asarray(model_counts, dtype=float), 0.0)
    envelope = mu
    if spread_channels > 0:
        from scipy.ndimage import maximum_filter1d

        envelope = maximum_filter1d(mu, size=2 * int(spread_channels) + 1, mode="nearest")
    return np.maximum(mu, _MIN_VARIANCE) + (tolerance * envelope) ** 2


def continuum_pspline(positions, spacing) -> np.ndarray:
    """Cubic B-splines on uniform knots about ``spacing`` apart over increasing ``positions``
    (channel energies in keV, or channels with the spacing in channels).

    Returns
    -------
    ndarray (n, m) float64, non-negative
    """
    from scipy.interpolate import BSpline

    x = np.asarray(positions, dtype=float)
    lo, hi = float(x[0]), float(x[-1])
    n_intervals = max(1, int(round((hi - lo) / spacing)))
    inner = np.linspace(lo, hi, n_intervals + 1)[1:-1]
    knots = np.concatenate([[lo] * 4, inner, [hi] * 4])
    basis = BSpline.design_matrix(x, knots, 3).toarray()
    return basis[:, basis.sum(axis=0) > 0]


def solve_nonnegative(matrix, observed, variance, continuum_columns=(), roughness: float = CONTINUUM_ROUGHNESS,
                      with_sigmas: bool = False, free_hint=None) -> SummedSolution:
    """Weighted non-negative least squares with a roughness penalty on the continuum columns.

    Minimises ``sum_c (y_c - (G a)_c)^2 / v_c + roughness * |D2 u|^2`` over ``a >= 0``, with
    ``u`` the continuum coefficients scaled to unit weighted column norm and ``D2`` their
    second differences (consecutive continuum columns must be consecutive B-splines).

    Parameters
    ----------
    matrix : ndarray (n, k)
        Design matrix (expected counts per unit amplitude).
    observed : ndarray (n,)
        Counts.
    variance : ndarray (n,)
        Channel variance (:func:`channel_variance`).
    continuum_columns : sequence of int
        Columns of the continuum P-spline, in knot order.
    roughness : float
        Penalty weight.
    with_sigmas : bool
        Also compute uncertainties.
    free_hint : ndarray of bool (k,), optional
        Columns expected to be positive (e.g. the previous solution's during a nonlinear fit):
        when the least-squares solution on them is positive and no other column would enter
        (the Karush-Kuhn-Tucker conditions), it is the answer and NNLS is skipped.

    Returns
    -------
    SummedSolution
    """
    from scipy.optimize import nnls

    g = np.asarray(matrix, dtype=float)
    y = np.asarray(observed, dtype=float)
    w = 1.0 / np.sqrt(np.asarray(variance, dtype=float))
    a = g * w[:, None]
    scale = np.sqrt(np.einsum("ij,ij->j", a, a))
    usable = scale > 0
    scale = np.where(usable, scale, 1.0)
    a = a / scale
    rhs = y * w
    cont = [c for c in continuum_columns if usable[c]]
    if len(cont) >= 3 and roughness > 0:
        d2 = np.diff(np.eye(len(cont)), 2, axis=0) * np.sqrt(roughness)
        penalty = np.zeros((d2.shape[0], a.shape[1]))
        penalty[:, cont] = d2
        a = np.vstack([a, penalty])
        rhs = np.concatenate([rhs, np.zeros(d2.shape[0])])
    u = _warm_solution(a, rhs, usable, free_hint)
    if u is None:
        solution, _ = nnls(a[:, usable], rhs, maxiter=50 * a.shape[1])
        u = np.zeros(g.shape[1])
        u[usable] = solution
    amplitudes = u / scale
    fitted = g @ amplitudes
    chi2 = float(np.sum((y - fitted) ** 2 / np.asarray(variance, dtype=float)))
    sigmas = np.zeros_like(amplitudes)
    if with_sigmas:
        free = np.flatnonzero(u > 0)
        if free.size:
            normal = a[:, free].T @ a[:, free]
            try:
                cov = np.linalg.inv(normal)
                sigmas[free] = np.sqrt(np.maximum(np.diag(cov), 0.0)) / scale[free]
            except np.linalg.LinAlgError:
                pass
    return SummedSolution(amplitudes=amplitudes, sigmas=sigmas, fitted=fitted, chi_square=chi2)


def solve_with_model_variance(matrix, observed, continuum_columns=(), tolerance: float = DEFAULT_SHAPE_TOLERANCE,
                              spread_channels: int = 0, free_hint=None,
                              with_sigmas: bool = False) -> tuple[SummedSolution, np.ndarray]:
    """:func:`solve_nonnegative` twice: weighted by the observed counts (floored at 1), then by
    that fit's model (weights from the observed counts bias low-count channels low: Neyman's
    chi-square). Returns the second solution and the model variance it used."""
    y = np.asarray(observed, dtype=float)
    first = solve_nonnegative(matrix, y, channel_variance(np.maximum(y, 1.0), tolerance, spread_channels),
                              continuum_columns, free_hint=free_hint)
    variance = channel_variance(first.fitted, tolerance, spread_channels)
    solution = solve_nonnegative(matrix, y, variance, continuum_columns, with_sigmas=with_sigmas,
                                 free_hint=first.amplitudes > 0)
    return solution, variance
