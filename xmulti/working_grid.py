"""A working grid of bounded size for whole-image analyses (segmentation, per-region statistics).

Cell segmentation needs the whole image at once (thresholds, connectivity, watershed), so its
memory would grow with the scan. The correlate stage therefore works on the phase block-averaged
by the smallest integer factor ``f`` that leaves at most ``max_pixels`` pixels (``f = 1`` for
images already that small), read block by block from the results store; the probe is binned onto
the same grid, and the labels found are expanded back onto the phase grid block by block
(each fine pixel takes the label of the working pixel it lies in). Pixel-centre coordinates in um
stay exact: a working pixel's centre is the mean of its fine pixels' centres.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidInputError

__all__ = ["working_factor", "coarsen_images", "coarse_probe", "expand_labels_lazy"]


def working_factor(shape: tuple[int, ...], max_pixels: int) -> int:
    """Smallest integer factor ``f`` with ``ceil(ny / f) * ceil(nx / f) <= max_pixels`` (at least 1)."""
    if max_pixels < 1:
        raise InvalidInputError(f"max_pixels must be >= 1, got {max_pixels}")
    ny, nx = int(shape[-2]), int(shape[-1])
    factor = max(1, math.floor(math.sqrt(ny * nx / max_pixels)))
    while math.ceil(ny / factor) * math.ceil(nx / factor) > max_pixels:
        factor += 1
    return factor


def coarsen_images(ds, factor: int):
    """``(y, x)`` variables of a (lazy) Dataset block-averaged by ``factor`` (a trailing partial
    block is averaged over the pixels it has), attributes kept; unchanged for ``factor == 1``."""
    if factor == 1:
        return ds
    out = ds.coarsen(y=factor, x=factor, boundary="pad").mean()  # NaN (padding) skipped
    for name in out.variables:
        out[name].attrs = dict(ds[name].attrs)
    # padded edge blocks: their centre is the mean of the real pixels' centres
    for dim in ("y", "x"):
        coord = np.asarray(ds[dim].values, dtype=float)
        starts = np.arange(0, coord.size, factor)
        centres = np.array([coord[s : s + factor].mean() for s in starts])
        out = out.assign_coords({dim: (dim, centres, dict(ds[dim].attrs))})
    out.attrs = dict(ds.attrs)
    return out


def coarse_probe(probe: np.ndarray, factor: int) -> np.ndarray:
    """A probe whose intensity is the given probe's binned ``factor x factor`` onto the working
    grid, beam centre (pixel ``N//2``) in the working pixel ``n//2``: real, ``(n, n)``, for
    :func:`xmulti.footprint.probe_intensity` (only the intensity is meaningful)."""
    intensity = (np.abs(np.asarray(probe)) ** 2).reshape(-1, *np.shape(probe)[-2:]).sum(axis=0)
    if factor == 1:
        return np.sqrt(intensity)
    n = intensity.shape[-1]
    half = math.ceil((n // 2 + 1) / factor) + 1  # working pixels each side of the centre one
    size = (2 * half + 1) * factor
    canvas = np.zeros((size, size))
    start = half * factor + factor // 2 - n // 2  # fine pixel N//2 -> within working pixel `half`
    canvas[start : start + intensity.shape[0], start : start + intensity.shape[1]] = intensity
    binned = canvas.reshape(2 * half + 1, factor, 2 * half + 1, factor).sum(axis=(1, 3))
    return np.sqrt(binned)


def _expand_block(coarse: np.ndarray, factor: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    iy = np.minimum(np.arange(y0, y1) // factor, coarse.shape[0] - 1)
    ix = np.minimum(np.arange(x0, x1) // factor, coarse.shape[1] - 1)
    return coarse[np.ix_(iy, ix)]


def expand_labels_lazy(coarse: np.ndarray, factor: int, shape: tuple[int, int], chunks):
    """Working-grid labels on the fine grid ``shape`` as a Dask array with ``chunks`` (those of the
    phase in the store), each chunk made by its own task from the (small) working labels."""
    import dask
    import dask.array as da

    source = dask.delayed(np.asarray(coarse), pure=True)
    rows, y0 = [], 0
    for h in chunks[0]:
        row, x0 = [], 0
        for w in chunks[1]:
            task = dask.delayed(_expand_block, pure=True)(source, factor, y0, y0 + h, x0, x0 + w)
            row.append(da.from_delayed(task, (h, w), np.asarray(coarse).dtype))
            x0 += w
        rows.append(row)
        y0 += h
    return da.block(rows)
