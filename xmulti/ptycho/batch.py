"""One mini-batch of the shared engine pipeline: windows, exit waves, far field, update.

Every engine starts an update the same way: cut the object windows, form the exit waves
``psi = P_j * O_j`` (probe shifted by the subpixel remainder only when there is one), propagate
them to the detector, apply the detector constraint and come back with the exit-wave update
``chi``. The engines differ in what they do with ``chi``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import fused
from .data import Frames
from .fft import FFT2
from .forward import extract_patches, window_corners
from .fourier import fourier_update
from .shift import is_integral, shifted_probes
from .state import ReconState

__all__ = ["BatchWork", "exit_wave_update", "split_batch", "even_bounds", "run_parts"]

# fewest positions per thread: below that the thread hand-over costs more than it saves
_MIN_PART = 4
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


@dataclass
class BatchWork:
    """Intermediate arrays of one batch.

    Attributes
    ----------
    index : ndarray (B,)
        Positions of the batch.
    corners : ndarray (B, 2) int
        Window top-left corners on the object array.
    frac : ndarray (B, 2) or None
        Subpixel remainders, None when all are zero.
    patches : array (B, N, N)
        Object windows.
    probes : array (K, N, N) or (B, K, N, N)
        Probe modes as seen by each window (shared when positions are integral).
    chi : array (B, K, N, N)
        Exit-wave updates.
    error, norm : float
        Detector error terms (see :func:`xmulti.ptycho.fourier.fourier_update`).
    intensity_factor : ndarray (B,) or None
        Maximum-likelihood intensity factor of each frame for the current object and probe
        (``sum I / sum |Psi|^2``), when asked for.
    """

    index: np.ndarray
    corners: np.ndarray
    frac: np.ndarray | None
    patches: Any
    probes: Any
    chi: Any
    error: float
    norm: float
    intensity_factor: np.ndarray | None = None

    @property
    def shared_probe(self) -> bool:
        """True when every window sees the same (unshifted) probe."""
        return self.frac is None


def exit_wave_update(
    state: ReconState,
    frames: Frames,
    index: np.ndarray,
    fft: FFT2,
    noise: str = "gaussian",
    fit_intensity: bool = False,
) -> BatchWork:
    """Exit-wave updates ``chi`` of the positions ``index`` for the current object and probe.

    The model of each frame is scaled by ``state.intensity_scale`` (per-frame incident
    intensity relative to the probe's, when set); with ``fit_intensity`` the maximum-likelihood
    intensity factors of the frames are returned in ``BatchWork.intensity_factor``.
    """
    xp = fft.xp
    n = state.probe.shape[-1]
    corners, frac = window_corners(state.positions_px[index], n)
    if is_integral(frac):
        frac = None
        probes = state.probe
    else:
        probes = shifted_probes(fft.forward(state.probe.copy()), frac, fft)
    if fused.usable(xp) and state.obj.dtype == np.complex64 and probes.dtype == np.complex64:
        patches, psi = fused.windows(state.obj, corners, probes)
    else:
        patches = extract_patches(state.obj, corners, n, xp)
        psi = (probes[None] if frac is None else probes) * patches[:, None, :, :]
    spec = fft.forward(psi)
    # counts on valid pixels = sum A^2 over them: known beforehand
    known = None if frames.counts is None else float(frames.counts[index].sum())
    if len(index) and index[-1] - index[0] == len(index) - 1:
        amplitude = frames.amplitude[index[0] : index[-1] + 1]  # sorted and contiguous: a view
    else:
        amplitude = frames.amplitude[index]
    scale = None if state.intensity_scale is None else np.sqrt(state.intensity_scale[index])
    counts = frames.counts[index] if fit_intensity and frames.counts is not None else None
    spec, error, norm, factor = fourier_update(
        spec, amplitude, frames.has_invalid, noise, xp, known, scale, counts
    )
    chi = fft.inverse(spec)
    return BatchWork(index, corners, frac, patches, probes, chi, error, norm, factor)


def split_batch(index: np.ndarray, fft: FFT2, min_part: int = _MIN_PART) -> list[tuple[int, np.ndarray]]:
    """Split a batch into one contiguous part per FFT thread: ``(offset in the batch, positions)``.

    One part only when the array module is not numpy (a GPU works on the whole batch) or the
    batch is too small to share.
    """
    threads = fft.workers if fft.xp is np else 1
    parts = max(1, min(int(threads or 1), len(index) // min_part))
    bounds = even_bounds(len(index), parts)
    return [(a, index[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def even_bounds(size: int, parts: int) -> list[int]:
    """Boundaries of ``parts`` contiguous ranges of sizes differing by at most one."""
    return [(size * i) // parts for i in range(parts + 1)]


def _pool(workers: int) -> ThreadPoolExecutor:
    # one persistent pool per process (a pool inherited through fork has no threads) and size
    key = (os.getpid(), workers)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="xmulti-ptycho")
        return _POOLS[key]


def run_parts(task: Callable[[Any, FFT2], Any], parts: list, fft: FFT2) -> list:
    """``task(part, fft_of_its_thread)`` for every part, concurrently when there are several.

    The first part runs in the calling thread, the others in a persistent pool of
    ``fft.workers`` threads, each with one-thread FFTs, so the element-wise work (compiled
    kernels or numpy, both releasing the GIL) is spread over the cores like the FFTs. Results
    are returned in the order of ``parts``.
    """
    if len(parts) == 1:
        return [task(parts[0], fft)]
    single = FFT2(fft.xp, 1)
    # the calling thread runs the first part itself (one hand-over fewer per batch)
    futures = [_pool(int(fft.workers)).submit(task, part, single) for part in parts[1:]]
    try:
        first = task(parts[0], single)
    finally:
        rest = [f.result() for f in futures]  # waits for all, even when the first part failed
    return [first] + rest
