"""Object and probe update directions shared by the engines (sums over a batch).

For a batch of exit-wave updates ``chi_jk`` (position j, probe mode k):

- object: numerator ``sum_jk conj(P_jk) chi_jk`` and illumination ``sum_jk |P_jk|^2``
  accumulated on the object array (only on the bounding box of the batch);
- probe: numerator ``sum_j conj(O_j) chi_jk`` (brought back to the probe frame when the probe was
  subpixel-shifted) and ``sum_j |O_j|^2``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import fused
from .batch import BatchWork
from .fft import FFT2
from .shift import unshift_sum

__all__ = ["UpdateSums", "add_object_sums", "bounding_box", "object_sums", "probe_sums", "power"]


def power(a: Any, axis: Any = None) -> Any:
    """``|a|^2`` (float32) summed over ``axis`` (None: no sum; an int or tuple of leading axes).

    Squares the interleaved float32 view once, reduces over ``axis`` first (contiguous, fast)
    and only then adds real and imaginary parts (a reduction over a length-2 axis is slow).
    """
    a = a if a.flags.c_contiguous else a.copy()
    sq = a.view(np.float32)
    sq = sq * sq  # (..., 2 * last): re^2, im^2 interleaved
    if axis is not None:
        sq = sq.sum(axis=axis)
    return sq[..., 0::2] + sq[..., 1::2]


def _object_terms(work: BatchWork, xp: Any, consume: bool) -> tuple[Any, Any, bool]:
    """Per-window object numerators ``sum_k conj(P_jk) chi_jk`` (B, N, N) and illuminations.

    The illumination is one (N, N) image when every window sees the same probe (flagged by the
    third value), else (B, N, N).
    """
    if work.shared_probe:
        probe = work.probes
        if probe.shape[0] == 1:
            if consume:
                upd = work.chi[:, 0]
                upd *= xp.conj(probe[0])
            else:
                upd = work.chi[:, 0] * xp.conj(probe[0])
        else:
            upd = (xp.conj(probe)[None] * work.chi).sum(axis=1)
        return upd, power(probe, axis=0), True
    if work.probes.shape[1] == 1 and consume:
        upd = work.chi[:, 0]
        upd *= xp.conj(work.probes[:, 0])  # in place: no (B, 1, N, N) temporary and sum
    else:
        upd = (xp.conj(work.probes) * work.chi).sum(axis=1)
    probes = work.probes[:, 0] if work.probes.shape[1] == 1 else work.probes
    return upd, power(probes, axis=None if probes.ndim == 3 else 1), False


def add_object_sums(num: Any, illum: Any, work: BatchWork, local: np.ndarray, xp: Any = np,
                    consume: bool = False) -> None:
    """Add the batch's object numerator and illumination to ``num``/``illum`` (in place).

    ``local`` (B, 2) are the window corners in the index frame of ``num`` and ``illum``.
    """
    upd, ill, shared = _object_terms(work, xp, consume)
    n = upd.shape[-1]
    # one loop for both sums: the per-window Python overhead is paid once
    for b, (y, x) in enumerate(local.tolist()):
        num[y : y + n, x : x + n] += upd[b]
        illum[y : y + n, x : x + n] += ill if shared else ill[b]


def object_sums(
    work: BatchWork, xp: Any = np, consume: bool = False
) -> tuple[tuple[slice, slice], Any, Any, np.ndarray]:
    """Object-update numerator and illumination on the batch's bounding box.

    With ``consume=True`` the numerator is formed in ``work.chi``'s memory (saves a pass when
    ``chi`` is not needed afterwards).

    Returns
    -------
    box : (slice, slice)
        Region of the object array concerned.
    numerator : array complex64, illumination : array float32
        Both of the box's shape.
    local : ndarray (B, 2)
        Window corners relative to the box.
    """
    n = work.chi.shape[-1]
    box, lo, shape = bounding_box(work.corners, n)
    local = work.corners - lo
    num = xp.zeros(shape, np.complex64)
    illum = xp.zeros(shape, np.float32)
    add_object_sums(num, illum, work, local, xp, consume)
    return box, num, illum, local


def bounding_box(corners: np.ndarray, n: int) -> tuple[tuple[slice, slice], np.ndarray, tuple[int, int]]:
    """The region of the object array covered by the windows at ``corners`` (B, 2).

    Returns the region as slices, its top-left corner and its shape.
    """
    lo = corners.min(axis=0)
    hi = corners.max(axis=0) + n
    box = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])))
    return box, lo, (int(hi[0] - lo[0]), int(hi[1] - lo[1]))


def probe_sums(work: BatchWork, fft: FFT2) -> tuple[Any, Any]:
    """Probe-update numerator (K, N, N) and object power ``sum_j |O_j|^2`` (N, N).

    Call it before :func:`object_sums` with ``consume=True``.
    """
    xp = fft.xp
    chi = work.chi
    conj_patches = xp.conj(work.patches)
    if chi.shape[1] == 1:
        # conj(O_j) chi_j formed in the conjugate's buffer (a temporary): no further allocation
        per_position = xp.multiply(conj_patches, chi[:, 0], out=conj_patches)[:, None]
    else:
        per_position = conj_patches[:, None] * chi
    if work.shared_probe:
        num = per_position.sum(axis=0)
    else:
        num = unshift_sum(per_position, work.frac, fft, overwrite=True)
    den = power(work.patches, axis=0)
    return num, den


class UpdateSums:
    """Object and probe update sums of one batch, on the bounding box of its windows.

    The batch may be worked through in parts (chunks bounding memory, or sub-batches run in
    threads, each with its own ``UpdateSums``): :meth:`add` accumulates a part's exit-wave
    updates and :meth:`merge` adds the sums of another part of the same batch.

    Parameters
    ----------
    corners : ndarray (B, 2) int
        Window corners of the whole batch (object indices).
    probe_shape : (K, N, N)
    update_probe : bool
        Also accumulate the probe sums.
    xp : module
    """

    def __init__(self, corners: np.ndarray, probe_shape: tuple, update_probe: bool, xp: Any = np):
        self.xp = xp
        self.box, self.lo, shape = bounding_box(corners, probe_shape[-1])
        self.num = xp.zeros(shape, np.complex64)
        self.illum = xp.zeros(shape, np.float32)
        self.pnum = xp.zeros(probe_shape, np.complex64) if update_probe else None
        self.pden = xp.zeros(probe_shape[1:], np.float32) if update_probe else None

    def add(self, work: BatchWork, fft: FFT2) -> None:
        """Accumulate the sums of ``work`` (its ``chi`` is consumed)."""
        local = work.corners - self.lo
        if fused.usable(self.xp) and work.chi.dtype == np.complex64:
            fused.sums(work.chi, work.probes, work.patches, local, self.num, self.illum,
                       self.pnum, self.pden)
            if self.pnum is not None and not work.shared_probe:
                # chi now holds conj(O_j) chi_j, in each window's shifted probe frame
                self.pnum += unshift_sum(work.chi, work.frac, fft, overwrite=True)
            return
        if self.pnum is not None:
            pnum, pden = probe_sums(work, fft)
            self.pnum += pnum
            self.pden += pden
        add_object_sums(self.num, self.illum, work, local, self.xp, consume=True)

    def merge(self, other: UpdateSums) -> None:
        """Add the sums of another part of the same batch (on a box within this one's)."""
        y0, x0 = (int(v) for v in other.lo - self.lo)
        h, w = other.num.shape
        if y0 < 0 or x0 < 0 or y0 + h > self.num.shape[0] or x0 + w > self.num.shape[1]:
            raise ValueError("merged sums must lie within this part's box")
        self.num[y0 : y0 + h, x0 : x0 + w] += other.num
        self.illum[y0 : y0 + h, x0 : x0 + w] += other.illum
        if self.pnum is not None:
            self.pnum += other.pnum
            self.pden += other.pden
