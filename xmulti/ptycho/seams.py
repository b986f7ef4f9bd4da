"""Seam measure of a stitched tile reconstruction: phase-gradient energy along tile boundaries.

A stitching error (a residual phase offset, ramp or amplitude step between neighbouring tiles,
or a tile that drifted where it was poorly constrained) shows as extra phase gradient where the
tiles' cores meet. :func:`seam_ratio` compares the mean squared phase gradient in bands along the
core boundaries with the same quantity inside the cores, on the well-illuminated region. Real
features cross the boundaries too, so the ratio of a seamless image is not exactly 1: compare it
with the ratio of a reference on the same grid (the single-tile reconstruction of the same data,
or the truth), which the ``reference`` argument does. Pure numpy (and scipy.ndimage).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InvalidInputError
from .tiles import Tile, core_distance_px

__all__ = ["core_labels", "boundary_band", "phase_gradient_energy", "seam_ratio"]


def core_labels(tiles: list[Tile], shape: tuple[int, int]) -> np.ndarray:
    """Index of the tile whose core holds each pixel of the global object grid, (Hy, Hx) int.

    Pixels in no core (possible between k-means cores only through rounding) go to the tile of
    the nearest core.
    """
    if not tiles:
        raise InvalidInputError("no tiles given")
    coords = np.stack(np.indices(shape), axis=-1).astype(np.float64)
    distance = np.stack([core_distance_px(t, coords) for t in tiles])
    return np.argmin(distance, axis=0)


def boundary_band(labels: np.ndarray, band_px: float) -> np.ndarray:
    """Pixels within ``band_px`` (object pixels) of a boundary between two cores, (Hy, Hx) bool."""
    edge = np.zeros(labels.shape, bool)
    # a pixel is on the boundary when a 4-neighbour belongs to another core
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    if not edge.any():
        return edge
    return ndimage.distance_transform_edt(~edge) <= band_px


def phase_gradient_energy(obj: np.ndarray) -> np.ndarray:
    """Squared phase gradient ``|grad arg O|^2`` (rad^2 per object pixel^2), (Hy, Hx).

    Wrap-free: the phase steps between neighbours are ``arg(O[i+1] conj(O[i]))``; each pixel gets
    the mean of its forward and backward steps along y and x (one-sided at the edges).
    """
    o = np.asarray(obj, dtype=np.complex128)
    if o.ndim != 2 or min(o.shape) < 2:
        raise InvalidInputError(f"object must be a 2-D image of at least 2x2 pixels, got shape {o.shape}")
    out = np.zeros(o.shape)
    for axis in (0, 1):
        step = np.angle(np.moveaxis(o, axis, 0)[1:] * np.conj(np.moveaxis(o, axis, 0)[:-1]))
        grad = np.zeros(np.moveaxis(o, axis, 0).shape)
        grad[1:] += step
        grad[:-1] += step
        grad[1:-1] /= 2.0
        out += np.moveaxis(grad, 0, axis) ** 2
    return out


def seam_ratio(
    obj: np.ndarray,
    tiles: list[Tile],
    weight: np.ndarray,
    band_px: float = 3.0,
    reference: np.ndarray | None = None,
) -> float:
    """Phase-gradient energy along the tiles' core boundaries over that inside the cores.

    Parameters
    ----------
    obj : complex ndarray (Hy, Hx)
        Stitched object on the global object grid the tiles index.
    tiles : list of Tile
        The tiling (:func:`xmulti.ptycho.tiles.split_tiles`).
    weight : ndarray (Hy, Hx)
        Region to measure on: pixels with ``weight > 0`` (e.g. the well-illuminated region).
    band_px : float
        Half-width of the boundary bands, object pixels. Bands as wide as the halo also catch a
        mismatch that the blend spread over the overlap.
    reference : complex ndarray (Hy, Hx), optional
        Seamless image of the same object on the same grid (single-tile reconstruction or truth):
        the result is then divided by the reference's own ratio, so that the gradients of real
        features crossing the boundaries cancel. 1 means no seam.

    Returns
    -------
    float
        ``mean_band |grad phi|^2 / mean_interior |grad phi|^2`` (over the reference's, if given).

    Raises
    ------
    InvalidInputError
        Shapes differ, or the region has no boundary band or no interior pixel (e.g. one tile).
    """
    obj = np.asarray(obj)
    region = np.asarray(weight) > 0
    if obj.shape != region.shape or (reference is not None and np.shape(reference) != obj.shape):
        raise InvalidInputError(
            f"object {obj.shape}, weight {region.shape} and reference "
            f"{None if reference is None else np.shape(reference)} must have the same shape"
        )
    band = boundary_band(core_labels(tiles, obj.shape), band_px)
    on_band, inside = band & region, ~band & region
    if not on_band.any() or not inside.any():
        raise InvalidInputError(
            f"no core boundary inside the region ({int(on_band.sum())} band and {int(inside.sum())} interior "
            f"pixels): seams need at least two tiles meeting on the illuminated area"
        )

    def ratio(image: np.ndarray) -> float:
        energy = phase_gradient_energy(image)
        return float(energy[on_band].mean() / max(energy[inside].mean(), 1e-300))

    value = ratio(obj)
    return value if reference is None else value / ratio(np.asarray(reference))
