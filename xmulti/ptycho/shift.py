"""Subpixel shifts by the Fourier shift theorem, skipped when the shifts are integral.

A window whose top-left corner is at fractional object index ``corner + frac`` sees the probe
shifted by ``+frac`` pixels (the beam centre sits at ``N//2 + frac`` inside the window).
Shifting by ``s`` multiplies the spectrum by ``exp(-2 pi i k s)`` with ``k = fftfreq(N)``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from . import fused
from .fft import FFT2

__all__ = ["is_integral", "ramp_vectors", "shift_ramps", "shift_images", "shifted_probes", "unshift_sum"]

# shifts below this (pixels) are treated as zero: a 1e-4 px shift changes a pixel by < 1e-3 of
# the local gradient, far below the noise of any measured pattern
_TOL_PX = 1e-4


def is_integral(frac: np.ndarray, tol: float = _TOL_PX) -> bool:
    """True when every subpixel remainder is (within ``tol`` pixels) zero or one."""
    f = np.asarray(frac)
    return bool(np.all(np.minimum(np.abs(f), np.abs(1.0 - f)) <= tol))


def _work_dtype(images: Any) -> np.dtype:
    """complex128 for complex128 input (gradient checks), complex64 for anything else (the engines)."""
    return np.dtype(np.complex128 if images.dtype == np.complex128 else np.complex64)


def ramp_vectors(
    frac: np.ndarray, shape: int | tuple[int, int], xp: ModuleType = np, dtype: Any = np.complex64
) -> tuple[Any, Any]:
    """The separable factors ``exp(-2 pi i k_y f_y)`` (B, Ny) and ``exp(-2 pi i k_x f_x)`` (B, Nx).

    ``k = fftfreq(N)`` (cycles per pixel), ``f = frac (B, 2)`` (pixels); ``dtype`` complex64 (the
    engines) or complex128 (gradient checks). The phase is reduced modulo one turn in float64
    before the cosine and sine, so it keeps the dtype's precision whatever the shift.
    """
    ny, nx = (shape, shape) if np.isscalar(shape) else shape
    dtype = np.dtype(dtype)
    real = np.float32 if dtype == np.complex64 else np.float64
    f = np.asarray(frac, dtype=np.float64)
    out = []
    for axis, size in ((0, ny), (1, nx)):
        turns = f[:, axis, None] * np.fft.fftfreq(size)[None, :]
        turns -= np.round(turns)
        angle = (-2 * np.pi * turns).astype(real)
        r = np.empty(angle.shape, dtype)
        r.real = np.cos(angle)
        r.imag = np.sin(angle)
        out.append(xp.asarray(r))
    return out[0], out[1]


def shift_ramps(
    frac: np.ndarray, shape: int | tuple[int, int], xp: ModuleType = np, dtype: Any = np.complex64
) -> Any:
    """Phase ramps ``exp(-2 pi i (ky fy + kx fx))`` for shifts ``frac (B, 2)``: (B, Ny, Nx) of ``dtype``.

    ``shape`` is (Ny, Nx), or N for square images.
    """
    ry, rx = ramp_vectors(frac, shape, xp, dtype)
    return ry[:, :, None] * rx[:, None, :]


def shift_images(images: Any, frac: np.ndarray, fft: FFT2) -> Any:
    """Shift each image ``images[b]`` (B, ..., N, N) by ``frac[b]`` (y, x) pixels (copy)."""
    xp = fft.xp
    dtype = _work_dtype(images)
    ramps = shift_ramps(frac, images.shape[-2:], xp, dtype)
    extra = images.ndim - 3
    ramps = ramps.reshape(ramps.shape[:1] + (1,) * extra + ramps.shape[1:])
    spec = fft.forward(images.astype(dtype, copy=True))
    spec *= ramps
    return fft.inverse(spec)


def shifted_probes(probe_spectrum: Any, frac: np.ndarray, fft: FFT2) -> Any:
    """Probe modes shifted per position.

    Parameters
    ----------
    probe_spectrum : array (K, N, N) complex64 (or complex128)
        ``fft2(probe, norm="ortho")`` of the probe modes, computed once per batch.
    frac : ndarray (B, 2)
        Shift of each position (pixels).
    fft : FFT2

    Returns
    -------
    array (B, K, N, N) of the spectrum's dtype
        One inverse FFT per position and mode (the cost of honouring subpixel positions).
    """
    xp = fft.xp
    ry, rx = ramp_vectors(frac, probe_spectrum.shape[-2:], xp, probe_spectrum.dtype)
    if fused.usable(xp) and probe_spectrum.dtype == np.complex64:
        return fft.inverse(fused.ramped(probe_spectrum, ry, rx))  # one pass
    k = probe_spectrum.shape[0]
    out = xp.empty((len(ry), k) + probe_spectrum.shape[1:], probe_spectrum.dtype)
    # spectrum x ramp_y first (broadcast over positions), then x ramp_x in place: two passes,
    # no (B, N, N) ramp array (building one by broadcasting was the slowest step)
    xp.multiply(probe_spectrum[None], ry[:, None, :, None], out=out)
    out *= rx[:, None, None, :]
    return fft.inverse(out)


def unshift_sum(images: Any, frac: np.ndarray, fft: FFT2, overwrite: bool = False) -> Any:
    """``sum_b shift(images[b], -frac[b])`` for images (B, K, N, N): returns (K, N, N).

    Used to bring per-position probe gradients, computed in each window's (shifted) frame, back
    to the probe's frame; the sum is done in Fourier space so only one inverse FFT is paid.
    With ``overwrite`` the FFT works in ``images``' memory (a temporary of the caller).
    """
    xp = fft.xp
    bsz, k, ny, nx = images.shape
    # the ramps of -frac are the conjugates of those of +frac
    dtype = _work_dtype(images)
    ry, rx = ramp_vectors(-np.asarray(frac, dtype=np.float64), (ny, nx), xp, dtype)
    spec = fft.forward(images if overwrite else images.copy())
    if fused.usable(xp) and spec.dtype == np.complex64:
        return fft.inverse(fused.ramped_sum(spec, ry, rx))  # ramps and sum in one pass
    # ramps applied in place as two broadcast factors (no (B, N, N) ramp array), then the sum
    # over positions; a batched matrix product doing the y ramp and the sum together was
    # 2x faster at some sizes but fell off BLAS onto strided loops at others (0.5 s for 32
    # frames of 128x128, against under 1 ms this way)
    spec *= rx[:, None, None, :]
    spec *= ry[:, None, :, None]
    out = spec.sum(axis=0)
    return fft.inverse(out)
