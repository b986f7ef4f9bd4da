"""Tiles of resolution bridging: overlapping groups of scan positions and their stitching weights (pure numpy).

Why tiles: the structure model (:mod:`xmulti.joint.structure`) works in data space, with dense
``P x P`` covariances of the ``P`` scan positions, so its cost grows as ``P^3`` (and its memory as
``P^2``). The footprint is local: an object pixel is seen by the positions within a footprint
radius of it, so a model fitted to the positions of a tile plus a *halo* of a few footprint radii
around it describes the pixels of the tile as well as the model of the whole scan does (up to its
own affine trends of the coefficient fields). Tiles of a bounded number of positions make the cost
linear in ``P``.

Geometry: the bounding box of the beam positions is split into a regular grid of rectangles (the
*cores*) at most ``tile_steps`` scan steps wide; every position belongs to exactly one core. A tile
holds the positions within ``halo_px`` of its core (Chebyshev distance) and the object window their
footprints touch (extended to the grid's edge for the outer tiles, so every pixel is in a window).

Stitching: tile ``t``'s map enters with weight ``w_t(y, x) = u_t(y) v_t(x)``, where the 1-D weights
ramp as ``sin^2`` across each interior core boundary over ``+-blend_px``. Complementary ramps sum to
1, so the weights are a partition of unity: ``sum_t w_t = 1`` on the whole grid, and a tile's map is
used up to ``blend_px`` beyond its core, where its positions still extend ``halo_px - blend_px``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError

__all__ = ["BridgeTile", "split_bridge_tiles", "stitch"]


@dataclass(frozen=True)
class BridgeTile:
    """One tile of resolution bridging.

    Attributes
    ----------
    members : ndarray (M,) int
        Sorted indices of the positions the tile's model is fitted to (core and halo).
    core : ndarray (M,) bool
        Which members are in the tile's core (each position is in one core only).
    offset : (int, int)
        Object-grid index (y, x) of the window's pixel (0, 0).
    weight : ndarray (h, w)
        Stitching weight on the window (:func:`stitch`).
    """

    members: np.ndarray
    core: np.ndarray
    offset: tuple[int, int]
    weight: np.ndarray

    @property
    def window(self) -> tuple[slice, slice]:
        """The window as slices of the object grid."""
        (y0, x0), (h, w) = self.offset, self.weight.shape
        return slice(y0, y0 + h), slice(x0, x0 + w)


def _ramp(t: np.ndarray, half_width: float) -> np.ndarray:
    """0 below ``-half_width``, 1 above ``half_width``, ``sin^2`` between: ``ramp(t) + ramp(-t) = 1``."""
    s = np.clip(np.asarray(t, dtype=float) / half_width, -1.0, 1.0)
    return np.sin(0.25 * np.pi * (1.0 + s)) ** 2


def _axis_weight(coord: np.ndarray, edges: np.ndarray, i: int, half_width: float) -> np.ndarray:
    """1-D weight of the ``i``-th interval of ``edges`` (interior boundaries ramped)."""
    w = np.ones(coord.shape)
    if i > 0:
        w *= _ramp(coord - edges[i], half_width)
    if i < len(edges) - 2:
        w *= _ramp(edges[i + 1] - coord, half_width)
    return w


def split_bridge_tiles(positions_px: np.ndarray, shape: tuple[int, int], probe_shape: tuple[int, int],
                       step_px: float, halo_px: float, blend_px: float, tile_steps: float = 12.0
                       ) -> list[BridgeTile]:
    """Overlapping tiles of the beam positions and their stitching weights.

    Parameters
    ----------
    positions_px : ndarray (P, 2)
        Beam centres as fractional object-pixel indices (y, x).
    shape : (ny, nx)
        Object grid shape.
    probe_shape : (N, M)
        Footprint array shape (the window holds every member's footprint).
    step_px : float
        Scan step (pixels).
    halo_px : float
        Positions within this distance of a core (pixels, each axis) join its tile.
    blend_px : float
        Half-width (pixels) of the stitching ramps across core boundaries; at most ``halo_px``.
    tile_steps : float
        Core side, in scan steps (at most 1.25 times as wide).

    Returns
    -------
    list of BridgeTile
        One tile (all positions, the whole grid, weight 1) when the scan fits in one core.
    """
    pos = np.asarray(positions_px, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise InvalidInputError(f"positions must be (P, 2) fractional (y, x) indices, not shape {pos.shape}")
    if not (step_px > 0 and tile_steps > 0 and 0 < blend_px <= halo_px):
        raise InvalidInputError(f"tiles need step_px > 0, tile_steps > 0 and 0 < blend_px <= halo_px, got "
                                f"{step_px}, {tile_steps}, {blend_px}, {halo_px}")
    ny, nx = int(shape[0]), int(shape[1])
    n, m = int(probe_shape[0]), int(probe_shape[1])
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    # a core may be a quarter wider than tile_steps rather than split into a sliver (jittered
    # positions make the median step a little short of the nominal one)
    counts = [max(1, int(np.ceil((hi[a] - lo[a]) / (tile_steps * step_px) - 0.25))) for a in (0, 1)]
    # cores narrower than the blending band would let a ramp cross two boundaries
    counts = [max(1, min(c, int((hi[a] - lo[a]) // (2 * blend_px)))) for a, c in enumerate(counts)]
    edges = [np.linspace(lo[a], hi[a], counts[a] + 1) for a in (0, 1)]
    # core of each position: interval index along each axis (the last interval is closed)
    cell = [np.clip(np.searchsorted(edges[a], pos[:, a], side="right") - 1, 0, counts[a] - 1) for a in (0, 1)]
    i0 = np.clip(np.floor(pos).astype(int), 0, [ny - 2, nx - 2])
    yy, xx = np.arange(ny), np.arange(nx)
    tiles = []
    for i in range(counts[0]):
        for j in range(counts[1]):
            inside = ((pos[:, 0] >= edges[0][i] - halo_px) & (pos[:, 0] <= edges[0][i + 1] + halo_px)
                      & (pos[:, 1] >= edges[1][j] - halo_px) & (pos[:, 1] <= edges[1][j + 1] + halo_px))
            members = np.flatnonzero(inside)
            if members.size == 0:
                continue
            core = (cell[0][members] == i) & (cell[1][members] == j)
            # the footprint of a position spans rows i0 - N//2 .. i0 + N - N//2 (footprint_matrix)
            y0 = 0 if i == 0 else max(0, int(i0[members, 0].min()) - n // 2)
            y1 = ny if i == counts[0] - 1 else min(ny, int(i0[members, 0].max()) + n - n // 2 + 1)
            x0 = 0 if j == 0 else max(0, int(i0[members, 1].min()) - m // 2)
            x1 = nx if j == counts[1] - 1 else min(nx, int(i0[members, 1].max()) + m - m // 2 + 1)
            weight = np.outer(_axis_weight(yy[y0:y1], edges[0], i, blend_px),
                              _axis_weight(xx[x0:x1], edges[1], j, blend_px))
            tiles.append(BridgeTile(members, core, (y0, x0), weight))
    return tiles


def stitch(parts: list[np.ndarray], tiles: list[BridgeTile], shape: tuple[int, int]) -> np.ndarray:
    """``sum_t w_t c_t``: tile maps (each on its window) blended into one ``(ny, nx)`` map."""
    out = np.zeros(shape)
    for part, tile in zip(parts, tiles, strict=True):
        out[tile.window] += tile.weight * part
    return out
