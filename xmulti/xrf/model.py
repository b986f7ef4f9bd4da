"""Spectral model of an energy-dispersive XRF spectrum: kernels that build design matrices.

Every function here is a pure numpy kernel: arrays (and small dataclasses of numbers) in, arrays
out. The model of the expected counts in channel ``c`` is linear in the component amplitudes,

    mu_c = sum_k a_k G[c, k],

where each column ``G[:, k]`` is one component with unit total area (so ``a_k`` is the number of
counts the component puts in the detector, escape peaks included, counting the part that falls
outside the fitted channel range). Components:

- one per element, holding every line family (K, L, M) excited at the incident energy (or one
  per family, ``tie_families=False``): the lines and their relative intensities are xraylib's
  fluorescence cross-sections at that energy (:func:`xmulti.physics.emission_lines`, Kissel
  cross-sections with cascades), multiplied by the detector efficiency (Be window transmission
  times Si absorption, :func:`xmulti.physics.detector_efficiency`), with no hand-tuned factors;
- elastic scatter at the incident energy and Compton scatter at the free-electron energy (plus a
  fitted shift), broadened by an extra Gaussian width (Doppler broadening);
- optional pile-up (sum peaks of pairs of lines);
- a smooth continuum: a few cubic B-splines over the fitted energy range, ending at the Compton
  peak with its width.

The detector response (channel-integrated Gaussians, Si escape peaks, the continuum basis) is
in :mod:`xmulti.xrf.shapes`.

References
----------
- Van Grieken & Markowicz (eds.), *Handbook of X-Ray Spectrometry*, 2nd ed. (2002), ch. 4
  (spectrum evaluation: detector response, escape peaks, linear least squares).
- Schoonjans et al., Spectrochim. Acta B 66, 776 (2011) (xraylib).
- Reed & Ware, J. Phys. E 5, 582 (1972) (Si escape fraction).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import physics
from ..errors import InvalidInputError
from .shapes import (
    channel_edges_keV,
    channel_energies_keV,
    continuum_basis,
    gaussian_peaks,
    peak_columns,
    pileup_column,
)

__all__ = [
    "Calibration",
    "Component",
    "SpectralModel",
    "channel_energies_keV",
    "channel_edges_keV",
    "element_components",
    "gaussian_peaks",
    "peak_columns",
    "continuum_basis",
    "pileup_column",
    "build_model",
    "fit_channels",
    "default_energy_range_keV",
    "PRINCIPAL_FAMILY_ORDER",
]

#: Order of preference of the family that represents an element in its map (K, then L, then M).
PRINCIPAL_FAMILY_ORDER = ("K", "L", "M")
#: Minimum fraction of a family's counts inside the fitted range for it to be fitted.
_MIN_AREA_IN_RANGE = 0.2


@dataclass(frozen=True)
class Calibration:
    """Detector energy calibration and response.

    Attributes
    ----------
    offset_keV, gain_keV, quadratic_keV : float
        ``E(ch) = offset + gain * ch + quadratic * ch^2`` (keV) at channel centres.
    noise_fwhm_keV : float
        Electronic noise as a FWHM (keV).
    fano : float
        Fano factor of silicon.
    compton_shift_keV : float
        Shift of the Compton peak from the free-electron Compton energy (keV).
    compton_width_keV : float
        Extra Gaussian sigma of the Compton peak (keV), added in quadrature to the detector's.
    escape_scale : float
        Si escape fraction relative to Reed & Ware's (1 for a thick detector at normal
        incidence; fitted on the summed spectrum, since geometry and thin sensors change it).
    escape_power : float
        Energy dependence of the escape fraction relative to Reed & Ware's (1: theirs; 0: the
        same fraction at every energy; :func:`xmulti.xrf.shapes.escape_fractions`).
    tail_fraction : float
        Fraction of each line's counts in its low-energy tail (incomplete charge collection,
        :func:`xmulti.xrf.shapes.windowed_peaks`).
    """

    offset_keV: float
    gain_keV: float
    quadratic_keV: float = 0.0
    noise_fwhm_keV: float = 0.1
    fano: float = 0.114
    compton_shift_keV: float = 0.0
    compton_width_keV: float = 0.1
    escape_scale: float = 1.0
    escape_power: float = 1.0
    tail_fraction: float = 0.0

    def replace(self, **changes) -> Calibration:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def as_attrs(self) -> dict[str, float]:
        """The calibration as flat attributes (names carry the units)."""
        return {f"calibration_{k}": float(v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Component:
    """One column of the design matrix.

    Attributes
    ----------
    name : str
        ``"Fe"`` (principal family of an element), ``"Zn_L"`` (another family), ``"elastic"``,
        ``"compton"``, ``"pileup"`` or ``"continuum_<i>"``.
    kind : str
        ``"element"``, ``"scatter"``, ``"pileup"`` or ``"continuum"``.
    element : str or None
        Element symbol for element components.
    family : str or None
        Families the component holds, e.g. ``"K+L"`` (tied) or ``"K"``.
    line_energies_keV : tuple of float
        Line energies (element components only).
    line_weights : tuple of float
        Relative intensities of the lines as emitted (sum 1), from xraylib cross-sections.
    """

    name: str
    kind: str
    element: str | None = None
    family: str | None = None
    line_energies_keV: tuple[float, ...] = ()
    line_weights: tuple[float, ...] = ()


@dataclass
class SpectralModel:
    """A built model: design matrix over a channel range plus what it was built from.

    Attributes
    ----------
    components : tuple of Component
        Column descriptions, in column order.
    matrix : ndarray (n_fit_channels, n_components) float64
        Expected counts per channel for unit amplitude of each component.
    channel_slice : slice
        Channels of the full spectrum the rows cover (the fitted energy range).
    calibration : Calibration
    incident_energy_keV : float
    """

    components: tuple[Component, ...]
    matrix: np.ndarray
    channel_slice: slice
    calibration: Calibration
    incident_energy_keV: float

    @property
    def names(self) -> list[str]:
        """Component names, in column order."""
        return [c.name for c in self.components]

    def indices(self, kind: str) -> list[int]:
        """Column indices of the components of a kind."""
        return [i for i, c in enumerate(self.components) if c.kind == kind]


def element_components(
    elements,
    incident_energy_keV: float,
    families: tuple[str, ...] = ("K", "L", "M"),
    tie_families: bool = True,
) -> list[Component]:
    """Components of elements: their line families excited at the incident energy.

    With ``tie_families`` (default) an element is one component holding all its excited
    families, with the relative intensities of xraylib (a thin sample: no matrix absorption);
    its amplitude is the element's total detected counts, and it is named by the symbol.
    Otherwise each family is its own component: the principal family (K if excited, else L,
    else M) is named by the symbol, the others ``<symbol>_<family>`` (use this for thick or
    absorbing samples, where matrix absorption changes the L/K ratio).

    Parameters
    ----------
    elements : iterable of str
        Element symbols.
    incident_energy_keV : float
        Incident photon energy (keV).
    families : tuple of str
        Families to consider.
    tie_families : bool
        One component per element (True) or per element and family (False).

    Raises
    ------
    InvalidInputError
        Unknown symbol, duplicated symbol, or an element with no line excited below the
        incident energy (within the families and above 0.5 keV).
    """
    out: list[Component] = []
    seen: set[str] = set()
    for symbol in elements:
        symbol = str(symbol).strip()
        physics.atomic_number(symbol)  # raises on unknown symbols
        if symbol in seen:
            raise InvalidInputError(f"element {symbol!r} is listed twice")
        seen.add(symbol)
        lines = physics.emission_lines(symbol, float(incident_energy_keV), tuple(families))
        if not lines:
            raise InvalidInputError(
                f"element {symbol!r} has no {'/'.join(families)} line excited at "
                f"{incident_energy_keV} keV (all edges above the incident energy, or lines "
                "below 0.5 keV); remove it from the element list"
            )
        present = [f for f in PRINCIPAL_FAMILY_ORDER if any(line.family == f for line in lines)]
        groups = [present] if tie_families else [[f] for f in present]
        for group in groups:
            group_lines = [line for line in lines if line.family in group]
            weights = np.array([line.cross_section_cm2_g for line in group_lines])
            name = symbol if group[0] == present[0] else f"{symbol}_{group[0]}"
            out.append(
                Component(
                    name=name,
                    kind="element",
                    element=symbol,
                    family="+".join(group),
                    line_energies_keV=tuple(float(line.energy_keV) for line in group_lines),
                    line_weights=tuple(float(w) for w in weights / weights.sum()),
                )
            )
    return out


def _compton_edge_channels(calibration, incident_energy_keV, angle_deg, channels):
    """Fractional channel of the Compton peak and its width in channels."""
    ec = physics.compton_energy_keV(incident_energy_keV, angle_deg) + calibration.compton_shift_keV
    sigma = float(
        np.hypot(
            physics.detector_sigma_keV(ec, calibration.noise_fwhm_keV, calibration.fano),
            calibration.compton_width_keV,
        )
    )
    energies = channel_energies_keV(channels, calibration)
    edge = float(np.interp(ec, energies, np.asarray(channels, dtype=float)))
    gain = float(np.gradient(energies).mean())
    return edge, sigma / gain


def default_energy_range_keV(incident_energy_keV: float) -> tuple[float, float]:
    """Default fitted range (keV): 1.0 keV to 0.6 keV above the elastic peak."""
    return 1.0, float(incident_energy_keV) + 0.6


def fit_channels(energies_keV, incident_energy_keV: float, energy_range_keV=None) -> slice:
    """Channels whose centre energy lies in the fitted range (default
    :func:`default_energy_range_keV`), as a slice; raises when fewer than 16."""
    energies = np.asarray(energies_keV, dtype=float)
    low, high = energy_range_keV or default_energy_range_keV(incident_energy_keV)
    inside = np.flatnonzero((energies >= low) & (energies <= high))
    if inside.size < 16:
        raise InvalidInputError(
            f"fitted energy range {low}-{high} keV holds {inside.size} channels of a spectrum "
            f"spanning {energies.min():.3f}-{energies.max():.3f} keV; check the energy axis"
        )
    return slice(int(inside[0]), int(inside[-1]) + 1)


def build_model(
    elements,
    incident_energy_keV: float,
    calibration: Calibration,
    n_channels: int,
    energy_range_keV: tuple[float, float] | None = None,
    n_continuum: int = 8,
    scatter: bool = True,
    escape: bool = True,
    pileup_lines: tuple[np.ndarray, np.ndarray] | None = None,
    scattering_angle_deg: float = 90.0,
    be_window_um: float = 8.0,
    si_thickness_mm: float = 0.35,
    families: tuple[str, ...] = ("K", "L", "M"),
    tie_families: bool = True,
    channel_slice: slice | None = None,
    continuum_edge: bool = True,
    scatter_escape: bool = True,
) -> SpectralModel:
    """Build the design matrix of a spectrum over a fitted energy range.

    Parameters
    ----------
    elements : iterable of str or of Component
        Element symbols (or prebuilt element components).
    incident_energy_keV : float
        Incident energy (keV).
    calibration : Calibration
        Energy calibration and peak widths.
    n_channels : int
        Channels of the full spectrum.
    energy_range_keV : (low, high), optional
        Fitted range (keV); default ``(1.0, E0 + 0.6)`` clipped to the spectrum.
    n_continuum : int
        B-spline continuum functions (0 for none, e.g. after SNIP background removal).
    scatter : bool
        Include elastic and Compton components.
    escape : bool
        Include Si escape peaks.
    pileup_lines : (energies_keV, counts), optional
        Lines whose pairs make a pile-up component.
    scattering_angle_deg, be_window_um, si_thickness_mm : float
        Detector geometry and efficiency (see :func:`peak_columns`).
    families : tuple of str
        Line families to model.
    tie_families : bool
        One component per element with xraylib's family ratios (see
        :func:`element_components`).
    channel_slice : slice, optional
        Fitted channels, overriding ``energy_range_keV`` (the calibration fit keeps the rows
        fixed while the calibration moves).
    continuum_edge : bool
        End the continuum at the Compton peak (see :func:`continuum_basis`); needs ``scatter``.
    scatter_escape : bool
        Include the Si escape peaks of the scatter peaks (see :func:`peak_columns`).

    Returns
    -------
    SpectralModel
    """
    if not incident_energy_keV or not incident_energy_keV > 0:
        raise InvalidInputError(f"incident energy must be positive, got {incident_energy_keV} keV")
    comps = [e for e in elements if isinstance(e, Component)]
    symbols = [e for e in elements if not isinstance(e, Component)]
    comps += element_components(symbols, incident_energy_keV, families, tie_families)
    if scatter:
        comps += [Component("elastic", "scatter"), Component("compton", "scatter")]
    all_channels = np.arange(n_channels)
    energies = channel_energies_keV(all_channels, calibration)
    if channel_slice is not None:
        sl = channel_slice
        low, high = float(energies[sl][0]), float(energies[sl][-1])
    else:
        sl = fit_channels(energies, incident_energy_keV, energy_range_keV)
        low, high = energy_range_keV or default_energy_range_keV(incident_energy_keV)
    channels = all_channels[sl]
    peaks = peak_columns(
        comps,
        channels,
        calibration,
        incident_energy_keV,
        scattering_angle_deg,
        escape,
        be_window_um,
        si_thickness_mm,
        scatter_escape,
    )
    # A family mostly outside the fitted range cannot be estimated: drop secondary families
    # (e.g. Fe L at 0.7 keV), refuse a principal one with a clear message.
    area = peaks.sum(axis=0)
    keep = []
    for k, comp in enumerate(comps):
        if comp.kind == "element" and area[k] < _MIN_AREA_IN_RANGE:
            if comp.name == comp.element:
                raise InvalidInputError(
                    f"element {comp.element!r}: its {comp.family} lines "
                    f"({min(comp.line_energies_keV):.2f}-{max(comp.line_energies_keV):.2f} keV) "
                    f"fall outside the fitted range {low}-{high} keV"
                )
            continue
        keep.append(k)
    comps = [comps[k] for k in keep]
    blocks = [peaks[:, keep]]
    if pileup_lines is not None:
        comps.append(Component("pileup", "pileup"))
        blocks.append(pileup_column(*pileup_lines, channels, calibration)[:, None])
    if n_continuum:
        comps += [Component(f"continuum_{i}", "continuum") for i in range(n_continuum)]
        edge = edge_width = None
        if continuum_edge and scatter:
            edge, edge_width = _compton_edge_channels(
                calibration, incident_energy_keV, scattering_angle_deg, channels
            )
        blocks.append(continuum_basis(channels, n_continuum, edge, edge_width or 0.0))
    return SpectralModel(
        components=tuple(comps),
        matrix=np.concatenate(blocks, axis=1),
        channel_slice=sl,
        calibration=calibration,
        incident_energy_keV=float(incident_energy_keV),
    )
