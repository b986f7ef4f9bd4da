"""SNIP background estimate, vectorised over spectra (no Python loop over pixels).

Statistics-sensitive Non-linear Iterative Peak-clipping (Ryan et al., Nucl. Instrum. Methods B
34, 396 (1988)), in the decreasing-window form (Morhac et al., Nucl. Instrum. Methods A 401,
113 (1997)): the spectrum is compressed with ``v = log(log(sqrt(y + 1) + 1) + 1)`` (LLS), then
for window half-widths ``p = m, m-1, ..., 1`` every channel is replaced by
``min(v[i], (v[i - p] + v[i + p]) / 2)``; the result is expanded back. Each step is one array
operation on a whole chunk of spectra, so the cost is ``m`` passes over the chunk; channels are
summed in groups first (``decimate``) so wide windows stay cheap.

SNIP clips Poisson noise downwards, so the background is biased low at low counts and the
peak areas above it biased high (see ``docs/XRF.md``); the linear continuum inside the fit
(:mod:`xmulti.xrf.fit`) does not have this bias. SNIP is offered for comparison and for spectra
whose continuum the smooth basis cannot follow.
"""

from __future__ import annotations

import numpy as np

__all__ = ["snip_background"]


def snip_background(
    spectra, width_channels: int, smooth_channels: int = 0, decimate: int | None = None, xp=np
):
    """SNIP background of spectra along the last axis.

    Parameters
    ----------
    spectra : ndarray (..., n_channels)
        Counts (any real dtype; computed in float32).
    width_channels : int
        Largest clipping half-width (channels), about the FWHM of the widest peak or a bit more.
    smooth_channels : int
        Optional moving-average half-width applied before clipping (0: none; not used when
        decimating, which sums channels already).
    decimate : int, optional
        Sum groups of this many channels before clipping and interpolate the background back
        (linear): the background is smooth on the scale of the window, so this changes it
        little while dividing the work by about ``decimate^2``. Default ``width // 16``
        (at least 1); 1 switches it off.
    xp : module
        Array module (numpy or cupy).

    Returns
    -------
    ndarray (..., n_channels) float32
        Background counts per channel.
    """
    y = xp.asarray(spectra, dtype=xp.float32)
    n_full = y.shape[-1]
    factor = max(1, int(width_channels) // 16) if decimate is None else max(1, int(decimate))
    if factor > 1:
        n_groups = n_full // factor  # trailing channels beyond whole groups are interpolated
        binned = y[..., 0 : n_groups * factor : factor].copy()
        for offset in range(1, factor):  # strided adds: faster than a reduction over a short axis
            binned += y[..., offset : n_groups * factor : factor]
        background = _snip(binned, max(1, round(width_channels / factor)), 0, xp) / factor
        # linear interpolation from group centres back to channels (edges held)
        position = (xp.arange(n_full, dtype=xp.float32) + 0.5) / factor - 0.5
        position = xp.clip(position, 0, n_groups - 1)
        low = xp.minimum(position.astype(xp.int64), max(n_groups - 2, 0))
        frac = (position - low).astype(xp.float32)
        high = xp.minimum(low + 1, n_groups - 1)
        out = background[..., low] * (1 - frac) + background[..., high] * frac
        return out.astype(xp.float32)
    return _snip(y, int(width_channels), smooth_channels, xp)


def _snip(y, width_channels: int, smooth_channels: int, xp):
    """SNIP on float32 spectra (last axis), no decimation."""
    if smooth_channels > 0:
        k = 2 * int(smooth_channels) + 1
        padded = xp.concatenate(
            [xp.repeat(y[..., :1], smooth_channels, -1), y, xp.repeat(y[..., -1:], smooth_channels, -1)],
            axis=-1,
        )
        c = xp.cumsum(padded, axis=-1, dtype=xp.float32)
        c = xp.concatenate([xp.zeros_like(c[..., :1]), c], axis=-1)
        y = (c[..., k:] - c[..., :-k]) / k
    # channel-major layout: every shifted slice below is one contiguous block (5x faster than
    # strided rows)
    v = xp.ascontiguousarray(xp.moveaxis(y, -1, 0))
    v = xp.log(xp.log(xp.sqrt(xp.maximum(v, 0) + 1) + 1) + 1)
    n = v.shape[0]
    mean = xp.empty_like(v)
    for p in range(int(width_channels), 0, -1):
        if 2 * p >= n:
            continue
        m = mean[: n - 2 * p]
        xp.add(v[: n - 2 * p], v[2 * p :], out=m)
        m *= 0.5
        xp.minimum(v[p : n - p], m, out=v[p : n - p])
    background = (xp.exp(xp.exp(v) - 1) - 1) ** 2 - 1
    return xp.moveaxis(xp.maximum(background, 0).astype(xp.float32), 0, -1)
