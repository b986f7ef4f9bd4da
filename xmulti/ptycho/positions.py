"""Position correction from the exit-wave updates (gradient least squares).

Following Odstrcil, Menzel & Guizar-Sicairos, Opt. Express 26, 3108 (2018), Sec. 2.6: moving a
window by ``d`` (pixels) changes its exit wave by about ``P (d_y dO/dy + d_x dO/dx)``; the shift
that best explains the exit-wave update ``chi`` is, per axis,
``d = sum Re(conj(P dO/ds) chi) / sum |P dO/ds|^2``. A fraction of it, limited to
``max_shift_px``, is applied each epoch. The denominator is regularised by a fraction of its
typical (90th percentile) value over the previous epoch, so windows over a flat object
(vacuum), which hold no position information, stay put instead of random-walking. The mean
correction over the well-determined positions is removed after each epoch (a global shift of
every position is a shift of the object, not an error).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .batch import BatchWork
from .fft import to_numpy
from .lsqml import real_dot

__all__ = ["position_shifts", "clip_positions"]


def _central_difference(patches: Any, axis: int, xp: Any) -> Any:
    g = xp.zeros_like(patches)
    lo = [slice(None)] * patches.ndim
    hi = [slice(None)] * patches.ndim
    mid = [slice(None)] * patches.ndim
    lo[axis], hi[axis], mid[axis] = slice(None, -2), slice(2, None), slice(1, -1)
    g[tuple(mid)] = (patches[tuple(hi)] - patches[tuple(lo)]) * np.float32(0.5)
    return g


def position_shifts(work: BatchWork, xp: Any = np, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares position change (B, 2) (y, x pixels) of each window of the batch.

    Must be called before ``work.chi`` is consumed by an update.

    Parameters
    ----------
    work : BatchWork
    floor : float
        Added to the denominators ``sum |P dO/ds|^2``: windows over a flat object (vacuum)
        carry no position information, and without it their noise-driven shifts random-walk.

    Returns
    -------
    shifts : ndarray (B, 2)
    strength : ndarray (B, 2)
        The denominators ``sum |P dO/ds|^2`` (how well each shift is determined).
    """
    out = np.zeros((len(work.index), 2))
    strength = np.zeros((len(work.index), 2))
    probes = work.probes[None] if work.shared_probe else work.probes
    for axis in (0, 1):
        grad = _central_difference(work.patches, axis + 1, xp)
        pg = probes * grad[:, None]
        num = to_numpy(real_dot(pg, work.chi, xp))
        den = to_numpy(real_dot(pg, pg, xp))
        strength[:, axis] = den
        out[:, axis] = num / (den + floor + 1e-12 * (float(den.max()) + 1e-30))
    return out, strength


def clip_positions(positions_px: np.ndarray, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Positions limited so that every window stays inside the object array."""
    lo = n // 2
    hi = np.array(shape, dtype=np.float64) - (n - n // 2) - 1e-6
    return np.clip(positions_px, lo, hi)
