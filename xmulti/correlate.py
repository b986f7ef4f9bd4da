"""Correlated analysis of structure (phase) and composition (XRF): labelled operations.

xarray in, xarray/pandas out; the numerics are in :mod:`xmulti.segment` and
:mod:`xmulti.regions`, input checks in :mod:`xmulti.inputs`, and the pixelwise functions live in
:mod:`xmulti.pixelwise` (re-exported here). The images are 2-D and are loaded into memory. Images are ``(y, x)`` with um pixel-centre coordinates in the stage
frame; the phase is in rad with matter giving negative phase; maps carry a ``units`` attribute
(``counts`` gives Poisson uncertainties, ``ug/cm2`` enables mass fractions; a map without units
is taken as counts).

- :func:`segment_phase` labels cells on the phase image (labels on the phase grid);
- :func:`phase_areal_mass` turns phase into projected areal mass of a stated matrix;
- :func:`region_table` gives the per-region table (area, phase, mass, texture, elements, mass
  fractions, each with its uncertainty) as a pandas DataFrame; :func:`regions_to_dataset`
  turns it into an xarray Dataset for the results store;
- :func:`pixel_correlations` gives Pearson and Spearman correlations with confidence
  intervals between phase-derived mass and each element, over the whole image and per region,
  at the XRF resolution (phase blurred by the probe intensity);
- :func:`guided_xrf_segmentation` splits each phase-defined cell into element-rich and -poor
  compartments from an XRF map (regions from structure, composition from XRF).
"""

from __future__ import annotations

import re

import numpy as np

from . import physics
from .errors import InvalidInputError
from .inputs import (
    check_image,
    flatten_phase,
    map_units,
    map_variance,
    resolve_matrix,
    select_elements,
    unit_slug,
)
from .pixelwise import correlations_to_dataset, guided_xrf_segmentation, pixel_correlations
from .regions import (
    element_region_stats,
    mass_per_radian_ug_cm2,
    phase_region_stats,
)
from .register import (
    footprint_radius_um,
    pixel_size_um,
    probe_intensity,
)

__all__ = [
    "resolve_matrix",
    "segment_phase",
    "phase_areal_mass",
    "select_elements",
    "region_table",
    "regions_to_dataset",
    "pixel_correlations",
    "correlations_to_dataset",
    "guided_xrf_segmentation",
]


def segment_phase(phase, *, sign: float = -1.0, **options):
    """Label cells on a phase image.

    Parameters
    ----------
    phase : xarray.DataArray (y, x)
        Phase (rad), um coordinates.
    sign : float
        Multiplies the phase to give a signal that grows with matter (-1 in xmulti's
        convention, where matter gives negative phase).
    **options
        Passed to :func:`xmulti.segment.segment_cells` (method, denoise, min_area_um2, ...).

    Returns
    -------
    xarray.DataArray (y, x) int32 on the phase grid: 0 background, 1..K cells.

    Raises
    ------
    InvalidInputError
        When no cell is found.
    """
    import xarray as xr

    from .segment import segment_cells

    check_image(phase, "the phase image")
    dy = pixel_size_um(phase, "y")
    labels = segment_cells(sign * np.asarray(phase.values, dtype=float), dy, **options)
    if labels.max() == 0:
        raise InvalidInputError(
            "segmentation found no cell on the phase image (threshold and minimum area left nothing); "
            "check the phase sign, lower min_area_um2 or try method='multiotsu' or 'local'"
        )
    return xr.DataArray(
        labels, dims=("y", "x"), coords={"y": phase["y"], "x": phase["x"]}, name="labels",
        attrs={"long_name": "cell labels from the phase (0 = background)", "units": "1",
               "segmentation": repr(sorted(options.items()))},
    )


def phase_areal_mass(phase, energy_keV: float, matrix=physics.PROTEIN, embedding=None, background_rad: float = 0.0):
    """Projected areal mass (ug/cm2) of ``matrix`` from the phase: ``-(phase - background) * m_1rad``.

    ``m_1rad`` is :func:`xmulti.regions.mass_per_radian_ug_cm2` (xraylib delta of the stated
    matrix, minus the embedding's when given). Valid for an unwrapped, weak phase.
    """
    matrix, embedding = resolve_matrix(matrix), resolve_matrix(embedding)
    factor = mass_per_radian_ug_cm2(energy_keV, matrix, embedding)
    out = -(phase - background_rad) * factor
    out.attrs = {"units": "ug/cm2", "long_name": f"projected areal mass of {matrix.name} from the phase",
                 "ug_cm2_per_rad": factor}
    return out.rename("areal_mass")


def region_table(
    labels,
    phase,
    maps=None,
    *,
    energy_keV: float,
    matrix=physics.PROTEIN,
    embedding=None,
    elements=None,
    probe=None,
    grow_um: float | None = None,
    uncertainty=None,
    background="auto",
    phase_background_order: int | None = 1,
    phase_background_rad: float | None = None,
    phase_noise_rad: float | None = None,
):
    """Per-region table of structure and composition.

    Parameters
    ----------
    labels : xarray.DataArray (y, x) int
        Regions on the phase grid (:func:`segment_phase`).
    phase : xarray.DataArray (y, x)
        Phase (rad) on the same grid.
    maps : xarray.Dataset, optional
        Element maps (y, x) in um, on any grid overlapping the phase (scan grid or phase grid).
    energy_keV : float
        Photon energy (keV) of the phase.
    matrix, embedding : Matrix or str
        The matter the phase is converted to mass of, and the medium it displaces.
    elements : list of str or "Fe,Zn", optional
        Elements to tabulate (default: all maps).
    probe : array-like, optional
        Complex probe on the object grid: regions are grown by its 95 % footprint radius to
        collect the element signal the footprint spread outside them.
    grow_um : float, optional
        Explicit growth radius (um), overriding the probe's.
    uncertainty : xarray.Dataset, optional
        Per-pixel 1-sigma maps (``Fe`` or ``Fe_sigma``); ``*_sigma`` variables of ``maps`` are
        used otherwise, and Poisson variance for count maps.
    background : "auto", float or None
        Element background subtracted (see :func:`xmulti.regions.element_region_stats`).
    phase_background_order : int or None
        Order of the polynomial background of the phase fitted outside the regions and
        subtracted (:func:`xmulti.inputs.flatten_phase`; 1: a plane, 0: a constant).
    phase_background_rad : float, optional
        A known constant background phase instead (e.g. of an ice layer).
    phase_noise_rad : float, optional
        Per-pixel phase noise; by default the MAD of the background pixels about the model.

    Returns
    -------
    pandas.DataFrame
        One row per region; column names carry units (``area_um2``, ``areal_mass_ug_cm2``,
        ``Fe_mean_ug_cm2``, ``Fe_total_fg`` or ``Fe_total_counts``, ``Fe_mass_fraction``...);
        each value has an ``*_err`` column (1 sigma). ``df.attrs`` records the inputs.
    """
    import pandas as pd

    check_image(phase, "the phase image")
    check_image(labels, "the labels")
    if labels.shape != phase.shape or not (
        np.allclose(labels["y"], phase["y"]) and np.allclose(labels["x"], phase["x"])
    ):
        raise InvalidInputError("labels and phase must be on the same grid")
    lab = np.asarray(labels.values).astype(np.int64)
    if lab.max() <= 0:
        raise InvalidInputError("the segmentation is empty: no region to tabulate")
    matrix, embedding = resolve_matrix(matrix), resolve_matrix(embedding)
    if phase_background_rad is None:
        flat, info = flatten_phase(phase, labels, phase_background_order)
    else:
        flat = phase - float(phase_background_rad)
        info = {"background_rad": float(phase_background_rad), "background_err_rad": 0.0,
                "noise_rad": flatten_phase(phase, labels, 0)[1]["noise_rad"], "background_order": "given"}
    noise = info["noise_rad"] if phase_noise_rad is None else float(phase_noise_rad)
    ph = np.asarray(flat.values, dtype=float)
    factor = mass_per_radian_ug_cm2(energy_keV, matrix, embedding)
    dy, dx = pixel_size_um(phase, "y"), pixel_size_um(phase, "x")
    rows = phase_region_stats(lab, ph, (dy, dx), factor, 0.0, noise, info["background_err_rad"])
    for row in rows:  # pixel indices to stage coordinates (um)
        row["centroid_row"] = float(phase["y"][0]) + row["centroid_row"] * dy
        row["centroid_col"] = float(phase["x"][0]) + row["centroid_col"] * dx
    table = pd.DataFrame(rows).rename(columns={"centroid_row": "centroid_y_um", "centroid_col": "centroid_x_um"})
    table = table.set_index("label")
    attrs = {"energy_keV": float(energy_keV), "matrix": f"{matrix.formula} {matrix.density_g_cm3} g/cm3",
             "embedding": "none" if embedding is None else f"{embedding.formula} {embedding.density_g_cm3} g/cm3",
             "ug_cm2_per_rad": factor, "phase_background_rad": info["background_rad"],
             "phase_background_order": info["background_order"], "phase_noise_rad": noise}

    if maps is not None:
        names = select_elements(maps, elements)
        if grow_um is None:
            grow_um = footprint_radius_um(probe_intensity(getattr(probe, "values", probe)), dy) if probe is not None else 0.0
        attrs["grow_um"] = float(grow_um)
        index = table.index.to_numpy() - 1
        for name in names:
            var = maps[name]
            check_image(var, f"element map {name}")
            from .register import overlap_extent_um

            overlap_extent_um(var, phase)
            stats = element_region_stats(
                lab, (phase["y"].values, phase["x"].values), np.asarray(var.values, dtype=float),
                (var["y"].values, var["x"].values), map_variance(maps, name, uncertainty), grow_um / dy, background,
            )
            slug = unit_slug(map_units(var))
            total_slug, scale = ("fg", pixel_size_um(var, "y") * pixel_size_um(var, "x") * 10.0) if slug == "ug_cm2" else (slug, 1.0)
            table[f"{name}_mean_{slug}"] = stats["mean"][index]
            table[f"{name}_mean_err_{slug}"] = stats["mean_err"][index]
            table[f"{name}_total_{total_slug}"] = stats["total"][index] * scale
            table[f"{name}_total_err_{total_slug}"] = stats["total_err"][index] * scale
            table[f"{name}_coverage"] = stats["coverage"][index]
            attrs[f"{name}_background"] = stats["background"]
            if slug == "ug_cm2":
                fraction = table[f"{name}_mean_{slug}"] / table["areal_mass_ug_cm2"]
                table[f"{name}_mass_fraction"] = fraction
                table[f"{name}_mass_fraction_err"] = np.abs(fraction) * np.hypot(
                    table[f"{name}_mean_err_{slug}"] / table[f"{name}_mean_{slug}"],
                    table["areal_mass_err_ug_cm2"] / table["areal_mass_ug_cm2"],
                )
    table.attrs = attrs
    return table


def regions_to_dataset(table):
    """The region table as an ``xarray.Dataset`` on dim ``label`` (units in ``attrs``)."""
    import xarray as xr

    ds = xr.Dataset.from_dataframe(table)
    for name in ds.data_vars:
        match = re.search(r"_(um2|um|rad|ug_cm2|pg|fg|counts)$", str(name))
        if match:
            ds[name].attrs["units"] = {"ug_cm2": "ug/cm2"}.get(match.group(1), match.group(1))
    ds.attrs = {k: v for k, v in table.attrs.items() if isinstance(v, (int, float, str))}
    return ds


