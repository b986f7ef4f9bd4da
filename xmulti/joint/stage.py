"""The ``joint`` stage of the pipeline and ``xmulti joint``: what it computes from a results store.

From the fitted maps (``/xrf/elemental_maps`` with ``/xrf/fit``, or the quantified
``/xrf/areal_density``), the reconstruction (``/reconstructed``) and the scan's diffraction
frames it makes three groups:

- ``/joint/self_absorption``: the element maps divided by their self-absorption factor, with the
  matrix areal mass taken from the phase (:func:`xmulti.joint.absorption.correct_self_absorption`);
- ``/joint/bridged``: the element maps at the ptychographic pixel, solved with the probe
  footprint and the structure of the phase (:func:`xmulti.joint.bridge.bridge_resolution`);
- ``/joint/reconstruction``: thickness and element maps of one object fitted to both the
  diffraction data and the XRF maps (:func:`xmulti.joint.solve.joint_reconstruct`).

Without a standard the maps are not quantified: the joint reconstruction then runs with a unit
sensitivity and its element maps stay in the maps' units (stated in their ``units``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ..errors import InvalidInputError

__all__ = ["joint_groups"]


def _maps_with_sigma(store) -> tuple[Any, bool]:
    """The element maps with their ``<El>_sigma`` (quantified when the store has them)."""
    from ..io.results import read_group

    try:
        density = read_group(store, "/xrf/areal_density").load()
    except InvalidInputError:
        density = None
    if density is not None:
        return density, True
    maps = read_group(store, "/xrf/elemental_maps").load()
    try:
        fit = read_group(store, "/xrf/fit").load()
    except InvalidInputError:
        return maps, False
    sigmas = [f"{el}_sigma" for el in maps.data_vars if f"{el}_sigma" in fit]
    merged = maps.merge(fit[sigmas])
    merged.attrs = dict(maps.attrs)
    return merged, False


# worker-side progress of bridging reaches the driver's log as events of this topic
_TOPIC = "xmulti-bridge"


def _bridge_task(maps, recon, elements: list[str], power: float):
    """One worker's group of elements, its progress sent as events to the client."""
    from distributed import get_worker

    from .bridge import bridge_resolution

    worker = get_worker()
    return bridge_resolution(maps, recon, elements=elements, footprint_power=power,
                             progress=lambda line: worker.log_event(_TOPIC, f"[{worker.name}] {line}"))


def _bridge(maps, recon, elements: list[str], client, log: Callable[[str], None] | None = None):
    """Resolution bridging; with a client, the elements in one task per worker.

    Elements are independent, but the structure model's setup (levelling, features, data-space
    covariances: about 1 s on the demo store) is shared by the elements of one call: one task
    per worker pays it once per worker instead of once per element (demo store, 2 workers: one
    element per task took 10.3 s against 13.3 s for all seven in one process). The elements share
    one probe, so the footprint power is chosen first, from all of them, in one task
    (:func:`xmulti.joint.bridge.choose_footprint_power`), and given to every group.
    Progress: per element (and per few tiles), in one process through ``log``, on workers as
    events of the topic ``xmulti-bridge`` that the client hands to ``log``.
    """
    from .bridge import bridge_resolution, choose_footprint_power

    def progress(line: str) -> None:
        if log is not None:
            log(f"  joint: {line}")

    workers = len(client.scheduler_info().get("workers", {})) if client is not None else 1
    if client is None or len(elements) < 2 or workers < 2:
        return bridge_resolution(maps, recon, elements=elements, progress=progress)
    import numpy as np
    import xarray as xr

    def subset(names):
        keep = [v for el in names for v in (el, f"{el}_sigma") if v in maps]
        part = maps[keep]
        part.attrs = dict(maps.attrs)
        return part

    groups = [list(g) for g in np.array_split(np.asarray(elements, dtype=object), min(workers, len(elements)))]
    from dask.distributed import as_completed

    recon_future = client.scatter(recon, broadcast=False)
    progress("choosing the footprint power by held-out prediction")
    started = time.perf_counter()
    power, info = client.submit(choose_footprint_power, subset(elements), recon_future, elements=elements,
                                pure=False).result()
    progress(f"footprint power {power:g} in {time.perf_counter() - started:.1f} s; bridging {len(groups)} groups "
             "of elements in parallel")
    client.subscribe_topic(_TOPIC, lambda event: progress(str(event[1])))
    try:
        futures = [client.submit(_bridge_task, subset(g), recon_future, g, power, pure=False) for g in groups]
        names = {f.key: g for f, g in zip(futures, groups, strict=True)}
        for done, future in enumerate(as_completed(futures), 1):
            progress(f"bridged {', '.join(names[future.key])} ({done}/{len(groups)} groups) at "
                     f"{time.perf_counter() - started:.1f} s")
        parts = client.gather(futures)
    finally:
        client.unsubscribe_topic(_TOPIC)
    merged = xr.merge([part[g] for part, g in zip(parts, groups, strict=True)], combine_attrs="override")
    merged = merged[elements]
    for el in elements:
        merged[el].attrs.update(info)
    merged["coverage"] = parts[0]["coverage"]
    merged.attrs = {**parts[0].attrs, "elements": list(elements)}
    return merged


def joint_groups(tree, store: str | os.PathLike, options, client=None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``/joint/self_absorption``, ``/joint/bridged`` and ``/joint/reconstruction`` of a store.

    Parameters
    ----------
    tree : xarray.DataTree
        The scan (:func:`xmulti.open_scan`): diffraction frames and the incident energy.
    store : path-like
        Results store with the fit-xrf and reconstruct stages' groups.
    options : xmulti.options.JointOptions
    client : dask.distributed.Client, optional
    log : callable, optional

    Returns
    -------
    dict of str to xarray.Dataset
    """
    import numpy as np

    from ..inputs import level_reconstructed_phase
    from ..io.results import read_group
    from .absorption import areal_mass_from_phase, correct_self_absorption
    from .solve import joint_reconstruct

    maps, quantified = _maps_with_sigma(store)
    recon = read_group(store, "/reconstructed").load()
    energy = float(tree.attrs.get("incident_energy_keV") or maps.attrs.get("incident_energy_keV"))
    symbols = [str(s) for s in np.atleast_1d(maps.attrs.get("elements", []))] or [
        name for name in maps.data_vars if f"{name}_sigma" in maps
    ]
    elements = list(options.elements) if options.elements else [e for e in symbols if e in maps]
    missing = [e for e in elements if e not in maps]
    if missing:
        raise InvalidInputError(f"{store}: joint.elements {', '.join(missing)} have no fitted map")
    geometry = {"incident_angle_deg": options.incident_angle_deg, "exit_angle_deg": options.exit_angle_deg}

    if log is not None:
        log("  joint: self-absorption correction")
    # a reconstructed phase has an arbitrary offset (and ramp): measure it from the background
    # around the segmented cells before converting phase to mass
    flat, background = level_reconstructed_phase(recon, 0.05)
    mass = areal_mass_from_phase(flat, energy, ice_thickness_um=options.ice_thickness_um, matrix=options.matrix)
    corrected = correct_self_absorption(maps[[*elements, *[f"{e}_sigma" for e in elements if f"{e}_sigma" in maps]]],
                                        mass, incident_energy_keV=energy, elements=elements, **geometry)

    if log is not None:
        log(f"  joint: resolution bridging of {', '.join(elements)}")
    started = time.perf_counter()
    bridged = _bridge(maps, recon, elements, client, log)
    if log is not None:
        log(f"  joint: resolution bridging took {time.perf_counter() - started:.1f} s")

    if log is not None:
        log(f"  joint: joint reconstruction ({options.iterations} iterations)")

    def progress(iteration: int, objective: float, terms: dict) -> None:
        if log is not None and (iteration % 10 == 0 or iteration == options.iterations):
            log(f"  joint: iteration {iteration}/{options.iterations}, objective {objective:.6g}")

    sensitivity = None if quantified else dict.fromkeys(elements, 1.0)
    joint = joint_reconstruct(tree, recon, maps, elements=elements, iterations=options.iterations,
                              xrf_weight=options.xrf_weight, xrf_noise=options.xrf_noise, geometry=geometry, client=client,
                              sensitivity=sensitivity, matrix=options.matrix,
                              ice_thickness_um=options.ice_thickness_um, progress=progress)
    if not quantified:
        unit = maps[elements[0]].attrs.get("units", "counts")
        for el in elements:
            joint[el].attrs["units"] = f"{unit} (not quantified: no standard)"
    corrected.attrs["phase_background_rad"] = float(background["background_rad"])
    for ds in (corrected, bridged, joint):
        ds.attrs["incident_energy_keV"] = energy
        ds.attrs["matrix"] = str(options.matrix)
        ds.attrs["ice_thickness_um"] = float(options.ice_thickness_um)
        ds.attrs["quantified"] = int(quantified)
        for key in [k for k, v in ds.attrs.items() if v is None]:
            del ds.attrs[key]  # Zarr attributes cannot hold None
    return {"/joint/self_absorption": corrected, "/joint/bridged": bridged, "/joint/reconstruction": joint}
