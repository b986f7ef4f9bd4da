"""Small synthetic ptychography problems with ground truth, for tests and benchmarks.

Kernel-level (numpy only, no files): a phase/absorption object made of smooth blobs, a defocused
zone-plate-like probe (annular pupil, defocus), raster positions with optional jitter, and
Poisson-noisy far-field frames, all in xmulti's conventions (see :mod:`xmulti.ptycho.forward`).
The full scan simulator with XRF is :mod:`xmulti.simulate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .forward import far_field

__all__ = ["SyntheticProblem", "blob_object", "defocused_probe", "raster_positions", "make_problem"]


@dataclass
class SyntheticProblem:
    """A simulated ptychography data set and its truth.

    Attributes
    ----------
    frames : ndarray (M, N, N) float32
        Counts, zero frequency at the centre.
    positions_px : ndarray (M, 2)
        True beam centres, fractional object indices.
    obj : ndarray (H, W) complex64
        True object.
    probe : ndarray (N, N) complex64
        True probe (``sum |P|^2`` = photons per frame).
    """

    frames: np.ndarray
    positions_px: np.ndarray
    obj: np.ndarray
    probe: np.ndarray


def blob_object(shape: tuple[int, int], seed: int = 0, max_phase: float = 1.0) -> np.ndarray:
    """Object of overlapping Gaussian blobs and a few sharp discs: phase down to ``-max_phase``.

    Material gives negative phase and some absorption (amplitude ``exp(-0.1 * phase_depth)``).
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


def defocused_probe(n: int, diameter_px: float, photons: float) -> np.ndarray:
    """Probe of an annular pupil (outer radius N/4 frequency pixels) with defocus.

    The defocus spreads the focus to a footprint of about ``diameter_px`` object pixels.
    """
    q = np.arange(n) - n // 2
    qy, qx = np.meshgrid(q, q, indexing="ij")
    radius = np.hypot(qy, qx)
    outer = n / 4.0
    pupil = np.clip(outer + 0.5 - radius, 0, 1) * np.clip(radius - 0.4 * outer + 0.5, 0, 1)
    alpha = diameter_px / (2.0 * outer)
    field = pupil * np.exp(1j * np.pi * alpha * radius**2 / n)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(field)))
    probe *= np.sqrt(photons / np.sum(np.abs(probe) ** 2))
    return probe.astype(np.complex64)


def raster_positions(
    scan_shape: tuple[int, int], step_px: float, offset_px: float, jitter_px: float = 0.0, seed: int = 0
) -> np.ndarray:
    """Raster beam centres (row by row, y slow): ``offset + i * step`` (+ Gaussian jitter)."""
    rng = np.random.default_rng(seed)
    iy, ix = np.meshgrid(np.arange(scan_shape[0]), np.arange(scan_shape[1]), indexing="ij")
    pos = offset_px + step_px * np.stack([iy.ravel(), ix.ravel()], axis=1).astype(np.float64)
    if jitter_px:
        pos += rng.normal(0.0, jitter_px, pos.shape)
    return pos


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
    """A complete problem: object just large enough for the scan, probe, noisy frames.

    Parameters
    ----------
    scan_shape : (int, int)
        Raster size (ny, nx).
    n : int
        Frame/probe width.
    overlap : float
        Linear overlap ``1 - step / diameter``.
    diameter_px : float, optional
        Probe footprint; default ``n / 2``.
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
    pos = raster_positions(scan_shape, step, margin, jitter_px, seed)
    shape = tuple(int(np.ceil(margin + (s - 1) * step + n - n // 2 + 4 + 4 * jitter_px)) for s in scan_shape)
    obj = blob_object(shape, seed=seed)
    probe = defocused_probe(n, d, photons)
    frames = far_field(probe, obj, pos)
    if noise:
        frames = np.random.default_rng(seed + 1).poisson(frames).astype(np.float32)
    return SyntheticProblem(frames, pos, obj, probe)
