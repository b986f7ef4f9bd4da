"""Optics of the simulated scan: focused probe, raster positions, object transmission, far field.

Pure numpy kernels following xmulti's conventions: the probe array's pixel (N//2, N//2) is the
beam centre; object pixel (i, j) is centred at ``origin + (i, j) * dx``; the far field is
``|fftshift(fft2(probe * object_window, norm="ortho"))|^2``.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

__all__ = [
    "zone_plate_probe",
    "raster_positions_px",
    "object_transmission",
    "window_indices",
    "shifted_probes",
    "gather_windows",
    "far_field_intensity",
]


def zone_plate_probe(
    n: int, diameter_px: float, photons: float, stop_fraction: float = 0.45
) -> np.ndarray:
    """A defocused Fresnel-zone-plate probe: annular pupil (central stop) with defocus.

    The pupil (the direct beam as seen on the detector) is an annulus of outer radius N/4
    frequency pixels; a quadratic (defocus) phase spreads the focus into a ring-like footprint of
    the requested diameter. A small astigmatism makes it realistic and not rotationally symmetric.

    Parameters
    ----------
    n : int
        Array width N (object pixels) of the probe, equal to the diffraction frame width.
    diameter_px : float
        Geometric footprint diameter (object pixels).
    photons : float
        Incident photons: the probe is scaled so ``sum |P|^2 = photons``.
    stop_fraction : float
        Central-stop radius over the zone-plate radius.

    Returns
    -------
    ndarray (N, N) complex128
    """
    q = np.arange(n) - n // 2
    qy, qx = np.meshgrid(q, q, indexing="ij")
    radius = np.hypot(qy, qx)
    outer = n / 4.0
    # soft edges (one frequency pixel) avoid ringing from a hard binary pupil
    pupil = np.clip(outer + 0.5 - radius, 0, 1) * np.clip(radius - stop_fraction * outer + 0.5, 0, 1)
    # a ray through pupil frequency q lands alpha * q pixels from the centre
    alpha = diameter_px / (2.0 * outer)
    phase = np.pi * alpha * (radius**2) / n + 0.6 * np.pi * ((qy**2 - qx**2) / outer**2)
    field = pupil * np.exp(1j * phase)
    probe = sfft.fftshift(sfft.ifft2(sfft.ifftshift(field), norm="ortho"))
    probe *= np.sqrt(photons / np.sum(np.abs(probe) ** 2))
    return probe


def raster_positions_px(
    scan_shape: tuple[int, int], step_px: float, jitter_px: float, rng: np.random.Generator
) -> np.ndarray:
    """Raster positions (row by row, y slow, x fast), centred on 0, in object pixels.

    Returns
    -------
    ndarray (ny * nx, 2) float64
        (y, x) offsets from the scan centre, with Gaussian jitter of RMS ``jitter_px`` per axis.
    """
    ny, nx = scan_shape
    yy, xx = np.meshgrid(
        (np.arange(ny) - (ny - 1) / 2) * step_px, (np.arange(nx) - (nx - 1) / 2) * step_px, indexing="ij"
    )
    positions = np.stack([yy.ravel(), xx.ravel()], axis=1)
    if jitter_px > 0:
        positions = positions + rng.normal(0.0, jitter_px, positions.shape)
    return positions


def object_transmission(
    thickness_um: np.ndarray,
    delta: float,
    beta: float,
    wavelength_m: float,
    ice_thickness_um: float = 0.0,
    ice_delta: float = 0.0,
    ice_beta: float = 0.0,
) -> np.ndarray:
    """Projection-approximation transmission ``exp(-i k (delta - i beta) t)``.

    The cell matrix displaces the embedding ice (total layer ``ice_thickness_um``), so only the
    excess over ice shows when the cell is thinner than the ice.

    Returns
    -------
    ndarray complex128, same shape as ``thickness_um``
    """
    k = 2.0 * np.pi / wavelength_m
    t_m = thickness_um * 1e-6
    ice_m = np.clip(ice_thickness_um - thickness_um, 0.0, None) * 1e-6
    optical = (delta - 1j * beta) * t_m + (ice_delta - 1j * ice_beta) * ice_m
    return np.exp(-1j * k * optical)


def window_indices(positions_px: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer top-left corner and subpixel remainder of each probe window on the object grid.

    Parameters
    ----------
    positions_px : ndarray (P, 2)
        Fractional object index of each beam centre.
    n : int
        Window width.

    Returns
    -------
    corner : ndarray (P, 2) int64
        Top-left object index of each window: ``floor(position - n // 2)``.
    fraction : ndarray (P, 2) float64
        Remainder in [0, 1): the probe is shifted by it.
    """
    top_left = positions_px - n // 2
    corner = np.floor(top_left).astype(np.int64)
    return corner, top_left - corner


def shifted_probes(probe: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """The probe shifted by subpixel amounts (Fourier shift theorem), one copy per position.

    Parameters
    ----------
    probe : ndarray (N, N) complex
    fraction : ndarray (P, 2)
        Shift (y, x) in pixels; positive moves the probe towards higher indices.
    """
    n = probe.shape[-1]
    freq = sfft.fftfreq(n)
    spectrum = sfft.fft2(probe)
    ramp_y = np.exp(-2j * np.pi * fraction[:, 0, None] * freq[None, :])
    ramp_x = np.exp(-2j * np.pi * fraction[:, 1, None] * freq[None, :])
    return sfft.ifft2(spectrum[None] * ramp_y[:, :, None] * ramp_x[:, None, :])


def gather_windows(image: np.ndarray, corner: np.ndarray, n: int) -> np.ndarray:
    """Windows ``image[..., y:y+n, x:x+n]`` at each corner (P, 2): shape (..., P, n, n)."""
    offsets = np.arange(n)
    rows = corner[:, 0, None] + offsets[None, :]
    cols = corner[:, 1, None] + offsets[None, :]
    return image[..., rows[:, :, None], cols[:, None, :]]


def far_field_intensity(exit_waves: np.ndarray) -> np.ndarray:
    """``|fftshift(fft2(psi, norm="ortho"))|^2`` over the last two axes (photons per pixel)."""
    spectrum = sfft.fft2(exit_waves, norm="ortho", axes=(-2, -1))
    return np.abs(sfft.fftshift(spectrum, axes=(-2, -1))) ** 2
