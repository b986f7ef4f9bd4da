"""Quantifying a scan against a thin-film standard scanned with the same setup.

The standard (e.g. an AXO film) is fitted exactly as the sample is (its own calibration on its
summed spectrum, the same elements, counts per unit i0); the mean fitted counts of its certified
elements over the film give the sensitivities (counts per ug/cm2 per unit i0,
:func:`xmulti.xrf.quantify.calibrate_standard`), interpolated in Z by the physical cross-section
shape for the other elements, and the sample's maps are divided by them
(:func:`xmulti.xrf.quantify.areal_density_maps`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .quantify import StandardCalibration, areal_density_maps, calibrate_standard

__all__ = ["read_standard_info", "parse_densities", "fit_standard", "quantify_maps", "quantify_against_standard"]


def read_standard_info(path: str | os.PathLike) -> dict[str, float]:
    """Certified areal densities (ug/cm2) from a MAPS ``maps_standardinfo.txt`` file.

    The file lists ``ELEMENTS_IN_STANDARD: Ca, Fe, Cu`` and ``WEIGHT: 1.931, 0.504, 0.284``
    (ug/cm2) among other keys.
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the standard's description ({exc.strerror})") from None
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key.strip() in ("ELEMENTS_IN_STANDARD", "WEIGHT"):
            fields[key.strip()] = [v.strip() for v in value.split(",") if v.strip()]
    if "ELEMENTS_IN_STANDARD" not in fields or "WEIGHT" not in fields:
        raise InvalidInputError(f"{path}: no ELEMENTS_IN_STANDARD and WEIGHT lines (a MAPS standard description)")
    elements, weights = fields["ELEMENTS_IN_STANDARD"], fields["WEIGHT"]
    if len(elements) != len(weights):
        raise InvalidInputError(f"{path}: {len(elements)} elements but {len(weights)} weights")
    try:
        return {el: float(w) for el, w in zip(elements, weights, strict=True)}
    except ValueError as exc:
        raise InvalidInputError(f"{path}: WEIGHT: {exc}") from None


def parse_densities(text: str) -> dict[str, float]:
    """``"Ca=1.931,Fe=0.504"`` -> ``{"Ca": 1.931, "Fe": 0.504}`` (ug/cm2)."""
    out = {}
    for item in text.split(","):
        symbol, sep, value = item.strip().partition("=")
        try:
            if not sep:
                raise ValueError
            out[symbol.strip()] = float(value)
        except ValueError:
            raise InvalidInputError(f"standard densities must look like Ca=1.93,Fe=0.50 (ug/cm2), got {item!r}") from None
    if not out:
        raise InvalidInputError("no standard densities given")
    return out


def fit_standard(
    standard_scan,
    densities_ug_cm2: Mapping[str, float],
    elements: Sequence[str],
    **fit_options,
) -> StandardCalibration:
    """Sensitivities from a scan over a thin-film standard.

    Parameters
    ----------
    standard_scan : str, path or DataTree
        The standard's scan (combined layout, with i0).
    densities_ug_cm2 : mapping of str to float
        Certified areal densities (ug/cm2), e.g. from :func:`read_standard_info`.
    elements : sequence of str
        Fitted elements: those of the sample plus the standard's (an element present in the
        film but not fitted would leak into its neighbours' components).
    **fit_options
        Passed to :func:`xmulti.xrf.maps.fit_xrf` (``background``, ``n_continuum``...).

    Returns
    -------
    StandardCalibration
    """
    from ..io.scan import open_scan
    from .maps import fit_xrf

    tree = open_scan(standard_scan) if isinstance(standard_scan, str | os.PathLike) else standard_scan
    fitted_elements = list(dict.fromkeys([*elements, *densities_ug_cm2]))
    maps = fit_xrf(tree, fitted_elements, normalize=True, **fit_options).compute()
    if maps.attrs.get("normalisation") != "counts per i0 count":
        raise InvalidInputError("the standard's scan has no i0: its counts cannot be compared with the sample's")
    counts = {el: float(np.nanmean(maps[el].values)) for el in densities_ug_cm2 if el in maps}
    energy = float(maps.attrs.get("incident_energy_keV", tree["xrf"].attrs.get("incident_energy_keV", np.nan)))
    return calibrate_standard(counts, densities_ug_cm2, energy)


def quantify_maps(maps, standard: StandardCalibration):
    """Areal densities (ug/cm2) of the sample's maps, checked against the standard's energy.

    The maps must be normalised by i0 (``fit_xrf(..., normalize=True)``) and measured at the
    standard's incident energy (sensitivities change with it).
    """
    energy = maps.attrs.get("incident_energy_keV")
    if energy is not None and abs(float(energy) - standard.incident_energy_keV) > 0.01:
        raise InvalidInputError(
            f"the sample was measured at {float(energy):.3f} keV but the standard at "
            f"{standard.incident_energy_keV:.3f} keV: sensitivities do not transfer"
        )
    density = areal_density_maps(maps, standard)
    density.attrs["standard_sensitivity_counts_per_ug_cm2"] = [
        f"{el}={value:.6g}" for el, value in standard.measured.items()
    ]
    return density


def quantify_against_standard(maps, elements: Sequence[str], standard_scan, densities_ug_cm2: Mapping[str, float],
                              **fit_options):
    """``/xrf/areal_density`` of the sample: the standard fitted as the sample was, then its
    sensitivities applied to the sample's maps (what ``xmulti fit-xrf --standard`` and the
    pipeline's fit-xrf stage both do).

    Parameters
    ----------
    maps : xarray.Dataset
        The sample's fitted maps, normalised by i0 (:func:`xmulti.xrf.maps.fit_xrf`).
    elements : sequence of str
        The sample's fitted elements.
    standard_scan : str, path or DataTree
        The standard's scan.
    densities_ug_cm2 : mapping of str to float
        Its certified areal densities (ug/cm2).
    **fit_options
        The sample's fit options (``background``, ``n_continuum``, ``energy_range_keV``...), so
        the standard is fitted with the same model.

    Returns
    -------
    xarray.Dataset
        Areal densities (ug/cm2), see :func:`quantify_maps`.
    """
    standard = fit_standard(standard_scan, densities_ug_cm2, list(elements), **fit_options)
    return quantify_maps(maps, standard)
