"""Split a scan into overlapping tiles for decomposed (tile-parallel) reconstruction.

Each position has one *own* tile (its core); it also belongs to every other tile whose core lies
within the halo distance, so core pixels of a tile see all the views that constrain them when the
halo is at least the probe radius (Nashed et al., Opt. Express 22, 32082 (2014); Favre-Nicolin et
al., J. Appl. Cryst. 53, 1404 (2020)). Raster scans split on a grid of equal-count bands;
irregular scans split by k-means clustering with Voronoi cores. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError

__all__ = ["Tile", "split_tiles", "choose_grid", "core_distance_px"]


@dataclass(frozen=True)
class Tile:
    """One tile of a decomposed reconstruction.

    Attributes
    ----------
    index : int
    members : ndarray (M_t,) int
        Indices (sorted) of the scan positions the tile reconstructs, halo included.
    own : ndarray (M_t,) bool
        True for members whose own (core) tile this is.
    offset : (int, int)
        Global object index of the tile array's pixel (0, 0).
    shape : (int, int)
        Shape of the tile's object array.
    method : str
        ``"grid"`` or ``"kmeans"``: how :func:`core_distance_px` measures the core.
    box : ndarray (4,)
        Grid method: core box ``(y_lo, y_hi, x_lo, x_hi)`` in global object pixels (infinite on
        the scan's outer sides).
    centres : ndarray (T, 2)
        k-means method: all clusters' centres (global object pixels), this tile's at
        ``core_index``.
    core_index : int
        Index of this tile's cell among ``box``/``centres`` (tiles with no position are dropped).
    """

    index: int
    members: np.ndarray
    own: np.ndarray
    offset: tuple[int, int]
    shape: tuple[int, int]
    method: str
    box: np.ndarray
    centres: np.ndarray
    core_index: int = 0


def choose_grid(
    n_workers: int,
    n_positions: int,
    bytes_per_position: int,
    memory_per_worker: float,
    aspect: float = 1.0,
    tiles_per_worker: int = 1,
) -> tuple[int, int]:
    """A tile grid for the workers and their memory.

    At least ``tiles_per_worker * n_workers`` tiles, and enough that one tile's frames take no
    more than a quarter of a worker's memory; the grid follows the scan's aspect ratio (ny/nx).
    """
    need = max(1, tiles_per_worker * n_workers)
    per_tile_max = max(1.0, 0.25 * memory_per_worker / max(bytes_per_position, 1))
    need = max(need, math.ceil(n_positions / per_tile_max))
    ty = max(1, round(math.sqrt(need * aspect)))
    tx = max(1, math.ceil(need / ty))
    return ty, tx


def _quantile_edges(values: np.ndarray, parts: int) -> np.ndarray:
    edges = np.quantile(values, np.linspace(0, 1, parts + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def _window_box(positions_px: np.ndarray, n: int, margin: int, object_shape) -> tuple[tuple, tuple]:
    corners = np.floor(positions_px - n // 2).astype(int)
    lo = np.maximum(corners.min(axis=0) - margin, 0)
    hi = np.minimum(corners.max(axis=0) + n + 1 + margin, object_shape)
    return (int(lo[0]), int(lo[1])), (int(hi[0] - lo[0]), int(hi[1] - lo[1]))


def split_tiles(
    positions_px: np.ndarray,
    n: int,
    object_shape: tuple[int, int],
    grid: tuple[int, int] | None = None,
    n_tiles: int | None = None,
    halo_px: float | None = None,
    method: str = "grid",
    margin_px: int = 2,
    seed: int = 0,
) -> list[Tile]:
    """Split positions into tiles with a halo.

    Parameters
    ----------
    positions_px : ndarray (M, 2)
        Beam centres as fractional global object indices.
    n : int
        Probe (frame) width, pixels.
    object_shape : (int, int)
        Global object array shape.
    grid : (ty, tx), optional
        Tile grid (``method="grid"``).
    n_tiles : int, optional
        Number of tiles (``method="kmeans"``; default ``ty * tx``).
    halo_px : float, optional
        Halo width, object pixels; default half the probe width (the probe radius).
    method : {"grid", "kmeans"}
        Equal-count bands along y and x (raster scans), or k-means clusters (irregular scans).
    margin_px : int
        Extra object pixels around each tile's windows (room for position corrections).
    seed : int
        Seed of the k-means initialisation.

    Returns
    -------
    list of Tile
    """
    positions_px = np.asarray(positions_px, dtype=np.float64)
    if positions_px.ndim != 2 or positions_px.shape[1] != 2 or len(positions_px) == 0:
        raise InvalidInputError(f"positions must be (M, 2), got {positions_px.shape}")
    halo = float(n / 2 if halo_px is None else halo_px)
    if halo < 0:
        raise InvalidInputError(f"halo must be >= 0, got {halo}")
    if method == "grid":
        ty, tx = grid or (1, 1)
        if ty < 1 or tx < 1:
            raise InvalidInputError(f"tile grid must be positive, got {grid}")
        ey = _quantile_edges(positions_px[:, 0], ty)
        ex = _quantile_edges(positions_px[:, 1], tx)
        boxes = np.array([[ey[i], ey[i + 1], ex[j], ex[j + 1]] for i in range(ty) for j in range(tx)])
        iy = np.clip(np.searchsorted(ey, positions_px[:, 0], side="right") - 1, 0, ty - 1)
        ix = np.clip(np.searchsorted(ex, positions_px[:, 1], side="right") - 1, 0, tx - 1)
        own_tile = iy * tx + ix
        centres = np.zeros((len(boxes), 2))
    elif method == "kmeans":
        from scipy.cluster.vq import kmeans2

        k = n_tiles or (grid[0] * grid[1] if grid else 1)
        if k < 1 or k > len(positions_px):
            raise InvalidInputError(f"cannot make {k} tiles from {len(positions_px)} positions")
        centres, _ = kmeans2(positions_px, k, minit="++", seed=seed)
        # own tile = nearest final centre (kmeans2's labels belong to the previous centres)
        own_tile = np.argmin(((positions_px[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        boxes = np.zeros((k, 4))
    else:
        raise InvalidInputError(f"unknown tiling method {method!r}; use 'grid' or 'kmeans'")
    tiles = []
    for t in range(len(boxes)):
        cell = Tile(t, np.empty(0, int), np.empty(0, bool), (0, 0), (0, 0), method, boxes[t], centres, t)
        distance = core_distance_px(cell, positions_px)
        members = np.flatnonzero(distance <= halo)
        if members.size == 0:
            continue  # an empty band (duplicate positions): nothing to reconstruct
        offset, shape = _window_box(positions_px[members], n, margin_px, object_shape)
        tiles.append(
            Tile(len(tiles), members, own_tile[members] == t, offset, shape, method, boxes[t], centres, t)
        )
    return tiles


def core_distance_px(tile: Tile, points_px: np.ndarray) -> np.ndarray:
    """Distance (object pixels) from global points (..., 2) to the tile's core; 0 inside it."""
    points = np.asarray(points_px, dtype=np.float64)
    if tile.method == "grid":
        y_lo, y_hi, x_lo, x_hi = tile.box
        dy = np.maximum(np.maximum(y_lo - points[..., 0], points[..., 0] - y_hi), 0.0)
        dx = np.maximum(np.maximum(x_lo - points[..., 1], points[..., 1] - x_hi), 0.0)
        return np.hypot(dy, dx)
    own = tile.centres[tile.core_index]
    out = np.zeros(points.shape[:-1])
    for s, other in enumerate(tile.centres):
        if s == tile.core_index:
            continue
        gap = np.linalg.norm(other - own)
        if gap == 0:
            continue
        # signed distance past the bisector of the two centres, towards the other centre
        beyond = (np.sum((points - own) ** 2, axis=-1) - np.sum((points - other) ** 2, axis=-1)) / (2 * gap)
        out = np.maximum(out, beyond)
    return out
