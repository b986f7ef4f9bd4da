"""Ptychographic forward model and object-grid geometry (pure array kernels).

Conventions (xmulti-wide):

- object pixel ``(i, j)`` has its centre at ``(origin_y + i*dx, origin_x + j*dx)`` (um, stage
  frame); the probe array's pixel ``(N//2, N//2)`` is the beam centre;
- a beam position ``p`` (um) has fractional object index ``f = (p - origin) / dx``; the window's
  top-left is ``f - N//2``: its integer part (floor) selects ``object[iy:iy+N, ix:ix+N]`` and the
  remainder shifts the probe by ``+frac`` (subpixel Fourier shift, skipped when zero);
- far field ``I = |fftshift(fft2(probe * window, norm="ortho"))|^2`` summed over probe modes
  (incoherent mixed states, Thibault & Menzel, Nature 494, 68 (2013)).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .fft import FFT2
from .shift import is_integral, shifted_probes

__all__ = [
    "object_grid",
    "window_corners",
    "check_windows",
    "extract_patches",
    "accumulate_patches",
    "far_field",
]


def object_grid(
    positions_um: np.ndarray, dx_um: float, n: int, margin_px: int = 2
) -> tuple[np.ndarray, tuple[int, int]]:
    """An object grid that holds every probe window.

    Parameters
    ----------
    positions_um : ndarray (M, 2)
        Beam-centre positions (y, x), um.
    dx_um : float
        Object pixel size, um.
    n : int
        Frame (probe) width, pixels.
    margin_px : int
        Extra pixels on every side, room for position corrections.

    Returns
    -------
    origin_um : ndarray (2,)
        Centre of object pixel (0, 0), um.
    shape : (int, int)
        Object array shape.
    """
    p = np.asarray(positions_um, dtype=np.float64)
    lo = p.min(axis=0)
    hi = p.max(axis=0)
    origin = lo - (n // 2 + margin_px) * dx_um
    extent = np.ceil((hi - lo) / dx_um - 1e-9).astype(int)
    shape = tuple(int(e) + n + 2 * margin_px + 1 for e in extent)
    return origin, shape  # type: ignore[return-value]


def window_corners(positions_px: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer top-left corners (M, 2) and subpixel remainders in [0, 1) of the windows.

    ``positions_px`` are fractional object indices of the beam centres.
    """
    top_left = np.asarray(positions_px, dtype=np.float64) - n // 2
    corner = np.floor(top_left)
    frac = top_left - corner
    # remainders within rounding of 1 belong to the next pixel
    near_one = frac > 1.0 - 1e-6
    corner[near_one] += 1.0
    frac[near_one] = 0.0
    return corner.astype(np.int64), frac


def check_windows(corners: np.ndarray, frac: np.ndarray, n: int, shape: tuple[int, int]) -> None:
    """Raise :class:`InvalidInputError` when a probe window leaves the object array."""
    bad = (corners < 0).any(axis=1) | (corners[:, 0] + n > shape[0]) | (corners[:, 1] + n > shape[1])
    if np.any(bad):
        first = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(
            f"{int(bad.sum())} probe window(s) leave the object grid {shape} (first: position "
            f"index {first}, top-left corner {tuple(int(c) for c in corners[first])}, window {n})"
        )


def extract_patches(obj: Any, corners: np.ndarray, n: int, xp: ModuleType = np) -> Any:
    """Copies of ``obj[y:y+n, x:x+n]`` for each corner: (B, n, n), one gather call."""
    if xp is np:
        view = np.lib.stride_tricks.sliding_window_view(obj, (n, n))
        return view[corners[:, 0], corners[:, 1]]
    off = xp.arange(n)  # pragma: no cover - cupy path
    rows = xp.asarray(corners[:, 0])[:, None, None] + off[None, :, None]  # pragma: no cover
    cols = xp.asarray(corners[:, 1])[:, None, None] + off[None, None, :]  # pragma: no cover
    return obj[rows, cols]  # pragma: no cover


def accumulate_patches(target: Any, patches: Any, corners: np.ndarray) -> None:
    """``target[y:y+n, x:x+n] += patches[b]`` for every corner, overlaps summed (in place)."""
    n = patches.shape[-1]
    for b, (y, x) in enumerate(corners.tolist()):
        target[y : y + n, x : x + n] += patches[b]


def far_field(
    probe: np.ndarray,
    obj: np.ndarray,
    positions_px: np.ndarray,
    fft: FFT2 | None = None,
) -> np.ndarray:
    """Noise-free diffraction intensities, zero frequency at the frame centre.

    Parameters
    ----------
    probe : ndarray (N, N) or (K, N, N) complex
        Probe (modes) on the object grid; ``sum |P|^2`` is the incident photons per frame.
    obj : ndarray (Hy, Hx) complex
        Object transmission.
    positions_px : ndarray (M, 2)
        Beam centres as fractional object indices (y, x).
    fft : FFT2, optional

    Returns
    -------
    ndarray (M, N, N) float32
        ``sum_k |fftshift(fft2(P_k * window, norm="ortho"))|^2``.
    """
    fft = fft or FFT2()
    probe = np.asarray(probe, dtype=np.complex64)
    if probe.ndim == 2:
        probe = probe[None]
    n = probe.shape[-1]
    corners, frac = window_corners(positions_px, n)
    check_windows(corners, frac, n, obj.shape)
    obj = np.asarray(obj, dtype=np.complex64)
    out = np.empty((len(corners), n, n), np.float32)
    spec = fft.forward(probe.copy())
    for start in range(0, len(corners), 64):
        sl = slice(start, start + 64)
        patches = extract_patches(obj, corners[sl], n)
        if is_integral(frac[sl]):
            psi = probe[None] * patches[:, None]
        else:
            psi = shifted_probes(spec, frac[sl], fft) * patches[:, None]
        psi = fft.forward(psi)
        out[sl] = np.fft.fftshift((psi.real**2 + psi.imag**2).sum(axis=1), axes=(-2, -1))
    return out
