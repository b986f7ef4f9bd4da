"""Overlay, composite and correlation figures, rendered and checked (issue 7)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr
from matplotlib.image import imread

from xmulti.cli import main
from xmulti.errors import InvalidInputError
from xmulti.grid import image_axes_um, raster_axes_um
from xmulti.io.results import write_group
from xmulti.simulate import make_scan
from xmulti.viz import (
    _nice_length,
    correlation_figure,
    image_extent,
    overlay_figure,
    save_figure,
)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results store with truth-derived maps (counts on the scan grid) and the true phase."""
    scan = make_scan("tiny", seed=1)
    ny, nx = scan.config.scan_shape
    y, x = raster_axes_um(scan.positions_um, (ny, nx))
    maps = xr.Dataset(
        {e: (("y", "x"), scan.line_counts[:, i].reshape(ny, nx), {"units": "counts"}) for i, e in enumerate(scan.elements)},
        coords={"y": ("y", y, {"units": "um"}), "x": ("x", x, {"units": "um"})},
    )
    py, px = image_axes_um(scan.object.shape, scan.pixel_size_um, scan.origin_um)
    recon = xr.Dataset(
        {
            "phase": (("y", "x"), np.angle(scan.object).astype(np.float32), {"units": "rad"}),
            "amplitude": (("y", "x"), np.abs(scan.object).astype(np.float32), {"units": "1"}),
            "probe": (("probe_y", "probe_x"), scan.probe.astype(np.complex64)),
            "pixel_size": ((), scan.pixel_size_um * 1e3, {"units": "nm"}),
        },
        coords={"y": ("y", py, {"units": "um"}), "x": ("x", px, {"units": "um"})},
        attrs={"energy_keV": scan.config.energy_keV},
    )
    store = tmp_path_factory.mktemp("viz") / "results.zarr"
    write_group(store, "/xrf/elemental_maps", maps)
    write_group(store, "/reconstructed", recon)
    return store, maps, recon, scan


def _chroma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].max(axis=-1) - rgb[..., :3].min(axis=-1)


def test_overlay_png_has_colour_and_the_right_size(results, tmp_path):
    _, maps, recon, _ = results
    fig = overlay_figure(recon["phase"], maps, ["Fe", "Zn"])
    path = save_figure(fig, tmp_path / "overlay.png", dpi=100)
    image = imread(path)
    width, height = fig.get_size_inches() * 100
    assert image.shape[:2] == (round(height), round(width))
    # three panels: Fe overlay, Zn overlay, RGB composite; each half of the figure has colour
    left, right = image[:, : image.shape[1] // 3], image[:, 2 * image.shape[1] // 3 :]
    assert (_chroma(left) > 0.3).mean() > 0.005  # element colour over the grey phase
    rgb = right[..., :3]
    red = (rgb[..., 0] > 0.5) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    green = (rgb[..., 1] > 0.5) & (rgb[..., 0] < 0.3) & (rgb[..., 2] < 0.3)
    assert red.sum() > 20 and green.sum() > 20  # Fe and Zn channels both present
    # grey phase visible: dark, colourless pixels where the cells are
    assert ((_chroma(left) < 0.05) & (left[..., :3].mean(axis=-1) < 0.5)).sum() > 100


def test_overlay_svg_names_what_is_shown(results, tmp_path):
    _, maps, recon, _ = results
    path = save_figure(overlay_figure(recon["phase"], maps, ["Ca"]), tmp_path / "overlay.svg")
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    # titles, units and the scale bar are text in the SVG
    assert "Ca (counts)" in text and "over phase (rad)" in text
    assert "phase (rad)" in text and "x (um)" in text
    assert re.search(r">\s*[0-9.]+ (um|nm)\s*<", text)  # the scale bar label


def test_correlation_figure(results, tmp_path):
    _, maps, recon, scan = results
    from xmulti.register import phase_to_scan_grid

    mass = phase_to_scan_grid(recon["phase"], scan.probe, maps["S"], sign=-1.0)
    fig = correlation_figure(mass.values, maps["S"].values, xlabel="-phase blurred (rad)", ylabel="S (counts)")
    image = imread(save_figure(fig, tmp_path / "corr.png", dpi=80))
    assert (_chroma(image) > 0.3).mean() > 0.001
    assert "Pearson r = 0.99" in fig._suptitle.get_text()
    with pytest.raises(InvalidInputError, match="nothing to correlate"):
        correlation_figure([np.nan, 1.0], [1.0, np.nan])


def test_scale_bar_and_extent_helpers(results):
    _, maps, _, _ = results
    assert _nice_length(7.3) == 1.0 and _nice_length(0.6) == 0.1 and _nice_length(30) == 5.0
    left, right, bottom, top = image_extent(maps["Fe"])
    assert left < maps.x.values[0] < right and top < maps.y.values[0] < bottom  # rows downwards


def test_figure_bad_input(results, tmp_path):
    _, maps, recon, _ = results
    fig = overlay_figure(recon["phase"], maps, ["Fe"])
    with pytest.raises(InvalidInputError, match="figure format"):
        save_figure(fig, tmp_path / "figure.bmp")
    with pytest.raises(InvalidInputError, match="Xx not found"):
        overlay_figure(recon["phase"], maps, ["Xx"])


def test_overlay_command(results, tmp_path, capsys):
    store, _, _, _ = results
    out = tmp_path / "figure.png"
    assert main(["overlay", str(store), "--elements", "Fe,Zn", "-o", str(out)]) == 0
    assert imread(out).shape[0] > 100
    assert main(["overlay", str(store), "--elements", "Fe,Xx", "-o", str(out)]) == 2
    assert "Xx not found" in capsys.readouterr().err
