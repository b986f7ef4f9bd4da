"""Stitching where the tiles are: alignment, overlap exchange and the blend as Dask tasks.

The tiles' engine states stay on the workers (futures). What moves is what each step needs:

- alignment: for every overlapping pair, each tile's overlap strip (object and blending weight)
  goes to one pair task, which returns a few numbers (:func:`xmulti.ptycho.stitch.pair_correlation`,
  then :func:`~xmulti.ptycho.stitch.pair_plane_fit`); the client solves the tile graph
  (``O(T)`` numbers);
- overlap exchange (synchronisation): each tile's task receives its neighbours' corrected,
  weighted strips over its own box and returns its new object;
- the final blend: each output block of the global object is a task over the strips of the tiles
  that overlap it, so the whole object exists only as blocks of a Dask array, computed (and
  written) on the workers.

Every step does the same arithmetic, pixel for pixel and tile for tile in the same order, as the
in-memory :func:`xmulti.ptycho.stitch.stitch`, so the stitched object is the same.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .stitch import (
    TileCorrection,
    apply_correction,
    core_distance_map,
    overlap_box,
    pair_correlation,
    pair_plane_fit,
    solve_corrections,
    synchronise_offsets,
    tile_weight,
)
from .tiles import Tile

__all__ = ["align_on_cluster", "prepare_tiles", "exchange_on_cluster", "blended_object"]


# ----------------------------------------------------------------------------- tasks (workers)


def _weight_max(run, tile: Tile, halo_px: float) -> float:
    return float(tile_weight(tile, run.illumination, halo_px).max())


def _raw_strip(run, tile: Tile, halo_px: float, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """A tile's object and blending weight on part of its array (before correction)."""
    return run.obj[box].copy(), tile_weight(tile, run.illumination, halo_px)[box]


def _pair_correlation_task(strip_a, strip_b) -> tuple[complex, float]:
    (oa, wa), (ob, wb) = strip_a, strip_b
    w = wa * wb
    return pair_correlation(oa, ob, w), float(w.sum())


def _pair_fit_task(strip_a, strip_b, lo, hi, dtheta: float) -> dict[str, float]:
    (oa, wa), (ob, wb) = strip_a, strip_b
    return pair_plane_fit(oa, ob, wa * wb, lo, hi, dtheta)


def _prepare_task(run, tile: Tile, correction: TileCorrection, halo_px: float) -> tuple[np.ndarray, np.ndarray]:
    """A tile's blend terms: ``w * O_corrected`` (complex64, as the in-memory blend adds it) and ``w``."""
    w = tile_weight(tile, run.illumination, halo_px)
    return (w * apply_correction(run.obj, tile, correction)).astype(np.complex64, copy=False), w


def _crop_task(prepared, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    return prepared[0][box].copy(), prepared[1][box].copy()


def _blend_region(shape: tuple[int, int], pieces) -> tuple[np.ndarray, np.ndarray]:
    """``sum w O / sum w`` on one region from ``(slices in the region, (w O, w))`` pieces, in tile
    order, single precision as :func:`xmulti.ptycho.stitch.blend_tiles`; 1 where no weight."""
    numerator = np.zeros(shape, np.complex64)
    total = np.zeros(shape, np.float32)
    for box, (num, w) in pieces:
        numerator[box] += num
        total[box] += w
    covered = total > 0
    np.divide(numerator, total, out=numerator, where=covered)
    numerator[~covered] = 1.0
    return numerator, total


def _exchange_task(run, tile: Tile, correction: TileCorrection, halo_px: float, boxes, *strips) -> np.ndarray:
    """A tile's new object: its own core, its halo from the blend of every tile over its box."""
    blended, _ = _blend_region(tile.shape, list(zip(boxes, strips, strict=True)))
    # blended -> this tile's gauge: undo the correction the blend applied to the tile
    inverse = replace(correction, theta=-correction.theta, log_scale=-correction.log_scale,
                      gradient=(-correction.gradient[0], -correction.gradient[1]))
    theirs = apply_correction(blended, tile, inverse)
    keep = np.clip(1.0 - core_distance_map(tile) / max(halo_px, 1e-9), 0.0, 1.0)
    return (keep * run.obj + (1.0 - keep) * theirs).astype(np.complex64)


def _block_object(shape, boxes, *strips) -> np.ndarray:
    return _blend_region(shape, list(zip(boxes, strips, strict=True)))[0]


def _block_weight(shape, boxes, *strips) -> np.ndarray:
    return _blend_region(shape, list(zip(boxes, strips, strict=True)))[1]


# ----------------------------------------------------------------------------- orchestration (client)


def _overlapping_pairs(tiles: list[Tile]):
    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            ov = overlap_box(tiles[a].offset, tiles[a].shape, tiles[b].offset, tiles[b].shape)
            if ov is not None:
                yield a, b, ov


def align_on_cluster(client, runs: list, tiles: list[Tile], halo_px: float,
                     min_weight_fraction: float = 1e-3) -> list[TileCorrection]:
    """:func:`xmulti.ptycho.stitch.align_tiles` of tile runs held on the workers.

    Parameters
    ----------
    client : dask.distributed.Client
    runs : list of Future
        Each resolves to a :class:`xmulti.ptycho.distributed.TileRun`.
    tiles : list of Tile
    halo_px : float
        Halo width (object pixels) of the blending taper.

    Returns
    -------
    list of TileCorrection
        Only pairwise overlap strips move between workers; the client gets a few numbers per pair.
    """
    count = len(tiles)
    if count == 1:
        return [TileCorrection()]
    candidates = list(_overlapping_pairs(tiles))
    if not candidates:
        return [TileCorrection() for _ in range(count)]
    maxima = [client.submit(_weight_max, r, t, halo_px, pure=True) for r, t in zip(runs, tiles, strict=True)]
    strips = [(client.submit(_raw_strip, runs[a], tiles[a], halo_px, sa, pure=True),
               client.submit(_raw_strip, runs[b], tiles[b], halo_px, sb, pure=True))
              for a, b, (sa, sb, _, _) in candidates]
    first = client.gather([client.submit(_pair_correlation_task, sa, sb, pure=True) for sa, sb in strips])
    scale = max(client.gather(maxima)) ** 2
    # the same pairs as the in-memory alignment: those whose joint weight is not negligible
    kept = [k for k, (_, wsum) in enumerate(first) if not wsum <= min_weight_fraction * scale]
    if not kept:
        return [TileCorrection() for _ in range(count)]
    ids = [(candidates[k][0], candidates[k][1]) for k in kept]
    theta = synchronise_offsets(count, ids, [first[k][0] for k in kept])
    fits = client.gather([
        client.submit(_pair_fit_task, *strips[k], candidates[k][2][2], candidates[k][2][3],
                      float(theta[candidates[k][0]] - theta[candidates[k][1]]), pure=True)
        for k in kept
    ])
    return solve_corrections(count, theta, ids, fits)


def prepare_tiles(client, runs: list, tiles: list[Tile], corrections: list[TileCorrection], halo_px: float) -> list:
    """Futures of each tile's blend terms ``(w O_corrected, w)``, computed where the tile is."""
    return [client.submit(_prepare_task, r, t, c, halo_px, pure=True)
            for r, t, c in zip(runs, tiles, corrections, strict=True)]


def _pieces(client, prepared: list, tiles: list[Tile], offset, shape, lazy: bool = False):
    """Boxes in a region and the tiles' blend terms cropped to it, in tile order: futures, or
    Dask delayed objects (``lazy``: computed with the block that needs them, then dropped)."""
    import dask

    boxes, strips = [], []
    for prep, tile in zip(prepared, tiles, strict=True):
        ov = overlap_box(offset, shape, tile.offset, tile.shape)
        if ov is None:
            continue
        region_box, tile_box, _, _ = ov
        boxes.append(region_box)
        if lazy:
            strips.append(dask.delayed(_crop_task, pure=True)(prep, tile_box))
        else:
            strips.append(client.submit(_crop_task, prep, tile_box, pure=True))
    return boxes, strips


def exchange_on_cluster(client, runs: list, tiles: list[Tile], corrections: list[TileCorrection],
                        halo_px: float, prepared: list | None = None) -> list:
    """Futures of the tiles' objects after the overlap exchange (each keeps its core and takes its
    halo from the blend), each computed from its neighbours' strips over its box."""
    prepared = prepared or prepare_tiles(client, runs, tiles, corrections, halo_px)
    out = []
    for run, tile, correction in zip(runs, tiles, corrections, strict=True):
        boxes, strips = _pieces(client, prepared, tiles, tile.offset, tile.shape)
        out.append(client.submit(_exchange_task, run, tile, correction, halo_px, boxes, *strips, pure=True))
    return out


def blended_object(client, prepared: list, tiles: list[Tile], object_shape: tuple[int, int], block: int = 1024):
    """The stitched object and its total blending weight as Dask arrays of ``block``-square chunks.

    Each chunk is a task over the strips of the tiles overlapping it (held on the workers), so the
    whole object is never in one process.

    Returns
    -------
    obj : dask.array.Array complex64 ``object_shape``
        ``sum_t w_t O_t / sum_t w_t`` (1 where no tile has weight).
    weight : dask.array.Array float32 ``object_shape``
    """
    import dask
    import dask.array as da

    rows_obj, rows_weight = [], []
    for y0 in range(0, object_shape[0], block):
        row_obj, row_weight = [], []
        for x0 in range(0, object_shape[1], block):
            shape = (min(block, object_shape[0] - y0), min(block, object_shape[1] - x0))
            boxes, strips = _pieces(client, prepared, tiles, (y0, x0), shape, lazy=True)
            row_obj.append(da.from_delayed(dask.delayed(_block_object, pure=True)(shape, boxes, *strips),
                                           shape, np.complex64))
            row_weight.append(da.from_delayed(dask.delayed(_block_weight, pure=True)(shape, boxes, *strips),
                                              shape, np.float32))
        rows_obj.append(row_obj)
        rows_weight.append(row_weight)
    return da.block(rows_obj), da.block(rows_weight)
