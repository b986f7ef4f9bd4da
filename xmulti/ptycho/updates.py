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

from .batch import BatchWork
from .fft import FFT2
from .forward import accumulate_patches
from .shift import unshift_sum

__all__ = ["object_sums", "probe_sums", "power"]


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
    lo = work.corners.min(axis=0)
    hi = work.corners.max(axis=0) + n
    box = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])))
    local = work.corners - lo
    shape = (int(hi[0] - lo[0]), int(hi[1] - lo[1]))
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
        illum_one = power(probe, axis=0)
        illum = xp.zeros(shape, np.float32)
        # all windows see the same probe: accumulate one illumination per corner
        for y, x in local.tolist():
            illum[y : y + n, x : x + n] += illum_one
    else:
        if work.probes.shape[1] == 1 and consume:
            upd = work.chi[:, 0]
            upd *= xp.conj(work.probes[:, 0])  # in place: no (B, 1, N, N) temporary and sum
        else:
            upd = (xp.conj(work.probes) * work.chi).sum(axis=1)
        illum = xp.zeros(shape, np.float32)
        probes = work.probes[:, 0] if work.probes.shape[1] == 1 else work.probes
        accumulate_patches(illum, power(probes, axis=None if probes.ndim == 3 else 1), local)
    num = xp.zeros(shape, np.complex64)
    accumulate_patches(num, upd, local)
    return box, num, illum, local


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
