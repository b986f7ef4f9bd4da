"""Element identification on a summed spectrum: which elements a spectrum needs, with evidence.

Candidates are the elements that occur in samples (:func:`candidate_elements`: Na to U without
Tc, Pm, Po - Ac and Pa, which have no stable isotope, and without the noble gases other than Ar
unless asked), with a line excited below the incident energy and inside the fitted range.

Selection is forward stepwise by a penalised likelihood, then backward (Miller, *Subset
Selection in Regression*, 2nd ed. (2002), ch. 3):

1. the model holds the known elements (a user's or the beamline's list), the scatter peaks, the
   continuum, and the Si escape and pile-up peaks of its lines, so escape and sum peaks are
   explained before any element is added;
2. the strongest residual peak (matched filter of the detector's width, in units of the
   channel noise: Poisson plus a model-shape tolerance, :mod:`xmulti.xrf.summed`) is matched
   to every candidate with a line (K-alpha, K-beta, L-alpha, L-beta, L-gamma, M) within two
   detector widths. Each candidate enters as its **whole family** at xraylib's relative
   intensities, so its chi-square gain counts against it wherever its other lines predict counts
   that are not there;
3. the best candidate is added when its chi-square gain passes the penalty (a 5-sigma
   likelihood-ratio threshold, plus a prior penalty for elements rarely found in samples) and
   when it explains the peak: its gain is at least ``explain_fraction`` of the gain of a free
   Gaussian at the peak. Candidates whose gains are within the penalty of the best are reported
   as **ambiguous** with each reading's gain (Ti K / La L, S K / Mo L / Pb M...), not decided
   silently; a peak no candidate explains is reported as **unexplained** (a diffraction peak,
   a tail, an element outside the candidates);
4. backward: an added element whose removal costs less than the penalty is dropped.

Gains are score statistics of the weighted linear model (the chi-square decrease when a column
is added to the current free set, computed for all candidates at once by projection) and are
confirmed by a non-negative refit for the chosen element.

Kernels only: arrays and small dataclasses in, out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .. import physics
from .summed import channel_variance, solve_nonnegative, solve_with_model_variance

__all__ = [
    "Identification",
    "IdentifyContext",
    "identify_elements",
    "prune_elements",
    "candidate_elements",
    "residual_peak_significance",
    "NO_STABLE_ISOTOPE",
    "NOBLE_GASES",
    "UNCOMMON_ELEMENTS",
]

#: Elements with no stable isotope, never candidates: Tc, Pm, Po, At, Rn, Fr, Ra, Ac, Pa.
NO_STABLE_ISOTOPE = frozenset({"Tc", "Pm", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Pa"})
#: Noble gases, candidates only when asked (Ar is in air and in every spectrum measured in it).
NOBLE_GASES = frozenset({"Ne", "Kr", "Xe"})
#: Elements rarely present in samples: they need a stronger case (prior odds about 1:150).
UNCOMMON_ELEMENTS = frozenset(
    {"Sc", "Ga", "Ge", "Y", "Nb", "Ru", "Rh", "In", "Te", "Cs", "Pr", "Sm", "Eu", "Tb", "Dy", "Ho",
     "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "Re", "Os", "Ir", "Tl", "Th"}
)
#: Chi-square penalty of one added element: a 5-sigma likelihood-ratio threshold.
ADD_PENALTY = 25.0
#: Extra penalty for an uncommon element (2 ln 150).
UNCOMMON_PENALTY = 10.0
#: Lines weaker than this fraction of their family's strongest are not used to match peaks.
_MATCH_MIN_RELATIVE = 0.1
#: Candidates whose gain on the examined peak is within this fraction of the best one's are
#: told apart by their whole family's gain.
_LOCAL_TIE = 0.05
#: Candidates are scored at energy-scale shifts out to this many prior widths.
_SHIFT_REACH = 2.0
#: Peaks are matched to lines within this many detector sigmas.
_MATCH_SIGMAS = 2.0


@dataclass
class Identification:
    """What :func:`identify_elements` found.

    Attributes
    ----------
    elements : tuple of str
        Elements added to the known ones, in order of addition.
    evidence : dict of str to float
        Chi-square gain of each added element (its removal cost at the end).
    ambiguous : list of dict
        Peaks with more than one reading: ``energy_keV``, ``chosen`` and ``readings``
        (``element`` and ``delta_chi_square`` each, best first).
    unexplained : list of dict
        Residual peaks no candidate explains: ``energy_keV``, ``significance`` (sigma), and
        ``candidates`` tried (best first, with the fraction of the peak each explains).
    dropped : list of str
        Elements added, then removed by the backward step.
    """

    elements: tuple[str, ...] = ()
    evidence: dict[str, float] = field(default_factory=dict)
    ambiguous: list[dict] = field(default_factory=list)
    unexplained: list[dict] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def candidate_elements(incident_energy_keV: float, energy_range_keV: tuple[float, float],
                       allow: Sequence[str] = ()) -> list[str]:
    """Elements that occur in samples with a line excited at ``incident_energy_keV`` inside the
    fitted range (see module doc); ``allow`` adds noble gases on request."""
    import xraylib

    low, high = energy_range_keV
    out = []
    for z in range(11, 93):
        symbol = xraylib.AtomicNumberToSymbol(z)
        if symbol in NO_STABLE_ISOTOPE or (symbol in NOBLE_GASES and symbol not in allow):
            continue
        lines = physics.emission_lines(symbol, float(incident_energy_keV))
        if any(low <= line.energy_keV <= high for line in lines):
            out.append(symbol)
    return out


def _matching_lines(symbol: str, incident_energy_keV: float) -> np.ndarray:
    """Energies of an element's lines strong enough to match a peak (per family)."""
    lines = physics.emission_lines(symbol, float(incident_energy_keV))
    out = []
    for family in ("K", "L", "M"):
        fam = [line for line in lines if line.family == family]
        if not fam:
            continue
        top = max(line.cross_section_cm2_g for line in fam)
        out += [line.energy_keV for line in fam if line.cross_section_cm2_g >= _MATCH_MIN_RELATIVE * top]
    return np.asarray(out)


def residual_peak_significance(observed, fitted, energies_keV, sigmas_keV, edges_lo_keV, edges_hi_keV,
                               shape_tolerance: float, spread_channels: int = 0) -> np.ndarray:
    """Matched-filter significance (sigma) of a positive residual peak centred at each channel.

    The residual ``observed - fitted`` is correlated with the detector's Gaussian at each
    channel's energy and divided by the filter's noise for the channel variance
    (:func:`xmulti.xrf.summed.channel_variance`).
    """
    energies = np.asarray(energies_keV, dtype=float)
    sigmas = np.asarray(sigmas_keV, dtype=float)
    n = energies.size
    widths = np.asarray(edges_hi_keV, float) - np.asarray(edges_lo_keV, float)
    half = int(np.ceil(4 * sigmas.max() / widths.min()))
    rows = np.arange(n)[:, None] + np.arange(-half, half + 1)[None, :]  # (centre, offset)
    inside = (rows >= 0) & (rows < n)
    rows = np.clip(rows, 0, n - 1)
    # the detector's Gaussian at each centre, sampled at the channel centres
    kernel = np.exp(-0.5 * ((energies[rows] - energies[:, None]) / sigmas[:, None]) ** 2) * inside
    kernel *= widths[rows] / (np.sqrt(2 * np.pi) * sigmas[:, None])
    residual = np.asarray(observed, float) - np.asarray(fitted, float)
    variance = channel_variance(fitted, shape_tolerance, spread_channels)
    return (kernel * residual[rows]).sum(axis=1) / np.sqrt((kernel**2 * variance[rows]).sum(axis=1))


def _local_maxima(z: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of local maxima of ``z`` above ``threshold``, strongest first."""
    is_max = np.r_[False, (z[1:-1] > z[:-2]) & (z[1:-1] >= z[2:]), False] & (z >= threshold)
    idx = np.flatnonzero(is_max)
    return idx[np.argsort(-z[idx])]


def _gains(q: np.ndarray | None, residual_w: np.ndarray, candidates_w: np.ndarray) -> np.ndarray:
    """Chi-square decrease of adding each candidate column to a weighted linear model.

    ``q`` is an orthonormal basis of the model's free columns (weighted) and ``residual_w`` its
    weighted residual; the gain of a column ``g`` is ``(r . g_perp)^2 / |g_perp|^2`` with
    ``g_perp`` its part orthogonal to the model (a score statistic), zero when the column would
    enter negative.
    """
    if q is not None:
        perp = candidates_w - q @ (q.T @ candidates_w)
    else:
        perp = candidates_w
    norm2 = np.einsum("ij,ij->j", perp, perp)
    dot = residual_w @ perp
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where((norm2 > 1e-12 * np.maximum(np.einsum("ij,ij->j", candidates_w, candidates_w), 1e-300))
                        & (dot > 0), dot**2 / norm2, 0.0)
    return gain


class IdentifyContext(Protocol):
    """What :func:`identify_elements` needs from the spectral model at the current calibration."""

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Channel energies, detector sigmas, lower and upper channel edges (keV)."""

    def base(self, elements: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """The full model's design matrix (elements, scatter, pile-up, continuum) and the
        indices of its continuum columns."""

    def columns(self, symbols: Sequence[str], shift_channels: float = 0.0) -> np.ndarray:
        """Columns of single elements, optionally with the energy scale shifted."""

    def peak(self, energy_keV: float) -> np.ndarray:
        """A unit Gaussian of the detector's width at an energy."""

    def refine(self, elements: Sequence[str]) -> None:
        """Refit the calibration with these elements (called after the first additions)."""


def identify_elements(
    observed,
    context: IdentifyContext,
    incident_energy_keV: float,
    *,
    known: Sequence[str] = (),
    candidates: Sequence[str] | None = None,
    add: bool = True,
    threshold_sigma: float = 5.0,
    shape_tolerance: float = 0.02,
    spread_channels: int = 0,
    explain_fraction: float = 0.6,
    max_added: int = 20,
    shift_channels: float = 3.0,
    refine_after: int = 3,
) -> Identification:
    """Find the elements a summed spectrum needs beyond ``known`` (see module doc).

    Parameters
    ----------
    observed : ndarray (n,)
        Summed counts over the fitted channels.
    context : IdentifyContext
        Builders of the model at the current calibration.
    incident_energy_keV : float
    known : sequence of str
        Elements always in the model (never removed).
    candidates : sequence of str, optional
        Default :func:`candidate_elements` over the fitted range.
    add : bool
        Add elements (True), or only report what ``known`` leaves unexplained (False).
    threshold_sigma : float
        Significance of a residual peak to be examined.
    shape_tolerance : float
        Relative model-shape tolerance in the channel variance.
    spread_channels : int
        Flank width over which a line's shape tolerance applies (channels).
    explain_fraction : float
        Fraction of a free Gaussian's gain an element must reach to explain a peak.
    max_added : int
        Cap on added elements.
    shift_channels : float
        Candidates are scored at the best energy-scale shift within this many channels (the
        calibration is not final while elements are missing), paying a Gaussian prior on it.
    refine_after : int
        The calibration is refitted after each of the first ``refine_after`` additions.

    Returns
    -------
    Identification
    """
    y = np.asarray(observed, dtype=float)
    energies, _, _, _ = context.axes()
    if candidates is None:
        candidates = candidate_elements(incident_energy_keV, (float(energies[0]), float(energies[-1])))
    known = list(known)
    pool = [c for c in candidates if c not in known]
    match_lines = {c: _matching_lines(c, incident_energy_keV) for c in pool}
    # searched out to _SHIFT_REACH prior widths: a nominal MCA calibration is often 4-5
    # channels off at 6-10 keV (0.4 % of gain), which the prior's cost (shift / width)^2 allows
    reach = np.floor(_SHIFT_REACH * shift_channels)
    shifts = np.arange(-reach, reach + 1) if shift_channels > 0 else [0.0]

    penalty = _penalty

    previous: dict = {}  # the last fit's free set: NNLS is skipped when it still holds (KKT)

    def fit(elements):
        matrix, continuum = context.base(elements)
        hint = previous.get("free")
        if hint is not None and hint.size != matrix.shape[1]:  # columns were added: plain NNLS
            hint = None
        solution, variance = solve_with_model_variance(matrix, y, continuum, shape_tolerance, spread_channels, hint)
        previous["free"] = solution.amplitudes > 0
        return matrix, solution, variance

    result = Identification()
    current = list(known)
    settled: list[tuple[float, float]] = []  # (energy, sigma) of peaks already examined
    for _ in range(max_added + 64):
        energies, sigmas, lo, hi = context.axes()
        matrix, solution, variance = fit(current)
        z = residual_peak_significance(y, solution.fitted, energies, sigmas, lo, hi, shape_tolerance, spread_channels)
        peak = next((i for i in _local_maxima(z, threshold_sigma)
                     if all(abs(energies[i] - e) > 2 * s for e, s in settled)), None)
        if peak is None:
            break
        e_peak, s_peak = float(energies[peak]), float(sigmas[peak])
        settled.append((e_peak, s_peak))
        window = _MATCH_SIGMAS * s_peak + _SHIFT_REACH * shift_channels * float(np.mean(np.diff(energies)))
        near = [c for c in pool if c not in current and np.any(np.abs(match_lines[c] - e_peak) <= window)]
        w = 1.0 / np.sqrt(variance)
        free = matrix[:, solution.amplitudes > 0] * w[:, None]
        residual_w = (y - solution.fitted) * w
        q = np.linalg.qr(free)[0] if free.shape[1] else None
        reference = float(_gains(q, residual_w, (context.peak(e_peak) * w)[:, None])[0])
        if not near:
            result.unexplained.append(_unexplained(e_peak, float(z[peak]), [], [], reference))
            continue
        # Gains over small shifts of the energy scale (less the shift's prior cost): over the
        # whole spectrum (the family's pattern: its other lines must find counts) and within three
        # widths of the peak (how well it explains this peak: with many elements still missing,
        # a family of many lines would otherwise win on the others' residuals).
        local = np.abs(energies - e_peak) <= 3 * s_peak
        q_local = np.linalg.qr(free[local])[0] if free.shape[1] else None
        reference_local = float(_gains(q_local, residual_w[local], (context.peak(e_peak) * w)[local, None])[0])
        gains = np.full(len(near), -np.inf)
        local_gains = np.full(len(near), -np.inf)
        for shift in shifts if add else [0.0]:
            cost = (shift / shift_channels) ** 2 if shift_channels > 0 else 0.0
            cols = context.columns(near, shift) * w[:, None]
            gains = np.maximum(gains, _gains(q, residual_w, cols) - cost)
            local_gains = np.maximum(local_gains, _gains(q_local, residual_w[local], cols[local]) - cost)
        order = np.argsort(-local_gains)
        if not add or len(current) - len(known) >= max_added:
            result.unexplained.append(_unexplained(e_peak, float(z[peak]), [near[k] for k in order],
                                                   list(local_gains[order]), reference_local))
            continue
        passing = [k for k in order if gains[k] >= penalty(near[k])
                   and local_gains[k] >= explain_fraction * reference_local]
        if not passing:
            result.unexplained.append(_unexplained(e_peak, float(z[peak]), [near[k] for k in order],
                                                   list(local_gains[order]), reference_local))
            continue
        # readings that explain this peak about as well as the best: the family pattern decides
        margin = max(penalty(near[passing[0]]), _LOCAL_TIE * local_gains[passing[0]])
        tied = [k for k in passing if local_gains[k] >= local_gains[passing[0]] - margin]
        tied.sort(key=lambda k: -gains[k])
        best, best_gain = near[tied[0]], float(gains[tied[0]])
        rivals = [k for k in tied[1:] if gains[k] >= best_gain - penalty(near[k])]
        if rivals:
            result.ambiguous.append({
                "energy_keV": round(e_peak, 4),
                "chosen": best,
                "readings": [{"element": near[k], "delta_chi_square": round(float(gains[k]), 1)}
                             for k in [tied[0], *rivals]],
            })
        current.append(best)
        result.evidence[best] = best_gain
        if len(current) - len(known) <= refine_after:
            context.refine(current)
            settled = []  # the energies moved: examine every peak again
            previous.clear()
    kept, dropped, evidence = prune_elements(y, context, current, known, shape_tolerance, spread_channels)
    result.dropped += dropped
    result.evidence = {s: evidence[s] for s in kept if s in evidence}
    result.elements = tuple(s for s in kept if s not in known)
    chosen = set(result.elements)
    result.ambiguous = [a for a in result.ambiguous if a["chosen"] in chosen]
    return result


def prune_elements(observed, context: IdentifyContext, elements: Sequence[str], known: Sequence[str] = (),
                   shape_tolerance: float = 0.02, spread_channels: int = 0) -> tuple[list[str], list[str], dict]:
    """Backward elimination: drop, one at a time, the element (not in ``known``) whose removal
    costs least, while that cost is below its penalty.

    Returns
    -------
    (kept, dropped, evidence)
        ``evidence``: removal cost (chi-square) of each kept element not in ``known``.
    """
    y = np.asarray(observed, dtype=float)
    current = list(elements)
    dropped: list[str] = []

    def fit(symbols, variance=None):
        matrix, continuum = context.base(symbols)
        if variance is None:
            return solve_with_model_variance(matrix, y, continuum, shape_tolerance, spread_channels)[0]
        return solve_nonnegative(matrix, y, variance, continuum)

    while True:
        full = fit(current)
        reference = channel_variance(full.fitted, shape_tolerance, spread_channels)
        base = float(np.sum((y - full.fitted) ** 2 / reference))
        costs = {}
        for symbol in [s for s in current if s not in known]:
            without = fit([s for s in current if s != symbol], reference)
            costs[symbol] = float(np.sum((y - without.fitted) ** 2 / reference)) - base
        if not costs:
            return current, dropped, {}
        weakest = min(costs, key=lambda s: costs[s] - _penalty(s))
        if costs[weakest] >= _penalty(weakest):
            return current, dropped, costs
        current.remove(weakest)
        dropped.append(weakest)


def _penalty(symbol: str) -> float:
    """Chi-square an element must gain to be in the model."""
    return ADD_PENALTY + (UNCOMMON_PENALTY if symbol in UNCOMMON_ELEMENTS else 0.0)


def _unexplained(energy_keV, significance, tried, gains, reference) -> dict:
    return {
        "energy_keV": round(float(energy_keV), 4),
        "significance": round(float(significance), 1),
        "candidates": [
            {"element": s, "explained_fraction": round(float(g) / reference, 2) if reference > 0 else 0.0}
            for s, g in list(zip(tried, gains, strict=False))[:5]
        ] if gains else [{"element": s} for s in tried[:5]],
    }
