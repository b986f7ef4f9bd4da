"""The probe footprint: what part of the sample an XRF measurement sees (pure numpy kernels).

The ptychographic probe intensity is the XRF excitation footprint: at beam position ``p`` the
fluorescence of element ``e`` is ``sum_r I(r - p) c_e(r)`` with ``I`` the normalised probe
intensity, whose array pixel ``(N//2, N//2)`` is the beam centre. These kernels take numpy
arrays (or cupy via ``xp``) on the object grid.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

__all__ = ["probe_intensity", "footprint_radius_um", "footprint_blur"]


def probe_intensity(probe, xp=np) -> np.ndarray:
    """Normalised probe intensity (sum 1) from a complex probe ``(N, N)`` or ``(modes, N, N)``.

    The modes of a mixed-state probe add incoherently. Pure kernel (numpy or cupy via ``xp``).
    """
    arr = xp.asarray(probe)
    intensity = xp.abs(arr) ** 2
    if intensity.ndim == 3:
        intensity = intensity.sum(axis=0)
    if intensity.ndim != 2:
        raise InvalidInputError(f"a probe must be (N, N) or (modes, N, N), not shape {tuple(arr.shape)}")
    total = float(intensity.sum())
    if not np.isfinite(total) or total <= 0:
        raise InvalidInputError("the probe has no intensity")
    return intensity / total


def footprint_radius_um(intensity: np.ndarray, pixel_size_um: float, fraction: float = 0.95) -> float:
    """Radius (um) around the beam centre (pixel N//2, N//2) enclosing ``fraction`` of the intensity."""
    n_y, n_x = intensity.shape
    yy, xx = np.mgrid[0:n_y, 0:n_x]
    radius = np.hypot(yy - n_y // 2, xx - n_x // 2).ravel()
    order = np.argsort(radius)
    enclosed = np.cumsum(np.asarray(intensity, dtype=float).ravel()[order])
    enclosed /= enclosed[-1]
    return float(radius[order][np.searchsorted(enclosed, fraction)] * pixel_size_um)


def footprint_blur(image: np.ndarray, intensity: np.ndarray, min_support: float = 0.5, xp=np) -> np.ndarray:
    """What the XRF detector would see: ``out[i] = sum_d I[N//2 + d] image[i + d]``.

    NaN pixels of ``image`` are left out and the weights renormalised (normalised convolution);
    pixels where less than ``min_support`` of the footprint falls on valid data are NaN. Pure
    kernel: FFT correlation with zero padding (no wrap-around), numpy or cupy via ``xp``.

    Parameters
    ----------
    image : ndarray (H, W)
        On the object grid (the probe's pixel size).
    intensity : ndarray (N, M)
        Normalised probe intensity, beam centre at ``(N//2, M//2)``.
    """
    img = xp.asarray(image, dtype=float)
    valid = xp.isfinite(img)
    img = xp.where(valid, img, 0.0)
    ker = xp.asarray(intensity, dtype=float)[::-1, ::-1]
    h, w = img.shape
    n, m = ker.shape
    shape = (h + n - 1, w + m - 1)
    fk = xp.fft.rfft2(ker, s=shape)
    num = xp.fft.irfft2(xp.fft.rfft2(img, s=shape) * fk, s=shape)
    den = xp.fft.irfft2(xp.fft.rfft2(valid.astype(float), s=shape) * fk, s=shape)
    # full linear convolution with the flipped kernel: output i sits at i + (N - 1 - N//2)
    oy, ox = n - 1 - n // 2, m - 1 - m // 2
    num = num[oy : oy + h, ox : ox + w]
    den = den[oy : oy + h, ox : ox + w]
    good = den >= min_support
    return xp.where(good, num / xp.where(good, den, 1.0), xp.nan)
