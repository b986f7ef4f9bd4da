"""Position correction: least-squares shifts from the detector amplitudes or the exit-wave updates.

Moving a window by ``d`` (pixels) changes its exit wave by about ``P (d_y dO/dy + d_x dO/dx)``.
The engines (:func:`xmulti.ptycho.engine.run_engine`) take the Gauss-Newton step on the
detector amplitudes that this change implies (the translation gradient of Guizar-Sicairos &
Fienup, Opt. Express 16, 7264 (2008), solved per window as a 2x2 least-squares system); the
exit-wave form of Odstrcil, Menzel & Guizar-Sicairos, Opt. Express 26, 3108 (2018), Sec. 2.6,
``d = sum Re(conj(P dO/ds) chi) / sum |P dO/ds|^2``, is kept for callers without the measured
amplitudes. On the weak cell phantom the exit-wave form recovered only 10-25 % of a known
offset of the true object (the Fourier-modulus update keeps the model's phases, which carry
most of the shift), the detector form 90-98 % for offsets up to 1 px. A fraction of the shift,
limited to ``max_shift_px``, is applied each epoch. The normal equations are regularised by a
fraction of their typical (90th percentile) diagonal over the previous epoch, so windows over a
flat object (vacuum), which hold no position information, stay put instead of random-walking.
The mean correction over the well-determined positions is removed after each epoch (a global
shift of every position is a shift of the object, not an error). Removing the affine part of
the corrections as well was tried (with the exit-wave estimator) and did not help on the cell
phantom (0.96 against 1.00 px RMS on the small preset, worse on tiny, where the random errors
of few windows have a large affine projection), so it is not done.

Known limit (small preset, 3 px RMS errors, 100 LSQ-ML epochs): 1.3 px RMS remain on the
windows that see cells, mostly a smooth field (their error averaged over 25 px is 0.55 px RMS
against 0.28 px for the recorded errors): a smooth warp of positions and object explains the
data almost as well (only the strain across a window is seen), and the corrections drift along
it. Larger position batches (32: 0.98 px) and removing part of the corrections' smooth
component each epoch (with batches of 32: 0.79 px) helped there but hurt the tiny preset
(0.37 -> 0.59 / 0.76 px), so neither is the default.
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


def position_shifts(
    work: BatchWork,
    xp: Any = np,
    floor: float = 0.0,
    amplitude: Any = None,
    fft: Any = None,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares position change (B, 2) (y, x pixels) of each window of the batch.

    Must be called before ``work.chi`` is consumed by an update.

    Two estimators. Given the measured ``amplitude`` and ``fft``: Gauss-Newton on the detector
    amplitudes (the translation gradient of Guizar-Sicairos & Fienup, Opt. Express 16, 7264
    (2008), as a least-squares step): with ``Psi_k = F(P_k O)`` and ``G_ak = F(P_k dO/da)``,
    the model amplitude moves by ``J_a = sum_k Re(conj(Psi_k) G_ak) / |Psi|`` per pixel of
    shift along ``a``, and the shift solves the 2x2 system ``(J^T J + floor) d = J^T (A - |Psi|)``
    over the valid pixels. Otherwise from the exit-wave update ``chi`` (Odstrcil et al. 2018):
    that estimate was seen to recover only 10-25 % of a known offset of the true object on
    weak phase objects (the Fourier-modulus update keeps the model's phases), against which
    the detector estimate is unbiased to first order; it costs three FFTs per window.

    Parameters
    ----------
    work : BatchWork
    floor : float
        Added to the diagonal of the normal equations: windows over a flat object (vacuum)
        carry no position information, and without it their noise-driven shifts random-walk.
    amplitude : array (B, N, N), optional
        Measured amplitudes of the batch (unshifted FFT layout, ``-1`` = invalid pixel).
    fft : FFT2, optional
    scale : ndarray (B,), optional
        Per-frame amplitude factors of the model (the square root of the intensity factors).

    Returns
    -------
    shifts : ndarray (B, 2)
    strength : ndarray (B, 2)
        The diagonal of the normal equations (how well each shift is determined).
    """
    bsz = len(work.index)
    out = np.zeros((bsz, 2))
    strength = np.zeros((bsz, 2))
    probes = work.probes[None] if work.shared_probe else work.probes
    grads = [_central_difference(work.patches, axis, xp) for axis in (1, 2)]
    if amplitude is not None and fft is not None:
        psi = fft.forward(probes * work.patches[:, None])
        jac = [fft.forward(probes * g[:, None]) for g in grads]
        mod = xp.sqrt((xp.abs(psi) ** 2).sum(axis=1)) + np.float32(1e-6)
        j = [(psi.real * gk.real + psi.imag * gk.imag).sum(axis=1) / mod for gk in jac]
        if scale is not None:
            c = xp.asarray(np.asarray(scale, np.float32))[:, None, None]
            mod = mod * c
            j = [jk * c for jk in j]
        valid = amplitude >= 0
        res = xp.where(valid, amplitude - mod, 0).astype(np.float32)
        j = [xp.where(valid, jk, 0).astype(np.float32) for jk in j]
        jj = np.array([[to_numpy(_dot(j[a], j[b], xp)) for b in (0, 1)] for a in (0, 1)])  # (2, 2, B)
        jr = np.array([to_numpy(_dot(j[a], res, xp)) for a in (0, 1)])  # (2, B)
        strength[:] = np.stack([jj[0, 0], jj[1, 1]], axis=1)
        reg = floor + 1e-12 * (float(strength.max()) + 1e-30)
        mat = np.moveaxis(jj, 2, 0) + reg * np.eye(2)[None]
        out[:] = np.linalg.solve(mat, jr.T[:, :, None])[:, :, 0]
        return out, strength
    for axis in (0, 1):
        pg = probes * grads[axis][:, None]
        num = to_numpy(real_dot(pg, work.chi, xp))
        den = to_numpy(real_dot(pg, pg, xp))
        strength[:, axis] = den
        out[:, axis] = num / (den + floor + 1e-12 * (float(den.max()) + 1e-30))
    return out, strength


def _dot(a: Any, b: Any, xp: Any) -> Any:
    """``sum a b`` over all axes but the first, for real float32 arrays: (B,) float64."""
    bsz = a.shape[0]
    return xp.matmul(a.reshape(bsz, 1, -1), b.reshape(bsz, -1, 1))[:, 0, 0].astype(np.float64)


def clip_positions(positions_px: np.ndarray, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Positions limited so that every window stays inside the object array."""
    lo = n // 2
    hi = np.array(shape, dtype=np.float64) - (n - n // 2) - 1e-6
    return np.clip(positions_px, lo, hi)
