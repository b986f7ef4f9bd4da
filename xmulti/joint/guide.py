"""What the phase tells resolution bridging about where an element map may change (pure kernels).

- :func:`phase_guide`: unit-bounded edge directions of the phase for the directional quadratic
  smoothness of :func:`xmulti.joint.deconvolve.guided_solve` (the quadratic form of directional
  total variation, Ehrhardt & Betcke, SIAM J. Imaging Sci. 9, 1084 (2016));
- :func:`structure_features`: the maps an element's distribution may follow, for the
  structure model of :mod:`xmulti.joint.structure`: the projected matter (minus the levelled
  phase: matter gives negative phase in xmulti's convention, and the phase is proportional to
  the areal mass of a known matrix), the strength of its edges (membranes and compartment
  boundaries) and, optionally, its compartments: the white top-hat of the smoothed matter
  (:func:`compartment_feature`), regions denser than their surroundings such as nuclei.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Guide", "phase_guide", "structure_features", "compartment_feature"]


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


def compartment_feature(matter: np.ndarray, radius_px: float, smooth_px: float = 3.0) -> np.ndarray:
    """Compartments of a matter map: its white top-hat after smoothing, scaled to a maximum of 1.

    ``u - opening(u, D_r)`` with ``u`` the matter smoothed by a Gaussian of ``smooth_px``
    pixels (the fine texture of the matter is removed, steps a few pixels wide are kept) and
    ``D_r`` a disk of radius ``radius_px`` (the grey opening removes bright structures narrower
    than the disk: J. Serra, *Image Analysis and Mathematical Morphology* (Academic Press,
    1982); F. Meyer, "Iterative image transformations for an automatic screening of cervical
    smears", J. Histochem. Cytochem. 27, 128 (1979), the top-hat). What remains are regions
    denser than their surroundings and narrower than ``2 radius_px`` (nuclei, vacuoles of dense
    content) with their edge profile as the phase shows it, on zero elsewhere: a feature whose
    coefficient lets an element's map step at a compartment boundary that the matter shows only
    as a small thickness step.

    Parameters
    ----------
    matter : ndarray (ny, nx)
        Matter map (``max(-phase, 0)`` of the levelled phase, any scale), finite.
    radius_px : float
        Disk radius (object pixels).
    smooth_px : float
        Gaussian smoothing (object pixels) before the opening.
    """
    from scipy import ndimage

    u = np.asarray(matter, dtype=float)
    if smooth_px > 0:
        u = ndimage.gaussian_filter(u, smooth_px, mode="nearest")
    r = int(np.floor(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    hat = np.clip(u - ndimage.grey_opening(u, footprint=(yy**2 + xx**2) <= radius_px**2, mode="nearest"), 0.0, None)
    peak = float(hat.max())
    return hat / peak if peak > 0 else hat


def structure_features(flat_phase: np.ndarray, edge_smooth_px: float = 1.0,
                       compartment_radius_px: float | None = None,
                       compartment_smooth_px: float = 3.0) -> dict[str, np.ndarray]:
    """Matter, edge (and compartment) maps of a levelled phase, each scaled to a maximum of 1.

    Parameters
    ----------
    flat_phase : ndarray (ny, nx)
        Phase (rad) with its background levelled to 0 (:func:`xmulti.inputs.flatten_phase`);
        NaN where unknown (taken as empty).
    edge_smooth_px : float
        Gaussian smoothing (pixels) of the matter map before its gradient: reconstruction noise
        makes false edges.
    compartment_radius_px : float, optional
        With it, also ``"compartment"``: :func:`compartment_feature` of the matter map with this
        disk radius (pixels).
    compartment_smooth_px : float
        Gaussian smoothing (pixels) of the matter before its top-hat.

    Returns
    -------
    dict
        ``"matter"``: ``max(-phase, 0)`` (proportional to the projected mass of a known
        matrix); ``"edge"``: the gradient magnitude of the smoothed matter map (cell membranes,
        compartment boundaries); ``"uniform"``: ones (what follows no structure); with
        ``compartment_radius_px``, ``"compartment"`` (dense compartments narrower than twice the
        radius).
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
    if compartment_radius_px is not None:
        out["compartment"] = compartment_feature(matter, compartment_radius_px, compartment_smooth_px)
    return out
