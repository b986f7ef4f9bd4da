"""Figures of co-registered structure and composition (matplotlib, Agg; no pyplot state).

Every function takes xarray images ``(y, x)`` with um pixel-centre coordinates and draws them
at their true stage extent, so a coarse XRF map and a fine phase image overlay without any
resampling. Rows (``y``) increase downwards, as in the arrays. Figures carry a scale bar in um,
colour bars with units and titles saying what is shown; :func:`save_figure` writes PNG, SVG or
PDF by the file's suffix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "image_extent",
    "add_scale_bar",
    "overlay",
    "rgb_composite",
    "overlay_figure",
    "correlation_figure",
    "save_figure",
]

_FORMATS = {".png", ".svg", ".pdf"}
_CHANNELS = ("red", "green", "blue")


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def image_extent(image) -> tuple[float, float, float, float]:
    """``imshow`` extent (left, right, bottom, top) in um of pixel edges, rows downwards."""
    y, x = np.asarray(image["y"].values, float), np.asarray(image["x"].values, float)
    if y.size < 2 or x.size < 2:
        raise InvalidInputError("an image needs at least 2 x 2 pixels to be drawn")
    dy, dx = (y[-1] - y[0]) / (y.size - 1), (x[-1] - x[0]) / (x.size - 1)
    return (x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2)


def _nice_length(span_um: float) -> float:
    """A 1-2-5 length near a fifth of the span."""
    target = span_um / 5
    power = 10 ** np.floor(np.log10(target))
    return float(max(m * power for m in (1, 2, 5) if m * power <= target))


def add_scale_bar(ax, span_um: float, length_um: float | None = None, color: str = "white") -> float:
    """Draw a scale bar (bottom right) labelled in um (or nm under 1 um); return its length."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = length_um or _nice_length(span_um)
    label = f"{length:g} um" if length >= 1 else f"{length * 1e3:g} nm"
    bar = AnchoredSizeBar(ax.transData, length, label, "lower right", pad=0.4, color=color,
                          frameon=False, size_vertical=span_um / 80, label_top=True)
    ax.add_artist(bar)
    return length


def _units(var, default: str) -> str:
    return str(var.attrs.get("units", default))


def _robust_limits(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise InvalidInputError("the image has no finite value to draw")
    lo, hi = np.percentile(finite, [low, high])
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


def overlay(ax, phase, element, *, name: str | None = None, cmap: str = "inferno", alpha: float = 0.7,
            colorbars: bool = True):
    """Phase in grey with an element map on top in a colour map, transparent where it is low.

    The element's opacity rises from 0 at its 5th percentile to ``alpha`` at its 99.5th, so
    structure shows through where there is little of the element.
    """
    import matplotlib as mpl

    name = name or str(element.name or "element")
    p = np.asarray(phase.values, float)
    lo, hi = _robust_limits(p)
    extent = image_extent(phase)
    grey = ax.imshow(p, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    v = np.asarray(element.values, float)
    vlo, vhi = _robust_limits(v, 5.0, 99.5)
    norm = mpl.colors.Normalize(vlo, vhi, clip=True)
    opacity = alpha * np.nan_to_num(np.ma.filled(norm(v), 0.0))
    colour = ax.imshow(v, cmap=cmap, norm=norm, extent=image_extent(element), alpha=opacity,
                       interpolation="nearest")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel("x (um)")
    ax.set_ylabel("y (um)")
    ax.set_title(f"{name} ({_units(element, 'counts')})\nover phase ({_units(phase, 'rad')})")
    # the bar sits bottom right: black on a light background there, white on a dark one
    corner = p[-max(1, p.shape[0] // 8):, -max(1, p.shape[1] // 4):]
    light = np.nanmedian(corner) > (lo + hi) / 2 if np.isfinite(corner).any() else False
    add_scale_bar(ax, extent[1] - extent[0], color="black" if light else "white")
    if colorbars:
        fig = ax.figure
        fig.colorbar(colour, ax=ax, shrink=0.8, label=f"{name} ({_units(element, 'counts')})")
        fig.colorbar(grey, ax=ax, shrink=0.8, label=f"phase ({_units(phase, 'rad')})")
    return colour


def rgb_composite(ax, maps, elements, *, percentile: float = 99.5):
    """Up to three element maps as the red, green and blue channels (each scaled 0..1 at its
    ``percentile``); the title names the channel of each element."""
    from matplotlib.patches import Patch

    if not 1 <= len(elements) <= 3:
        raise InvalidInputError(f"an RGB composite takes 1 to 3 elements, not {len(elements)}")
    first = maps[elements[0]]
    rgb = np.zeros((*first.shape, 3))
    for channel, name in enumerate(elements):
        var = maps[name]
        if var.shape != first.shape:
            raise InvalidInputError(f"maps {elements[0]} and {name} are on different grids")
        v = np.asarray(var.values, float)
        _, top = _robust_limits(v, 0.0, percentile)
        rgb[..., channel] = np.clip(np.nan_to_num(v) / (top if top > 0 else 1.0), 0.0, 1.0)
    extent = image_extent(first)
    ax.imshow(rgb, extent=extent, interpolation="nearest")
    ax.set_xlabel("x (um)")
    ax.set_ylabel("y (um)")
    channels = ", ".join(f"{_CHANNELS[i][0].upper()} {n}" for i, n in enumerate(elements))
    ax.set_title(f"RGB composite: {channels}")
    ax.text(0.01, 0.01, f"each channel 0 to its {percentile:g}th percentile", transform=ax.transAxes,
            color="white", fontsize="x-small", va="bottom")
    ax.legend(handles=[Patch(color=_CHANNELS[i], label=f"{n} ({_units(maps[n], 'counts')})")
                       for i, n in enumerate(elements)], loc="upper right", fontsize="small", framealpha=0.6)
    add_scale_bar(ax, extent[1] - extent[0])


def overlay_figure(phase, maps, elements, *, cmap: str = "inferno", alpha: float = 0.7):
    """One overlay panel per element and, for 2-3 elements, an RGB composite panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not elements:
        raise InvalidInputError("no element to draw")
    missing = [e for e in elements if e not in maps]
    if missing:
        raise InvalidInputError(
            f"element map(s) {', '.join(missing)} not found; available: {', '.join(map(str, maps.data_vars))}"
        )
    panels = len(elements) + (1 if 2 <= len(elements) <= 3 else 0)
    fig = _figure(5.2 * panels, 4.6)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, name in zip(axes, elements, strict=False):
        overlay(ax, phase, maps[name], name=name, cmap=cmap, alpha=alpha)
    if panels > len(elements):
        rgb_composite(axes[-1], maps, list(elements))
    return fig


def correlation_figure(x, y, *, region=None, xlabel: str = "x", ylabel: str = "y", bins: int = 40,
                       title: str | None = None):
    """2-D histogram (log counts) and a scatter coloured by region of two matched quantities.

    Parameters
    ----------
    x, y : array-like
        Values at the same pixels (e.g. phase-derived mass and an element at XRF resolution).
    region : array-like of int, optional
        Region label of each pixel (0 = background) for the scatter's colours.
    xlabel, ylabel : str
        Axis labels, with units.
    """
    import matplotlib as mpl

    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        raise InvalidInputError("fewer than 2 pixels with finite values on both axes: nothing to correlate")
    reg = np.zeros(x.size, int) if region is None else np.asarray(region).ravel()
    x, y, reg = x[ok], y[ok], reg[ok]
    fig = _figure(10.5, 4.4)
    ax_h, ax_s = fig.subplots(1, 2)
    counts, _, _, image = ax_h.hist2d(x, y, bins=bins, norm=mpl.colors.LogNorm(), cmap="viridis")
    fig.colorbar(image, ax=ax_h, label="pixels per bin")
    ax_h.set_title("2-D histogram of matched pixels")
    for k in np.unique(reg):
        sel = reg == k
        ax_s.scatter(x[sel], y[sel], s=8, alpha=0.7, label="background" if k == 0 else f"region {k}")
    ax_s.legend(fontsize="small")
    ax_s.set_title("pixels by region")
    r = np.corrcoef(x, y)[0, 1] if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
    for ax in (ax_h, ax_s):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.suptitle(title or f"{ylabel} vs {xlabel}: Pearson r = {r:.3f}, n = {x.size}")
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write a figure as PNG, SVG or PDF (by suffix); SVG keeps text as text (editable, searchable)."""
    import matplotlib as mpl

    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise InvalidInputError(f"{path}: figure format must be one of {', '.join(sorted(_FORMATS))}")
    if not path.parent.exists():
        raise InvalidInputError(f"{path}: directory {path.parent} does not exist")
    with mpl.rc_context({"svg.fonttype": "none"}):
        fig.savefig(path, dpi=dpi)
    return path
