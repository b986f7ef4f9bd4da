"""Tile-parallel reconstruction over Dask: overlapping tiles, a shared probe, phase-aligned blending.

The scan positions are split into tiles with a halo (:mod:`xmulti.ptycho.tiles`). Each tile is
Dask work on any worker: a task reads only that tile's frames from the lazy scan (the graph holds
the file path, not data) and either keeps them on the worker as prepared amplitudes (resident) or
reads them again in each round's task (streamed: a worker then holds only the tiles it is
running); the tasks run the engine on the tile for ``sync_every`` epochs at a time. The tiles'
engine states stay on the workers between rounds; the client gathers only their probes, errors
and positions. Between rounds each tile's probe moves half-way to a shared probe (the members-weighted
average of the phase-aligned tile probes) and the tiles take their halo regions from the blend of
their neighbours, so neighbours converge together; the overlap strips move from worker to worker
(:mod:`xmulti.ptycho.cluster_stitch`). ``sync_every=None`` runs the tiles independently to the
end. Finally the tiles are aligned (offset, ramp, scale) and blended block by block on the
workers (:mod:`xmulti.ptycho.stitch` for the arithmetic).

Every task is a pure function of its inputs, so a lost worker is replaced by recomputation from
the graph, and the result does not depend on the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InvalidInputError
from .cluster_stitch import align_on_cluster, blended_object, exchange_on_cluster, prepare_tiles
from .data import Frames, prepare_frames
from .engine import run_engine
from .fft import FFT2
from .reconstruct import illumination_map
from .state import EngineOptions, ReconState
from .tiles import Tile

__all__ = ["TileRun", "reconstruct_tiles", "shared_probe", "default_halo_px", "probe_radius_px"]


@dataclass
class TileRun:
    """A tile after a round: its whole engine state (object, probe, positions, momentum, per-frame
    intensity scales, ...) and its illumination map. The next round starts from this state, so
    nothing an engine carries from epoch to epoch is lost at a synchronisation, and nothing is
    kept on a worker outside the task graph."""

    state: ReconState
    illumination: np.ndarray

    @property
    def obj(self) -> np.ndarray:
        return self.state.obj

    @property
    def probe(self) -> np.ndarray:
        return self.state.probe

    @property
    def positions_px(self) -> np.ndarray:
        return self.state.positions_px

    @property
    def errors(self) -> list[float]:
        return self.state.errors

    @property
    def velocity(self):
        return self.state.velocity


def _worker_threads() -> int:
    """FFT threads of a task: the worker's thread count (the workers share the cores)."""
    try:
        from dask.distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


def _prepare_tile_frames(counts: np.ndarray, mask: np.ndarray | None, saturation, clip_negative) -> Frames:
    """Task: a tile's counts -> engine amplitudes (stays on the worker)."""
    return prepare_frames(counts, mask, saturation, clip_negative)


@dataclass
class _LazyFrames:
    """A tile's frames still on disk: its (culled, path-based) slice of the lazy scan and how to
    prepare them. Read inside the task that needs them, so a worker holds them only while it
    runs that tile."""

    counts: object  # dask.array.Array (M_t, N, N)
    mask: np.ndarray | None
    saturation: float | None
    clip_negative: bool

    def load(self) -> Frames:
        counts = np.asarray(self.counts.compute(scheduler="sync"))
        return prepare_frames(counts, self.mask, self.saturation, self.clip_negative)


def _run_tile(frames: Frames | _LazyFrames, state: ReconState, engine: str, epochs: int, options: EngineOptions,
              last: bool = False) -> TileRun:
    """Task: ``epochs`` epochs of the engine on one tile.

    A pure function: the input state is copied (a recomputed task must see the same input), and
    the momentum is handed back with the result so the next round continues it as one process
    would (restarting the momentum every round slows the convergence of the low frequencies).
    After the ``last`` round it is dropped: the stitch does not need it, and the workers hold
    every finished tile until the stitch.
    """
    if isinstance(frames, _LazyFrames):
        frames = frames.load()
    velocity = state.velocity
    state = state.copy()
    if velocity is not None:
        state.velocity = (velocity[0].copy(), velocity[1].copy())
    run_engine(state, frames, engine, epochs, options, FFT2(np, _worker_threads()))
    if last:
        state.velocity = None
    return TileRun(state, illumination_map(state.probe, state.positions_px, state.obj.shape))


def shared_probe(probes: list[np.ndarray], counts: list[int]) -> tuple[np.ndarray, list[complex]]:
    """One probe from the tiles' probes, and the factor relating each tile's probe to it.

    Tile probes may differ by the complex factor ptychography leaves free (``P a, O / a``):
    each is referred to the first (``a_t = <P_0, P_t> / <P_0, P_0>``) before the average weighted
    by the tiles' position counts. A tile keeps its exit waves by taking the shared probe and
    multiplying its object by ``a_t``. (Removing a fitted linear phase ramp as well, the other
    free gauge, was tried: the tiles' probes differ by more than a ramp after a few epochs, the
    fitted ramps were biased and the stitched error grew from 1.08x to 1.19x that of one tile.)
    """
    reference = probes[0]
    norm = np.vdot(reference, reference)
    factors = [complex(np.vdot(reference, p) / norm) for p in probes]
    total = sum(counts)
    mean = sum(w * p / a for p, a, w in zip(probes, factors, counts, strict=True)) / total
    return mean.astype(np.complex64), factors


def _initial_state(shape: tuple[int, int], probe: np.ndarray, positions_px: np.ndarray, probe_support) -> ReconState:
    """Task: a tile's starting state (a flat object, the start probe)."""
    return ReconState(np.ones(shape, np.complex64), probe.copy(), positions_px, probe_support=probe_support)


def _summary(run: TileRun):
    """Task: what the client needs of a tile after a round (errors, probe, positions), not its
    object."""
    return run.errors, run.probe, run.positions_px


# How far a tile's probe moves towards the shared probe at a synchronisation (1 = replaced by it).
# A tile's object has adapted to its own probe; replacing the probe outright breaks that fit, and
# the tile spends the next epochs recovering (stitched error 1.08-1.11x one tile's on the tiny
# scan, seeds 2-3, 2x2 and 3x3 tiles, sync every 10 of 40 epochs). Half-way steps (a relaxed
# consensus) bring the tiles' probes together over the rounds without that shock: 1.05-1.08x,
# against 1.03-1.10x for independent tiles.
PROBE_CONSENSUS = 0.5


def _next_state(run: TileRun, obj: np.ndarray, a: complex, probe: np.ndarray) -> ReconState:
    """Task: a tile's state for the next round: the exchanged object (in the tile's gauge) and its
    probe moved ``PROBE_CONSENSUS`` of the way to the shared one (``a`` puts the shared probe in the
    tile's gauge); the tile's momentum is kept."""
    moved = (1.0 - PROBE_CONSENSUS) * run.probe + PROBE_CONSENSUS * np.complex64(a) * probe
    return replace(run.state, obj=obj.astype(np.complex64, copy=False), probe=moved.astype(np.complex64))


def reconstruct_tiles(
    diffraction,
    positions_px: np.ndarray,
    object_shape: tuple[int, int],
    initial_probe: np.ndarray,
    tiles: list[Tile],
    halo_px: float,
    *,
    engine: str = "lsqml",
    iterations: int = 100,
    sync_every: int | None = None,
    options: EngineOptions | None = None,
    mask: np.ndarray | None = None,
    saturation: float | None = None,
    clip_negative: bool = False,
    client=None,
    progress: Callable[[int, int, float], None] | None = None,
    probe_support: np.ndarray | None = None,
    resident_frames: bool | None = None,
    lazy: bool = False,
    block: int = 1024,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float], np.ndarray]:
    """Reconstruct tile by tile on a Dask cluster and stitch.

    Parameters
    ----------
    diffraction : dask.array.Array (M, N, N)
        Counts (lazy; each tile task reads only its members' frames).
    positions_px : ndarray (M, 2)
        Beam centres as fractional global object indices.
    object_shape : (int, int)
        Global object grid.
    initial_probe : ndarray (K, N, N) complex64
        Starting probe modes, power already set.
    tiles : list of Tile
    halo_px : float
        Halo width used for the tiling (object pixels).
    engine, iterations, options
        As :func:`xmulti.ptycho.engine.run_engine`.
    sync_every : int or None
        Epochs between probe and overlap synchronisation; None = independent tiles.
    mask, saturation, clip_negative
        As :func:`xmulti.ptycho.data.prepare_frames`.
    client : dask.distributed.Client
        Where the tiles run.
    progress : callable, optional
        ``progress(epoch, iterations, error)`` after each round.
    probe_support : ndarray (N, N) bool, optional
        Where the probe's spectrum may be nonzero (unshifted layout,
        :func:`xmulti.ptycho.probe.fourier_support` of the mean pattern), as in the
        single-process reconstruction.
    resident_frames : bool, optional
        True: each tile's prepared frames are read once and stay in a worker's memory for all
        rounds (a worker holds the frames of every tile it is given). False: each round's task
        reads its tile's frames from the lazy array and drops them when done (a worker holds
        only the tiles it is running, one per thread; the scan is re-read once per round).
        Default: resident when there are no more tiles than worker threads.
    lazy : bool
        Return the stitched object and weight as Dask arrays whose blocks are blended on the
        workers from the tiles held there (nothing of the size of the object on the client;
        compute or write them while ``client`` is open). False computes them.
    block : int
        Chunk edge (object pixels) of the stitched arrays.

    Returns
    -------
    obj : complex64 (object_shape), ndarray or dask.array.Array (``lazy``)
    probe : complex64 (K, N, N)
    positions_px : ndarray (M, 2)
        Positions after correction, each from its own tile.
    errors : list of float
        Error per epoch (tiles' errors weighted by their number of positions).
    weight : float32 (object_shape), ndarray or dask.array.Array (``lazy``)
        Total blending weight (where the image is constrained).
    """
    import dask
    import dask.array as da

    if client is None:
        raise InvalidInputError("tile-parallel reconstruction needs a Dask client")
    if sync_every is not None and sync_every < 1:
        raise InvalidInputError(f"sync_every must be >= 1 or None, got {sync_every}")
    opts = options or EngineOptions()
    diffraction = da.asarray(diffraction)
    mask_future = client.scatter(mask, broadcast=True) if mask is not None else None
    if resident_frames is None:
        threads = sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
        resident_frames = len(tiles) <= max(threads, 1)
    frames = []
    for tile in tiles:
        (counts,) = dask.optimize(diffraction[np.asarray(tile.members)])  # culled: this tile's chunks only
        if resident_frames:
            frames.append(client.submit(_prepare_tile_frames, client.compute(counts), mask_future,
                                        saturation, clip_negative, pure=True))
        else:
            # a small task argument (file path and chunk indices), never a worker-held result
            frames.append(_LazyFrames(counts, mask, saturation, clip_negative))
    probe = np.asarray(initial_probe, np.complex64)
    # the starting states are made on the workers: the client never holds the tiles' objects
    states = [client.submit(_initial_state, tile.shape, probe, positions_px[tile.members] - np.asarray(tile.offset),
                            probe_support, pure=True) for tile in tiles]
    step = iterations if sync_every is None else sync_every
    weights = [len(t.members) for t in tiles]
    errors: list[float] = []
    done = 0
    runs: list = []
    summaries: list = []
    while done < iterations:
        epochs = min(step, iterations - done)
        # the runs stay on the workers; only their summaries come to the client
        runs = [
            client.submit(_run_tile, frames[t], states[t], engine, epochs,
                          replace(opts, seed=opts.seed + 1009 * t), done + epochs >= iterations, pure=True)
            for t in range(len(tiles))
        ]
        states = []  # the scheduler keeps them while the runs need them (and to recompute a lost run)
        summaries = client.gather([client.submit(_summary, r, pure=True) for r in runs])
        for k in range(epochs):
            errors.append(float(sum(w * s[0][done + k] for w, s in zip(weights, summaries, strict=True)) / sum(weights)))
        done += epochs
        if progress is not None:
            progress(done, iterations, errors[-1])
        if done >= iterations:
            break
        corrections = align_on_cluster(client, runs, tiles, halo_px)
        objects = exchange_on_cluster(client, runs, tiles, corrections, halo_px)
        probe, factors = shared_probe([s[1] for s in summaries], weights)
        states = [client.submit(_next_state, r, o, a, probe, pure=True)
                  for r, o, a in zip(runs, objects, factors, strict=True)]
    corrections = align_on_cluster(client, runs, tiles, halo_px)
    prepared = prepare_tiles(client, runs, tiles, corrections, halo_px)
    del runs, states  # the workers keep the tiles' blend terms only (their tasks hold the runs until done)
    obj, weight = blended_object(client, prepared, tiles, object_shape, block)
    probe, _ = shared_probe([s[1] for s in summaries], weights)
    corrected = np.array(positions_px, dtype=np.float64, copy=True)
    for tile, summary in zip(tiles, summaries, strict=True):
        own = tile.members[tile.own]
        corrected[own] = summary[2][tile.own] + np.asarray(tile.offset)
    if not lazy:
        obj, weight = client.compute([obj, weight], sync=True)
    return obj, probe, corrected, errors, weight


def probe_radius_px(probe: np.ndarray, fraction: float = 0.9) -> float:
    """Radius (pixels, about the array centre) holding ``fraction`` of the probe's power."""
    intensity = (np.abs(np.asarray(probe)) ** 2).reshape(-1, *np.shape(probe)[-2:]).sum(axis=0)
    n = intensity.shape[-1]
    yy, xx = np.indices(intensity.shape)
    radius = np.hypot(yy - n // 2, xx - n // 2).ravel()
    order = np.argsort(radius)
    cumulative = np.cumsum(intensity.ravel()[order])
    return float(radius[order][np.searchsorted(cumulative, fraction * cumulative[-1])])


def default_halo_px(positions_px: np.ndarray, probe: np.ndarray) -> float:
    """Halo width: the probe radius (90 % of its power), at least two scan steps, so that a core
    pixel sees all the views that constrain it (PTYCHO.md: at 70 % overlap the probe radius is
    about two steps)."""
    p = np.asarray(positions_px)
    radius = probe_radius_px(probe)
    if len(p) < 2:
        return radius
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(p).query(p, k=2)
    step = float(np.median(distance[:, 1]))
    return max(radius, 2 * step) if math.isfinite(step) else radius
