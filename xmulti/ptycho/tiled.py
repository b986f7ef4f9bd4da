"""Labelled operation for tile-parallel reconstruction: ``reconstruct(scan, tiles=(2, 2), ...)``.

Sets up the global object grid, the starting probe and the probe's Fourier support as the
single-process :func:`xmulti.ptycho.reconstruct.reconstruct` does, but without loading the frames
on the client: the photon counts, the mean pattern and the per-frame contrast are Dask reductions
on the workers, and the probe search (when no probe is given) looks at the frames of at most 64
positions around the most strongly scattering one. The tiles then run on the cluster
(:func:`xmulti.ptycho.distributed.reconstruct_tiles`), and the stitched images are Dask arrays
blended and normalised block by block on the workers (:mod:`xmulti.ptycho.lazy_result`): with
``lazy=True`` they stay there until written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from ..errors import InvalidInputError
from .data import prepare_frames
from .distributed import default_halo_px, reconstruct_tiles
from .lazy_result import lazy_result_dataset
from .probe import (
    add_modes,
    fit_probe_to_frame,
    fourier_support,
    pupil_from_data,
    scale_probe_power,
)
from .probe_search import defocused_pupil_probe, search_probe
from .state import EngineOptions
from .tiles import split_tiles

__all__ = ["reconstruct_tiled"]

_SEARCH_POSITIONS = 64


def _valid_counts(diffraction, mask: np.ndarray | None, saturation: float | None):
    """Lazy float32 counts with the pixels the engines ignore (masked, saturated, negative) at 0."""
    import dask.array as da

    counts = da.clip(diffraction.astype(np.float32), 0, None)
    if mask is not None:
        counts = da.where(np.asarray(mask, bool)[None], np.float32(0), counts)
    if saturation is not None:
        counts = da.where(diffraction >= saturation, np.float32(0), counts)
    return counts


def reconstruct_tiled(
    ds,
    engine: str,
    iterations: int,
    probe_modes: int,
    position_correction: bool,
    *,
    tiles: tuple[int, int],
    halo_um: float | None = None,
    sync_every: int | None = None,
    client=None,
    probe: np.ndarray | None = None,
    probe_diameter_um: float | None = None,
    noise: str | None = None,
    saturation: float | None = None,
    clip_negative: bool = False,
    options: EngineOptions | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    method: str = "grid",
    probe_support: bool = True,
    resident_frames: bool | None = None,
    lazy: bool = False,
    block: int = 512,
):
    """Tile-parallel reconstruction of a ``/ptychography`` Dataset (see
    :func:`xmulti.ptycho.reconstruct.reconstruct` for the parameters it shares).

    Parameters
    ----------
    tiles : (int, int)
        Tile grid (ny, nx); with ``method="kmeans"`` their product is the number of tiles.
    halo_um : float, optional
        Halo width (um); default the probe radius or two scan steps, whichever is larger.
    sync_every : int, optional
        Epochs between probe/overlap synchronisation; None runs the tiles independently.
    client : dask.distributed.Client, optional
        Default: a local process cluster sized to the machine, for the duration of the call.
    method : {"grid", "kmeans"}
        Tiling (:func:`xmulti.ptycho.tiles.split_tiles`).
    probe_support : bool
        Confine the probe's spectrum to the aperture of the mean pattern, as the single-process
        reconstruction does.
    resident_frames : bool, optional
        As :func:`xmulti.ptycho.distributed.reconstruct_tiles`.
    lazy : bool
        With a ``client`` given: return ``phase``, ``amplitude`` and ``illumination`` as Dask
        arrays blended block by block on the workers from the tiles held there (the client never
        holds an image); compute or write them (e.g. :func:`xmulti.io.results.write_group`)
        while the client is open. False (or no client given): computed, in memory.
    block : int
        Chunk edge (object pixels) of the stitched images (one Zarr shard each when written).

    Returns
    -------
    xarray.Dataset
        As :func:`xmulti.ptycho.reconstruct.reconstruct`.
    """
    import dask.array as da

    from ..cluster import dask_client
    from ..worker_memory import tune_active_client
    from .reconstruct import object_setup, scan_positions_um

    if len(tiles) != 2 or min(tiles) < 1:
        raise InvalidInputError(f"tiles must be two positive integers, got {tiles}")
    diffraction = da.asarray(ds["diffraction"].data)
    positions_um = scan_positions_um(ds, diffraction.shape)
    n = int(diffraction.shape[-1])
    mask = np.asarray(ds["mask"].values) if "mask" in ds else None
    dx_um, opts, margin, origin, shape, positions_px = object_setup(
        ds, positions_um, n, options, noise, position_correction
    )
    if probe is None and "probe" in ds:
        probe = np.asarray(ds["probe"].values)

    owned = client is None
    with dask_client() if owned else contextlib.nullcontext(client) as active:
        tune_active_client(active)  # a client made elsewhere: its workers' allocator settings
        counts = _valid_counts(diffraction, mask, saturation)
        # one pass on the workers: per-frame totals and the summed pattern (all-zero frames add
        # nothing, so the sum over the usable count is the single-process mean pattern)
        totals, pattern_sum = active.compute([counts.sum(axis=(1, 2)), counts.sum(axis=0)], sync=True)
        usable = totals > 0
        if not np.any(usable):
            raise InvalidInputError("no usable diffraction frame: every frame is all zero (or fully masked)")
        mean_counts = float(totals[usable].mean())
        mean_pattern = pattern_sum / usable.sum()
        support = fourier_support(mean_pattern) if probe_support else None
        if probe is not None:
            start = scale_probe_power(fit_probe_to_frame(probe, n), mean_counts)
        else:
            # as search_probe does on all frames: trial around the most strongly scattering
            # position; only those frames come to the client
            mean_amp = np.sqrt(np.clip(mean_pattern, 0, None)).astype(np.float32)
            contrast = active.compute(abs(da.sqrt(counts) - mean_amp[None]).sum(axis=(1, 2)), sync=True)
            # the same positions search_probe would take from all frames (same ordering of ties)
            kept = np.flatnonzero(usable)
            centre = positions_px[kept[int(np.argmax(contrast[kept]))]]
            subset = np.sort(kept[np.argsort(np.hypot(*(positions_px[kept] - centre).T))[:_SEARCH_POSITIONS]])
            local = active.compute(diffraction[subset], sync=True)
            frames = prepare_frames(local, mask, saturation, clip_negative)
            diameters = None
            if probe_diameter_um is not None:
                if not probe_diameter_um > 0:
                    raise InvalidInputError(f"probe_diameter_um must be positive, got {probe_diameter_um}")
                d = probe_diameter_um / dx_um
                diameters = (d, -d)
            # the trial object covers only the subset's windows, not the whole object grid (so the
            # client's memory does not grow with the scan; the trials are the same)
            corners = np.floor(positions_px[subset] - n // 2).astype(int)
            lo = np.maximum(corners.min(axis=0) - margin, 0)
            hi = np.minimum(corners.max(axis=0) + n + 1 + margin, shape)
            _, diameter = search_probe(frames, positions_px[subset] - lo, (int(hi[0] - lo[0]), int(hi[1] - lo[1])),
                                       diameters)
            # the start itself from the pupil of *all* frames, as in one process (the subset's
            # mean pattern carries its own scattering: a start that differs slows convergence)
            start = defocused_pupil_probe(pupil_from_data(mean_pattern), diameter)[None]
            start = scale_probe_power(start, mean_counts)
        start = add_modes(start, probe_modes).astype(np.complex64)
        halo_px = default_halo_px(positions_px, start) if halo_um is None else float(halo_um) / dx_um
        tile_list = split_tiles(positions_px, n, shape, grid=tuple(tiles), halo_px=halo_px, method=method,
                                margin_px=margin)
        obj, probe_out, corrected, errors, _ = reconstruct_tiles(
            diffraction, positions_px, shape, start, tile_list, halo_px, engine=engine, iterations=iterations,
            sync_every=sync_every, options=opts, mask=mask, saturation=saturation,
            clip_negative=clip_negative, client=active, progress=progress, probe_support=support,
            resident_frames=resident_frames, lazy=True, block=block,
        )
        attrs = {
            "engine": engine, "iterations": int(iterations), "probe_modes": int(probe_modes), "noise": noise,
            "position_correction": bool(position_correction), "tiles": [int(t) for t in tiles],
            "tile_method": method, "halo_um": halo_px * dx_um,
            "sync_every": -1 if sync_every is None else int(sync_every),
        }

        def compute(*collections):
            return active.compute(list(collections), sync=True)

        result = lazy_result_dataset(obj, probe_out, corrected, errors, origin, dx_um, positions_um, attrs,
                                     compute, block)
        if not lazy or owned:  # an owned cluster closes on return: bring the images here first
            result = active.compute(result, sync=True)
    return result
