"""The epoch loop shared by all engines: batches, probe/position schedules, error history.

:func:`run_engine` works on any :class:`~xmulti.ptycho.state.ReconState` and the matching
:class:`~xmulti.ptycho.data.Frames` (same positions, same order), so a tile of a decomposed
reconstruction runs it on its own subset of positions and object sub-array, and can hand back
the probe and object after a few epochs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InvalidInputError
from . import fused
from .batch import even_bounds, exit_wave_update, run_parts, split_batch
from .data import Frames
from .fft import FFT2, get_xp
from .forward import check_windows, window_corners
from .lsqml import LsqmlAccumulator, lsqml_update
from .positions import clip_positions, refine_shifts, search_shifts
from .probe import orthogonalize_modes
from .rpie import rpie_apply, rpie_update
from .state import EngineOptions, ReconState
from .updates import UpdateSums

__all__ = ["ENGINES", "run_engine"]

ENGINES = {"rpie": rpie_update, "epie": rpie_update, "lsqml": lsqml_update}


def _check(state: ReconState, frames: Frames) -> None:
    m, n, _ = frames.shape
    if state.probe.ndim != 3 or state.probe.shape[1:] != (n, n):
        raise InvalidInputError(
            f"probe shape {tuple(state.probe.shape)} does not match the frames ({n}, {n})"
        )
    if state.positions_px.shape != (m, 2):
        raise InvalidInputError(
            f"{state.positions_px.shape[0]} positions for {m} diffraction frames"
        )
    if not np.isfinite(state.positions_px).all():
        bad = np.flatnonzero(~np.isfinite(state.positions_px).all(axis=1))
        raise InvalidInputError(
            f"positions contain NaN or inf ({bad.size} position(s), first index {int(bad[0])})"
        )
    corners, frac = window_corners(state.positions_px, n)
    check_windows(corners, frac, n, state.obj.shape)


def _apply_momentum(state: ReconState, before: tuple, momentum: float, probe: bool) -> None:
    """Heavy-ball step: ``v = m v + (x - x_before)``, ``x += m v`` for object (and probe)."""
    fresh = state.velocity is None or state.velocity[1].shape != state.probe.shape
    contiguous = state.probe.flags.c_contiguous and (fresh or state.velocity[1].flags.c_contiguous)
    if (fused.usable(get_xp(state.obj)) and contiguous
            and state.obj.dtype == state.probe.dtype == np.complex64):
        if fresh:
            state.velocity = (np.empty_like(state.obj), np.empty_like(state.probe))
        n = state.probe.shape[-1]
        fused.momentum(state.obj, before[0], state.velocity[0], momentum, fresh, True)
        fused.momentum(state.probe.reshape(-1, n), before[1].reshape(-1, n),
                       state.velocity[1].reshape(-1, n), momentum, fresh, probe)
        return
    d_obj = state.obj - before[0]
    d_probe = state.probe - before[1]
    if state.velocity is None or state.velocity[1].shape != d_probe.shape:
        state.velocity = (d_obj, d_probe)
    else:
        vo, vp = state.velocity
        vo *= np.float32(momentum)
        vo += d_obj
        vp *= np.float32(momentum)
        vp += d_probe
    m = np.float32(momentum)
    state.obj += m * state.velocity[0]
    if probe:
        state.probe += m * state.velocity[1]


def _neighbour_weights(positions_px: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian weights between nearby positions (width a quarter frame), rows summing to 1.

    Returned as ``(rows, cols, weights)`` of the nonzero entries (self included). Used to split
    the fitted per-frame intensity factors into what varies smoothly from one position to its
    neighbours (the object's absorption over the window, which the object amplitude must carry)
    and what does not (the beam-flux fluctuation of each frame).
    """
    from scipy.spatial import cKDTree

    sigma = n / 8.0
    m = len(positions_px)
    pairs = cKDTree(positions_px).query_pairs(3 * sigma, output_type="ndarray")
    d = np.linalg.norm(positions_px[pairs[:, 0]] - positions_px[pairs[:, 1]], axis=1)
    w = np.exp(-0.5 * (d / sigma) ** 2)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(m)])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(m)])
    vals = np.concatenate([w, w, np.ones(m)])
    vals /= np.bincount(rows, vals, m)[rows]
    return rows, cols, vals


def _flux_factors(factors: np.ndarray, neighbours: tuple) -> np.ndarray:
    """Per-frame flux factors: the fitted intensity factors over their neighbourhood mean.

    The ratio keeps the frame-to-frame (white) part of the factors; their smooth part is left
    to the object, otherwise the object's low-frequency amplitude and the factors trade freely
    (a direction the momentum was seen to blow up). Mean 1: the mean flux is the probe power.
    """
    rows, cols, vals = neighbours
    smooth = np.bincount(rows, vals * factors[cols], len(factors))
    out = factors / np.maximum(smooth, 1e-12)
    return out / out.mean()


def _search_positions(state: ReconState, frames: Frames, usable: np.ndarray, fft: FFT2, chunk: int,
                      radius: int) -> None:
    """Move windows stuck outside their misfit basin (:func:`~xmulti.ptycho.positions.search_shifts`)."""
    n = state.probe.shape[-1]
    for c in range(0, len(usable), chunk):
        cidx = usable[c : c + chunk]
        scale = None if state.intensity_scale is None else np.sqrt(state.intensity_scale[cidx])
        moves = search_shifts(state.obj, state.probe, state.positions_px[cidx], frames.amplitude[cidx], fft,
                              scale, radius_px=radius, step_px=max(1, radius // 2))
        state.positions_px[cidx] += moves
    state.positions_px = clip_positions(state.positions_px, n, state.obj.shape)


def _run_batch(state: ReconState, frames: Frames, idx: np.ndarray, engine: str, opts: EngineOptions,
               fft: FFT2, chunk: int, update_probe: bool, fit_intensity: bool, correct: bool,
               pos_floor: float, factors: np.ndarray | None) -> tuple[float, float, list, list]:
    """One batch: exit-wave updates and their sums part by part (one part per FFT thread, each
    worked through in chunks of at most ``chunk`` positions for LSQ-ML), the parts' sums added,
    the update applied. Returns the detector error and norm, the position-gradient strengths
    and the position shifts (to be applied by the caller)."""
    n = state.probe.shape[-1]
    corners, _ = window_corners(state.positions_px[idx], n)
    lsqml = engine == "lsqml"

    def part(item: tuple[int, np.ndarray], tfft: FFT2) -> tuple:
        offset, sub = item
        # the first part's sums cover the batch's box (the others are added to them), the
        # others only their own windows' box (smaller: indices are sorted, so the parts of a
        # raster scan are bands of it)
        box = corners if offset == 0 else corners[offset : offset + len(sub)]
        if lsqml:
            sums = LsqmlAccumulator(state, len(idx), update_probe, tfft.xp, box)
        else:
            sums = UpdateSums(box, state.probe.shape, update_probe, tfft.xp)
        err = norm = 0.0
        strengths, moves = [], []
        pieces = -(-len(sub) // chunk) if lsqml else 1  # equal chunks, none tiny
        bounds = even_bounds(len(sub), pieces)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            cidx = sub[a:b]
            work = exit_wave_update(state, frames, cidx, tfft, opts.noise, fit_intensity)
            if work.intensity_factor is not None:
                factors[cidx] = work.intensity_factor
            err += work.error
            norm += work.norm
            if correct:
                scale = None if state.intensity_scale is None else np.sqrt(state.intensity_scale[cidx])
                shifts, strength = refine_shifts(
                    work, state.obj, state.probe, state.positions_px[cidx], frames.amplitude[cidx],
                    tfft, pos_floor, scale, opts.position_iterations, opts.position_step_px,
                )
                strengths.append((cidx, strength))
                moves.append((cidx, shifts))
            if lsqml:
                sums.add(work, tfft, offset + a)
            else:
                sums.add(work, tfft)
        return sums, err, norm, strengths, moves

    results = run_parts(part, split_batch(idx, fft), fft)
    sums = results[0][0]
    for r in results[1:]:
        sums.merge(r[0])
    if lsqml:
        sums.apply(state, opts, fft)
    else:
        rpie_apply(state, sums, opts)
    return (sum(r[1] for r in results), sum(r[2] for r in results),
            [s for r in results for s in r[3]], [m for r in results for m in r[4]])


def run_engine(
    state: ReconState,
    frames: Frames,
    engine: str = "lsqml",
    iterations: int = 100,
    options: EngineOptions | None = None,
    fft: FFT2 | None = None,
    callback: Callable[[ReconState], None] | None = None,
) -> ReconState:
    """Run ``iterations`` epochs of an engine on ``state`` (modified in place and returned).

    Parameters
    ----------
    state : ReconState
        Object, probe modes and positions (fractional object indices of the beam centres).
    frames : Frames
        Measured amplitudes of the same positions, in the same order.
    engine : {"lsqml", "rpie", "epie"}
        "epie" is rPIE with ``alpha = beta = 1``.
    iterations : int
        Epochs (every usable position updated once per epoch).
    options : EngineOptions, optional
    fft : FFT2, optional
        FFT backend (threads, array module); default: numpy/scipy with all CPUs.
    callback : callable, optional
        Called with the state after each epoch (progress display, tile synchronisation).

    Returns
    -------
    ReconState
    """
    if engine not in ENGINES:
        raise InvalidInputError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}")
    if iterations < 0:
        raise InvalidInputError(f"iterations must be >= 0, got {iterations}")
    opts = EngineOptions(**(options or EngineOptions()).__dict__)  # a copy: defaults filled below
    if engine == "epie":
        opts.alpha = opts.beta = 1.0
    if opts.noise is None:
        opts.noise = "poisson" if engine == "lsqml" else "gaussian"
    if opts.noise not in ("gaussian", "poisson"):
        raise InvalidInputError(f"unknown noise model {opts.noise!r}; use 'gaussian' or 'poisson'")
    _check(state, frames)
    m, n, _ = frames.shape
    if opts.batch_size is None:
        opts.batch_size = 32 if engine != "lsqml" else m
    # positions per chunk of work arrays: memory and cache bound, whatever the batch size
    chunk = max(1, int(opts.chunk_bytes // (8 * n * n * state.probe.shape[0])))
    if opts.momentum is None:
        opts.momentum = 0.9 if engine == "lsqml" else 0.0
    if opts.batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {opts.batch_size}")
    fft = fft or FFT2(get_xp(state.obj))
    usable = np.flatnonzero(frames.usable)
    nominal = state.positions_px.copy()
    pos_floor = 0.0  # position-gradient regularisation, from the previous epoch
    neighbours = None  # position-smoothing matrix of the intensity fit
    for _ in range(iterations):
        rng = np.random.default_rng(opts.seed + 7919 * state.epoch)
        order = rng.permutation(usable)
        update_probe = opts.update_probe and state.epoch >= opts.probe_update_start
        correct = opts.position_correction and state.epoch >= opts.position_start
        fit_intensity = opts.intensity_correction and state.epoch >= opts.intensity_start
        if fit_intensity:
            if state.intensity_scale is None:
                state.intensity_scale = np.ones(m)
            if neighbours is None:
                neighbours = _neighbour_weights(state.positions_px[usable], n)
            factors = state.intensity_scale.copy()
        err = norm = 0.0
        strengths = []
        if opts.momentum > 0:
            before = (state.obj.copy(), state.probe.copy())
        size = min(opts.batch_size, opts.position_batch_size) if correct else opts.batch_size
        every = opts.position_search_every
        if correct and every > 0 and state.epoch > opts.position_start and (state.epoch - opts.position_start) % every == 0:
            _search_positions(state, frames, usable, fft, chunk, opts.position_search_radius_px)
        for start in range(0, len(order), size):
            idx = np.sort(order[start : start + size])
            batch = _run_batch(state, frames, idx, engine, opts, fft, chunk, update_probe,
                               fit_intensity, correct, pos_floor, factors if fit_intensity else None)
            err += batch[0]
            norm += batch[1]
            strengths += batch[2]
            for cidx, shifts in batch[3]:
                step = np.clip(opts.position_step * shifts, -opts.max_shift_px, opts.max_shift_px)
                state.positions_px[cidx] += step
        if opts.momentum > 0:
            _apply_momentum(state, before, opts.momentum, update_probe)
        if fit_intensity:
            state.intensity_scale[usable] = _flux_factors(factors[usable], neighbours)
        if update_probe and state.probe_support is not None:
            spec = fft.forward(state.probe.copy())
            spec *= state.probe_support
            state.probe = fft.inverse(spec)
        if correct:
            where = np.concatenate([i for i, _ in strengths])
            strength = np.concatenate([s for _, s in strengths]).min(axis=1)
            typical = float(np.percentile(strength, 90))
            pos_floor = opts.position_reg * typical
            # remove the common drift, measured on the well-determined positions only
            strong = where[strength >= 0.1 * typical]
            ref = strong if len(strong) else usable
            drift = (state.positions_px[ref] - nominal[ref]).mean(axis=0)
            state.positions_px -= drift
            state.positions_px = clip_positions(state.positions_px, n, state.obj.shape)
        if state.probe.shape[0] > 1 and opts.orthogonalize_every > 0:
            if (state.epoch + 1) % opts.orthogonalize_every == 0:
                state.probe, u = orthogonalize_modes(state.probe, return_transform=True)
                if state.velocity is not None:
                    vp = state.velocity[1]
                    state.velocity = (state.velocity[0], (u @ vp.reshape(len(u), -1)).reshape(vp.shape))
        state.errors.append(err / norm if norm > 0 else float("nan"))
        state.epoch += 1
        if callback is not None:
            callback(state)
    return state
