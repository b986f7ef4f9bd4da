"""Optics of the simulated scan: focused probe, raster positions, object transmission, far field.

Pure numpy kernels following xmulti's conventions: the probe array's pixel (N//2, N//2) is the
beam centre; object pixel (i, j) is centred at ``origin + (i, j) * dx``; the far field is
``|fftshift(fft2(probe * object_window, norm="ortho"))|^2``.

Besides the pieces of the full scan simulator, :func:`make_problem` builds a small
ptychography-only problem on a dense phase object (:func:`blob_object`) for the engines' tests
and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    "blob_object",
    "SyntheticProblem",
    "make_problem",
]


def zone_plate_probe(
    n: int, diameter_px: float, photons: float, stop_fraction: float = 0.45, astigmatism: float = 0.6
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
    astigmatism : float
        Astigmatic phase at the pupil edge, in units of pi (0: a rotationally symmetric probe).

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
    phase = np.pi * alpha * (radius**2) / n + astigmatism * np.pi * ((qy**2 - qx**2) / outer**2)
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


def blob_object(shape: tuple[int, int], seed: int = 0, max_phase: float = 1.0) -> np.ndarray:
    """A dense phase object: overlapping Gaussian blobs and a few sharp discs.

    Unlike the cell phantom (sparse cells in vacuum), structure is everywhere, which suits
    tests of position correction and of engine convergence. Material gives negative phase,
    down to ``-max_phase`` (rad), and some absorption (amplitude ``exp(-0.1 * phase depth)``).

    Returns
    -------
    ndarray complex64
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape, dtype=np.float64)
    t = np.zeros(shape)
    for _ in range(int(shape[0] * shape[1] / 400)):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(1.5, 8.0)
        t += rng.uniform(0.2, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    for _ in range(int(shape[0] * shape[1] / 3000) + 1):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(3.0, 12.0)
        t += 0.6 * np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1)
    t *= max_phase / t.max()
    return (np.exp(-1j * t) * np.exp(-0.1 * t)).astype(np.complex64)


@dataclass
class SyntheticProblem:
    """A simulated ptychography-only data set and its truth.

    Attributes
    ----------
    frames : ndarray (M, N, N) float32
        Counts, zero frequency at the centre.
    positions_px : ndarray (M, 2)
        True beam centres, fractional object indices (y, x).
    obj : ndarray (H, W) complex64
        True object (:func:`blob_object`).
    probe : ndarray (N, N) complex64
        True probe, ``sum |P|^2`` = photons per frame.
    """

    frames: np.ndarray
    positions_px: np.ndarray
    obj: np.ndarray
    probe: np.ndarray


def make_problem(
    scan_shape: tuple[int, int] = (8, 8),
    n: int = 32,
    overlap: float = 0.7,
    diameter_px: float | None = None,
    photons: float = 1e6,
    jitter_px: float = 0.0,
    noise: bool = True,
    seed: int = 0,
) -> SyntheticProblem:
    """A ptychography problem: dense object just large enough for the scan, probe, frames.

    Parameters
    ----------
    scan_shape : (int, int)
        Raster size (ny, nx), y slow.
    n : int
        Frame/probe width (pixels).
    overlap : float
        Linear overlap ``1 - step / diameter``.
    diameter_px : float, optional
        Probe footprint (object pixels); default ``n / 2``. The probe is a zone-plate probe
        without astigmatism (:func:`zone_plate_probe`, central stop 0.4).
    photons : float
        Photons per frame.
    jitter_px : float
        RMS random deviation of the true positions from the raster (pixels).
    noise : bool
        Poisson noise on the frames.
    seed : int
    """
    d = diameter_px or n / 2
    step = (1.0 - overlap) * d
    margin = n // 2 + 4 + int(np.ceil(4 * jitter_px))
    # first raster point at (margin, margin); exact multiples of the step (no rounding drift)
    iy, ix = np.meshgrid(np.arange(scan_shape[0]), np.arange(scan_shape[1]), indexing="ij")
    pos = margin + step * np.stack([iy.ravel(), ix.ravel()], axis=1).astype(np.float64)
    if jitter_px:
        pos += np.random.default_rng(seed).normal(0.0, jitter_px, pos.shape)
    shape = tuple(
        int(np.ceil(margin + (s - 1) * step + n - n // 2 + 4 + 4 * jitter_px)) for s in scan_shape
    )
    obj = blob_object(shape, seed=seed)
    probe = zone_plate_probe(n, d, photons, stop_fraction=0.4, astigmatism=0.0).astype(np.complex64)
    corner, fraction = window_indices(pos, n)
    # remainders within rounding of 1 (e.g. 5 * 4.8 = 23.999...) belong to the next pixel
    near_one = fraction > 1.0 - 1e-6
    corner[near_one] += 1
    fraction[near_one] = 0.0
    # complex64 like the engines' model; the Fourier shift only where there is a remainder
    probes = shifted_probes(probe, fraction).astype(np.complex64) if fraction.any() else probe[None]
    frames = far_field_intensity(probes * gather_windows(obj, corner, n)).astype(np.float32)
    if noise:
        frames = np.random.default_rng(seed + 1).poisson(frames).astype(np.float32)
    return SyntheticProblem(frames, pos, obj, probe)
