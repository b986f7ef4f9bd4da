"""Subpixel shifts by the Fourier shift theorem, skipped when the shifts are integral.

A window whose top-left corner is at fractional object index ``corner + frac`` sees the probe
shifted by ``+frac`` pixels (the beam centre sits at ``N//2 + frac`` inside the window).
Shifting by ``s`` multiplies the spectrum by ``exp(-2 pi i k s)`` with ``k = fftfreq(N)``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .fft import FFT2

__all__ = ["is_integral", "shift_ramps", "shift_images", "shifted_probes", "unshift_sum"]

# shifts below this (pixels) are treated as zero: a 1e-4 px shift changes a pixel by < 1e-3 of
# the local gradient, far below the noise of any measured pattern
_TOL_PX = 1e-4


def is_integral(frac: np.ndarray, tol: float = _TOL_PX) -> bool:
    """True when every subpixel remainder is (within ``tol`` pixels) zero or one."""
    f = np.asarray(frac)
    return bool(np.all(np.minimum(np.abs(f), np.abs(1.0 - f)) <= tol))


def shift_ramps(frac: np.ndarray, shape: int | tuple[int, int], xp: ModuleType = np) -> Any:
    """Phase ramps ``exp(-2 pi i (ky fy + kx fx))`` for shifts ``frac (B, 2)``: (B, Ny, Nx) complex64.

    ``shape`` is (Ny, Nx), or N for square images.
    """
    ny, nx = (shape, shape) if np.isscalar(shape) else shape
    fy = np.asarray(frac, dtype=np.float64)[:, 0, None] * np.fft.fftfreq(ny)[None, :]
    fx = np.asarray(frac, dtype=np.float64)[:, 1, None] * np.fft.fftfreq(nx)[None, :]
    # separable: two small (B, N) exponentials, one complex64 outer product
    ry = xp.asarray(np.exp(-2j * np.pi * fy).astype(np.complex64))
    rx = xp.asarray(np.exp(-2j * np.pi * fx).astype(np.complex64))
    return ry[:, :, None] * rx[:, None, :]


def shift_images(images: Any, frac: np.ndarray, fft: FFT2) -> Any:
    """Shift each image ``images[b]`` (B, ..., N, N) by ``frac[b]`` (y, x) pixels (copy)."""
    xp = fft.xp
    ramps = shift_ramps(frac, images.shape[-2:], xp)
    extra = images.ndim - 3
    ramps = ramps.reshape(ramps.shape[:1] + (1,) * extra + ramps.shape[1:])
    spec = fft.forward(images.astype(xp.complex64, copy=True))
    spec *= ramps
    return fft.inverse(spec)


def shifted_probes(probe_spectrum: Any, frac: np.ndarray, fft: FFT2) -> Any:
    """Probe modes shifted per position.

    Parameters
    ----------
    probe_spectrum : array (K, N, N) complex64
        ``fft2(probe, norm="ortho")`` of the probe modes, computed once per batch.
    frac : ndarray (B, 2)
        Shift of each position (pixels).

    Returns
    -------
    array (B, K, N, N) complex64
    """
    ramps = shift_ramps(frac, probe_spectrum.shape[-2:], fft.xp)
    if probe_spectrum.shape[0] == 1:
        ramps *= probe_spectrum[0]  # in place: one pass less than a new product
        out = ramps[:, None]
    else:
        out = probe_spectrum[None, :, :, :] * ramps[:, None, :, :]
    return fft.inverse(out)


def unshift_sum(images: Any, frac: np.ndarray, fft: FFT2, overwrite: bool = False) -> Any:
    """``sum_b shift(images[b], -frac[b])`` for images (B, K, N, N): returns (K, N, N).

    Used to bring per-position probe gradients, computed in each window's (shifted) frame, back
    to the probe's frame; the sum is done in Fourier space so only one inverse FFT is paid.
    With ``overwrite`` the FFT works in ``images``' memory (a temporary of the caller).
    """
    # the ramps of -frac are the conjugates of those of +frac: built directly, no extra pass
    ramps = shift_ramps(-np.asarray(frac), images.shape[-2:], fft.xp)
    spec = fft.forward(images if overwrite else images.copy())
    spec *= ramps[:, None, :, :]
    return fft.inverse(spec.sum(axis=0))
