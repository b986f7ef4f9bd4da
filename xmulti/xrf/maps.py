"""Labelled operations: elemental maps from a scan (xarray in, xarray out).

:func:`fit_xrf` is the public entry point: it calibrates the detector on the scan's summed
spectrum (:mod:`xmulti.xrf.calibrate`), builds the design matrix and the linear estimator once
(:func:`xmulti.xrf.fit.prepare_fit`), and runs the per-pixel kernel over the position chunks of
the spectra with :func:`fit_chunks` (``dask.array.map_blocks``; ``xr.apply_ufunc`` with
``dask="parallelized"`` copied each chunk once more). The estimator (a few hundred kB) is one
graph key shared by every task, not rebuilt per chunk.

Chunking: ``spectra`` must hold whole spectra per chunk (``channel`` in one chunk), as
:func:`xmulti.open_scan` gives; positions may be chunked freely. Nothing is rechunked except the
small per-position results when a raster is reshaped to ``(y, x)``. Peak memory is a few times
one chunk of spectra.

Mapping positions to images: a raster scan (``scan_shape`` known, positions row by row, y slow,
x fast) maps directly onto ``(y, x)``, with the row coordinate the mean y of each row and the
column coordinate the mean x of each column (:func:`xmulti.grid.raster_axes_um`). Irregular
positions are gridded onto a regular grid of step ``grid_step_um`` (default: the median
distance to the nearest neighbour) spanning the positions, by linear interpolation on the
Delaunay triangulation of the positions, with nearest-neighbour values outside their convex
hull (``scipy.interpolate.griddata``); grid coordinates are pixel centres in um.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from ..errors import InvalidInputError, InvalidScanError
from .calibrate import DEFAULT_FIT_PARAMETERS, CalibrationResult, calibrate
from .fit import prepare_fit
from .model import Calibration, channel_energies_keV, fit_channels

__all__ = ["fit_xrf", "calibrate_scan", "calibration_diagnostics", "fit_chunks", "significant_anywhere"]


def _resolve(scan, incident_energy_keV=None):
    """The /xrf Dataset, incident energy, scan shape and source of a DataTree or Dataset."""
    import xarray as xr

    source = None
    root_attrs: dict = {}
    if isinstance(scan, xr.DataTree):
        root_attrs = dict(scan.attrs)
        source = root_attrs.get("source")
        if "xrf" not in scan.children:
            raise InvalidScanError(source, "/xrf", "the scan has no XRF group")
        ds = scan["xrf"].to_dataset()
    elif isinstance(scan, xr.Dataset):
        ds = scan
        source = ds.attrs.get("source")
    else:
        raise InvalidInputError(
            f"fit_xrf expects an xarray DataTree (open_scan) or the /xrf Dataset, got {type(scan).__name__}"
        )
    if "spectra" not in ds.data_vars:
        raise InvalidScanError(source, "/xrf/spectra", "no spectra in the XRF group")
    spectra = ds["spectra"]
    if spectra.dims != ("position", "channel"):
        raise InvalidScanError(
            source, "/xrf/spectra", f"dims must be (position, channel), got {spectra.dims}"
        )
    if "energy" not in ds.coords or ds["energy"].dims != ("channel",):
        raise InvalidScanError(
            source, "/xrf/energy", "missing energy axis: the spectra need an 'energy' (channel) "
            "coordinate in keV (or energy_offset_keV / energy_gain_keV attributes in the file)"
        )
    energy = np.asarray(ds["energy"].values, dtype=float)
    if not np.all(np.isfinite(energy)) or np.any(np.diff(energy) <= 0):
        raise InvalidScanError(source, "/xrf/energy", "energy axis is not finite and increasing")
    if spectra.chunks is not None and len(spectra.chunks[1]) > 1:
        raise InvalidInputError(
            "spectra are chunked along channel; fit_xrf needs whole spectra per chunk "
            "(rechunk with {'channel': -1})"
        )
    e0 = incident_energy_keV
    if e0 is None:
        e0 = ds.attrs.get("incident_energy_keV", root_attrs.get("incident_energy_keV"))
    if e0 is None or not float(e0) > 0:
        raise InvalidScanError(source, "/@incident_energy_keV", "incident energy missing or not positive")
    shape = root_attrs.get("scan_shape", ds.attrs.get("scan_shape"))
    shape = None if shape is None else tuple(int(v) for v in np.ravel(shape))
    return ds, float(e0), shape, source


def _beamline(scan) -> dict:
    """The beamline's fit settings recorded with the scan (``beamline_*`` root attributes,
    written by ``xmulti convert`` from ``maps_fit_parameters_override.txt``)."""
    import xarray as xr

    attrs = dict(scan.attrs) if isinstance(scan, xr.DataTree) else dict(getattr(scan, "attrs", {}))
    out = {k: v for k, v in attrs.items() if k.startswith("beamline_")}
    if "beamline_elements_to_fit" in out:
        out["beamline_elements_to_fit"] = [str(v.decode() if isinstance(v, bytes) else v)
                                           for v in np.ravel(out["beamline_elements_to_fit"])]
    return out


def _initial_calibration(energy_keV: np.ndarray, beamline: dict | None = None) -> Calibration:
    """The beamline's calibration where recorded, else the offset, gain (and quadratic when the
    axis is not linear) of the energy axis; widths from the beamline's FWHM_OFFSET and
    FANOPRIME (MAPS' ``sigma^2 = (offset / 2.3548)^2 + 3.58 E fanoprime``) where recorded."""
    beamline = beamline or {}
    if "beamline_calibration_keV" in beamline:
        offset, gain, quad = (float(v) for v in np.ravel(beamline["beamline_calibration_keV"])[:3])
    else:
        ch = np.arange(energy_keV.size, dtype=float)
        quad, gain, offset = np.polyfit(ch, energy_keV, 2)
        if abs(quad) * ch[-1] ** 2 < 1e-3 * gain:  # linear within 0.001 channel
            gain, offset = np.polyfit(ch, energy_keV, 1)
            quad = 0.0
    widths = {}
    if "beamline_fwhm_offset_keV" in beamline:
        widths["noise_fwhm_keV"] = float(beamline["beamline_fwhm_offset_keV"])
    if "beamline_fwhm_fanoprime" in beamline:
        from ..physics import SI_PAIR_ENERGY_KEV

        widths["fano"] = float(np.clip(3.58 * float(beamline["beamline_fwhm_fanoprime"]) / SI_PAIR_ENERGY_KEV,
                                       0.06, 0.29))
    return Calibration(offset_keV=float(offset), gain_keV=float(gain), quadratic_keV=float(quad), **widths)


def _element_lists(elements, known_elements, beamline: dict) -> tuple[list[str] | None, list[str], str]:
    """(exact list or None, known elements, where the list came from): a user's list, else the
    beamline's ``ELEMENTS_TO_FIT``, else identification beyond the known elements."""
    if elements is not None:
        return [str(e).strip() for e in elements], [], "given"
    if known_elements:
        return None, [str(e).strip() for e in known_elements], "known elements plus identification"
    if beamline.get("beamline_elements_to_fit"):
        return list(beamline["beamline_elements_to_fit"]), [], "beamline ELEMENTS_TO_FIT"
    return None, [], "identification"


def calibrate_scan(
    scan,
    elements=None,
    *,
    known_elements=None,
    initial: Calibration | None = None,
    incident_energy_keV: float | None = None,
    fit_parameters: tuple[str, ...] = DEFAULT_FIT_PARAMETERS,
    energy_range_keV: tuple[float, float] | None = None,
    n_continuum: int = 8,
    **options,
) -> CalibrationResult:
    """Calibrate the detector on a scan's summed spectrum.

    Parameters
    ----------
    scan : xarray.DataTree or xarray.Dataset
        A scan from :func:`xmulti.open_scan`, or its ``/xrf`` Dataset (with an
        ``incident_energy_keV`` attribute or argument).
    elements : iterable of str, optional
        Elements to model, exactly. None: ``known_elements`` plus what identification finds;
        with no known elements, the beamline's ``ELEMENTS_TO_FIT`` recorded with the scan
        (``beamline_elements_to_fit``) when there is one, else identification alone.
    known_elements : iterable of str, optional
        Elements always modelled, with identification adding what else the spectrum needs
        (e.g. a standard's certified elements).
    initial : Calibration, optional
        Starting calibration; default the beamline's calibration recorded with the scan, else
        the ``energy`` coordinate.
    incident_energy_keV : float, optional
        Overrides the scan's incident energy.
    fit_parameters, energy_range_keV, n_continuum, **options
        See :func:`xmulti.xrf.calibrate.calibrate`.

    Returns
    -------
    CalibrationResult
        With ``element_source`` set: ``"given"``, ``"beamline ELEMENTS_TO_FIT"``,
        ``"known elements plus identification"`` or ``"identification"``.
    """
    ds, e0, _, source = _resolve(scan, incident_energy_keV)
    summed = np.asarray(ds["spectra"].sum("position", dtype=np.float64, skipna=False).values)
    if not np.all(np.isfinite(summed)):
        raise InvalidScanError(source, "/xrf/spectra", "spectra contain NaN or infinite counts")
    if np.any(summed < 0):
        raise InvalidScanError(source, "/xrf/spectra", "spectra contain negative counts")
    beamline = _beamline(scan)
    if initial is None:
        initial = _initial_calibration(np.asarray(ds["energy"].values, dtype=float), beamline)
    exact, known, origin = _element_lists(elements, known_elements, beamline)
    fitted = fit_channels(channel_energies_keV(np.arange(summed.size), initial), e0, energy_range_keV)
    if not summed[fitted].sum() > 0:
        raise InvalidScanError(source, "/xrf/spectra", "summed spectrum has no counts in the fitted energy range")
    try:
        result = calibrate(
            summed,
            e0,
            initial,
            exact,
            known_elements=known,
            fit_parameters=fit_parameters,
            energy_range_keV=energy_range_keV,
            n_continuum=n_continuum,
            **options,
        )
    except InvalidInputError as exc:
        if origin == "beamline ELEMENTS_TO_FIT":
            where = beamline.get("beamline_settings_file", "the beamline's settings")
            raise InvalidInputError(f"{where}: ELEMENTS_TO_FIT: {exc}") from None
        raise
    result.element_source = origin
    return result


def calibration_diagnostics(result: CalibrationResult):
    """The summed-spectrum fit as a Dataset on ``energy`` (keV): observed, fitted, residuals."""
    import xarray as xr

    return xr.Dataset(
        {
            "summed_spectrum": ("energy", result.observed, {"units": "counts"}),
            "summed_fit": ("energy", result.fitted, {"units": "counts"}),
            "summed_residual": ("energy", result.residuals, {"units": "1", "long_name": "Pearson residual"}),
        },
        coords={"energy": ("energy", result.energy_keV, {"units": "keV"})},
        attrs=_calibration_attrs(result),
    )


def _calibration_attrs(result: CalibrationResult) -> dict:
    attrs = result.calibration.as_attrs()
    ident = result.identification
    attrs.update(
        {
            "elements": list(result.elements),
            "element_source": result.element_source,
            "identified_elements": list(ident.elements) if ident else [],
            "ambiguous_elements": json.dumps(ident.ambiguous if ident else []),
            "incident_energy_keV": float(result.model.incident_energy_keV),
            "fit_energy_range_keV": [float(result.energy_keV[0]), float(result.energy_keV[-1])],
            "summed_reduced_chi_square": float(result.reduced_chi_square),
            "summed_tolerant_reduced_chi_square": float(result.tolerant_reduced_chi_square),
            "summed_fit_quality": result.quality,
            "summed_fit_message": result.message,
            "energy_shift_channels": [float(v) for v in result.energy_shift_channels],
            "scatter_modelled": bool(result.scatter),
            "suggested_elements": json.dumps(
                [
                    {
                        "energy_keV": round(p["energy_keV"], 4),
                        "significance": round(p["significance"], 1),
                        "candidates": p["candidates"][:5],
                    }
                    for p in result.suggested_elements
                ]
            ),
        }
    )
    return attrs


def fit_xrf(
    scan,
    elements=None,
    *,
    known_elements=None,
    calibration: CalibrationResult | Calibration | None = None,
    background: str = "linear",
    normalize: bool = True,
    grid_step_um: float | None = None,
    incident_energy_keV: float | None = None,
    fit_parameters: tuple[str, ...] = DEFAULT_FIT_PARAMETERS,
    energy_range_keV: tuple[float, float] | None = None,
    n_continuum: int = 8,
    **model_options,
):
    """Elemental maps of a scan: calibrate on the summed spectrum, fit every pixel.

    Parameters
    ----------
    scan : xarray.DataTree or xarray.Dataset
        From :func:`xmulti.open_scan`, or its ``/xrf`` Dataset (``spectra (position,
        channel)``, ``energy (channel)`` keV; optional ``i0``, ``live_time``, ``real_time``).
    elements : iterable of str, optional
        Elements to fit, exactly, e.g. ``["P", "S", "K", "Ca", "Fe", "Cu", "Zn"]``. None: the
        beamline's ``ELEMENTS_TO_FIT`` recorded with the scan, else ``known_elements`` plus
        the elements identified in the summed spectrum (:mod:`xmulti.xrf.identify`).
    known_elements : iterable of str, optional
        With ``elements=None``: always fitted, identification adds what else the spectrum needs
        (a standard's certified elements, for example); takes precedence over the beamline list.
    calibration : CalibrationResult or Calibration, optional
        A finished calibration (e.g. from :func:`calibrate_scan`, or from a standard) to use
        as is, or a Calibration to start from. Default: fitted on this scan.
    background : {"linear", "snip"}
        Continuum inside the linear fit (unbiased) or per-pixel SNIP (biased at low counts).
    normalize : bool
        Divide by ``i0`` (counts per unit i0) and correct dead time by ``real_time /
        live_time`` when those variables are present.
    grid_step_um : float, optional
        Grid step for irregular scans (see module doc).
    incident_energy_keV : float, optional
        Overrides the scan's incident energy.
    fit_parameters, energy_range_keV, n_continuum, **model_options
        Calibration and model options (:func:`xmulti.xrf.calibrate.calibrate`, e.g.
        ``pileup=True``; :func:`xmulti.xrf.model.build_model`, e.g. ``tie_families``,
        ``be_window_um``, ``si_thickness_mm``, ``scatter_escape``).

    Returns
    -------
    xarray.Dataset
        On ``(y, x)`` (um, pixel centres): per element ``<El>`` (unconstrained, unbiased
        estimate: detected counts of all the element's lines, escape peaks included, per unit
        i0 when normalised), ``<El>_nonneg`` (non-negative least squares) and ``<El>_sigma``
        (1-sigma; infinite for empty spectra); ``elastic``, ``compton`` (scatter counts),
        ``continuum`` (continuum counts in the fitted range), ``reduced_chi_square``,
        ``total_counts`` (counts in the fitted range, not normalised). Attributes: the
        calibration, elements and where they came from, identified and ambiguous elements, fit
        range, summed-spectrum chi-square, ``summed_fit_quality`` (``"good"`` or ``"poor"``: a
        poor summed fit means the maps of a model that does not describe the spectrum) and
        ``summed_fit_message``, unexplained peaks (``suggested_elements``), normalisation. Lazy
        (dask) when the spectra are.
    """
    import xarray as xr

    from ..worker_memory import tune_active_client
    from .fit import output_names

    tune_active_client()  # the chunks run on the active distributed client, if any: tune its workers
    ds, e0, scan_shape, source = _resolve(scan, incident_energy_keV)
    options = dict(
        incident_energy_keV=e0,
        fit_parameters=fit_parameters,
        energy_range_keV=energy_range_keV,
        n_continuum=n_continuum,
        **model_options,
    )
    factor, unit = _normalisation(ds, normalize, source)  # bad i0 fails before the fit
    if isinstance(calibration, CalibrationResult):
        result = calibration
        if elements is not None and list(elements) != list(result.elements):
            result = calibrate_scan(
                scan, elements, initial=result.calibration, **{**options, "fit_parameters": ()}
            )
    else:
        result = calibrate_scan(scan, elements, known_elements=known_elements, initial=calibration, **options)
        if result.quality == "poor":  # a finished calibration passed in was reported by its caller
            logging.getLogger("xmulti.xrf").warning("%s: %s", source or "scan", result.message)
    if not result.elements:
        raise InvalidInputError(
            "no element to fit: none given and none found in the summed spectrum"
        )
    n_positions = ds.sizes["position"]
    plan = prepare_fit(result.model, result.fitted / n_positions, background=background)
    names = output_names(plan)
    packed = fit_chunks(ds["spectra"], plan, names)
    out = {}
    k = plan.n_components
    continuum = None
    for comp in result.model.components:
        if comp.name not in plan.names:
            continue
        i = plan.names.index(comp.name)
        if comp.kind == "continuum":
            area = np.float32(plan.continuum_area[i])
            term = packed.isel(quantity=i, drop=True) * area
            continuum = term if continuum is None else continuum + term
            continue
        attrs = {"units": unit, "component": comp.kind}
        if comp.kind == "element":
            attrs.update(element=comp.element, families=comp.family)
        out[comp.name] = (packed.isel(quantity=i, drop=True) * factor).assign_attrs(
            attrs, long_name=f"{comp.name} counts (unconstrained)"
        )
        if comp.kind == "element":
            out[f"{comp.name}_nonneg"] = (packed.isel(quantity=k + i, drop=True) * factor).assign_attrs(
                attrs, long_name=f"{comp.name} counts (non-negative fit)"
            )
            out[f"{comp.name}_sigma"] = (packed.isel(quantity=2 * k + i, drop=True) * factor).assign_attrs(
                attrs, long_name=f"{comp.name} 1-sigma uncertainty"
            )
    if continuum is not None:
        out["continuum"] = (continuum * factor).assign_attrs(units=unit, long_name="continuum counts")
    out["reduced_chi_square"] = packed.isel(quantity=3 * k, drop=True).assign_attrs(units="1")
    out["total_counts"] = packed.isel(quantity=3 * k + 1, drop=True).assign_attrs(
        units="counts", long_name="counts in the fitted energy range"
    )
    per_position = xr.Dataset(out)
    positions = np.stack(
        [np.asarray(ds["position_y"].values), np.asarray(ds["position_x"].values)], axis=1
    ) if "position_y" in ds.coords and "position_x" in ds.coords else None
    maps = _to_image(per_position, positions, scan_shape, grid_step_um, source)
    maps.attrs.update(_calibration_attrs(result))
    maps.attrs.update(
        background=background,
        n_continuum=int(n_continuum) if background == "linear" else 0,
        normalisation=unit,
        source=str(source) if source else "",
    )
    return maps


def fit_chunks(spectra, plan, names: list[str]):
    """:func:`~xmulti.xrf.fit.fit_spectra` over the position chunks of ``spectra (position,
    channel)``: a ``(position, quantity)`` DataArray (quantities ``names``, from
    :func:`~xmulti.xrf.fit.output_names`), lazy when the spectra are.

    One task per chunk, fed the chunk itself: ``xr.apply_ufunc(dask="parallelized")`` would
    concatenate each chunk along its core dimension first, a copy of the whole chunk (64 MB)
    per task that cost 20 % of the fit. The plan is one graph key (``dask.delayed``), so each
    worker receives it once rather than inside every task.
    """
    import dask
    import dask.array as da
    import xarray as xr

    from .fit import fit_spectra

    spectra = spectra.transpose(..., "channel")
    data = spectra.data
    if isinstance(data, da.Array):
        if data.numblocks[-1] != 1:
            data = data.rechunk({data.ndim - 1: -1})
        packed = da.map_blocks(
            fit_spectra, data, dask.delayed(plan, pure=True), dtype=np.float32,
            chunks=(data.chunks[0], (len(names),)), token="xmulti-fit-xrf",
        )
    else:
        packed = fit_spectra(np.asarray(data), plan)
    coords = {k: v for k, v in spectra.coords.items() if "channel" not in v.dims}
    return xr.DataArray(packed, dims=(spectra.dims[0], "quantity"), coords=coords).assign_coords(quantity=names)


def _normalisation(ds, normalize: bool, source):
    """Per-position factor (i0 and dead time) and the resulting unit."""
    if not normalize:
        return np.float32(1.0), "counts"
    factor = 1.0
    unit = "counts"
    if "live_time" in ds.data_vars and "real_time" in ds.data_vars:
        live = np.asarray(ds["live_time"].values, dtype=float)
        real = np.asarray(ds["real_time"].values, dtype=float)
        bad = ~(np.isfinite(live) & np.isfinite(real) & (live > 0) & (real >= live))
        if bad.any():
            raise InvalidScanError(
                source, "/xrf/live_time",
                f"{int(bad.sum())} positions have live time <= 0, non-finite or above real "
                "time; pass normalize=False to skip the dead-time correction",
            )
        factor = real / live
    if "i0" in ds.data_vars:
        i0 = np.asarray(ds["i0"].values, dtype=float)
        bad = ~(np.isfinite(i0) & (i0 > 0))
        if bad.any():
            raise InvalidScanError(
                source, "/xrf/i0",
                f"{int(bad.sum())} positions have i0 <= 0 or non-finite; pass normalize=False "
                "to skip the i0 normalisation",
            )
        factor = factor / i0
        unit = "counts per i0 count"
    if np.ndim(factor) == 0:
        return np.float32(factor), unit
    import xarray as xr

    return xr.DataArray(np.asarray(factor, dtype=np.float32), dims="position"), unit


def _to_image(per_position, positions, scan_shape, grid_step_um, source):
    """Per-position results onto ``(y, x)``: raster reshape or gridding (see module doc)."""
    import xarray as xr

    from ..grid import raster_axes_um

    n = per_position.sizes["position"]
    if scan_shape is not None and scan_shape[0] * scan_shape[1] == n:
        ny, nx = scan_shape
        if positions is not None:
            y, x = raster_axes_um(positions, (ny, nx))
        else:
            y, x = np.arange(ny, dtype=float), np.arange(nx, dtype=float)
        variables = {}
        for name, var in per_position.data_vars.items():
            data = var.data.reshape(ny, nx)
            variables[name] = xr.DataArray(data, dims=("y", "x"), attrs=var.attrs)
        return xr.Dataset(
            variables,
            coords={"y": ("y", y, {"units": "um"}), "x": ("x", x, {"units": "um"})},
        )
    if positions is None:
        raise InvalidScanError(
            source, "/xrf/positions", "no scan_shape and no positions: cannot place the maps"
        )
    return _grid_irregular(per_position.compute(), positions, grid_step_um)


def _grid_irregular(per_position, positions, grid_step_um):
    """Linear interpolation on the Delaunay triangulation, nearest outside the hull."""
    import xarray as xr
    from scipy.interpolate import griddata
    from scipy.spatial import cKDTree

    if grid_step_um is None:
        distances, _ = cKDTree(positions).query(positions, k=2)
        nearest = distances[:, 1]
        grid_step_um = float(np.median(nearest[nearest > 0])) if np.any(nearest > 0) else 1.0
    if not grid_step_um > 0:
        raise InvalidInputError(f"grid_step_um must be positive, got {grid_step_um}")
    low, high = positions.min(axis=0), positions.max(axis=0)
    y = np.arange(low[0], high[0] + 0.5 * grid_step_um, grid_step_um)
    x = np.arange(low[1], high[1] + 0.5 * grid_step_um, grid_step_um)
    gy, gx = np.meshgrid(y, x, indexing="ij")
    variables = {}
    for name, var in per_position.data_vars.items():
        values = np.asarray(var.values, dtype=float)
        image = griddata(positions, values, (gy, gx), method="nearest")
        if positions.shape[0] >= 3:
            try:
                linear = griddata(positions, values, (gy, gx), method="linear")
            except ValueError:  # degenerate (collinear) positions: nearest only
                linear = image
            # outside the hull (NaN), or next to an empty spectrum (inf sigma): nearest value
            image = np.where(np.isfinite(linear), linear, image)
        variables[name] = xr.DataArray(image.astype(np.float32), dims=("y", "x"), attrs=var.attrs)
    ds = xr.Dataset(variables, coords={"y": ("y", y, {"units": "um"}), "x": ("x", x, {"units": "um"})})
    ds.attrs["gridding"] = f"linear on Delaunay triangles, nearest outside the hull, step {grid_step_um:g} um"
    return ds


def significant_anywhere(maps, elements, false_alarm: float = 0.05, max_binning: int = 16) -> dict[str, float]:
    """Largest significance of each element's map over pixels and blocks of pixels.

    At binning ``b = 1, 2, 4, ...`` (up to ``max_binning`` and the map's size) the fitted
    counts of each ``b x b`` block are summed and divided by the root sum of their variances
    (``<El>_sigma``); the largest of these z-scores, each level against its one-sided
    threshold for ``false_alarm`` over all its blocks and levels (Bonferroni), is returned as a
    multiple of that threshold: above 1, the element is significant somewhere (a trace element
    spread thinly shows at coarse binning, a spot at fine).

    Parameters
    ----------
    maps : xarray.Dataset
        Computed maps of :func:`fit_xrf` (``<El>`` and ``<El>_sigma`` on ``(y, x)``).
    elements : iterable of str
        Elements to check.
    false_alarm : float
        Probability that an absent element passes, over the whole map.
    max_binning : int
        Coarsest binning.

    Returns
    -------
    dict of str to float
        Significance relative to its threshold (> 1: significant somewhere).
    """
    from scipy.stats import norm

    out = {}
    for element in elements:
        if element not in maps or f"{element}_sigma" not in maps:
            continue
        value = np.asarray(maps[element].values, dtype=float)
        variance = np.asarray(maps[f"{element}_sigma"].values, dtype=float) ** 2
        usable = np.isfinite(value) & np.isfinite(variance)
        value, variance = np.where(usable, value, 0.0), np.where(usable, variance, 0.0)
        levels, b = [], 1
        while b <= max_binning and b <= max(value.shape):
            levels.append(b)
            b *= 2
        best = 0.0
        for b in levels:
            ny, nx = -(-value.shape[0] // b), -(-value.shape[1] // b)
            pad = ((0, ny * b - value.shape[0]), (0, nx * b - value.shape[1]))
            v = np.pad(value, pad).reshape(ny, b, nx, b).sum(axis=(1, 3))
            var = np.pad(variance, pad).reshape(ny, b, nx, b).sum(axis=(1, 3))
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(var > 0, v / np.sqrt(var), 0.0)
            threshold = norm.isf(false_alarm / (v.size * len(levels)))
            best = max(best, float(z.max()) / threshold)
        out[element] = best
    return out
