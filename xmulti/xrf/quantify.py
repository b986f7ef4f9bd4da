"""Quantification against a thin-film standard: counts per (ug/cm2) per unit i0 -> areal density.

A thin-film standard (e.g. AXO RF8-200-S2453) carries known areal densities (ug/cm2) of a few
elements. Fitting its spectrum with the same model gives, per element, the sensitivity
``s = counts / (rho_A * i0)`` (counts per ug/cm2 per unit i0; dead time corrected like the maps).
For a thin sample ``s(Z) = k * sigma_F(Z, E0) * eff(Z)``: ``sigma_F`` the element's
fluorescence production cross-section summed over its lines (xraylib, cm2/g), ``eff`` the
detector efficiency at those lines, and ``k`` (flux per i0 count, solid angle, ...) the same for
all elements. The standard measures ``k`` at its elements; ``log k`` is interpolated linearly
in Z between them (constant beyond the ends), which absorbs what the thin-film physics leaves
out (e.g. a slightly different window thickness). Areal density maps are ``map / s(Z)``.

Self-absorption in the sample is not corrected (see ``docs/JOINT.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import physics
from ..errors import InvalidInputError

__all__ = ["StandardCalibration", "calibrate_standard", "physical_sensitivity", "areal_density_maps"]


def physical_sensitivity(
    symbol: str, incident_energy_keV: float, be_window_um: float = 8.0, si_thickness_mm: float = 0.35
) -> float:
    """Thin-film sensitivity shape ``sum_lines sigma_F * eff`` (cm2/g) of an element.

    Parameters
    ----------
    symbol : str
        Element symbol.
    incident_energy_keV : float
        Incident energy (keV).
    be_window_um, si_thickness_mm : float
        Detector window and sensor thickness.
    """
    lines = physics.emission_lines(symbol, float(incident_energy_keV))
    if not lines:
        raise InvalidInputError(f"element {symbol!r} has no line excited at {incident_energy_keV} keV")
    energies = np.array([line.energy_keV for line in lines])
    cs = np.array([line.cross_section_cm2_g for line in lines])
    return float(np.sum(cs * physics.detector_efficiency(energies, be_window_um, si_thickness_mm)))


@dataclass
class StandardCalibration:
    """Sensitivities from a thin-film standard.

    Attributes
    ----------
    incident_energy_keV : float
    measured : dict of str to float
        Counts per (ug/cm2) per unit i0 of the standard's elements.
    log_k_by_z : tuple of (ndarray, ndarray)
        Atomic numbers and ``log(measured / physical_sensitivity)`` for interpolation.
    be_window_um, si_thickness_mm : float
    measured_sigma : dict of str to float
        1-sigma uncertainties of ``measured`` (same units; empty when unknown).
    densities_ug_cm2 : dict of str to float
        The certified areal densities the sensitivities were measured with.
    metadata : dict
        What a saved calibration records besides (energy calibration, fitted elements,
        geometry, fit options, provenance): see :mod:`xmulti.xrf.standard`.
    """

    incident_energy_keV: float
    measured: dict[str, float]
    log_k_by_z: tuple[np.ndarray, np.ndarray]
    be_window_um: float = 8.0
    si_thickness_mm: float = 0.35
    measured_sigma: dict[str, float] = field(default_factory=dict)
    densities_ug_cm2: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def sensitivity(self, symbol: str) -> float:
        """Counts per (ug/cm2) per unit i0 of an element (measured, or interpolated over Z)."""
        if symbol in self.measured:
            return self.measured[symbol]
        z, log_k = self.log_k_by_z
        k = float(np.exp(np.interp(physics.atomic_number(symbol), z, log_k)))
        return k * physical_sensitivity(
            symbol, self.incident_energy_keV, self.be_window_um, self.si_thickness_mm
        )


def calibrate_standard(
    fitted_counts: Mapping[str, float],
    areal_density_ug_cm2: Mapping[str, float],
    incident_energy_keV: float,
    be_window_um: float = 8.0,
    si_thickness_mm: float = 0.35,
    fitted_sigma: Mapping[str, float] | None = None,
) -> StandardCalibration:
    """Sensitivities from a fitted standard.

    Parameters
    ----------
    fitted_counts : mapping of str to float
        The standard's fitted counts per unit i0 (e.g. the mean of the ``fit_xrf`` maps of a
        scan over the standard, normalised).
    areal_density_ug_cm2 : mapping of str to float
        Certified areal densities (ug/cm2) of the standard's elements.
    incident_energy_keV : float
    be_window_um, si_thickness_mm : float
        Detector, for the physical shape over Z.
    fitted_sigma : mapping of str to float, optional
        1-sigma uncertainties of ``fitted_counts`` (same units), carried to the sensitivities.

    Returns
    -------
    StandardCalibration
    """
    common = [el for el in areal_density_ug_cm2 if el in fitted_counts]
    if not common:
        raise InvalidInputError("the standard shares no element with the fitted counts")
    measured, measured_sigma = {}, {}
    for el in common:
        density = float(areal_density_ug_cm2[el])
        counts = float(fitted_counts[el])
        if not (density > 0 and counts > 0 and np.isfinite(counts)):
            raise InvalidInputError(
                f"standard element {el}: need positive areal density and fitted counts, got "
                f"{density} ug/cm2 and {counts}"
            )
        measured[el] = counts / density
        if fitted_sigma is not None and el in fitted_sigma:
            measured_sigma[el] = float(fitted_sigma[el]) / density
    z = np.array([physics.atomic_number(el) for el in common], dtype=float)
    log_k = np.array(
        [
            np.log(measured[el] / physical_sensitivity(el, incident_energy_keV, be_window_um, si_thickness_mm))
            for el in common
        ]
    )
    order = np.argsort(z)
    return StandardCalibration(
        incident_energy_keV=float(incident_energy_keV),
        measured=measured,
        log_k_by_z=(z[order], log_k[order]),
        be_window_um=be_window_um,
        si_thickness_mm=si_thickness_mm,
        measured_sigma=measured_sigma,
        densities_ug_cm2={el: float(areal_density_ug_cm2[el]) for el in common},
    )


def areal_density_maps(maps, standard: StandardCalibration):
    """Areal density (ug/cm2) maps from :func:`xmulti.xrf.maps.fit_xrf` output.

    Every element variable ``<El>``, ``<El>_nonneg`` and ``<El>_sigma`` is divided by the
    element's sensitivity. The maps must be normalised by i0 (``normalize=True``).

    Parameters
    ----------
    maps : xarray.Dataset
        From ``fit_xrf(..., normalize=True)`` on a scan with i0.
    standard : StandardCalibration

    Returns
    -------
    xarray.Dataset
        The element variables in ug/cm2.
    """
    import xarray as xr

    if maps.attrs.get("normalisation") != "counts per i0 count":
        raise InvalidInputError(
            "areal densities need maps normalised by i0 (fit_xrf(normalize=True) on a scan with i0)"
        )
    out = {}
    for name, var in maps.data_vars.items():
        element = var.attrs.get("element")
        if var.attrs.get("component") != "element" or element is None:
            continue
        s = standard.sensitivity(element)
        out[name] = (var / s).assign_attrs({**var.attrs, "units": "ug/cm2", "sensitivity": s})
    return xr.Dataset(out, attrs=dict(maps.attrs, quantification="thin-film standard"))
