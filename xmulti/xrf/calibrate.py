"""Calibration on the summed spectrum: energy scale, peak widths, scatter, escape, elements.

The integrated spectrum of a scan has enough counts to fit the detector's parameters: energy
scale (offset, gain, optionally quadratic), peak widths (electronic noise, Fano factor), the
Compton peak's shift and width and the Si escape fraction (relative to Reed & Ware's). The
amplitudes enter linearly and are solved for every trial of those few nonlinear parameters
(variable projection: Golub & Pereyra, SIAM J. Numer. Anal. 10, 413 (1973)), here as a
*physical* linear fit (:mod:`xmulti.xrf.summed`): non-negative element, scatter and pile-up
amplitudes and a smooth non-negative continuum, with channel variances that include a
model-shape tolerance.

What keeps it safe on spectra xmulti did not simulate:

- **a prior on the energy scale**: the fit starts from the file's axis (or the beamline's
  calibration); while elements are being identified, the scale pays a Gaussian penalty for
  moving the energy of the first and last fitted channels by more than ``prior_channels`` and
  cannot move by more than twice that, so a wrong early pick cannot drag it. Once the element
  list is complete, strong identified peaks decide alone (a coarse fit with broad peaks gives
  a capture range of tens of channels). The result reports the shift in channels and the
  elements whose lines drove it;
- **scatter only where it is**: elastic and Compton components are used when the incident
  energy's peaks lie inside the recorded range and are seen (their chi-square gain passes a
  5-sigma test); the continuum ends at the Compton peak only then;
- **elements**: a given list is used as is (the beamline's or the user's); otherwise
  :func:`xmulti.xrf.identify.identify_elements` adds what the spectrum needs beyond the known
  elements, after the escape and pile-up peaks of accepted lines are in the model; with a given
  list it reports what the list leaves unexplained;
- **a goodness-of-fit gate**: the reduced chi-square with the shape tolerance; above
  ``POOR_FIT`` the result is marked poor and names the energy ranges it cannot explain.

The fit runs coarse-to-fine: the energy scale first with artificially broad peaks (capture
range of several channels), then all parameters with the physical widths, then once more with
the fitted model's variance (weights from observed counts bias low-count channels low).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import physics
from ..errors import InvalidInputError
from .identify import ADD_PENALTY, Identification, identify_elements, prune_elements
from .model import (
    Calibration,
    Component,
    SpectralModel,
    build_model,
    channel_edges_keV,
    channel_energies_keV,
    element_components,
    fit_channels,
)
from .shapes import (
    element_line_table,
    lines_with_escape,
    peak_columns,
    pileup_column,
    windowed_peaks,
)
from .summed import (
    CONTINUUM_KNOT_SPACING_KEV,
    DEFAULT_SHAPE_TOLERANCE,
    channel_variance,
    continuum_pspline,
    solve_nonnegative,
    solve_with_model_variance,
)

__all__ = ["CalibrationResult", "calibrate", "DEFAULT_FIT_PARAMETERS", "POOR_FIT"]

#: Nonlinear parameters fitted by default (``"quadratic_keV"`` can be added).
DEFAULT_FIT_PARAMETERS = (
    "offset_keV",
    "gain_keV",
    "noise_fwhm_keV",
    "fano",
    "compton_shift_keV",
    "compton_width_keV",
    "escape_scale",
    "escape_power",
    "tail_fraction",
)
#: Hard bounds: absolute (low, high), or for the energy scale relative to the initial
#: calibration (offset +- 0.3 keV, gain +- 5 %); the prior keeps the scale much closer unless
#: strong peaks demand otherwise.
_BOUNDS = {
    "offset_keV": ("relative", 0.3),
    "gain_keV": ("scale", 0.05),
    "quadratic_keV": (-1e-5, 1e-5),
    "noise_fwhm_keV": (0.03, 0.4),
    "fano": (0.05, 0.3),
    "compton_shift_keV": (-0.3, 0.3),
    "compton_width_keV": (0.0, 0.6),
    "escape_scale": (0.0, 4.0),
    "escape_power": (0.0, 1.5),
    "tail_fraction": (0.0, 0.3),
}
#: Reduced chi-square (with the shape tolerance) above which the summed fit is poor.
POOR_FIT = 4.0
#: Chi-square per channel (with the shape tolerance, smoothed over the detector width) above
#: which a channel counts as unexplained in the gate's message.
_UNEXPLAINED_LEVEL = 9.0
#: A family is a column of the summed fit when a line lies within this of the fitted range (keV).
_FAMILY_MARGIN_KEV = 0.3
#: Width (keV) of the continuum's step at the Compton peak: it rises over this range below it.
_EDGE_RAMP_KEV = 1.0
#: Share of the fitted range's counts the scatter peaks must hold to be modelled.
_MIN_SCATTER_SHARE = 0.01
#: Evaluations allowed per fitted parameter in one nonlinear fit.
_EVALUATIONS_PER_PARAMETER = 12


@dataclass
class CalibrationResult:
    """Result of :func:`calibrate`.

    Attributes
    ----------
    calibration : Calibration
        Fitted calibration.
    elements : tuple of str
        Elements in the model: the given list, or the known ones plus those identified.
    amplitudes : dict of str to float
        Counts of each peak component in the summed spectrum (non-negative), and ``continuum``
        (continuum counts in the fitted range).
    amplitude_sigmas : dict of str to float
        1-sigma uncertainties of the peak components' counts (0 for a component at 0), for the
        channel variance with the shape tolerance.
    model : SpectralModel
        Design matrix of the per-pixel fit at the fitted calibration.
    energy_keV : ndarray (n_fit,)
        Channel energies of the fitted range.
    observed, fitted : ndarray (n_fit,)
        Summed spectrum and its physical model over the fitted range.
    residuals : ndarray (n_fit,)
        Pearson residuals ``(observed - fitted) / sqrt(max(fitted, 1))``.
    chi_square, reduced_chi_square : float
        Poisson chi-square and per degree of freedom.
    tolerant_reduced_chi_square : float
        Reduced chi-square with the model-shape tolerance (what the gate judges).
    quality : str
        ``"good"`` or ``"poor"`` (see ``message``).
    message : str
        One line on the fit: the shift, and for a poor fit the ranges it cannot explain and what
        to try.
    energy_shift_channels : (float, float)
        Energy change of the first and last fitted channel from the initial calibration, in
        channels.
    shift_drivers : tuple of str
        Elements whose lines dominate the energy scale (the strongest in the model).
    scatter : bool
        Whether elastic and Compton components are modelled.
    identification : Identification or None
        What element identification found or left unexplained.
    suggested_elements : list of dict
        Unexplained residual peaks: ``energy_keV``, ``significance`` (sigma) and ``candidates``
        (element symbols tried, best first).
    unexplained_ranges_keV : list of (float, float)
        Energy ranges the model cannot explain (poor fits).
    element_source : str
        Where the element list came from (set by :func:`xmulti.xrf.maps.calibrate_scan`).
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
    amplitude_sigmas: dict[str, float] = field(default_factory=dict)
    tolerant_reduced_chi_square: float = 0.0
    quality: str = "good"
    message: str = ""
    energy_shift_channels: tuple[float, float] = (0.0, 0.0)
    shift_drivers: tuple[str, ...] = ()
    scatter: bool = True
    identification: Identification | None = None
    suggested_elements: list[dict] = field(default_factory=list)
    unexplained_ranges_keV: list[tuple[float, float]] = field(default_factory=list)
    element_source: str = "given"

    def report_lines(self) -> list[str]:
        """The fit's findings for a log, a line each: the elements and where they came from,
        every ambiguous reading with its evidence, and :attr:`message`."""
        lines = [f"elements ({self.element_source}): {', '.join(self.elements) or 'none'}"]
        for item in self.identification.ambiguous if self.identification else []:
            readings = " or ".join(f"{r['element']} (chi-square gain {r['delta_chi_square']:g})"
                                   for r in item["readings"])
            lines.append(f"ambiguous peak at {item['energy_keV']:.2f} keV: {readings}; fitted as {item['chosen']}")
        return [*lines, self.message]


class _SummedProblem:
    """The summed spectrum over fixed rows and the builders of its design matrices."""

    def __init__(self, spectrum, incident_energy_keV, initial, energy_range_keV, shape_tolerance, options):
        self.n_channels = spectrum.size
        self.e0 = float(incident_energy_keV)
        energies = channel_energies_keV(np.arange(self.n_channels), initial)
        self.rows = fit_channels(energies, self.e0, energy_range_keV)
        self.channels = np.arange(self.rows.start, self.rows.stop)
        self.initial_range_keV = (float(energies[self.rows.start]), float(energies[self.rows.stop - 1]))
        self.y = spectrum[self.rows]
        self.tolerance = shape_tolerance
        # a line's flanks: two detector widths at 5 keV, in channels
        self.spread = int(round(2 * physics.detector_sigma_keV(5.0, initial.noise_fwhm_keV, initial.fano)
                                / initial.gain_keV))
        self.angle = float(options.get("scattering_angle_deg", 90.0))
        self.escape = bool(options.get("escape", True))
        self.scatter_escape = bool(options.get("scatter_escape", True))
        self.be_um = float(options.get("be_window_um", 8.0))
        self.si_mm = float(options.get("si_thickness_mm", 0.35))
        self.families = tuple(options.get("families", ("K", "L", "M")))
        self.tie = bool(options.get("tie_families", True))
        self.scatter = False
        self.pileup_lines = None
        self._components: dict[str, list[Component]] = {}
        self._tables: dict[tuple, tuple] = {}
        self._free: dict[tuple, np.ndarray] = {}
        # the continuum's knots are fixed in channels (they need not follow the calibration)
        self.spline = continuum_pspline(self.channels.astype(float), CONTINUUM_KNOT_SPACING_KEV / initial.gain_keV)

    def components(self, symbols, tie: bool = False) -> list[Component]:
        """Element components. The summed fit keeps each family free (``tie=False``): matrix
        absorption and the generator of the data change L/K and M/L ratios, and a tied element
        leaves residuals that look like other elements; identification scores a candidate as a
        whole family (``tie=True``), so its pattern is evidence. Families with no line near the
        fitted range are left out."""
        out = []
        for s in symbols:
            if (s, tie) not in self._components:
                comps = element_components([s], self.e0, self.families, tie)
                if not tie and len(comps) > 1:
                    inside = [c for c in comps if c.name == c.element or self._in_range(c)]
                    comps = inside
                self._components[(s, tie)] = comps
            out += self._components[(s, tie)]
        return out

    def _in_range(self, comp: Component) -> bool:
        """A family with a line inside the fitted range or within ``_FAMILY_MARGIN_KEV`` of it
        (its peak's flank in the first channels must be modelled)."""
        low, high = self.initial_range_keV
        energies = np.asarray(comp.line_energies_keV)
        return bool(np.any((energies >= low - _FAMILY_MARGIN_KEV) & (energies <= high + _FAMILY_MARGIN_KEV)))

    def energies(self, cal):
        return channel_energies_keV(self.channels, cal)

    def _line_table(self, symbols, tie: bool = False):
        """The element components and their lines (:func:`~xmulti.xrf.shapes.element_line_table`),
        built once per element list: a trial calibration only moves and widens them."""
        key = (tuple(symbols), tie)
        if key not in self._tables:
            comps = self.components(symbols, tie)
            self._tables[key] = (comps, element_line_table(comps, self.be_um, self.si_mm, self.escape))
        return self._tables[key]

    def peaks(self, cal, symbols, scatter=None, tie: bool = False):
        comps, lines = self._line_table(symbols, tie)
        comps = list(comps)
        n_elements = len(comps)
        scatter = self.scatter if scatter is None else scatter
        if scatter:
            comps += [Component("elastic", "scatter"), Component("compton", "scatter")]
        matrix = np.zeros((self.channels.size, len(comps)))
        if lines[0].size:
            centres, sigmas, w, index = lines_with_escape(*lines, cal)
            matrix += windowed_peaks(self.channels, cal, centres, sigmas, w, index, len(comps), cal.tail_fraction)
        if scatter:
            matrix[:, n_elements:] = peak_columns(comps[n_elements:], self.channels, cal, self.e0, self.angle,
                                                  self.escape, self.be_um, self.si_mm, self.scatter_escape)
        return comps, matrix

    def compton_keV(self, cal):
        return physics.compton_energy_keV(self.e0, self.angle) + cal.compton_shift_keV

    def design(self, cal, symbols, scatter=None, pileup=True):
        """``[peaks | pile-up | continuum P-spline]``, component names, continuum columns."""
        scatter = self.scatter if scatter is None else scatter
        comps, matrix = self.peaks(cal, symbols, scatter)
        names = [c.name for c in comps]
        blocks = [matrix]
        if pileup and self.pileup_lines is not None:
            blocks.append(pileup_column(*self.pileup_lines, self.channels, cal)[:, None])
            names.append("pileup")
        # The P-spline runs over the whole range, across the Compton peak, so it can go on when
        # pile-up or a continuum above E0 does; the sharp end of the continuum (at the Compton
        # peak for scattered photons, at E0 without scatter peaks: nothing is excited above it)
        # is one more non-negative column, a step local to the last keV below it (a spline cut
        # at the peak failed on continua that go on).
        energies = self.energies(cal)
        if scatter:
            edge = self.compton_keV(cal)
            width = float(np.hypot(physics.detector_sigma_keV(edge, cal.noise_fwhm_keV, cal.fano),
                                   cal.compton_width_keV))
        else:
            edge = self.e0
            width = float(physics.detector_sigma_keV(edge, cal.noise_fwhm_keV, cal.fano))
        if energies[0] + _EDGE_RAMP_KEV < edge < energies[-1]:
            from scipy.special import erfc

            ramp = np.clip(1.0 - (edge - energies) / _EDGE_RAMP_KEV, 0.0, 1.0)
            blocks.append((0.5 * erfc((energies - edge) / (np.sqrt(2.0) * width)) * ramp)[:, None])
            names.append("continuum_edge")
        first = sum(b.shape[1] for b in blocks)
        blocks.append(self.spline)
        names += [f"continuum_{i}" for i in range(self.spline.shape[1])]
        return np.concatenate(blocks, axis=1), names, list(range(first, first + self.spline.shape[1]))

    def solve(self, cal, symbols, variance=None, scatter=None, pileup=True, with_sigmas=False):
        """Physical linear fit at a calibration: (names, SummedSolution, variance used)."""
        matrix, names, continuum = self.design(cal, symbols, scatter, pileup)
        key = tuple(names)
        if variance is None:
            solution, variance = solve_with_model_variance(matrix, self.y, continuum, self.tolerance, self.spread,
                                                           self._free.get(key), with_sigmas)
        else:
            solution = solve_nonnegative(matrix, self.y, variance, continuum, with_sigmas=with_sigmas,
                                         free_hint=self._free.get(key))
        self._free[key] = solution.amplitudes > 0  # the next trial's free set, most likely
        return names, solution, variance


def calibrate(
    spectrum,
    incident_energy_keV: float,
    initial: Calibration,
    elements=None,
    *,
    known_elements=(),
    fit_parameters: tuple[str, ...] = DEFAULT_FIT_PARAMETERS,
    energy_range_keV: tuple[float, float] | None = None,
    n_continuum: int = 8,
    prior_channels: float = 3.0,
    identify: bool = True,
    suggest_threshold_sigma: float = 5.0,
    max_elements: int = 20,
    pileup: bool | str = "auto",
    shape_tolerance: float = DEFAULT_SHAPE_TOLERANCE,
    candidates=None,
    **model_options,
) -> CalibrationResult:
    """Fit the calibration, the scatter and the elements of a summed spectrum.

    Parameters
    ----------
    spectrum : ndarray (n_channels,)
        Summed counts per channel (non-negative, finite).
    incident_energy_keV : float
        Incident photon energy (keV).
    initial : Calibration
        Starting point: the file's energy axis, or the beamline's calibration.
    elements : iterable of str, optional
        Elements to model, exactly (identification then only reports what they leave
        unexplained). None: ``known_elements`` plus those identified.
    known_elements : iterable of str
        Elements always modelled when ``elements`` is None (e.g. a standard's certified ones).
    fit_parameters : tuple of str
        Calibration fields to fit; the others stay at their ``initial`` value.
    energy_range_keV : (low, high), optional
        Fitted range (keV), default 1.0 keV to E0 + 0.6 keV at the initial calibration.
    n_continuum : int
        B-splines of the per-pixel model's continuum (the summed fit uses its own P-spline).
    prior_channels : float
        Standard deviation of the energy-scale prior, in channels at the ends of the range.
    identify : bool
        Identify elements (with ``elements=None``) or report unexplained peaks.
    suggest_threshold_sigma : float
        Significance (matched-filter sigma) of a residual peak to be examined.
    max_elements : int
        Cap on identified elements.
    pileup : bool or "auto"
        Model sum peaks of the fitted lines: always, never, or when they pass a 5-sigma test.
    shape_tolerance : float
        Relative model-shape tolerance of the channel variance (:mod:`xmulti.xrf.summed`).
    candidates : iterable of str, optional
        Elements identification may add (default: those that occur in samples).
    **model_options
        ``escape``, ``tie_families``, ``be_window_um``, ``si_thickness_mm``,
        ``scattering_angle_deg``, ``scatter_escape``, ``families`` (see
        :func:`xmulti.xrf.model.build_model`).

    Returns
    -------
    CalibrationResult
    """
    from threadpoolctl import threadpool_limits

    # matrices of a thousand rows and tens of columns: one BLAS thread is fastest (and leaves
    # the other cores to the caller's workers)
    with threadpool_limits(limits=1, user_api="blas"):
        return _calibrate(spectrum, incident_energy_keV, initial, elements, known_elements, fit_parameters,
                          energy_range_keV, n_continuum, prior_channels, identify, suggest_threshold_sigma,
                          max_elements, pileup, shape_tolerance, candidates, model_options)


def _calibrate(spectrum, incident_energy_keV, initial, elements, known_elements, fit_parameters, energy_range_keV,
               n_continuum, prior_channels, identify, suggest_threshold_sigma, max_elements, pileup, shape_tolerance,
               candidates, model_options) -> CalibrationResult:
    y_full = np.asarray(spectrum, dtype=np.float64)
    if y_full.ndim != 1:
        raise InvalidInputError(f"calibrate expects one summed spectrum, got shape {y_full.shape}")
    if not np.all(np.isfinite(y_full)) or np.any(y_full < 0):
        raise InvalidInputError("summed spectrum has NaN, infinite or negative counts")
    unknown = sorted(set(fit_parameters) - set(_BOUNDS))
    if unknown:
        raise InvalidInputError(f"cannot fit {unknown}; choose among {sorted(_BOUNDS)}")
    if not incident_energy_keV or not incident_energy_keV > 0:
        raise InvalidInputError(f"incident energy must be positive, got {incident_energy_keV} keV")
    if not initial.gain_keV > 0:
        raise InvalidInputError(f"the energy axis decreases (gain {initial.gain_keV} keV per channel)")
    problem = _SummedProblem(y_full, incident_energy_keV, initial, energy_range_keV, shape_tolerance,
                             model_options)
    if problem.y.sum() <= 0:
        raise InvalidInputError("summed spectrum has no counts in the fitted energy range")
    requested = None if elements is None else [str(e).strip() for e in elements]
    known = requested if requested is not None else [str(e).strip() for e in known_elements]
    element_components(known, problem.e0, problem.families, problem.tie)  # unknown symbols fail here
    problem.scatter = _scatter_in_range(problem, initial)
    fitter = _NonlinearFit(problem, initial, fit_parameters, prior_channels)

    cal = initial
    if problem.scatter and not _scatter_seen(problem, cal, known):
        problem.scatter = False  # in range but absent: it must not pin the energy scale
    current = list(known)
    calibration_elements = current  # what the nonlinear fits see
    if known:  # scatter peaks alone do not pin the widths: with no element, wait for the first ones
        start = fitter.coarse(cal, known)
        cal = fitter.fine(start, known)
        if requested is not None and identify and _tolerant_chi_square(problem, cal, known) > POOR_FIT:
            # strong peaks the given list leaves out pulled the calibration: calibrate again from
            # the coarse scale with the missing elements too (they are reported, not fitted)
            extra, cal = _identify(problem, start, known, True, suggest_threshold_sigma, max_elements, candidates,
                                   fitter, bool(pileup))
            if extra.elements:
                calibration_elements = current + list(extra.elements)
            cal = fitter.fine(cal, calibration_elements)
    identification = None
    if requested is None and identify:
        identification, cal = _identify(problem, cal, current, True, suggest_threshold_sigma, max_elements,
                                        candidates, fitter, bool(pileup))
        current = calibration_elements = current + list(identification.elements)
        cal = fitter.fine(cal, current)
    if problem.scatter and not _scatter_seen(problem, cal, calibration_elements):
        problem.scatter = False
        cal = fitter.fine(cal, calibration_elements)
    if pileup:
        problem.pileup_lines = _detected_lines(problem, cal, calibration_elements)
        if pileup == "auto" and not _pileup_seen(problem, cal, calibration_elements):
            problem.pileup_lines = None
    cal = fitter.fine(cal, calibration_elements, model_variance=True)
    if identification is not None and identification.elements:
        # identified at a provisional calibration: keep only what the final one still needs
        context = _Context(problem, cal, None, problem.pileup_lines is not None)
        kept, dropped, evidence = prune_elements(problem.y, context, current, known, problem.tolerance,
                                                 problem.spread)
        if dropped:
            current = kept
            identification.dropped += dropped
            identification.elements = tuple(s for s in kept if s not in known)
            identification.ambiguous = [a for a in identification.ambiguous if a["chosen"] in kept]
            cal = fitter.fine(cal, current, model_variance=True)
        identification.evidence = {s: evidence[s] for s in identification.elements if s in evidence}
    if identify:  # what the final model leaves unexplained, at the final calibration
        report, _ = _identify(problem, cal, current, False, suggest_threshold_sigma, max_elements, candidates,
                              pileup=problem.pileup_lines is not None)
        if identification is None:
            identification = report
        else:
            identification.unexplained = report.unexplained
    return _result(problem, initial, cal, current, identification, n_continuum, len(fitter.names))


class _Context:
    """:class:`xmulti.xrf.identify.IdentifyContext` over the summed problem; ``refine`` refits
    the calibration (the identification's first elements pin the energy scale)."""

    def __init__(self, problem: _SummedProblem, cal: Calibration, fitter: _NonlinearFit | None,
                 pileup: bool = False):
        self.problem = problem
        self.cal = cal
        self.fitter = fitter
        self.pileup = pileup
        self._lines: dict = {}

    def axes(self):
        energies = self.problem.energies(self.cal)
        lo, hi = channel_edges_keV(self.problem.channels, self.cal)
        sigmas = physics.detector_sigma_keV(np.maximum(energies, 0.0), self.cal.noise_fwhm_keV, self.cal.fano)
        return energies, sigmas, lo, hi

    def base(self, elements):
        """The model of the accepted elements, with the sum peaks of their lines when pile-up is
        modelled: sum peaks are explained before any element is added for them."""
        if not (self.pileup and elements):
            matrix, _, continuum = self.problem.design(self.cal, elements, pileup=False)
            return matrix, continuum
        key = (tuple(elements), self.cal)
        if key not in self._lines:
            self._lines[key] = _detected_lines(self.problem, self.cal, elements)
        kept, self.problem.pileup_lines = self.problem.pileup_lines, self._lines[key]
        try:
            matrix, _, continuum = self.problem.design(self.cal, elements, pileup=True)
        finally:
            self.problem.pileup_lines = kept
        return matrix, continuum

    def columns(self, symbols, shift_channels=0.0):
        cal = self.cal
        if shift_channels:
            cal = cal.replace(offset_keV=cal.offset_keV + shift_channels * cal.gain_keV)
        return self.problem.peaks(cal, symbols, scatter=False, tie=True)[1]

    def peak(self, energy_keV):
        from .shapes import gaussian_peaks

        lo, hi = channel_edges_keV(self.problem.channels, self.cal)
        sigma = physics.detector_sigma_keV(energy_keV, self.cal.noise_fwhm_keV, self.cal.fano)
        return gaussian_peaks(lo, hi, [energy_keV], [sigma])[:, 0]

    def refine(self, elements):
        """The energy scale from the elements found so far (widths need the whole list), within
        twice the prior's width of the initial calibration: while elements are missing, a wrong
        early pick must not drag the scale (the fit with the whole list may move it further)."""
        if self.fitter is not None:
            names = None if self.fitter.pins_gain(self.cal, elements) else ["offset_keV"]
            self.cal = self.fitter.scale(self.cal, elements, names, limit_channels=2 * self.fitter.prior_channels)


def _identify(problem, cal, known, add, threshold, max_elements, candidates, fitter=None, pileup=False):
    """:func:`identify_elements` at a calibration; returns it and the (refined) calibration."""
    context = _Context(problem, cal, fitter, pileup)
    found = identify_elements(
        problem.y, context, problem.e0, known=known, add=add, threshold_sigma=threshold,
        shape_tolerance=problem.tolerance, spread_channels=problem.spread, max_added=max_elements,
        candidates=candidates,
    )
    return found, context.cal


def _tolerant_chi_square(problem: _SummedProblem, cal: Calibration, symbols) -> float:
    """Reduced chi-square with the shape tolerance of the physical fit at a calibration."""
    _, solution, variance = problem.solve(cal, symbols)
    return float(np.sum((problem.y - solution.fitted) ** 2 / variance)) / max(1, problem.y.size)


class _NonlinearFit:
    """Variable-projection fits of the calibration with the energy-scale prior."""

    def __init__(self, problem: _SummedProblem, initial: Calibration, fit_parameters, prior_channels):
        self.problem = problem
        self.initial = initial
        self.names = list(fit_parameters)
        self.prior_channels = float(prior_channels)
        ends = np.array([problem.channels[0], problem.channels[-1]], dtype=float)
        self.ends = ends
        self.initial_ends = channel_energies_keV(ends, initial)

    def _active(self, names):
        out = [n for n in names if n in self.names]
        if not self.problem.scatter:
            out = [n for n in out if not n.startswith("compton")]
        if not self.problem.escape:
            out = [n for n in out if n not in ("escape_scale", "escape_power")]
        return out

    def _prior(self, cal):
        if self.prior_channels <= 0:
            return np.zeros(0)
        shift = channel_energies_keV(self.ends, cal) - self.initial_ends
        return shift / (self.prior_channels * self.initial.gain_keV)

    def fit(self, cal, symbols, names, variance, limit_channels: float | None = None):
        """Fit ``names`` at fixed channel variance; with ``limit_channels`` the offset and gain
        stay within that many channels of the initial calibration at the ends of the range."""
        from scipy.optimize import least_squares

        names = self._active(names)
        if not names:
            return cal
        problem = self.problem
        # fitted in units of each parameter's typical change, so finite-difference steps and
        # trust regions are alike for all of them
        start = np.array([getattr(cal, n) for n in names], dtype=float)
        scale = np.array([_parameter_scale(n, cal) for n in names])
        lower, upper = np.array([_bounds(n, self.initial) for n in names]).T
        if limit_channels is not None:
            step = limit_channels * self.initial.gain_keV
            for i, name in enumerate(names):
                centre = getattr(self.initial, name)
                width = {"offset_keV": step, "gain_keV": step / max(self.ends[1], 1.0),
                         "quadratic_keV": step / max(self.ends[1], 1.0) ** 2}.get(name)
                if width is not None:
                    lower[i], upper[i] = max(lower[i], centre - width), min(upper[i], centre + width)
        start = np.clip(start, lower + 1e-12, upper - 1e-12)
        w = 1.0 / np.sqrt(variance)
        # the prior holds the scale while elements are missing (limit_channels set, during
        # identification); with the whole list, strong identified peaks decide alone
        use_prior = limit_channels is not None and bool({"offset_keV", "gain_keV", "quadratic_keV"} & set(names))

        # u = 1 at the start: scipy's relative finite-difference step is zero at u = 0
        def trial(u):
            return cal.replace(**dict(zip(names, (float(v) for v in start + (u - 1.0) * scale), strict=True)))

        def residual(u):
            candidate = trial(u)
            _, solution, _ = problem.solve(candidate, symbols, variance)
            r = (problem.y - solution.fitted) * w
            return np.concatenate([r, self._prior(candidate)]) if use_prior else r

        result = least_squares(residual, np.ones(len(names)),
                               bounds=(1.0 + (lower - start) / scale, 1.0 + (upper - start) / scale),
                               method="trf", max_nfev=_EVALUATIONS_PER_PARAMETER * len(names), diff_step=0.05,
                               xtol=1e-4, ftol=1e-5)
        return trial(result.x)

    def variance(self, cal, symbols, model: bool):
        problem = self.problem
        if not model:
            return channel_variance(np.maximum(problem.y, 1.0), problem.tolerance, problem.spread)
        _, _, variance = problem.solve(cal, symbols)
        return variance

    def pins_gain(self, cal, symbols, with_scatter: bool = True) -> bool:
        """Whether the strong lines of ``symbols`` (and the elastic peak) span a third of the
        range: one element's K-alpha and K-beta cannot pin a gain, only an offset."""
        energies = self.problem.energies(cal)
        lines = [e for comp in self.problem.components(symbols) for e, w in
                 zip(comp.line_energies_keV, comp.line_weights, strict=True)
                 if w > 0.05 and energies[0] <= e <= energies[-1]]
        if self.problem.scatter and with_scatter:
            lines.append(self.problem.e0)
        span = (max(lines) - min(lines)) if lines else 0.0
        return span >= (energies[-1] - energies[0]) / 3

    def coarse(self, cal, symbols):
        """Energy scale with broad peaks (a capture range of several channels), from the
        fluorescence lines only: the scatter peaks' shape and shift are not known yet. Lines
        that cannot pin a gain move the offset alone, within twice the prior's width."""
        names = [n for n in ("offset_keV", "gain_keV") if n in self.names]
        limit = None
        if not self.pins_gain(cal, symbols, with_scatter=False):  # the scatter region is left out here
            names, limit = [n for n in names if n == "offset_keV"], 2 * self.prior_channels
        if not names:
            return cal
        broad = cal.replace(noise_fwhm_keV=max(cal.noise_fwhm_keV, 0.35))
        variance = self.variance(broad, symbols, model=False)
        if self.problem.scatter:
            below = self.problem.energies(cal) < self.problem.compton_keV(cal) - 0.6
            variance = np.where(below, variance, np.inf)
        fitted = self.fit(broad, symbols, names, variance, limit)
        return cal.replace(**{n: getattr(fitted, n) for n in names})

    def scale(self, cal, symbols, names=None, limit_channels: float | None = None):
        """Offset and gain (and quadratic), or the given ones, with the physical widths."""
        names = [n for n in (names or ("offset_keV", "gain_keV", "quadratic_keV")) if n in self.names]
        return self.fit(cal, symbols, names, self.variance(cal, symbols, model=False), limit_channels)

    def fine(self, cal, symbols, model_variance: bool = False):
        """All parameters, weights from the data (or from the model, the final pass)."""
        return self.fit(cal, symbols, self.names, self.variance(cal, symbols, model_variance))


def _scatter_in_range(problem: _SummedProblem, cal: Calibration) -> bool:
    """Elastic and Compton peaks both inside the fitted range (with two widths of margin)."""
    energies = problem.energies(cal)
    sigma = physics.detector_sigma_keV(problem.e0, cal.noise_fwhm_keV, cal.fano)
    compton = problem.compton_keV(cal)
    return bool(energies[0] < compton - 2 * sigma and problem.e0 + 2 * sigma < energies[-1])


def _gain_of(problem: _SummedProblem, cal: Calibration, symbols, part: str) -> tuple[float, dict]:
    """Chi-square gain of a part of the model (``"scatter"`` or ``"pileup"``), at the variance of
    the model with it, and the amplitudes of that model."""
    names, with_part, variance = problem.solve(cal, symbols, **{part: True})
    _, without, _ = problem.solve(cal, symbols, variance, **{part: False})
    return without.chi_square - with_part.chi_square, dict(zip(names, with_part.amplitudes, strict=True))


def _scatter_seen(problem: _SummedProblem, cal: Calibration, symbols) -> bool:
    """Scatter peaks lower chi-square by more than the 5-sigma penalty and hold at least
    ``_MIN_SCATTER_SHARE`` of the counts (a broad Compton column can take a few thousand counts
    of a hump in a continuum-rich spectrum without any scatter peak)."""
    gain, amplitude = _gain_of(problem, cal, symbols, "scatter")
    share = (amplitude["elastic"] + amplitude["compton"]) / max(float(problem.y.sum()), 1.0)
    return gain > 2 * ADD_PENALTY and share >= _MIN_SCATTER_SHARE


def _pileup_seen(problem: _SummedProblem, cal: Calibration, symbols) -> bool:
    """Sum peaks lower chi-square by more than the 5-sigma penalty."""
    return _gain_of(problem, cal, symbols, "pileup")[0] > ADD_PENALTY


def _detected_lines(problem: _SummedProblem, cal: Calibration, symbols) -> tuple[np.ndarray, np.ndarray]:
    """Energies and fitted counts of the element and scatter lines inside the fitted range (for
    the pile-up shape; a family below the range is a column for its flank only, and its
    amplitude, fitted on that flank, is not a count to square)."""
    names, solution, _ = problem.solve(cal, symbols, pileup=False)
    amplitude = dict(zip(names, solution.amplitudes, strict=True))
    low, high = problem.initial_range_keV
    energies, counts = [], []
    for comp in problem.components(symbols):
        a = amplitude.get(comp.name, 0.0)
        lines = np.asarray(comp.line_energies_keV)
        inside = (lines >= low) & (lines <= high)
        if a > 0 and inside.any():
            energies.extend(lines[inside])
            counts.extend(a * np.asarray(comp.line_weights)[inside])
    if problem.scatter:
        energies += [problem.e0, problem.compton_keV(cal)]
        counts += [amplitude.get("elastic", 0.0), amplitude.get("compton", 0.0)]
    return np.asarray(energies), np.asarray(counts)


def _result(problem, initial, cal, elements, identification, n_continuum, n_nonlinear) -> CalibrationResult:
    names, solution, variance = problem.solve(cal, elements, with_sigmas=True)
    y = problem.y
    fitted = solution.fitted
    amplitudes = {n: float(a) for n, a in zip(names, solution.amplitudes, strict=True)
                  if not n.startswith("continuum_")}
    sigmas = {n: float(a) for n, a in zip(names, solution.sigmas, strict=True) if not n.startswith("continuum_")}
    continuum_columns = [i for i, n in enumerate(names) if n.startswith("continuum_")]  # with the edge
    matrix, _, _ = problem.design(cal, elements)
    amplitudes["continuum"] = float(matrix[:, continuum_columns].sum(axis=0) @ solution.amplitudes[continuum_columns])
    residuals = (y - fitted) / np.sqrt(np.maximum(fitted, 1.0))
    chi2 = float(np.sum(residuals**2))
    dof = max(1, y.size - int(np.sum(solution.amplitudes > 0)) - n_nonlinear)
    tolerant = float(np.sum((y - fitted) ** 2 / variance)) / dof
    model = build_model(
        elements, problem.e0, cal, problem.n_channels, n_continuum=n_continuum, scatter=problem.scatter,
        escape=problem.escape, pileup_lines=problem.pileup_lines, scattering_angle_deg=problem.angle,
        be_window_um=problem.be_um, si_thickness_mm=problem.si_mm, families=problem.families,
        tie_families=problem.tie, channel_slice=problem.rows, continuum_edge=problem.scatter,
        scatter_escape=problem.scatter_escape,
    )
    energies = problem.energies(cal)
    shift = (channel_energies_keV(problem.channels[[0, -1]], cal)
             - channel_energies_keV(problem.channels[[0, -1]], initial)) / initial.gain_keV
    drivers = tuple(sorted((n for n in amplitudes if n in elements), key=lambda n: -amplitudes[n])[:3])
    ranges = _unexplained_ranges(y, fitted, variance, energies, cal)
    quality = "poor" if tolerant > POOR_FIT else "good"
    suggestions = [
        {"energy_keV": p["energy_keV"], "significance": p["significance"],
         "candidates": [c["element"] for c in p["candidates"]]}
        for p in (identification.unexplained if identification else [])
    ]
    message = _message(quality, tolerant, shift, drivers, ranges, suggestions, identification)
    return CalibrationResult(
        calibration=cal,
        elements=tuple(elements),
        amplitudes=amplitudes,
        model=model,
        energy_keV=energies,
        observed=y,
        fitted=fitted,
        residuals=residuals,
        chi_square=chi2,
        reduced_chi_square=chi2 / dof,
        amplitude_sigmas=sigmas,
        tolerant_reduced_chi_square=tolerant,
        quality=quality,
        message=message,
        energy_shift_channels=(float(shift[0]), float(shift[1])),
        shift_drivers=drivers,
        scatter=problem.scatter,
        identification=identification,
        suggested_elements=suggestions,
        unexplained_ranges_keV=ranges,
    )


def _unexplained_ranges(y, fitted, variance, energies, cal) -> list[tuple[float, float]]:
    """Energy ranges whose chi-square per channel, averaged over a detector width, is high."""
    per_channel = (y - fitted) ** 2 / variance
    width = max(1, int(round(physics.detector_sigma_keV(5.0, cal.noise_fwhm_keV, cal.fano) / cal.gain_keV)))
    smooth = np.convolve(per_channel, np.ones(2 * width + 1) / (2 * width + 1), mode="same")
    bad = smooth > _UNEXPLAINED_LEVEL
    ranges = []
    i = 0
    while i < bad.size:
        if bad[i]:
            j = i
            while j + 1 < bad.size and bad[j + 1]:
                j += 1
            ranges.append((round(float(energies[i]), 2), round(float(energies[j]), 2), float(smooth[i:j + 1].sum())))
            i = j + 1
        else:
            i += 1
    ranges.sort(key=lambda r: -r[2])
    return [(lo, hi) for lo, hi, _ in ranges[:5]]


def _message(quality, tolerant, shift, drivers, ranges, suggestions, identification) -> str:
    """One line on the summed fit for the log and the store."""
    moved = f"energy scale moved {shift[0]:+.1f} / {shift[1]:+.1f} channels at the ends of the range"
    if drivers and max(abs(shift[0]), abs(shift[1])) >= 0.5:
        moved += f" (driven by {', '.join(drivers)})"
    if quality == "good":
        return f"summed fit good (reduced chi-square {tolerant:.2f} with 2 % shape tolerance); {moved}"
    where = ", ".join(f"{lo:.2f}-{hi:.2f} keV" for lo, hi in ranges[:3]) or "no single range"
    hint = ""
    if suggestions:
        peaks = "; ".join(f"{p['energy_keV']:.2f} keV: {'/'.join(p['candidates'][:3]) or 'no element'}"
                          for p in suggestions[:3])
        hint = f" Unexplained peaks ({peaks}): add the elements that belong to the sample, or check the incident energy."
    else:
        hint = " Check the incident energy, the detector's energy axis and the fitted energy range."
    return (f"summed fit POOR (reduced chi-square {tolerant:.1f} with 2 % shape tolerance): the model cannot "
            f"explain {where}; {moved}.{hint}")


def _bounds(name: str, initial: Calibration) -> tuple[float, float]:
    """Lower and upper bound of a fitted parameter (see ``_BOUNDS``)."""
    kind, value = _BOUNDS[name]
    start = getattr(initial, name)
    if kind == "relative":
        return start - value, start + value
    if kind == "scale":
        return start * (1 - value), start * (1 + value)
    return kind, value


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
        "escape_scale": 0.1,
        "escape_power": 0.1,
        "tail_fraction": 0.01,
    }[name]
