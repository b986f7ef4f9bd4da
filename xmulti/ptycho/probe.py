"""Probe handling: initial guess, power, mixed-state modes and their orthogonalisation.

Mixed states follow Thibault & Menzel, Nature 494, 68 (2013): the measured intensity is the
incoherent sum over orthogonal probe modes. Orthogonalisation diagonalises the modes' Gram
matrix (equivalently an SVD of the stacked modes) and orders modes by decreasing power.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .fft import get_xp

__all__ = [
    "fourier_support",
    "probe_from_data",
    "pupil_from_data",
    "fit_probe_to_frame",
    "scale_probe_power",
    "add_modes",
    "orthogonalize_modes",
]


def probe_from_data(mean_pattern: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """A rough probe from the mean diffraction pattern: the aperture it implies, flat phase.

    The direct beam dominates the mean pattern of a weakly scattering sample, so the pixels above
    ``threshold`` times the maximum approximate the illuminated pupil (e.g. a zone plate with its
    central stop). Its square root with zero phase, inverse-transformed, is a focused probe with
    the right bandwidth; defocus and aberrations are then refined by the engine.

    Parameters
    ----------
    mean_pattern : ndarray (N, N)
        Mean diffraction intensity, zero frequency at the frame centre; invalid pixels as 0.
    threshold : float
        Fraction of the maximum above which a pixel belongs to the aperture.

    Returns
    -------
    ndarray (N, N) complex64
        Probe with its centre at pixel (N//2, N//2) (power not yet scaled).
    """
    pupil = pupil_from_data(mean_pattern, threshold)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil), norm="ortho"))
    return probe.astype(np.complex64)


def pupil_from_data(mean_pattern: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Pupil modulus implied by the mean pattern: ``sqrt`` of the pixels above ``threshold`` x max.

    Zero frequency at the frame centre, like the patterns; zero outside the aperture.
    """
    m = np.clip(np.asarray(mean_pattern, dtype=np.float64), 0, None)
    if not np.any(m > 0):
        raise InvalidInputError("cannot guess a probe: the mean diffraction pattern is all zero")
    return np.where(m >= threshold * m.max(), np.sqrt(m), 0.0)


def fourier_support(mean_pattern: np.ndarray, threshold: float = 0.05, grow_px: int = 2) -> np.ndarray:
    """Aperture constraint for the probe: where its spectrum may be nonzero.

    The pixels of the mean pattern above ``threshold`` times its maximum, grown by ``grow_px``
    pixels (room for the edge of the pupil and for refinement), returned in the unshifted FFT
    layout the engines use. Valid when the probe is formed by an aperture upstream of the focus
    (zone plate, KB mirrors): its far field is then confined to the aperture's image.

    Parameters
    ----------
    mean_pattern : ndarray (N, N)
        Mean diffraction intensity, zero frequency at the frame centre.

    Returns
    -------
    ndarray (N, N) bool
    """
    from scipy.ndimage import binary_dilation

    m = np.asarray(mean_pattern, dtype=np.float64)
    inside = m >= threshold * m.max()
    if grow_px > 0:
        inside = binary_dilation(inside, iterations=grow_px)
    return np.fft.ifftshift(inside)


def fit_probe_to_frame(probe: np.ndarray, n: int) -> np.ndarray:
    """A given probe (N', N') or (K, N', N') placed on the N x N frame grid, centre kept.

    Smaller probes are zero-padded symmetrically around pixel N//2.

    Raises
    ------
    InvalidInputError
        The probe is larger than the frame, not square, or not finite.
    """
    p = np.asarray(probe)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[1] != p.shape[2]:
        raise InvalidInputError(f"probe must be (N, N) or (modes, N, N), got shape {np.shape(probe)}")
    if not np.isfinite(p).all():
        raise InvalidInputError("probe contains NaN or inf values")
    m = p.shape[-1]
    if m > n:
        raise InvalidInputError(f"probe ({m}x{m}) is larger than the diffraction frames ({n}x{n})")
    out = np.zeros((p.shape[0], n, n), np.complex64)
    lo = n // 2 - m // 2
    out[:, lo : lo + m, lo : lo + m] = p
    return out


def scale_probe_power(probe: Any, photons: float) -> Any:
    """Probe (modes) scaled so ``sum |P|^2 = photons`` (all modes together), a copy.

    With the orthonormal FFT, a frame's total counts equal ``sum |P O|^2``; for a nearly
    transparent sample that is ``sum |P|^2``, so the mean measured counts per frame fix the
    probe power and the object amplitude stays near 1.
    """
    xp = get_xp(probe)
    power = float(xp.sum(xp.abs(probe) ** 2))
    if power <= 0:
        raise InvalidInputError("probe is all zero")
    return (probe * np.float32(np.sqrt(photons / power))).astype(xp.complex64)


def add_modes(probe: np.ndarray, n_modes: int, fraction: float = 0.05, seed: int = 0) -> np.ndarray:
    """Extend a probe to ``n_modes`` incoherent modes.

    Extra modes start as the main mode times low-order phase-free polynomials (x, y, xy, ...)
    carrying ``fraction`` of the power each, then everything is orthogonalised. The total
    power is kept.

    Parameters
    ----------
    probe : ndarray (N, N) or (K0, N, N)
    n_modes : int
        Number of modes wanted (>= 1).
    """
    if n_modes < 1:
        raise InvalidInputError(f"probe_modes must be >= 1, got {n_modes}")
    p = np.asarray(probe, dtype=np.complex64)
    if p.ndim == 2:
        p = p[None]
    if p.shape[0] >= n_modes:
        return orthogonalize_modes(p[:n_modes])
    n = p.shape[-1]
    total = float(np.sum(np.abs(p) ** 2))
    c = (np.arange(n) - n // 2) / (n / 4)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    rng = np.random.default_rng(seed)
    shapes = [xx, yy, xx * yy, xx**2 - yy**2, 2 * xx * yy]
    modes = [m for m in p]
    main = p[0]
    for i in range(n_modes - p.shape[0]):
        if i < len(shapes):
            m = main * shapes[i]
        else:
            m = main * rng.standard_normal((n, n))
        m = m * np.sqrt(fraction * total / max(float(np.sum(np.abs(m) ** 2)), 1e-30))
        modes.append(m.astype(np.complex64))
    out = np.stack(modes)
    out *= np.sqrt(total / float(np.sum(np.abs(out) ** 2)))
    return orthogonalize_modes(out)


def orthogonalize_modes(probe: Any, return_transform: bool = False) -> Any:
    """Orthogonal probe modes spanning the same incoherent sum, ordered by decreasing power.

    The Gram matrix ``G = A A^H`` of the stacked modes (K, N*N) is diagonalised,
    ``G = V diag(w) V^H``; the new modes ``V^H A`` are orthogonal with powers ``w`` and give the
    same ``sum_k |P_k|^2`` at every pixel (a unitary mix of incoherent modes). With
    ``return_transform`` the unitary ``U`` (K, K) with ``new = U @ old`` is returned too (to
    carry e.g. a momentum term into the new basis).
    """
    xp = get_xp(probe)
    k = probe.shape[0]
    if k == 1:
        return (probe, xp.ones((1, 1), xp.complex64)) if return_transform else probe
    a = probe.reshape(k, -1)
    gram = a @ a.conj().T
    w, v = xp.linalg.eigh(gram.astype(xp.complex128))
    order = xp.argsort(w)[::-1]
    u = v[:, order].conj().T.astype(xp.complex64)
    out = (u @ a).reshape(probe.shape)
    return (out, u) if return_transform else out
