"""Quality measures shared by tests and benchmarks: phase error, Fourier ring correlation.

Ptychography determines the object only up to a global phase offset and a linear phase ramp
(the object and probe can trade a ramp), so :func:`phase_error` removes both before comparing,
with a least-squares plane fit of the weighted phase difference (finite-difference ramp
estimators are biased by noise). See also van Heel & Schatz, J. Struct. Biol. 151, 250 (2005)
for the Fourier ring correlation and its threshold curves.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "align_phase",
    "phase_error",
    "illumination_weight",
    "region_phase_contrast",
    "fourier_ring_correlation",
    "frc_resolution",
]


def _check_pair(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    if a.shape != b.shape or a.ndim != 2:
        raise InvalidInputError(f"images must be 2-D and of equal shape, got {a.shape} and {b.shape}")
    w = np.ones(a.shape) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != a.shape:
        raise InvalidInputError(f"weight shape {w.shape} does not match the images {a.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise InvalidInputError("weight must be finite, non-negative and not all zero")
    return w


def align_phase(
    recon: np.ndarray, truth: np.ndarray, weight: np.ndarray | None = None, ramp: bool = True
) -> np.ndarray:
    """``recon`` with the global phase offset (and linear phase ramp) relative to ``truth`` removed.

    Parameters
    ----------
    recon, truth : ndarray (Ny, Nx) complex
        Complex transmissions on the same grid.
    weight : ndarray (Ny, Nx), optional
        Non-negative weights (e.g. the illumination); zero excludes a pixel.
    ramp : bool
        Also remove a least-squares linear phase ramp.

    Returns
    -------
    ndarray complex128
        ``recon * exp(-i (c + gy * y + gx * x))``.
    """
    recon = np.asarray(recon, dtype=np.complex128)
    truth = np.asarray(truth, dtype=np.complex128)
    w = _check_pair(recon, truth, weight)
    prod = recon * np.conj(truth)
    # offset first (robust to wrapping), then the ramp on the small residual phase, twice so
    # that a ramp spanning several radians is also unwrapped correctly
    yy, xx = np.indices(recon.shape, dtype=np.float64)
    total = np.zeros(recon.shape)
    for _ in range(3 if ramp else 1):
        resid = prod * np.exp(-1j * total)
        c = np.angle(np.sum(w * resid))
        total = total + c
        if ramp:
            d = np.angle(prod * np.exp(-1j * total))
            sw = np.sqrt(w).ravel()
            design = np.stack([np.ones(d.size), yy.ravel(), xx.ravel()], axis=1) * sw[:, None]
            coef, *_ = np.linalg.lstsq(design, d.ravel() * sw, rcond=None)
            total = total + coef[0] + coef[1] * yy + coef[2] * xx
    return recon * np.exp(-1j * total)


def phase_error(
    recon: np.ndarray, truth: np.ndarray, weight: np.ndarray | None = None, ramp: bool = True
) -> float:
    """Phase NRMSE after removing the global offset and a linear phase ramp.

    ``sqrt( sum w (phi_r - phi_t)^2 / sum w (phi_t - <phi_t>_w)^2 )`` where the phases are of
    the aligned reconstruction and of the truth, the difference is wrapped to (-pi, pi] and
    ``<.>_w`` is the weighted mean: the weighted RMS phase error over the weighted RMS
    variation of the true phase (0 is perfect, 1 is as bad as a flat image).

    Parameters
    ----------
    recon, truth : ndarray (Ny, Nx) complex
        Complex transmissions (or ``exp(1j*phase)``) on the same grid.
    weight : ndarray (Ny, Nx), optional
        E.g. :func:`illumination_weight`; restricts the measure to the well-illuminated region.
    ramp : bool
        Remove a linear phase ramp too (default) or only the offset.
    """
    w = _check_pair(np.asarray(recon), np.asarray(truth), weight)
    aligned = align_phase(recon, truth, w, ramp=ramp)
    diff = np.angle(aligned * np.conj(truth))
    phi_t = np.angle(truth)
    # unwrap-free truth variation about the weighted circular mean
    mean_t = np.angle(np.sum(w * np.exp(1j * phi_t)))
    var_t = np.angle(np.exp(1j * (phi_t - mean_t)))
    den = np.sum(w * var_t**2)
    if den <= 0:
        raise InvalidInputError("the true phase is flat on the weighted region: NRMSE undefined")
    return float(np.sqrt(np.sum(w * diff**2) / den))


def region_phase_contrast(
    recon: np.ndarray, truth: np.ndarray, labels: np.ndarray, weight: np.ndarray | None = None,
    min_pixels: int = 50,
) -> dict[int, float]:
    """Mean phase of each labelled region relative to the background, reconstruction over truth.

    A direct measure of the low-spatial-frequency fidelity that matters for phase-derived mass:
    for region ``k`` (e.g. a cell), ``(<phi_r>_k - <phi_r>_0) / (<phi_t>_k - <phi_t>_0)``, where
    ``<.>_k`` is the mean over the region's pixels with nonzero weight, ``<.>_0`` over the
    label-0 (background) pixels, and ``phi_r`` the phase of the reconstruction aligned on the
    truth (offset and linear ramp removed, :func:`align_phase`). 1 is a perfect region contrast;
    0.9 means the region came out 10 % too shallow.

    Parameters
    ----------
    recon, truth : ndarray (Ny, Nx) complex
        Complex transmissions on the same grid.
    labels : ndarray (Ny, Nx) int
        0 for background, k > 0 for region k (e.g. the simulator's ``cell_labels``).
    weight : ndarray (Ny, Nx), optional
        Where the reconstruction is trusted (e.g. :func:`illumination_weight`).
    min_pixels : int
        Regions with fewer weighted pixels are left out.

    Returns
    -------
    dict
        Region label -> contrast ratio.
    """
    w = _check_pair(np.asarray(recon), np.asarray(truth), weight)
    labels = np.asarray(labels)
    if labels.shape != w.shape:
        raise InvalidInputError(f"labels shape {labels.shape} does not match the images {w.shape}")
    aligned = align_phase(recon, truth, w)
    # phases about the truth's weighted mean: no wrapping for objects of < pi phase range
    ref = np.exp(-1j * np.angle(np.sum(w * truth)))
    phi_r = np.angle(aligned * ref)
    phi_t = np.angle(np.asarray(truth) * ref)
    inside = w > 0
    background = inside & (labels == 0)
    if background.sum() < min_pixels:
        raise InvalidInputError("too few weighted background (label 0) pixels for a contrast")
    out = {}
    for k in np.unique(labels[inside & (labels > 0)]):
        sel = inside & (labels == k)
        if sel.sum() < min_pixels:
            continue
        true_c = phi_t[sel].mean() - phi_t[background].mean()
        if abs(true_c) > 1e-12:
            out[int(k)] = float((phi_r[sel].mean() - phi_r[background].mean()) / true_c)
    return out


def illumination_weight(illumination: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Binary weight of the well-illuminated region: illumination above ``threshold`` x max."""
    illum = np.asarray(illumination, dtype=np.float64)
    return (illum >= threshold * illum.max()).astype(np.float64)


def fourier_ring_correlation(
    image_a: np.ndarray, image_b: np.ndarray, n_bins: int | None = None, taper: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two images of the same region.

    ``FRC(q) = Re sum_ring A conj(B) / sqrt(sum_ring |A|^2 sum_ring |B|^2)``.

    Parameters
    ----------
    image_a, image_b : ndarray (Ny, Nx), real or complex
        E.g. two reconstructions from half of the data each, registered on the same grid
        (remove phase offset/ramp between them first, e.g. with :func:`align_phase`).
    n_bins : int, optional
        Rings between 0 and the Nyquist frequency; default ``min(Ny, Nx) // 2``.
    taper : bool
        Multiply by a Hann window first (suppresses edge artefacts).

    Returns
    -------
    frequency : ndarray (n_bins,)
        Ring centres in cycles per pixel (0 to 0.5).
    frc : ndarray (n_bins,)
    """
    a = np.asarray(image_a)
    b = np.asarray(image_b)
    _check_pair(a, b, None)
    a = a - a.mean()
    b = b - b.mean()
    if taper:
        win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
        a = a * win
        b = b * win
    fa = np.fft.fft2(a)
    fb = np.fft.fft2(b)
    qy = np.fft.fftfreq(a.shape[0])[:, None]
    qx = np.fft.fftfreq(a.shape[1])[None, :]
    q = np.hypot(qy, qx)
    n_bins = n_bins or min(a.shape) // 2
    edges = np.linspace(0.0, 0.5, n_bins + 1)
    ring = np.digitize(q.ravel(), edges) - 1
    keep = (ring >= 0) & (ring < n_bins)
    ring = ring[keep]
    cross = np.bincount(ring, (fa * np.conj(fb)).real.ravel()[keep], n_bins)
    pa = np.bincount(ring, (np.abs(fa) ** 2).ravel()[keep], n_bins)
    pb = np.bincount(ring, (np.abs(fb) ** 2).ravel()[keep], n_bins)
    frc = cross / np.sqrt(np.maximum(pa * pb, 1e-300))
    return 0.5 * (edges[:-1] + edges[1:]), frc


def frc_resolution(frequency: np.ndarray, frc: np.ndarray, threshold: float = 1 / 7) -> float:
    """First frequency (cycles/pixel) where the FRC drops below ``threshold``; 0.5 if never.

    The half-period resolution is ``0.5 / frequency`` pixels.
    """
    below = np.flatnonzero(np.asarray(frc)[1:] < threshold)
    return float(frequency[below[0] + 1]) if below.size else 0.5
