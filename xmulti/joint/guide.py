"""What the phase tells resolution bridging about where an element map may change (pure kernels).

- :func:`phase_guide`: unit-bounded edge directions of the phase for the directional quadratic
  smoothness of :func:`xmulti.joint.deconvolve.guided_solve` (the quadratic form of directional
  total variation, Ehrhardt & Betcke, SIAM J. Imaging Sci. 9, 1084 (2016));
- :func:`structure_features`: the maps an element's distribution may follow, for the
  structure model of :mod:`xmulti.joint.structure`: the projected matter (minus the levelled
  phase: matter gives negative phase in xmulti's convention, and the phase is proportional to
  the areal mass of a known matrix) and the strength of its edges (membranes and compartment
  boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Guide", "phase_guide", "structure_features"]


@dataclass(frozen=True)
class Guide:
    """Unit-bounded edge directions ``xi`` (y, x components) of the phase, and the edge scale."""

    xi_y: np.ndarray
    xi_x: np.ndarray
    eta: float


def _grad(u, xp=np):
    """Forward differences (Neumann: zero on the last row / column)."""
    gy = xp.zeros_like(u)
    gx = xp.zeros_like(u)
    gy[:-1] = u[1:] - u[:-1]
    gx[:, :-1] = u[:, 1:] - u[:, :-1]
    return gy, gx


def _grad_adjoint(py, px, xp=np):
    """Adjoint of :func:`_grad` (minus the divergence)."""
    out = xp.zeros_like(py)
    out[:-1] -= py[:-1]
    out[1:] += py[:-1]
    out[:, :-1] -= px[:, :-1]
    out[:, 1:] += px[:, :-1]
    return out


def phase_guide(phase, smooth_px: float = 1.0, eta_factor: float = 3.0) -> Guide:
    """Edge directions of the phase for the directional regulariser.

    The phase is smoothed by a Gaussian of ``smooth_px`` pixels (reconstruction noise makes
    false edges); ``eta = eta_factor * 1.4826 * median|d phi|`` over both difference
    components, a robust scale of the phase's small variations (noise, fine texture), so
    only gradients well above it count as edges. Offsets and ramps of a reconstructed phase
    do not matter (a ramp adds a constant gradient, small against cell edges).

    Parameters
    ----------
    phase : ndarray (ny, nx)
        Phase (rad) on the object grid; NaN allowed (treated as flat).
    """
    from scipy import ndimage

    phi = np.asarray(phase, dtype=float)
    phi = np.where(np.isfinite(phi), phi, np.nanmedian(phi))
    if smooth_px > 0:
        phi = ndimage.gaussian_filter(phi, smooth_px, mode="nearest")
    gy, gx = _grad(phi)
    scale = 1.4826 * np.median(np.abs(np.concatenate([gy[:-1].ravel(), gx[:, :-1].ravel()])))
    eta = float(eta_factor * scale) if scale > 0 else 1e-12
    norm = np.sqrt(gy**2 + gx**2 + eta**2)
    return Guide(gy / norm, gx / norm, eta)


def regulariser(c, guide: Guide | None, gamma: float, xp=np):
    """Value and gradient of ``1/2 sum |grad c|^2 - gamma (xi . grad c)^2``."""
    gy, gx = _grad(c, xp)
    if guide is None:
        return 0.5 * float(xp.sum(gy * gy + gx * gx)), _grad_adjoint(gy, gx, xp)
    s = guide.xi_y * gy + guide.xi_x * gx
    value = 0.5 * float(xp.sum(gy * gy + gx * gx - gamma * s * s))
    return value, _grad_adjoint(gy - gamma * guide.xi_y * s, gx - gamma * guide.xi_x * s, xp)


def structure_features(flat_phase: np.ndarray, edge_smooth_px: float = 1.0) -> dict[str, np.ndarray]:
    """Matter and edge maps of a levelled phase, each scaled to a maximum of 1.

    Parameters
    ----------
    flat_phase : ndarray (ny, nx)
        Phase (rad) with its background levelled to 0 (:func:`xmulti.inputs.flatten_phase`);
        NaN where unknown (taken as empty).
    edge_smooth_px : float
        Gaussian smoothing (pixels) of the matter map before its gradient: reconstruction noise
        makes false edges.

    Returns
    -------
    dict
        ``"matter"``: ``max(-phase, 0)`` (proportional to the projected mass of a known
        matrix); ``"edge"``: the gradient magnitude of the smoothed matter map (cell membranes,
        compartment boundaries); ``"uniform"``: ones (what follows no structure).
    """
    from scipy import ndimage

    phi = np.asarray(flat_phase, dtype=float)
    matter = np.clip(-np.where(np.isfinite(phi), phi, 0.0), 0.0, None)
    edge = np.hypot(*np.gradient(ndimage.gaussian_filter(matter, edge_smooth_px, mode="nearest")))
    out = {}
    for name, image in (("matter", matter), ("edge", edge)):
        peak = float(image.max())
        out[name] = image / peak if peak > 0 else image
    out["uniform"] = np.ones_like(matter)
    return out
