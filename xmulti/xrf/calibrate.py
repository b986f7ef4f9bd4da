"""Calibration on the summed spectrum: nonlinear least squares for the detector parameters.

The integrated spectrum of a scan has enough counts to fit the energy calibration
(offset, gain, optionally quadratic), the peak-width parameters (electronic noise, Fano factor)
and the Compton peak's position and width. The amplitudes of all components enter linearly and
are solved exactly for every trial of the nonlinear parameters (variable projection: Golub &
Pereyra, SIAM J. Numer. Anal. 10, 413 (1973)), so ``scipy.optimize.least_squares`` only sees
the few nonlinear parameters. Residuals are weighted by the Poisson variance: first the
observed counts (at least 1), then the fitted model's (one reweighting pass, which removes
the low bias of weighting by observed counts).

The fit runs coarse-to-fine: the energy scale is first fitted with artificially broad peaks
(larger capture range, when the nominal MCA calibration is off by several channels), then all
parameters with the physical widths.

With ``elements=None`` the element list is built from the spectrum: strong residual peaks are
matched to the lines of every element excited at the incident energy, and the candidate that
lowers chi-square most is added, until no significant residual peak is left. When a given
element list leaves strong peaks unexplained (reduced chi-square above 5), the same search
adds the missing elements for the calibration only (so they do not drag the energy scale),
and the result (model, amplitudes, residuals) keeps the given list, reports the peaks as
suggestions and warns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import physics
from ..errors import InvalidInputError
from .model import Calibration, SpectralModel, build_model, channel_energies_keV, fit_channels

__all__ = ["CalibrationResult", "calibrate", "residual_peaks", "DEFAULT_FIT_PARAMETERS"]

#: Nonlinear parameters fitted by default (``"quadratic_keV"`` can be added).
DEFAULT_FIT_PARAMETERS = (
    "offset_keV",
    "gain_keV",
    "noise_fwhm_keV",
    "fano",
    "compton_shift_keV",
    "compton_width_keV",
)
#: Parameter bounds: absolute (low, high), or for the energy scale relative to the initial
#: calibration (offset +- 0.2 keV, gain +- 5 %), which keeps a fit with a wrong element list from
#: wandering off to a different energy scale.
_BOUNDS = {
    "offset_keV": ("relative", 0.2),
    "gain_keV": ("scale", 0.05),
    "quadratic_keV": (-1e-5, 1e-5),
    "noise_fwhm_keV": (0.03, 0.4),
    "fano": (0.05, 0.3),
    "compton_shift_keV": (-0.3, 0.3),
    "compton_width_keV": (0.0, 0.6),
}
#: Passes of model-variance reweighting after the first fit.
_REWEIGHT_PASSES = 1
#: Floor of the model variance (counts) in the weights.
_MIN_VARIANCE = 0.1
#: Residual peaks whose candidates are ranked by chi-square (the others by distance).
_RANKED_SUGGESTIONS = 5
#: Reduced chi-square of the summed spectrum above which calibrate warns.
_POOR_FIT = 5.0
#: Elements searched when ``elements=None`` (Na .. U).
_SEARCH_Z = range(11, 93)


@dataclass
class CalibrationResult:
    """Result of :func:`calibrate`.

    Attributes
    ----------
    calibration : Calibration
        Fitted calibration.
    elements : tuple of str
        Elements in the model (given, or suggested when ``elements=None``).
    amplitudes : dict of str to float
        Counts of each component in the summed spectrum.
    model : SpectralModel
        Design matrix at the fitted calibration.
    energy_keV : ndarray (n_fit,)
        Channel energies of the fitted range.
    observed, fitted : ndarray (n_fit,)
        Summed spectrum and model over the fitted range.
    residuals : ndarray (n_fit,)
        Pearson residuals ``(observed - fitted) / sqrt(max(fitted, 0.1))``.
    chi_square : float
        Sum of squared Pearson residuals.
    reduced_chi_square : float
        ``chi_square / (n_fit - n_parameters)``.
    suggested_elements : list of dict
        Strong unexplained residual peaks: ``energy_keV``, ``significance`` (sigma) and
        ``candidates`` (elements with a line there; for the five strongest peaks ordered by
        the chi-square of the fit with each added, best first).
    """

    calibration: Calibration
    elements: tuple[str, ...]
    amplitudes: dict[str, float]
    model: SpectralModel
    energy_keV: np.ndarray
    observed: np.ndarray
    fitted: np.ndarray
    residuals: np.ndarray
    chi_square: float
    reduced_chi_square: float
    suggested_elements: list[dict] = field(default_factory=list)


def _linear_solve(matrix, observed, weights):
    """Weighted linear least squares for the amplitudes (normal equations, columns scaled to
    unit norm: well conditioned for these few, distinct columns, and much faster than SVD)."""
    a = matrix * weights[:, None]
    scale = np.sqrt(np.maximum(np.einsum("ij,ij->j", a, a), 1e-300))
    a = a / scale
    normal = a.T @ a
    rhs = a.T @ (observed * weights)
    try:
        solution = np.linalg.solve(normal, rhs)
    except np.linalg.LinAlgError:  # singular (e.g. duplicate component): minimum-norm solution
        solution = np.linalg.lstsq(a, observed * weights, rcond=None)[0]
    return solution / scale


def _pearson(observed, fitted):
    return (observed - fitted) / np.sqrt(np.maximum(fitted, _MIN_VARIANCE))


def calibrate(
    spectrum,
    incident_energy_keV: float,
    initial: Calibration,
    elements=None,
    *,
    fit_parameters: tuple[str, ...] = DEFAULT_FIT_PARAMETERS,
    energy_range_keV: tuple[float, float] | None = None,
    n_continuum: int = 8,
    suggest_threshold_sigma: float = 8.0,
    max_elements: int = 20,
    pileup: bool = False,
    **model_options,
) -> CalibrationResult:
    """Fit the calibration and component amplitudes to a summed spectrum.

    Parameters
    ----------
    spectrum : ndarray (n_channels,)
        Summed counts per channel (non-negative, finite).
    incident_energy_keV : float
        Incident photon energy (keV).
    initial : Calibration
        Starting point (e.g. the MCA's nominal offset and gain); within about 2 % in gain.
    elements : iterable of str, optional
        Elements to model. None: build the list from the spectrum (see module doc).
    fit_parameters : tuple of str
        Calibration fields to fit; the others stay at their ``initial`` value.
    energy_range_keV : (low, high), optional
        Fitted range (keV), default 1.0 keV to E0 + 0.6 keV at the initial calibration.
    n_continuum : int
        Number of continuum B-splines.
    suggest_threshold_sigma : float
        Significance (matched-filter sigma) of a residual peak to be reported or added.
    max_elements : int
        Cap on the automatic element list.
    pileup : bool
        Add a pile-up component: sum peaks of every pair of fitted lines (elements and scatter),
        weighted by the product of their fitted counts.
    **model_options
        Passed to :func:`xmulti.xrf.model.build_model` (``escape``, ``tie_families``,
        ``be_window_um``, ``si_thickness_mm``, ``scattering_angle_deg``...).

    Returns
    -------
    CalibrationResult
    """
    from scipy.optimize import least_squares

    y_full = np.asarray(spectrum, dtype=np.float64)
    if y_full.ndim != 1:
        raise InvalidInputError(f"calibrate expects one summed spectrum, got shape {y_full.shape}")
    if not np.all(np.isfinite(y_full)) or np.any(y_full < 0):
        raise InvalidInputError("summed spectrum has NaN, infinite or negative counts")
    unknown = sorted(set(fit_parameters) - set(_BOUNDS))
    if unknown:
        raise InvalidInputError(f"cannot fit {unknown}; choose among {sorted(_BOUNDS)}")
    n_channels = y_full.size
    energies = channel_energies_keV(np.arange(n_channels), initial)
    sl = fit_channels(energies, incident_energy_keV, energy_range_keV)
    y = y_full[sl]
    if y.sum() <= 0:
        raise InvalidInputError("summed spectrum has no counts in the fitted energy range")
    weights = 1.0 / np.sqrt(np.maximum(y, 1.0))
    options = dict(model_options, n_continuum=n_continuum, channel_slice=sl)

    def build(cal, els):
        return build_model(els, incident_energy_keV, cal, n_channels, **options)

    def fit_nonlinear(cal, els, names):
        if not names:
            return cal
        x0 = np.array([getattr(cal, n) for n in names], dtype=float)
        lower, upper = np.array([_bounds(n, initial) for n in names]).T
        x0 = np.clip(x0, lower + 1e-12, upper - 1e-12)
        scale = np.array([_parameter_scale(n, cal) for n in names])

        def residual(x):
            trial = cal.replace(**dict(zip(names, x, strict=True)))
            g = build(trial, els).matrix
            return (y - g @ _linear_solve(g, y, weights)) * weights

        result = least_squares(residual, x0, bounds=(lower, upper), x_scale=scale, method="trf")
        return cal.replace(**dict(zip(names, result.x, strict=True)))

    auto = elements is None
    requested = [] if auto else [str(e).strip() for e in elements]
    current = list(requested)
    cal = initial

    def grow(cal, current):
        """Add the best candidate of the strongest residual peak until none is left."""
        for _ in range(max_elements):
            model = build(cal, current)
            fitted = model.matrix @ _linear_solve(model.matrix, y, weights)
            peaks = residual_peaks(y, fitted, model, suggest_threshold_sigma, exclude=current)
            added = False
            for peak in peaks:
                best = _best_candidate(peak["candidates"], current, cal, build, y, weights)
                if best is not None:
                    current.append(best)
                    added = True
                    break
            if not added:
                break
            # scatter peaks alone do not pin the energy scale: refit once two elements are known
            if len(current) >= 2:
                cal = fit_nonlinear(cal, current, list(fit_parameters))
        return cal, current

    if auto:
        cal, current = grow(cal, current)
    else:
        # coarse: broad peaks widen the capture range of the energy scale
        scale_names = [n for n in ("offset_keV", "gain_keV") if n in fit_parameters]
        if scale_names:
            broad = cal.replace(noise_fwhm_keV=max(cal.noise_fwhm_keV, 0.35))
            coarse = fit_nonlinear(broad, current, scale_names)
            cal = cal.replace(**{n: getattr(coarse, n) for n in scale_names})
        cal = fit_nonlinear(cal, current, list(fit_parameters))
        model = build(cal, current)
        residual = (y - model.matrix @ _linear_solve(model.matrix, y, weights)) * weights
        if np.sum(residual**2) / y.size > _POOR_FIT:
            # Strong unexplained peaks pull the energy scale off: calibrate with the missing
            # elements added (from the initial calibration); they are reported, not fitted.
            cal, current = grow(initial, current)
    # Weights from the observed counts bias low-count channels low (Neyman's chi-square):
    # reweight with the fitted model's variance and refit (iteratively reweighted).
    for _ in range(_REWEIGHT_PASSES):
        model = build(cal, current)
        fitted = model.matrix @ _linear_solve(model.matrix, y, weights)
        weights[:] = 1.0 / np.sqrt(np.maximum(fitted, _MIN_VARIANCE))
        cal = fit_nonlinear(cal, current, list(fit_parameters))
    model = build(cal, requested if not auto else current)
    amplitudes = _linear_solve(model.matrix, y, weights)
    final_elements = requested if not auto else current
    if pileup:
        # sum peaks of the detected lines, with their fitted counts (rate squared: the shape is
        # fixed by the summed spectrum, its amplitude is fitted)
        options["pileup_lines"] = _detected_lines(model, amplitudes)
        model = build(cal, final_elements)
        amplitudes = _linear_solve(model.matrix, y, weights)
    fitted = model.matrix @ amplitudes
    residuals = _pearson(y, fitted)
    chi2 = float(np.sum(residuals**2))
    dof = max(1, y.size - model.matrix.shape[1] - len(fit_parameters))
    suggestions = residual_peaks(y, fitted, model, suggest_threshold_sigma, final_elements)
    for peak in suggestions[:_RANKED_SUGGESTIONS]:  # best explanation first
        peak["candidates"] = _rank_candidates(peak["candidates"], final_elements, cal, build, y, weights)
    if chi2 / dof > _POOR_FIT and suggestions:
        import warnings

        peaks = ", ".join(
            f"{p['energy_keV']:.2f} keV ({'/'.join(p['candidates'][:3]) or '?'})" for p in suggestions[:3]
        )
        warnings.warn(
            f"poor fit of the summed spectrum (reduced chi-square {chi2 / dof:.1f}): the energy "
            f"calibration may be wrong; unexplained peaks at {peaks}. Add the missing elements "
            "or pass elements=None.",
            stacklevel=2,
        )
    return CalibrationResult(
        calibration=cal,
        elements=tuple(final_elements),
        amplitudes=dict(zip(model.names, (float(a) for a in amplitudes), strict=True)),
        model=model,
        energy_keV=channel_energies_keV(np.arange(n_channels)[sl], cal),
        observed=y,
        fitted=fitted,
        residuals=residuals,
        chi_square=chi2,
        reduced_chi_square=chi2 / dof,
        suggested_elements=suggestions,
    )


def _bounds(name: str, initial: Calibration) -> tuple[float, float]:
    """Lower and upper bound of a fitted parameter (see ``_BOUNDS``)."""
    kind, value = _BOUNDS[name]
    start = getattr(initial, name)
    if kind == "relative":
        return start - value, start + value
    if kind == "scale":
        return start * (1 - value), start * (1 + value)
    return kind, value


def _detected_lines(model: SpectralModel, amplitudes) -> tuple[np.ndarray, np.ndarray]:
    """Energies and fitted counts of the element and scatter lines of a fitted model."""
    energies, counts = [], []
    e0 = model.incident_energy_keV
    for comp, amplitude in zip(model.components, amplitudes, strict=True):
        if amplitude <= 0:
            continue
        if comp.kind == "element":
            energies.extend(comp.line_energies_keV)
            counts.extend(amplitude * np.asarray(comp.line_weights))
        elif comp.name == "elastic":
            energies.append(e0)
            counts.append(amplitude)
        elif comp.name == "compton":
            energies.append(physics.compton_energy_keV(e0) + model.calibration.compton_shift_keV)
            counts.append(amplitude)
    return np.asarray(energies), np.asarray(counts)


def _parameter_scale(name: str, cal: Calibration) -> float:
    """Typical size of a parameter's change, for least_squares' x_scale."""
    return {
        "offset_keV": 0.01,
        "gain_keV": max(abs(cal.gain_keV), 1e-4) * 1e-3,
        "quadratic_keV": 1e-8,
        "noise_fwhm_keV": 0.01,
        "fano": 0.01,
        "compton_shift_keV": 0.01,
        "compton_width_keV": 0.01,
    }[name]


def _rank_candidates(candidates, current, cal, build, y, weights) -> list[str]:
    """Candidate elements ordered by the weighted chi-square after adding each (best first)."""
    scored = []
    for symbol in candidates:
        if symbol in current:
            continue
        try:
            g = build(cal, [*current, symbol]).matrix
        except InvalidInputError:
            continue
        scored.append((float(np.sum(((y - g @ _linear_solve(g, y, weights)) * weights) ** 2)), symbol))
    return [symbol for _, symbol in sorted(scored)]


def _best_candidate(candidates, current, cal, build, y, weights):
    """The candidate element whose addition lowers the weighted chi-square most, or None."""
    ranked = _rank_candidates(candidates, current, cal, build, y, weights)
    return ranked[0] if ranked else None


def residual_peaks(
    observed, fitted, model: SpectralModel, threshold_sigma: float = 8.0, exclude=()
) -> list[dict]:
    """Significant positive residual peaks, with the elements that have a line there.

    A matched filter (the detector's Gaussian at each channel's energy) applied to the residual
    ``observed - fitted``, divided by its Poisson standard deviation, gives the significance of
    a peak at every channel; local maxima above ``threshold_sigma`` are reported, strongest
    first. Candidates are elements (not in ``exclude``) with a line within 2 sigma of the peak
    and at least 10 % of their strongest line, or whose escape peak lies there.

    Parameters
    ----------
    observed, fitted : ndarray (n_fit,)
        Summed spectrum and model over the fitted channels of ``model``.
    model : SpectralModel
    threshold_sigma : float
    exclude : iterable of str

    Returns
    -------
    list of dict
        ``energy_keV``, ``significance``, ``candidates`` (list of symbols).
    """
    from .model import channel_edges_keV, gaussian_peaks

    cal = model.calibration
    channels = np.arange(model.channel_slice.start, model.channel_slice.stop)
    energy = channel_energies_keV(channels, cal)
    lo, hi = channel_edges_keV(channels, cal)
    sigma = physics.detector_sigma_keV(np.maximum(energy, 0.0), cal.noise_fwhm_keV, cal.fano)
    kernel = gaussian_peaks(lo, hi, energy, sigma)  # (channel, centre)
    residual = np.asarray(observed, float) - np.asarray(fitted, float)
    signal = kernel.T @ residual
    noise = np.sqrt((kernel**2).T @ np.maximum(fitted, 1.0))
    z = signal / noise
    is_max = np.r_[False, (z[1:-1] > z[:-2]) & (z[1:-1] >= z[2:]), False]
    order = np.argsort(-z)
    out = []
    for i in order:
        if z[i] < threshold_sigma:
            break
        if is_max[i]:
            out.append(
                {
                    "energy_keV": float(energy[i]),
                    "significance": float(z[i]),
                    "candidates": _candidates(
                        float(energy[i]), float(sigma[i]), model.incident_energy_keV, exclude
                    ),
                }
            )
    return out


def _candidates(energy_keV, sigma_keV, incident_energy_keV, exclude) -> list[str]:
    """Elements with a strong line (or its Si escape peak) within 2 sigma of an energy."""
    import xraylib

    scored = []
    for z in _SEARCH_Z:
        symbol = xraylib.AtomicNumberToSymbol(z)
        if symbol in exclude:
            continue
        lines = physics.emission_lines(symbol, float(incident_energy_keV))
        if not lines:
            continue
        top = max(line.cross_section_cm2_g for line in lines)
        for line in lines:
            if line.cross_section_cm2_g < 0.1 * top:
                continue
            for shift in (0.0, physics.SI_KA_ESCAPE_KEV):
                distance = abs(line.energy_keV - shift - energy_keV)
                if distance < 2.0 * sigma_keV:
                    scored.append((distance + shift, symbol))
    seen, ordered = set(), []
    for _, symbol in sorted(scored):
        if symbol not in seen:
            seen.add(symbol)
            ordered.append(symbol)
    return ordered
