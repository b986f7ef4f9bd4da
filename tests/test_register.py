"""Co-registration: footprint blur, resampling between grids, residual-shift check (issue 7)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from xmulti.errors import InvalidInputError
from xmulti.grid import image_axes_um, raster_axes_um
from xmulti.register import (
    correct_shift,
    estimate_shift,
    footprint_blur,
    footprint_radius_um,
    maps_to_phase_grid,
    phase_to_scan_grid,
    probe_intensity,
)
from xmulti.simulate import make_scan


def _phase(scan) -> xr.DataArray:
    y, x = image_axes_um(scan.object.shape, scan.pixel_size_um, scan.origin_um)
    return xr.DataArray(np.angle(scan.object), dims=("y", "x"), coords={"y": y, "x": x}, attrs={"units": "rad"})


def _scan_map(scan, values, shift_um=(0.0, 0.0)) -> xr.DataArray:
    """A per-position quantity on the scan grid, with coordinates from positions + shift."""
    ny, nx = scan.config.scan_shape
    y, x = raster_axes_um(scan.positions_um + np.asarray(shift_um), (ny, nx))
    return xr.DataArray(np.asarray(values, float).reshape(ny, nx), dims=("y", "x"), coords={"y": y, "x": x})


@pytest.fixture(scope="module")
def scan():
    return make_scan("tiny", seed=1)


def test_footprint_blur_is_the_footprint_weighted_sum():
    rng = np.random.default_rng(0)
    image = rng.random((40, 50))
    kernel = rng.random((8, 9))  # asymmetric, even and odd sizes: catches flips and off-by-one
    kernel /= kernel.sum()
    out = footprint_blur(image, kernel)
    # ndimage.correlate puts the kernel centre at (N//2, M//2), as the beam centre of a probe array
    expected = ndimage.correlate(image, kernel, mode="constant")
    assert np.abs(out - expected)[6:-6, 6:-6].max() < 1e-12
    # NaN pixels are left out and the weights renormalised: a constant stays constant
    holes = np.full((30, 30), 2.5)
    holes[10:13, 5:20] = np.nan
    blurred = footprint_blur(holes, kernel)
    assert np.nanmax(np.abs(blurred - 2.5)) < 1e-12
    assert np.isfinite(blurred[11, 12])


def test_phase_blurred_by_probe_predicts_the_xrf_matrix_signal():
    # S follows the matrix, so its noise-free counts are proportional to the footprint-weighted
    # thickness, i.e. to -phase blurred by the probe intensity (no jitter, flux or dead-time noise)
    scan = make_scan("tiny", seed=2, jitter_px=0.0, i0_fluctuation=0.0, dead_time_fraction=0.0)
    s_index = scan.elements.index("S")
    counts = _scan_map(scan, scan.line_counts[:, s_index])
    predicted = phase_to_scan_grid(_phase(scan), scan.probe, counts, sign=-1.0)
    ratio = (counts / predicted).values[counts.values > 0.2 * counts.values.max()]
    assert ratio.std() / ratio.mean() < 0.005
    assert np.corrcoef(predicted.values.ravel(), counts.values.ravel())[0, 1] > 0.9999


def test_footprint_radius_of_the_probe(scan):
    intensity = probe_intensity(scan.probe)
    assert intensity.sum() == pytest.approx(1.0)
    radius = footprint_radius_um(intensity, scan.pixel_size_um, 0.95)
    # the zone-plate footprint has a geometric diameter of probe_diameter_px (plus diffraction tails)
    nominal = scan.config.probe_diameter_px / 2 * scan.pixel_size_um
    assert 0.8 * nominal < radius < 2.0 * nominal
    # modes add incoherently
    two = probe_intensity(np.stack([scan.probe, scan.probe]))
    assert np.allclose(two, intensity)


def test_maps_to_phase_grid_interpolates_in_the_stage_frame(scan):
    phase = _phase(scan)
    ny, nx = scan.config.scan_shape
    y, x = raster_axes_um(scan.positions_um, (ny, nx))
    plane = xr.Dataset({"Fe": (("y", "x"), 3.0 * y[:, None] - 2.0 * x[None, :] + 1.0, {"units": "counts"})},
                       coords={"y": y, "x": x})
    out = maps_to_phase_grid(plane, phase)
    assert out["Fe"].shape == phase.shape and out["Fe"].attrs["units"] == "counts"
    yy, xx = np.meshgrid(phase["y"].values, phase["x"].values, indexing="ij")
    inside = np.isfinite(out["Fe"].values)
    # a plane is reproduced exactly where the maps reach; NaN beyond the scanned area
    expected = (yy >= y[0]) & (yy <= y[-1]) & (xx >= x[0]) & (xx <= x[-1])
    assert np.array_equal(inside, expected) and inside.sum() > 1000
    assert np.allclose(out["Fe"].values[inside], (3.0 * yy - 2.0 * xx + 1.0)[inside])


def test_no_spatial_overlap_is_a_clear_error(scan):
    phase = _phase(scan)
    far = _scan_map(scan, scan.scatter_counts[:, 1], shift_um=(0.0, 500.0))
    with pytest.raises(InvalidInputError, match="do not overlap"):
        maps_to_phase_grid(far.to_dataset(name="Fe"), phase)
    with pytest.raises(InvalidInputError, match="do not overlap"):
        estimate_shift(far, phase, scan.probe)
    with pytest.raises(InvalidInputError, match="do not overlap"):
        phase_to_scan_grid(phase, scan.probe, far)


def _normalised_compton(scan, seed):
    """Compton counts with Poisson noise, normalised by live time and beam flux (as a user would)."""
    rng = np.random.default_rng(seed)
    norm = scan.live_time_s / scan.real_time_s * scan.beam_factor
    return rng.poisson(scan.scatter_counts[:, 1]) / norm


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("imposed_steps", [(0.37, -0.62), (-0.8, 0.25)])
def test_residual_shift_recovered_to_a_tenth_of_a_step(seed, imposed_steps):
    scan = make_scan("tiny", seed=seed)
    step_um = (1.0 - scan.config.overlap) * scan.config.probe_diameter_px * scan.pixel_size_um
    shift = np.asarray(imposed_steps) * step_um
    compton = _scan_map(scan, _normalised_compton(scan, seed), shift_um=shift)
    phase = _phase(scan)
    est = estimate_shift(compton, phase, scan.probe)
    assert np.abs(np.asarray(est.shift_steps) - imposed_steps).max() < 0.1, str(est)
    assert est.correlation > 0.99
    # corrected maps show no residual shift
    again = estimate_shift(correct_shift(compton, est.shift_um), phase, scan.probe)
    assert np.abs(again.shift_steps).max() < 0.1
    assert "shift_corrected_um" in correct_shift(compton, est.shift_um).attrs


def test_fly_scan_lag_along_the_fast_axis(scan):
    step_um = (1.0 - scan.config.overlap) * scan.config.probe_diameter_px * scan.pixel_size_um
    lag = 0.45 * step_um
    compton = _scan_map(scan, _normalised_compton(scan, 7), shift_um=(0.0, lag))
    est = estimate_shift(compton, _phase(scan), scan.probe, fast_axis_only=True)
    assert est.shift_um[0] == 0.0
    assert abs(est.fly_scan_lag_um - lag) < 0.1 * step_um
    assert "steps" in str(est)


def test_shift_check_robust_to_smooth_phase_errors():
    # a reconstruction may lose low spatial frequencies and carry a phase ramp; the high-pass
    # keeps the shift estimate on the edges
    scan = make_scan("tiny", seed=2)
    step_um = (1.0 - scan.config.overlap) * scan.config.probe_diameter_px * scan.pixel_size_um
    imposed = np.array([0.3, -0.45])
    compton = _scan_map(scan, _normalised_compton(scan, 3), shift_um=imposed * step_um)
    phase = _phase(scan)
    yy, xx = np.meshgrid(np.linspace(-1, 1, phase.shape[0]), np.linspace(-1, 1, phase.shape[1]), indexing="ij")
    smooth_error = 0.08 * yy - 0.05 * xx + 0.1 * np.exp(-((yy - 0.3) ** 2 + (xx + 0.2) ** 2) / 0.5)
    est = estimate_shift(compton, phase + smooth_error, scan.probe)
    assert np.abs(np.asarray(est.shift_steps) - imposed).max() < 0.1, str(est)
