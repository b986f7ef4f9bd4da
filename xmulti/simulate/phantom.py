"""A cell-like phantom: matrix thickness and per-element areal densities on the object grid.

Pure numpy kernels. Each element gets its own spatial pattern so maps can be told apart:
P in nuclei and cytoplasm, S and K following the matrix, Ca in puncta and the membrane rim,
Fe and Zn in (different) granules, Cu diffuse around the nucleus. Fine texture in the matrix
gives the ptychographic image structure at the object-pixel scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Phantom", "cell_phantom"]


@dataclass
class Phantom:
    """Ground truth of the sample on the object grid.

    Attributes
    ----------
    thickness_um : ndarray (ny, nx)
        Thickness of the cell matrix (um).
    composition_ug_cm2 : ndarray (n_elements, ny, nx)
        Areal density of each element (ug/cm2).
    elements : tuple of str
        Element symbols, in the order of ``composition_ug_cm2``.
    cell_labels : ndarray (ny, nx) int
        0 outside cells, k for cell k (1-based).
    nucleus_mask : ndarray (ny, nx) bool
        Pixels inside a nucleus.
    """

    thickness_um: np.ndarray
    composition_ug_cm2: np.ndarray
    elements: tuple[str, ...]
    cell_labels: np.ndarray
    nucleus_mask: np.ndarray


def _smooth_noise(rng: np.random.Generator, shape, sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return field / (field.std() + 1e-12)


def _place_cells(rng, shape, n_cells, pixel_um):
    """Ellipse parameters (cy, cx, ry, rx, angle) in pixels, roughly tiling the field."""
    ny, nx = shape
    cells = []
    grid = int(np.ceil(np.sqrt(n_cells)))
    cell_h, cell_w = ny / grid, nx / grid
    for k in range(n_cells):
        gy, gx = divmod(k, grid)
        cy = (gy + 0.5) * cell_h + rng.uniform(-0.1, 0.1) * cell_h
        cx = (gx + 0.5) * cell_w + rng.uniform(-0.1, 0.1) * cell_w
        ry = 0.36 * cell_h * rng.uniform(0.85, 1.0)
        rx = 0.36 * cell_w * rng.uniform(0.85, 1.0)
        cells.append((cy, cx, ry, rx, rng.uniform(0, np.pi)))
    return cells


def _ellipse_radius(yy, xx, cy, cx, ry, rx, angle):
    """Normalised elliptical radius: 1 on the ellipse boundary."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = c * dx + s * dy
    v = -s * dx + c * dy
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)


def _granules(rng, yy, xx, inside, n, radius_px):
    """Sum of small Gaussian granules centred at random points inside a mask."""
    candidates = np.flatnonzero(inside.ravel())
    out = np.zeros(inside.shape)
    if candidates.size == 0:
        return out
    for idx in rng.choice(candidates, size=min(n, candidates.size), replace=False):
        gy, gx = np.unravel_index(idx, inside.shape)
        out += np.exp(-((yy - gy) ** 2 + (xx - gx) ** 2) / (2 * radius_px**2))
    return out


def cell_phantom(
    shape: tuple[int, int],
    pixel_um: float,
    elements: dict[str, float],
    cell_thickness_um: float,
    n_cells: int,
    rng: np.random.Generator,
) -> Phantom:
    """Cells with nuclei, granules and texture.

    Parameters
    ----------
    shape : (ny, nx)
        Object grid shape.
    pixel_um : float
        Object pixel size (um); granule sizes are set in um so the phantom looks alike at any
        sampling.
    elements : dict of str to float
        Element symbol to peak areal density (ug/cm2).
    cell_thickness_um : float
        Peak matrix thickness at a cell centre (um).
    n_cells : int
        Number of cells.
    rng : numpy.random.Generator
        Source of randomness (seeded by the caller).
    """
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    labels = np.zeros(shape, dtype=np.int32)
    dome = np.zeros(shape)
    nucleus = np.zeros(shape)
    rim = np.zeros(shape)
    cells = _place_cells(rng, shape, n_cells, pixel_um)
    edge_px = max(1.0, 0.08 / pixel_um)  # membrane width ~80 nm
    for k, (cy, cx, ry, rx, angle) in enumerate(cells, start=1):
        r = _ellipse_radius(yy, xx, cy, cx, ry, rx, angle)
        inside = r < 1.0
        labels[inside] = k
        # dome profile with a soft edge, so the thickness has no infinite gradient
        dome = np.maximum(dome, np.sqrt(np.clip(1.0 - r**2, 0.0, None)) ** 0.7)
        ncy = cy + rng.uniform(-0.15, 0.15) * ry
        ncx = cx + rng.uniform(-0.15, 0.15) * rx
        rn = _ellipse_radius(yy, xx, ncy, ncx, 0.4 * ry, 0.4 * rx, angle + 0.3)
        nucleus = np.maximum(nucleus, 1.0 / (1.0 + np.exp((rn - 1.0) * 12.0)))
        rim += np.exp(-(((r - 1.0) * min(rx, ry)) ** 2) / (2 * edge_px**2)) * (r < 1.2)
    inside = labels > 0
    texture = _smooth_noise(rng, shape, max(0.8, 0.05 / pixel_um))
    thickness = cell_thickness_um * dome * (1.0 + 0.15 * nucleus) * (1.0 + 0.08 * texture)
    thickness = np.clip(thickness, 0.0, None) * inside
    matrix = thickness / cell_thickness_um  # 0..~1.2, follows structure

    granule_px = max(1.0, 0.06 / pixel_um)
    patterns = {
        "P": 0.5 * matrix + 0.6 * nucleus * inside,
        "S": matrix,
        "K": matrix * (0.6 + 0.4 * (xx / nx)),
        "Ca": 0.5 * np.clip(rim, 0, 1) + _granules(rng, yy, xx, inside, 3 * n_cells, granule_px),
        "Fe": _granules(rng, yy, xx, inside & (nucleus < 0.5), 4 * n_cells, granule_px) + 0.15 * matrix,
        "Cu": ndimage.gaussian_filter(nucleus, 3.0 * granule_px) * inside + 0.1 * matrix,
        "Zn": _granules(rng, yy, xx, inside, 4 * n_cells, granule_px) + 0.3 * nucleus * inside,
    }
    composition = np.zeros((len(elements), ny, nx))
    for i, (symbol, level) in enumerate(elements.items()):
        pattern = patterns.get(symbol)
        if pattern is None:  # elements without a bespoke pattern follow smooth random blobs
            pattern = np.clip(_smooth_noise(rng, shape, 4 * granule_px), 0, None) * inside
        peak = pattern.max()
        composition[i] = level * pattern / peak if peak > 0 else 0.0
    return Phantom(
        thickness_um=thickness,
        composition_ug_cm2=composition,
        elements=tuple(elements),
        cell_labels=labels,
        nucleus_mask=nucleus > 0.5,
    )
