"""Stitch tile reconstructions into one object: align the tiles' ambiguities, then blend.

Each tile is free to differ from its neighbours by a global phase, a linear phase ramp and an
amplitude scale. They are solved jointly over the tile graph: phase offsets by angular
synchronisation (the leading eigenvector of the Hermitian matrix of pairwise overlap
correlations ``c_ab = sum w O_a conj(O_b)``, Singer, Appl. Comput. Harmon. Anal. 30, 20 (2011)),
then the residual offsets and ramps by least squares over pairwise plane fits of the phase
difference, and the amplitude scales by least squares over the mean log-amplitude differences.
Blending weights each tile by its illumination times a taper that falls to zero at the outer edge
of its halo, where a tile is least constrained (Favre-Nicolin et al., J. Appl. Cryst. 53, 1404
(2020)). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tiles import Tile, core_distance_px

__all__ = [
    "TileCorrection", "core_distance_map", "tile_weight", "overlap_box", "pair_correlation", "pair_plane_fit",
    "synchronise_offsets", "solve_corrections", "align_tiles", "apply_correction", "blend_tiles", "stitch",
]


@dataclass(frozen=True)
class TileCorrection:
    """Phase offset (rad), phase gradient (rad per global object pixel, (y, x)) and log amplitude
    scale to remove from a tile: ``O_t * exp(-i (theta + g . r) - log_scale)``."""

    theta: float = 0.0
    gradient: tuple[float, float] = (0.0, 0.0)
    log_scale: float = 0.0


def _pixel_coords(tile: Tile) -> np.ndarray:
    """Global object indices (h, w, 2) of the tile's pixels."""
    iy = np.arange(tile.shape[0]) + tile.offset[0]
    ix = np.arange(tile.shape[1]) + tile.offset[1]
    yy, xx = np.meshgrid(iy, ix, indexing="ij")
    return np.stack([yy, xx], axis=-1).astype(np.float64)


def core_distance_map(tile: Tile) -> np.ndarray:
    """Distance (object pixels) of each of the tile's pixels to its core, ``tile.shape``."""
    iy = np.arange(tile.shape[0], dtype=np.float64) + tile.offset[0]
    ix = np.arange(tile.shape[1], dtype=np.float64) + tile.offset[1]
    if tile.method == "grid":  # separable: two 1-D distances instead of a (h, w, 2) grid
        y_lo, y_hi, x_lo, x_hi = tile.box
        dy = np.maximum(np.maximum(y_lo - iy, iy - y_hi), 0.0)
        dx = np.maximum(np.maximum(x_lo - ix, ix - x_hi), 0.0)
        return np.hypot(dy[:, None], dx[None, :])
    return core_distance_px(tile, _pixel_coords(tile))


def tile_weight(tile: Tile, illumination: np.ndarray, halo_px: float) -> np.ndarray:
    """Blending weight of a tile: its illumination times a taper, 1 in the core falling linearly
    to 0 at the outer edge of the halo. Shape ``tile.shape``, float64."""
    distance = core_distance_map(tile)
    taper = np.clip(1.0 - distance / halo_px, 0.0, 1.0) if halo_px > 0 else (distance == 0).astype(float)
    return np.asarray(illumination, dtype=np.float64) * taper


def overlap_box(offset_a, shape_a, offset_b, shape_b):
    """Where two boxes of the global object grid overlap: the slices of a's and b's arrays and
    the global box ``lo:hi`` (object pixel indices), or None when they do not overlap."""
    lo = np.maximum(offset_a, offset_b)
    hi = np.minimum(np.add(offset_a, shape_a), np.add(offset_b, shape_b))
    if np.any(hi <= lo):
        return None
    sa = tuple(slice(int(lo[k] - offset_a[k]), int(hi[k] - offset_a[k])) for k in range(2))
    sb = tuple(slice(int(lo[k] - offset_b[k]), int(hi[k] - offset_b[k])) for k in range(2))
    return sa, sb, tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def _overlap(a: Tile, b: Tile):
    """Slices of tiles a and b (and the global box) where their arrays overlap, or None."""
    return overlap_box(a.offset, a.shape, b.offset, b.shape)


def _pairs(objects, tiles, weights, min_weight_fraction=1e-3):
    """Overlapping tile pairs with their joint weights and the data needed for alignment."""
    out = []
    scale = max(float(w.max()) for w in weights) ** 2
    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            ov = _overlap(tiles[a], tiles[b])
            if ov is None:
                continue
            sa, sb, lo, hi = ov
            w = weights[a][sa] * weights[b][sb]
            if w.sum() <= min_weight_fraction * scale:
                continue
            out.append((a, b, objects[a][sa], objects[b][sb], w, lo, hi))
    return out


def pair_correlation(oa: np.ndarray, ob: np.ndarray, w: np.ndarray) -> complex:
    """``c_ab = sum w O_a conj(O_b)`` over the overlap of tiles a and b (angular synchronisation)."""
    return complex(np.sum(w * oa * np.conj(ob)))


def pair_plane_fit(oa: np.ndarray, ob: np.ndarray, w: np.ndarray, lo, hi, dtheta: float) -> dict[str, float]:
    """Plane fit of the phase difference of tiles a and b on their overlap (global box ``lo:hi``),
    after removing their synchronised offsets (``dtheta = theta_a - theta_b``), and their mean
    log-amplitude difference: the rows :func:`solve_corrections` needs. Only the overlap is used,
    so a cluster computes it from the two overlap strips."""
    yy, xx = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    yy, xx = yy.astype(float), xx.astype(float)
    ww = w * np.abs(oa) * np.abs(ob)
    total = ww.sum()
    yc, xc = (ww * yy).sum() / total, (ww * xx).sum() / total
    product = oa * np.conj(ob) * np.exp(-1j * dtheta)
    # a first, wrap-free ramp from neighbouring-pixel phase steps, then an exact plane fit of
    # the (now small) residual: finite differences alone are biased by noise
    steps = [np.angle(np.sum(np.minimum(ww[1:], ww[:-1]) * product[1:] * np.conj(product[:-1]))),
             np.angle(np.sum(np.minimum(ww[:, 1:], ww[:, :-1]) * product[:, 1:] * np.conj(product[:, :-1])))]
    ramp = steps[0] * (yy - yc) + steps[1] * (xx - xc)
    product = product * np.exp(-1j * ramp)
    alpha0 = np.angle(np.sum(ww * product))
    dphi = np.angle(product * np.exp(-1j * alpha0))
    design = np.stack([np.ones_like(yy), yy - yc, xx - xc], axis=-1).reshape(-1, 3)
    sw = np.sqrt(ww).ravel()
    alpha, beta_y, beta_x = np.linalg.lstsq(design * sw[:, None], dphi.ravel() * sw, rcond=None)[0]
    spread = (ww * ((yy - yc) ** 2 + (xx - xc) ** 2)).sum() / total
    log_diff = (ww * (np.log(np.abs(oa) + 1e-30) - np.log(np.abs(ob) + 1e-30))).sum() / total
    return {"alpha": float(alpha + alpha0), "beta_y": float(beta_y + steps[0]), "beta_x": float(beta_x + steps[1]),
            "yc": float(yc), "xc": float(xc), "total": float(total), "spread": float(spread),
            "log_diff": float(log_diff)}


def synchronise_offsets(count: int, pairs: list[tuple[int, int]], correlations: list[complex]) -> np.ndarray:
    """Phase offsets (rad) of ``count`` tiles from their pairwise overlap correlations: the leading
    eigenvector of the Hermitian matrix ``c_ab`` (angular synchronisation), tile 0 at zero."""
    hermitian = np.zeros((count, count), complex)
    for (a, b), c in zip(pairs, correlations, strict=True):
        hermitian[a, b] = c
        hermitian[b, a] = np.conj(c)
    hermitian += np.diag(np.abs(hermitian).sum(axis=1) + 1e-30)
    _, vectors = np.linalg.eigh(hermitian)
    lead = vectors[:, -1]
    return np.angle(lead * np.conj(lead[0]))


def solve_corrections(count: int, theta: np.ndarray, pairs: list[tuple[int, int]],
                      fits: list[dict[str, float]]) -> list[TileCorrection]:
    """Per-tile corrections from the synchronised offsets and the pairwise plane fits
    (:func:`pair_plane_fit`): weighted least squares over the tile graph, tile 0 as the gauge."""
    rows, rhs, row_weights = [], [], []
    log_rows, log_rhs, log_weights = [], [], []
    for (a, b), fit in zip(pairs, fits, strict=True):
        total, yc, xc = fit["total"], fit["yc"], fit["xc"]
        # unknowns per tile: [dtheta, gy, gx]
        row = np.zeros(3 * count)
        row[[a, count + a, 2 * count + a]] = 1.0, yc, xc
        row[[b, count + b, 2 * count + b]] = -1.0, -yc, -xc
        rows.append(row), rhs.append(fit["alpha"]), row_weights.append(total)
        for k, beta in ((1, fit["beta_y"]), (2, fit["beta_x"])):
            row = np.zeros(3 * count)
            row[k * count + a], row[k * count + b] = 1.0, -1.0
            rows.append(row), rhs.append(beta), row_weights.append(total * fit["spread"])
        log_row = np.zeros(count)
        log_row[a], log_row[b] = 1.0, -1.0
        log_rows.append(log_row)
        log_rhs.append(fit["log_diff"])
        log_weights.append(total)
    strong = 1e3 * max(row_weights)
    for k in range(3):  # gauge: tile 0 keeps its offset and ramp
        row = np.zeros(3 * count)
        row[k * count] = 1.0
        rows.append(row), rhs.append(0.0), row_weights.append(strong)
    sw = np.sqrt(np.asarray(row_weights))
    solution = np.linalg.lstsq(np.asarray(rows) * sw[:, None], np.asarray(rhs) * sw, rcond=None)[0]
    log_row = np.zeros(count)
    log_row[0] = 1.0
    log_rows.append(log_row), log_rhs.append(0.0), log_weights.append(1e3 * max(log_weights))
    lw = np.sqrt(np.asarray(log_weights))
    log_scale = np.linalg.lstsq(np.asarray(log_rows) * lw[:, None], np.asarray(log_rhs) * lw, rcond=None)[0]
    return [
        TileCorrection(
            float(theta[t] + solution[t]), (float(solution[count + t]), float(solution[2 * count + t])),
            float(log_scale[t]),
        )
        for t in range(count)
    ]


def align_tiles(objects: list[np.ndarray], tiles: list[Tile], weights: list[np.ndarray]) -> list[TileCorrection]:
    """Phase offsets, ramps and amplitude scales that make the tiles agree on their overlaps.

    Parameters
    ----------
    objects : list of complex ndarray
        Tile objects (shapes ``tile.shape``).
    tiles : list of Tile
    weights : list of ndarray
        Blending weights (:func:`tile_weight`).

    Returns
    -------
    list of TileCorrection
        One per tile; the first tile (or each connected group's first) keeps zero corrections.
    """
    count = len(tiles)
    pairs = _pairs(objects, tiles, weights)
    if count == 1 or not pairs:
        return [TileCorrection() for _ in range(count)]
    # 1. phase offsets by angular synchronisation
    ids = [(a, b) for a, b, *_ in pairs]
    theta = synchronise_offsets(count, ids, [pair_correlation(oa, ob, w) for _, _, oa, ob, w, _, _ in pairs])
    # 2. residual offsets and ramps: plane fits of the pairwise phase difference, then the graph
    fits = [pair_plane_fit(oa, ob, w, lo, hi, theta[a] - theta[b]) for a, b, oa, ob, w, lo, hi in pairs]
    return solve_corrections(count, theta, ids, fits)


def apply_correction(obj: np.ndarray, tile: Tile, correction: TileCorrection) -> np.ndarray:
    """``O_t * exp(-i (theta + g . r) - log_scale)`` with r the global object indices."""
    iy = np.arange(tile.shape[0]) + tile.offset[0]
    ix = np.arange(tile.shape[1]) + tile.offset[1]
    # separable: the outer product of two 1-D phase factors, not an exp over every pixel
    fy = np.exp(-1j * (correction.theta + correction.gradient[0] * iy) - correction.log_scale)
    fx = np.exp(-1j * correction.gradient[1] * ix)
    factor = (fy[:, None] * fx[None, :]).astype(np.result_type(obj.dtype, np.complex64))
    return (obj * factor).astype(obj.dtype, copy=False)


def blend_tiles(
    objects: list[np.ndarray], tiles: list[Tile], weights: list[np.ndarray], object_shape: tuple[int, int],
    fill: complex = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted average of (corrected) tile objects on the global grid.

    Returns
    -------
    obj : complex ndarray ``object_shape``
        ``sum_t w_t O_t / sum_t w_t``; ``fill`` where no tile has weight.
    total_weight : ndarray ``object_shape``
    """
    # single precision and in-place division: the blend holds 12 bytes per object pixel (it was
    # 48 with complex128 sums and a separate output), the client's largest arrays when stitching
    numerator = np.zeros(object_shape, np.complex64)
    total = np.zeros(object_shape, np.float32)
    for obj, tile, w in zip(objects, tiles, weights, strict=True):
        region = (slice(tile.offset[0], tile.offset[0] + tile.shape[0]),
                  slice(tile.offset[1], tile.offset[1] + tile.shape[1]))
        numerator[region] += (w * obj).astype(np.complex64, copy=False)
        total[region] += w
    covered = total > 0
    np.divide(numerator, total, out=numerator, where=covered)
    numerator[~covered] = fill
    return numerator, total


def stitch(
    objects: list[np.ndarray], tiles: list[Tile], illuminations: list[np.ndarray], halo_px: float,
    object_shape: tuple[int, int],
) -> tuple[np.ndarray, list[TileCorrection], np.ndarray]:
    """Align and blend tile objects.

    Returns
    -------
    obj : complex64 ndarray ``object_shape``
    corrections : list of TileCorrection
    total_weight : ndarray ``object_shape``
    """
    weights = [tile_weight(t, ill, halo_px) for t, ill in zip(tiles, illuminations, strict=True)]
    corrections = align_tiles(objects, tiles, weights)
    corrected = [apply_correction(o, t, c) for o, t, c in zip(objects, tiles, corrections, strict=True)]
    obj, total = blend_tiles(corrected, tiles, weights, object_shape)
    return obj, corrections, total
