"""The ``/reconstructed`` Dataset of a tile-parallel reconstruction, block by block on the workers.

The stitched object is a Dask array (:func:`xmulti.ptycho.cluster_stitch.blended_object`). The
illumination map is made block by block from the windows that touch each block, the global phase
and amplitude scale (:func:`xmulti.ptycho.reconstruct.normalize_ambiguities`) from Dask reductions
(an exact percentile by histogram refinement, :func:`masked_percentile`), so the phase, amplitude
and illumination are Dask arrays the results writer stores shard by shard from the workers: the
client holds positions, probes and a few numbers, never an image.
"""

from __future__ import annotations

import math

import numpy as np

from .forward import window_corners

__all__ = ["illumination_blocks", "masked_percentile", "normalization_factor", "lazy_result_dataset"]

#: Histogram bins per refinement pass of :func:`masked_percentile`.
_BINS = 4096
#: Values gathered to the client at most in the final pass of :func:`masked_percentile`.
_GATHER = 1 << 16


def _illumination_block(offset, shape, one: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """``sum |P|^2`` of the windows (integer corners, global) on one block, float32, in the order
    of :func:`xmulti.ptycho.reconstruct.illumination_map` (so the sums are the same)."""
    out = np.zeros(shape, np.float32)
    n = one.shape[-1]
    for y, x in corners.tolist():
        y0, x0 = max(y, offset[0]), max(x, offset[1])
        y1, x1 = min(y + n, offset[0] + shape[0]), min(x + n, offset[1] + shape[1])
        if y1 > y0 and x1 > x0:
            out[y0 - offset[0]:y1 - offset[0], x0 - offset[1]:x1 - offset[1]] += one[y0 - y:y1 - y, x0 - x:x1 - x]
    return out


def illumination_blocks(probe: np.ndarray, positions_px: np.ndarray, shape: tuple[int, int], block: int):
    """:func:`xmulti.ptycho.reconstruct.illumination_map` as a Dask array of ``block``-square chunks.

    Each chunk is a task given only the corners of the windows that touch it.
    """
    import dask
    import dask.array as da

    n = probe.shape[-1]
    corners, _ = window_corners(positions_px, n)
    one = dask.delayed((np.abs(probe) ** 2).sum(axis=0).astype(np.float32), pure=True)
    rows = []
    for y0 in range(0, shape[0], block):
        row = []
        for x0 in range(0, shape[1], block):
            size = (min(block, shape[0] - y0), min(block, shape[1] - x0))
            touch = ((corners[:, 0] < y0 + size[0]) & (corners[:, 0] + n > y0)
                     & (corners[:, 1] < x0 + size[1]) & (corners[:, 1] + n > x0))
            task = dask.delayed(_illumination_block, pure=True)((y0, x0), size, one, corners[touch])
            row.append(da.from_delayed(task, size, np.float32))
        rows.append(row)
    return da.block(rows)


def _bin_index(v: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Bin of each value: -1 below ``lo``, ``bins`` above ``hi``, else one of ``bins`` equal bins of
    [lo, hi] (``hi`` in the last). Monotone in the value, so bins order the values."""
    index = np.where(v > hi, bins, -1)
    inside = (v >= lo) & (v <= hi)
    scale = bins / (hi - lo) if hi > lo else 0.0
    index[inside] = np.clip(np.floor((v[inside] - lo) * scale), 0, bins - 1).astype(np.int64)
    return index


def _finite(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return values[mask & np.isfinite(values)].astype(np.float64)


def _bin_counts(values: np.ndarray, mask: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts below ``lo``, in the ``bins`` bins of [lo, hi] and above ``hi``: (1, 1, bins + 2)."""
    return np.bincount(_bin_index(_finite(values, mask), lo, hi, bins) + 1, minlength=bins + 2)[None, None]


def _gather_bins(values: np.ndarray, mask: np.ndarray, lo: float, hi: float, bins: int, first: int, last: int):
    v = _finite(values, mask)
    index = _bin_index(v, lo, hi, bins)
    return v[(index >= first) & (index <= last)]


def _range_of_bins(values, mask, lo, hi, bins, first, last) -> tuple[float, float]:
    v = _gather_bins(values, mask, lo, hi, bins, first, last)
    return (float(v.min()), float(v.max())) if v.size else (np.inf, -np.inf)


def masked_percentile(values, mask, q: float, compute) -> float:
    """``np.percentile(values[mask], q)`` (linear interpolation) of Dask arrays, without bringing
    them to one process: histogram passes narrow the range to the bins holding the two order
    statistics needed, whose values (at most a few tens of thousands) are then gathered.

    Parameters
    ----------
    values : dask.array.Array (2-D, float)
    mask : dask.array.Array of bool, same chunks
    q : float
        Percentile in [0, 100].
    compute : callable
        ``compute(*collections) -> tuple`` of computed results (e.g. ``dask.compute`` or a
        client's ``compute(..., sync=True)``).
    """
    import dask.array as da
    from dask import delayed

    mask = mask.rechunk(values.chunks)
    keep = mask & da.isfinite(values)
    count, lo, hi = compute(keep.sum(), da.where(keep, values, np.inf).min(), da.where(keep, values, -np.inf).max())
    count, lo, hi = int(count), float(lo), float(hi)
    if count == 0:
        return float("nan")
    rank = q / 100.0 * (count - 1)
    ranks = [math.floor(rank), min(math.floor(rank) + 1, count - 1)]
    while True:
        if not hi > lo:
            return lo
        counts = da.map_blocks(_bin_counts, values, mask, lo, hi, _BINS, dtype=np.int64, chunks=(1, 1, _BINS + 2),
                               new_axis=2).sum(axis=(0, 1))
        (counts,) = compute(counts)
        # values up to each bin (those below lo included); the binning is monotone in the value,
        # so the k-th value overall is in the first bin whose cumulative count exceeds k
        cumulative = counts[0] + np.cumsum(counts[1:-1])
        first = int(np.searchsorted(cumulative, ranks[0], side="right"))
        last = int(np.searchsorted(cumulative, ranks[1], side="right"))
        before = int(cumulative[first - 1]) if first > 0 else int(counts[0])
        held = int(cumulative[last]) - before
        if held <= _GATHER:
            pieces = [delayed(_gather_bins, pure=True)(v, m, lo, hi, _BINS, first, last)
                      for v, m in zip(values.to_delayed().ravel(), mask.to_delayed().ravel(), strict=True)]
            ordered = np.sort(np.concatenate(compute(*pieces)))
            a, b = ordered[ranks[0] - before], ordered[ranks[1] - before]
            return float(a + (b - a) * (rank - ranks[0]))
        # the next range: exactly the values of the selected bins (their min and max), so no
        # value changes side by rounding of bin edges
        pieces = [delayed(_range_of_bins, pure=True)(v, m, lo, hi, _BINS, first, last)
                  for v, m in zip(values.to_delayed().ravel(), mask.to_delayed().ravel(), strict=True)]
        ranges = np.array(compute(*pieces))
        lo, hi = float(ranges[:, 0].min()), float(ranges[:, 1].max())


def normalization_factor(obj, illumination, compute, percentile: float = 98.0,
                         illumination_max: float | None = None) -> complex:
    """The factor :func:`xmulti.ptycho.reconstruct.normalize_ambiguities` multiplies the object by
    (phase ``percentile`` at 0 and amplitude ``percentile`` at 1 on the well-illuminated region),
    from Dask arrays by reductions (``illumination_max``: the illumination's maximum, if known)."""
    import dask.array as da

    if illumination_max is None:
        (illumination_max,) = compute(illumination.max())
    region = illumination >= 0.1 * np.float32(illumination_max)
    total, count = compute(da.where(region, obj, 0).astype(np.complex128).sum(), region.sum())
    mean = complex(total) / max(int(count), 1)
    rotated = da.angle(obj * np.complex128(np.exp(-1j * np.angle(mean))))
    phase0 = masked_percentile(rotated, region, percentile, compute) + np.angle(mean)
    amp0 = masked_percentile(da.abs(obj), region, percentile, compute)
    return complex(np.complex64(np.exp(-1j * phase0) / max(amp0, 1e-30)))


def lazy_result_dataset(obj, probe, positions_px, errors, origin, dx_um: float, positions_um, attrs: dict,
                        compute, block: int):
    """:func:`xmulti.ptycho.reconstruct.result_dataset` for a stitched object given as a Dask array:
    the same variables, coordinates and attributes, with ``phase``, ``amplitude`` and
    ``illumination`` as Dask arrays of ``block``-square chunks."""
    from .reconstruct import assemble_result

    illum = illumination_blocks(probe, positions_px, obj.shape, block)
    (illum_max,) = compute(illum.max())
    factor = np.complex64(normalization_factor(obj, illum, compute, illumination_max=float(illum_max)))
    return assemble_result(obj * factor, illum / np.float32(illum_max), probe / factor, positions_px, errors,
                           origin, dx_um, positions_um, attrs)
