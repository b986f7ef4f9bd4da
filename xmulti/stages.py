"""What each pipeline stage computes, shared by ``xmulti run`` and the single-stage commands.

A stage function takes the opened scan (or the results store, for stages that build on earlier
results) and its options, and returns ``{group path: xarray.Dataset}`` for the results store. It
writes nothing: :mod:`xmulti.pipeline` and the commands write the groups atomically.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .errors import InvalidInputError
from .options import CorrelateOptions, PtychoOptions, XRFOptions

__all__ = [
    "fit_xrf_groups",
    "standard_calibration_for",
    "reconstruct_groups",
    "correlate_groups",
    "load_phase_and_maps",
    "load_working_images",
    "mask_unilluminated",
    "auto_tiles",
]

#: Below this many positions per tile the halo and synchronisation overheads outweigh the
#: parallel gain (at 70 % overlap a 20 x 20 tile carries a halo of about 2 steps all round).
MIN_TILE_POSITIONS = 400


def _persist_with_progress(ds, client, log):
    """Compute a lazy Dataset with a progress display, under any scheduler."""
    if not any(getattr(v, "chunks", None) for v in ds.variables.values()):
        return ds
    if client is not None:
        from dask.distributed import progress

        persisted = client.persist(ds)
        if log is not None:
            progress(persisted, notebook=False)
            print(file=sys.stderr)
        return persisted.compute()
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr if log is not None else open(os.devnull, "w")):  # noqa: SIM115
        return ds.compute()


def fit_xrf_groups(tree, options: XRFOptions, client=None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``/xrf/elemental_maps`` (one variable per element) and ``/xrf/fit`` (diagnostics); with a
    standard (``options.standard`` or ``options.standard_calibration``) ``/xrf/areal_density``.

    The standard's calibration is settled first (loaded, reused from its file, or fitted with
    the standard's own elements, :func:`standard_calibration_for`), so a refused standard costs
    no sample fit.
    """
    from .xrf.maps import calibrate_scan, fit_xrf, significant_anywhere

    standard = standard_calibration_for(tree, options, log)
    calibration = calibrate_scan(tree, options.elements)
    for line in calibration.report_lines() if log is not None else []:
        log(f"  fit-xrf: {line}")
    result = _persist_with_progress(
        fit_xrf(tree, calibration=calibration, background=options.background), client, log)
    identified = list(calibration.identification.elements) if calibration.identification else []
    if identified and calibration.element_source != "given":
        # identified on the summed spectrum; an element significant in no pixel or block of
        # pixels is dropped and the maps refitted without it
        significance = significant_anywhere(result, identified)
        nowhere = [el for el, value in significance.items() if value < 1.0]
        if nowhere:
            if log is not None:
                log(f"  fit-xrf: dropped {', '.join(nowhere)}: significant in no pixel or block of pixels")
            kept = [el for el in calibration.elements if el not in nowhere]
            result = _persist_with_progress(
                fit_xrf(tree, kept, calibration=calibration, background=options.background), client, log)
            result.attrs["dropped_elements"] = nowhere
    symbols = set(result.attrs.get("elements", []))
    element_vars = [name for name in result.data_vars if name in symbols]
    maps = result[element_vars]
    maps.attrs = dict(result.attrs)
    diagnostics = result.drop_vars(element_vars)
    groups = {"/xrf/elemental_maps": maps, "/xrf/fit": diagnostics}
    if standard is not None:
        from .xrf.standard import quantify_maps, scan_geometry

        groups["/xrf/areal_density"] = quantify_maps(result, standard, scan_geometry(tree))
    return groups


def standard_calibration_for(tree, options: XRFOptions, log: Callable[[str], None] | None = None):
    """The standard's calibration the fit-xrf stage applies to ``tree``, or None without a standard.

    ``standard_calibration`` alone: the saved file, checked against the scan's incident energy
    and geometry. ``standard`` (with its densities): its scan checked the same way first, then
    its calibration reused from ``standard_calibration`` when that file matches, else fitted
    with the standard's own elements (and saved there when a path is given).
    """
    from .xrf.standard import (
        cached_standard_calibration,
        check_compatible,
        check_standard_scan,
        fit_standard,
        load_standard_calibration,
        read_standard_info,
        scan_energy_keV,
        scan_geometry,
    )

    def say(line: str) -> None:
        if log is not None:
            log(f"  fit-xrf: {line}")

    energy, geometry = scan_energy_keV(tree), scan_geometry(tree)
    sample = str(tree.attrs.get("source") or "the scan")
    if options.standard is None:
        if options.standard_calibration is None:
            return None
        standard = load_standard_calibration(options.standard_calibration)
        check_compatible(standard, energy, geometry, sample=sample)
        say(f"standard: applying {options.standard_calibration}")
        return standard
    densities = (read_standard_info(options.standard_info) if options.standard_info is not None
                 else dict(options.standard_densities))
    check_standard_scan(options.standard, energy, geometry, sample=sample)
    fit_options = {"background": options.background}
    if options.standard_calibration is not None:
        standard = cached_standard_calibration(options.standard, densities, options.standard_calibration,
                                               standard_info=options.standard_info, log=say, **fit_options)
    else:
        standard = fit_standard(options.standard, densities, standard_info=options.standard_info, log=say,
                                **fit_options)
    check_compatible(standard, energy, geometry, sample=sample)
    return standard


def reconstruct_groups(tree, options: PtychoOptions, client=None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``/reconstructed``: phase, amplitude, probe, pixel size, errors, corrected positions."""
    from .ptycho.reconstruct import reconstruct

    last = [0.0]

    def report(epoch: int, total: int, error: float) -> None:
        now = time.monotonic()
        if log is not None and (now - last[0] > 2.0 or epoch == total):
            last[0] = now
            log(f"  reconstruct: epoch {epoch}/{total}, error {error:.4g}")

    tiles = tuple(options.tiles) if options.tiles is not None else auto_tiles(tree, client, options.max_tile_positions)
    tiled = {}
    if tiles != (1, 1):
        if log is not None and options.tiles is None:
            log(f"  reconstruct: {tiles[0]}x{tiles[1]} tiles (at most {options.max_tile_positions} positions each)")
        tiled = {"tiles": tiles, "halo_um": options.halo_um, "sync_every": options.sync_every, "client": client}
    common = {"engine": options.engine, "iterations": options.iterations, "probe_modes": options.probe_modes,
              "position_correction": options.position_correction, "progress": report}
    # tiled on a cluster, the images stay Dask arrays blended on the workers: the results writer
    # stores them shard by shard from there, so the client never holds the object
    result = reconstruct(tree, **common, **tiled, lazy=True)
    result.attrs["energy_keV"] = float(tree["ptychography"].attrs["energy_keV"])
    return {"/reconstructed": result}


def auto_tiles(tree, client, max_tile_positions: int = 2500) -> tuple[int, int]:
    """The tile grid the pipeline uses when none is given.

    Enough tiles that none holds more than ``max_tile_positions`` positions (so a worker's memory
    is bounded by its tile, not by the scan), at least one per worker when each still gets
    :data:`MIN_TILE_POSITIONS`, and within a quarter of a worker's memory limit; the grid follows
    the scan's aspect ratio. Without a client, one tile (``(1, 1)``) when the scan fits in
    ``max_tile_positions``, else tiles on a local cluster.
    """
    import math

    import numpy as np

    from .ptycho.tiles import choose_grid

    ds = tree["ptychography"].ds
    n_positions = int(ds.sizes["position"])
    frame = ds["diffraction"]
    bytes_per_position = int(np.prod(frame.shape[1:])) * frame.dtype.itemsize
    n_workers, memory = 1, 4.0e9
    if client is not None:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        n_workers = max(1, len(workers))
        limits = [w.get("memory_limit") or 0 for w in workers]
        memory = float(min(limits)) if limits and min(limits) > 0 else memory
    n_tiles = max(math.ceil(n_positions / max_tile_positions), min(n_workers, n_positions // MIN_TILE_POSITIONS), 1)
    if n_tiles == 1:
        return (1, 1)
    positions = np.stack([np.asarray(ds[c].values, dtype=float) for c in ("position_y", "position_x")], axis=1)
    extent = np.ptp(positions, axis=0) + 1e-9
    return choose_grid(n_tiles, n_positions, bytes_per_position, memory, aspect=float(extent[0] / extent[1]))


def load_phase_and_maps(store: str | os.PathLike):
    """The phase (DataArray), element maps (Dataset) and ``/reconstructed`` of a results store."""
    from .io.results import read_group

    maps = read_group(store, "/xrf/elemental_maps").load()
    recon = read_group(store, "/reconstructed").load()
    if "phase" not in recon:
        raise InvalidInputError(f"{store}: /reconstructed has no phase")
    return recon["phase"], maps, recon


def load_working_images(store: str | os.PathLike, max_pixels: int):
    """The phase and illumination of a results store on a working grid of at most ``max_pixels``
    pixels (:mod:`xmulti.working_grid`), the probe binned onto it, and the element maps.

    The images are read and block-averaged chunk by chunk (on the Dask workers under a
    distributed client); only the working copies are loaded here.

    Returns
    -------
    phase : xarray.DataArray (y, x)
        On the working grid (rad).
    maps : xarray.Dataset
        Element maps (scan grid), loaded.
    recon : xarray.Dataset
        ``phase``, ``illumination`` (when stored) on the working grid and ``probe`` binned onto
        it, with the store's attributes.
    factor : int
        Working pixel over phase pixel (1: the phase itself).
    full : xarray.Dataset
        The stored ``/reconstructed`` group, lazy.
    """
    import xarray as xr

    from .io.results import read_group
    from .working_grid import coarse_probe, coarsen_images, working_factor

    maps = read_group(store, "/xrf/elemental_maps").load()
    full = read_group(store, "/reconstructed")
    if "phase" not in full:
        raise InvalidInputError(f"{store}: /reconstructed has no phase")
    factor = working_factor(full["phase"].shape, max_pixels)
    names = ["phase"] + (["illumination"] if "illumination" in full else [])
    recon = coarsen_images(full[names], factor).load()
    if "probe" in full:
        recon["probe"] = xr.DataArray(coarse_probe(full["probe"].values, factor), dims=("probe_y", "probe_x"),
                                      attrs={"binned_by": factor})
    recon.attrs = dict(full.attrs)
    return recon["phase"], maps, recon, factor, full


def mask_unilluminated(phase, recon, threshold: float):
    """The phase with NaN where the reconstruction saw (almost) no beam."""
    import numpy as np
    from scipy import ndimage

    from .footprint import footprint_radius_um, probe_intensity

    if threshold <= 0 or "illumination" not in recon:
        return phase
    illumination = np.asarray(recon["illumination"].values, dtype=float)
    size, probe = 3, recon["probe"].values if "probe" in recon else None
    if probe is not None:
        size = max(3, int(round(footprint_radius_um(probe_intensity(probe), 1.0))))  # in pixels
    smooth = ndimage.uniform_filter(illumination, size)
    return phase.where(smooth >= threshold * smooth.max())


def _energy_keV(store, given: float | None, groups) -> float:
    if given is not None:
        if not given > 0:
            raise InvalidInputError("the photon energy must be positive")
        return float(given)
    for ds in groups:
        for key in ("incident_energy_keV", "energy_keV"):
            if key in ds.attrs:
                return float(ds.attrs[key])
    raise InvalidInputError(f"{store}: no photon energy recorded in the store; give --energy-keV")


def _shift_check(options: CorrelateOptions, maps, phase, probe, diagnostics, log):
    """Estimate (and apply when asked) the residual XRF-phase shift; returns maps and a record."""
    from .register import correct_shift, estimate_shift

    if not options.shift_reference:
        return maps, {}
    if probe is None:
        raise InvalidInputError("the shift check needs /reconstructed/probe")
    name = options.shift_reference
    source = maps if name in maps else diagnostics if diagnostics is not None and name in diagnostics else None
    if source is None:
        raise InvalidInputError(f"shift reference {name}: no such map in /xrf/elemental_maps or /xrf/fit")
    estimate = estimate_shift(source[name].load(), phase, probe)
    if log is not None:
        log(f"  residual XRF-phase shift: {estimate}")
    record = {"residual_shift_um": list(estimate.shift_um), "residual_shift_steps": list(estimate.shift_steps),
              "residual_shift_correlation": estimate.correlation, "shift_corrected": bool(options.correct_shift)}
    return (correct_shift(maps, estimate.shift_um) if options.correct_shift else maps), record


def _labels_on_phase_grid(labels, factor: int, full):
    """Working-grid labels on the stored phase grid: themselves, or expanded block by block (lazy,
    chunked as the stored phase, so they are written shard by shard)."""
    import xarray as xr

    from .working_grid import expand_labels_lazy

    if factor == 1:
        return labels
    phase = full["phase"]
    chunks = phase.chunks or tuple((n,) for n in phase.shape)
    data = expand_labels_lazy(labels.values, factor, phase.shape, chunks)
    attrs = {**labels.attrs, "working_pixel_factor": factor,
             "note": f"found on the phase block-averaged {factor}x{factor}; each pixel has its working pixel's label"}
    return xr.DataArray(data, dims=("y", "x"), coords={"y": phase["y"], "x": phase["x"]}, name="labels", attrs=attrs)


def correlate_groups(
    store: str | os.PathLike,
    options: CorrelateOptions,
    energy_keV: float | None = None,
    log: Callable[[str], None] | None = None,
):
    """Cells segmented on the phase and per-region / pixelwise statistics, from a results store.

    Returns
    -------
    groups : dict
        ``/correlation/labels``, ``/correlation/regions``, ``/correlation/pixelwise``.
    table : pandas.DataFrame
        The per-region table.
    context : dict
        ``phase``, ``maps``, ``labels``, ``probe``, ``energy_keV``, ``elements`` for figures.
    """
    from .correlate import (
        correlations_to_dataset,
        pixel_correlations,
        region_table,
        regions_to_dataset,
        segment_phase,
        select_elements,
    )
    from .io.results import read_group

    phase, maps, recon, factor, full = load_working_images(store, options.max_pixels)
    if log is not None and factor > 1:
        log(f"  correlate: phase {full.sizes['y']}x{full.sizes['x']} block-averaged {factor}x{factor} to "
            f"{phase.sizes['y']}x{phase.sizes['x']} for segmentation and statistics (correlate.max_pixels)")
    elements = select_elements(maps, ",".join(options.elements) if options.elements else None)
    groups = [maps, recon]
    uncertainty = diagnostics = None
    try:
        diagnostics = read_group(store, "/xrf/fit")
    except InvalidInputError:
        pass
    if diagnostics is not None:
        groups.append(diagnostics)
        sigmas = [f"{e}_sigma" for e in elements if f"{e}_sigma" in diagnostics]
        uncertainty = diagnostics[sigmas].load() if sigmas else None
    energy = _energy_keV(store, energy_keV, groups)
    probe = recon["probe"].values if "probe" in recon else None
    phase = mask_unilluminated(phase, recon, options.illumination_threshold)
    maps, shift_record = _shift_check(options, maps, phase, probe, diagnostics, log)
    if uncertainty is not None and options.correct_shift:
        uncertainty = uncertainty.assign_coords(y=maps["y"], x=maps["x"])
    segmentation = {"method": options.method, "split": options.split}
    if options.min_area_um2 is not None:
        segmentation["min_area_um2"] = options.min_area_um2
    labels = segment_phase(phase, **segmentation)
    table = region_table(labels, phase, maps, energy_keV=energy, matrix=options.matrix,
                         embedding=options.embedding, elements=elements, probe=probe, uncertainty=uncertainty)
    pixelwise = pixel_correlations(labels, phase, maps, energy_keV=energy, probe=probe, elements=elements,
                                   matrix=options.matrix, embedding=options.embedding)
    regions = regions_to_dataset(table)
    regions.attrs.update(shift_record)
    regions.attrs["working_pixel_factor"] = factor
    out = {
        "/correlation/labels": _labels_on_phase_grid(labels, factor, full).to_dataset(),
        "/correlation/regions": regions,
        "/correlation/pixelwise": correlations_to_dataset(pixelwise),
    }
    context = {"phase": phase, "maps": maps, "labels": labels, "probe": probe, "energy_keV": energy,
               "elements": elements}
    return out, table, context
