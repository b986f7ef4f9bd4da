"""Pixelwise correlation of structure and composition, and phase-guided XRF segmentation.

Labelled operations (xarray in, pandas/xarray out) on images ``(y, x)`` with um pixel-centre
coordinates: the phase (rad, matter negative), element maps (any grid overlapping it) and cell
labels on the phase grid (:func:`xmulti.correlate.segment_phase`).
"""

from __future__ import annotations

import numpy as np

from . import physics
from .errors import InvalidInputError
from .inputs import flatten_phase, map_units, resolve_matrix, select_elements
from .regions import correlation_with_ci, mass_per_radian_ug_cm2
from .register import maps_to_phase_grid, phase_to_scan_grid

__all__ = ["pixel_correlations", "correlations_to_dataset", "guided_xrf_segmentation"]


def pixel_correlations(labels, phase, maps, *, energy_keV: float, probe=None, elements=None,
                       matrix=physics.PROTEIN, embedding=None, confidence: float = 0.95,
                       phase_background_order: int | None = 1):
    """Pixelwise Pearson and Spearman correlations of phase-derived mass with each element.

    Compared at the XRF resolution: the phase is blurred by the probe intensity (when
    ``probe`` is given; otherwise plainly interpolated) and sampled on each map's grid; a map
    pixel belongs to the region under its centre. Rows: ``region`` "all" (every map pixel
    the phase covers) and "1", "2"... per region.

    Returns
    -------
    pandas.DataFrame with columns region, element, n, pearson_r, pearson_low, pearson_high,
    spearman_rho, spearman_low, spearman_high (Fisher-z intervals at ``confidence``).
    """
    import pandas as pd

    names = select_elements(maps, elements)
    factor = mass_per_radian_ug_cm2(energy_keV, resolve_matrix(matrix), resolve_matrix(embedding))
    flat, _ = flatten_phase(phase, labels, phase_background_order)
    rows = []
    for name in names:
        var = maps[name]
        if probe is not None:
            matched = phase_to_scan_grid(flat, getattr(probe, "values", probe), var)
        else:
            matched = maps_to_phase_grid(flat, var)  # the phase interpolated onto the map's grid
        mass = -np.asarray(matched.values) * factor
        region = labels.sel(y=var["y"], x=var["x"], method="nearest").values
        values = np.asarray(var.values, dtype=float)
        rows.append({"region": 0, "element": name, **correlation_with_ci(mass, values, confidence)})
        for k in range(1, int(np.max(labels.values)) + 1):
            sel = region == k
            rows.append({"region": k, "element": name,
                         **correlation_with_ci(mass[sel], values[sel], confidence)})
    return pd.DataFrame(rows)


def correlations_to_dataset(table):
    """The pixelwise table as a Dataset: ``<element>_<statistic> (region)``, region 0 = whole
    image (no string arrays, which Zarr v3 has no stable type for)."""
    import xarray as xr

    ds = xr.Dataset(coords={"region": np.unique(table["region"].to_numpy())})
    for name, part in table.groupby("element", sort=False):
        part = part.set_index("region")
        for column in part.columns.drop("element"):
            ds[f"{name}_{column}"] = ("region", part[column].reindex(ds["region"].values).to_numpy())
    ds.attrs["region_0"] = "all map pixels the phase covers"
    return ds


def guided_xrf_segmentation(labels, maps, element: str):
    """Split each phase-defined cell into element-poor and element-rich compartments.

    The element map is resampled onto the phase grid (linear); inside each cell an Otsu
    threshold of the map's values separates the two compartments (regions from structure,
    composition from XRF).

    Returns
    -------
    xarray.Dataset on the phase grid: ``compartments`` (0 background, ``2k - 1`` poor and ``2k``
    rich part of cell ``k``), ``enriched`` (bool), and ``threshold (label)`` in map units.
    """
    import xarray as xr
    from skimage.filters import threshold_otsu

    (name,) = select_elements(maps, [element])
    on_phase = maps_to_phase_grid(maps[name], labels).values
    lab = np.asarray(labels.values).astype(np.int64)
    if lab.max() <= 0:
        raise InvalidInputError("the segmentation is empty: no cell to split")
    enriched = np.zeros(lab.shape, dtype=bool)
    thresholds = np.full(lab.max(), np.nan)
    for k in range(1, lab.max() + 1):
        cell = (lab == k) & np.isfinite(on_phase)
        values = on_phase[cell]
        if values.size < 2 or np.ptp(values) == 0:
            continue
        thresholds[k - 1] = threshold_otsu(values)
        enriched[cell] = values > thresholds[k - 1]
    compartments = np.where(lab > 0, 2 * lab - 1 + enriched, 0).astype(np.int32)
    units = map_units(maps[name])
    return xr.Dataset(
        {
            "compartments": (("y", "x"), compartments, {"long_name": f"cells split by {name}: 2k-1 poor, 2k rich"}),
            "enriched": (("y", "x"), enriched, {"long_name": f"{name}-rich part of a cell"}),
            "threshold": (("label",), thresholds, {"units": units, "long_name": f"Otsu threshold of {name} per cell"}),
        },
        coords={"y": labels["y"], "x": labels["x"], "label": np.arange(1, lab.max() + 1)},
    )
