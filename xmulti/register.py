"""Co-registration of XRF maps (scan grid) and the ptychographic phase (object grid).

Both modalities share the scan positions and live in the same stage frame: every image has
``y``, ``x`` coordinates of pixel centres in um, so resampling is plain interpolation, with no
hidden offsets. They do not share resolution: an XRF map is the sample seen through the probe
footprint (hundreds of nm), the phase image is sampled at the object pixel (tens of nm). For a
fair comparison the phase is blurred by the probe *intensity* before it is sampled on the scan
grid: the XRF signal at beam position ``p`` is ``sum_r I(r - p) c(r)`` with ``I`` the normalised
probe intensity centred on the beam (probe pixel ``(N//2, N//2)``).

A residual shift between modalities (a stage-encoder or fly-scan lag, a detector timing offset)
is found by maximising the normalised cross-correlation between an XRF map and a prediction
of it from the phase (matrix mass blurred by the probe), evaluated at continuous (subpixel)
shifts; fly-scan lag shows as a shift along the fast axis ``x``.

Sign convention of shifts: ``shift_um = (sy, sx)`` means a feature at stage position ``q`` in
the phase image appears at coordinate ``q + shift`` in the XRF map; :func:`correct_shift`
subtracts it from the map's coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .footprint import footprint_blur, footprint_radius_um, probe_intensity

__all__ = [
    "ShiftEstimate",
    "pixel_size_um",
    "overlap_extent_um",
    "maps_to_phase_grid",
    "probe_intensity",
    "footprint_radius_um",
    "footprint_blur",
    "phase_to_scan_grid",
    "estimate_shift",
    "correct_shift",
]


# ----------------------------------------------------------------------------- grids


def pixel_size_um(image, dim: str) -> float:
    """Spacing (um) of a regular ``y`` or ``x`` coordinate of an image (DataArray/Dataset)."""
    coord = np.asarray(image[dim].values, dtype=float)
    if coord.size < 2:
        raise InvalidInputError(f"image coordinate {dim!r} needs at least 2 pixels to have a spacing")
    step = np.diff(coord)
    if np.any(step <= 0):
        raise InvalidInputError(f"image coordinate {dim!r} must increase monotonically (pixel centres in um)")
    return float(np.median(step))


def _extent(image) -> tuple[float, float, float, float]:
    """Pixel-edge extent (y0, y1, x0, x1) in um."""
    dy, dx = pixel_size_um(image, "y"), pixel_size_um(image, "x")
    y, x = image["y"].values, image["x"].values
    return y[0] - dy / 2, y[-1] + dy / 2, x[0] - dx / 2, x[-1] + dx / 2


def overlap_extent_um(a, b) -> tuple[float, float, float, float]:
    """Stage-frame box (y0, y1, x0, x1) in um covered by both images.

    Raises
    ------
    InvalidInputError
        When the images do not overlap (e.g. a map and a phase from different scans).
    """
    ay0, ay1, ax0, ax1 = _extent(a)
    by0, by1, bx0, bx1 = _extent(b)
    box = (max(ay0, by0), min(ay1, by1), max(ax0, bx0), min(ax1, bx1))
    if box[0] >= box[1] or box[2] >= box[3]:
        raise InvalidInputError(
            "the XRF maps and the phase image do not overlap in the stage frame: maps cover "
            f"y {ay0:.3f}..{ay1:.3f} um, x {ax0:.3f}..{ax1:.3f} um; phase covers y {by0:.3f}..{by1:.3f} um, "
            f"x {bx0:.3f}..{bx1:.3f} um"
        )
    return box


def maps_to_phase_grid(maps, phase, method: str = "linear"):
    """Resample XRF maps (scan grid) onto the phase image's grid.

    Parameters
    ----------
    maps : xarray.Dataset or xarray.DataArray
        Maps on ``(y, x)`` with um pixel-centre coordinates.
    phase : xarray.DataArray
        Target grid ``(y, x)`` (um).
    method : str
        Interpolation method of :meth:`xarray.Dataset.interp` ("linear", "nearest", "cubic").

    Returns
    -------
    Same type as ``maps``, on ``phase``'s coordinates; NaN outside the maps' extent (the maps
    are sampled where the beam went, the object grid extends half a probe further).
    """
    overlap_extent_um(maps, phase)
    out = maps.interp(y=phase["y"].values, x=phase["x"].values, method=method)
    out = out.assign_coords(y=phase["y"], x=phase["x"])
    out.attrs = {**maps.attrs, "resampled_to": "phase grid", "resampling": method}
    return out


def _probe_on_grid(probe, phase) -> np.ndarray:
    """Normalised intensity of a probe (array or DataArray) checked against the phase grid."""
    values = getattr(probe, "values", probe)
    intensity = probe_intensity(values)
    if intensity.shape[0] >= phase.shape[0] or intensity.shape[1] >= phase.shape[1]:
        raise InvalidInputError(
            f"the probe ({intensity.shape[0]} x {intensity.shape[1]}) is not smaller than the phase image "
            f"{tuple(phase.shape)}: give the probe on the object grid"
        )
    return intensity


def phase_to_scan_grid(phase, probe, like, sign: float = 1.0):
    """The phase blurred by the probe intensity, sampled on an XRF map's grid.

    Parameters
    ----------
    phase : xarray.DataArray (y, x)
        Phase (rad) on the object grid, um pixel-centre coordinates.
    probe : array-like (N, N) or (modes, N, N)
        Complex probe on the object grid (same pixel size as ``phase``).
    like : xarray.DataArray or Dataset
        Supplies the target ``y``, ``x`` coordinates (the scan grid).
    sign : float
        Multiplies the phase (``-1`` turns it into a quantity that grows with matter).

    Returns
    -------
    xarray.DataArray on ``like``'s grid (NaN where the footprint leaves the phase image).
    """
    import xarray as xr

    overlap_extent_um(like, phase)
    blurred = footprint_blur(sign * np.asarray(phase.values, dtype=float), _probe_on_grid(probe, phase))
    image = xr.DataArray(blurred, dims=("y", "x"), coords={"y": phase["y"].values, "x": phase["x"].values})
    out = image.interp(y=like["y"].values, x=like["x"].values).assign_coords(y=like["y"], x=like["x"])
    out.attrs = {
        "units": phase.attrs.get("units", "rad"),
        "long_name": "phase blurred by the probe intensity" + (" (sign flipped)" if sign < 0 else ""),
    }
    return out


# ----------------------------------------------------------------------------- residual shift


@dataclass(frozen=True)
class ShiftEstimate:
    """Residual shift of an XRF map relative to the phase image.

    Attributes
    ----------
    shift_um : (sy, sx)
        A feature at stage position ``q`` in the phase appears at ``q + shift`` in the map (um).
    step_um : (dy, dx)
        Scan step (map pixel size) in um.
    correlation : float
        Pearson correlation of the map with the shifted prediction at the optimum.
    n_pixels : int
        Map pixels used.
    """

    shift_um: tuple[float, float]
    step_um: tuple[float, float]
    correlation: float
    n_pixels: int

    @property
    def shift_steps(self) -> tuple[float, float]:
        """The shift in scan steps (map pixels), (y, x)."""
        return (self.shift_um[0] / self.step_um[0], self.shift_um[1] / self.step_um[1])

    @property
    def fly_scan_lag_um(self) -> float:
        """Shift along the fast (x) axis, um: the lag of a fly scan."""
        return self.shift_um[1]

    def __str__(self) -> str:
        sy, sx = self.shift_steps
        return (
            f"residual shift XRF vs phase: y {self.shift_um[0]:+.4f} um ({sy:+.2f} steps), "
            f"x {self.shift_um[1]:+.4f} um ({sx:+.2f} steps); correlation {self.correlation:.3f} "
            f"over {self.n_pixels} map pixels"
        )


def _neg_correlation(values: np.ndarray, predicted: np.ndarray) -> float:
    a = values - values.mean()
    b = predicted - predicted.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return 0.0 if norm == 0 else -float((a * b).sum() / norm)


def estimate_shift(
    xrf_map,
    phase,
    probe,
    *,
    sign: float = -1.0,
    max_shift_steps: float = 2.0,
    fast_axis_only: bool = False,
    highpass_steps: float | None = 3.0,
) -> ShiftEstimate:
    """Residual shift between an XRF map and the phase, by subpixel cross-correlation.

    The prediction is ``sign * phase`` blurred by the probe intensity on the object grid (matter
    gives negative phase, so ``sign=-1`` predicts maps that grow with mass: scatter, total
    counts, S, P, K). The map is compared with the prediction sampled (cubic spline) at the
    map's coordinates minus a trial shift; the shift maximising the Pearson correlation is
    found on a coarse grid (quarter steps) and refined by Nelder-Mead. The set of map pixels is
    fixed for all trial shifts (those whose prediction stays inside the phase image).

    Parameters
    ----------
    xrf_map : xarray.DataArray (y, x)
        Scan-grid map (um coordinates), e.g. Compton scatter or total counts.
    phase : xarray.DataArray (y, x)
        Phase (rad) on the object grid.
    probe : array-like
        Complex probe on the object grid.
    sign : float
        Sign relating phase to the map (``-1``: the map grows with matter).
    max_shift_steps : float
        Search range (scan steps) on each axis.
    fast_axis_only : bool
        Search along ``x`` only (fly-scan lag).
    highpass_steps : float or None
        Subtract a Gaussian blur of this width (scan steps) from the map and from each trial
        prediction before correlating them, so smooth errors of a reconstructed phase (lost
        low spatial frequencies, phase ramps) do not pull the estimate; None compares them as
        they are.

    Returns
    -------
    ShiftEstimate
    """
    from scipy import ndimage, optimize

    overlap_extent_um(xrf_map, phase)
    step = (pixel_size_um(xrf_map, "y"), pixel_size_um(xrf_map, "x"))
    py, px = pixel_size_um(phase, "y"), pixel_size_um(phase, "x")
    predicted = footprint_blur(sign * np.asarray(phase.values, dtype=float), _probe_on_grid(probe, phase))
    valid = np.isfinite(predicted)
    # fill the invalid rim with the nearest valid value so the spline has no NaN to spread
    index = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    filled = predicted[tuple(index)] if (~valid).any() else predicted
    coeffs = ndimage.spline_filter(filled, order=3)

    my, mx = np.meshgrid(xrf_map["y"].values, xrf_map["x"].values, indexing="ij")
    values = np.asarray(xrf_map.values, dtype=float)
    fy = (my - float(phase["y"][0])) / py
    fx = (mx - float(phase["x"][0])) / px
    reach_y = 0.0 if fast_axis_only else max_shift_steps * step[0] / py
    reach_x = max_shift_steps * step[1] / px
    eroded = ndimage.binary_erosion(valid, np.ones((2 * int(np.ceil(reach_y)) + 3, 2 * int(np.ceil(reach_x)) + 3)))
    inside = (fy >= 0) & (fy <= phase.shape[0] - 1) & (fx >= 0) & (fx <= phase.shape[1] - 1)
    keep = inside & np.isfinite(values)
    keep[inside] &= eroded[np.round(fy[inside]).astype(int), np.round(fx[inside]).astype(int)]
    if keep.sum() < 6:
        raise InvalidInputError(
            f"only {int(keep.sum())} XRF map pixels overlap the phase image far enough from its edge to "
            f"test shifts of +-{max_shift_steps} steps; reduce max_shift_steps or check the grids"
        )
    if highpass_steps:
        # smooth errors of a reconstructed phase (lost low frequencies, ramps) bias a plain
        # correlation; the same high-pass on map and prediction keeps the edges, which fix the shift
        fill = float(np.nanmedian(values[keep]))
        values = values - ndimage.gaussian_filter(np.where(keep, values, fill), highpass_steps, mode="nearest")

        def filtered(sample: np.ndarray) -> np.ndarray:
            return (sample - ndimage.gaussian_filter(sample, highpass_steps, mode="nearest"))[keep]
    else:

        def filtered(sample: np.ndarray) -> np.ndarray:
            return sample[keep]

    values = values[keep]

    def cost(shift_steps: np.ndarray) -> float:
        sy = 0.0 if fast_axis_only else shift_steps[0]
        sx = shift_steps[-1]
        coords = np.stack([(fy - sy * step[0] / py).ravel(), (fx - sx * step[1] / px).ravel()])
        sample = ndimage.map_coordinates(coeffs, coords, order=3, prefilter=False, mode="nearest")
        return _neg_correlation(values, filtered(sample.reshape(fy.shape)))

    grid = np.arange(-max_shift_steps, max_shift_steps + 1e-9, 0.25)
    trials = [np.array([g]) for g in grid] if fast_axis_only else [np.array([a, b]) for a in grid for b in grid]
    start = min(trials, key=cost)
    best = optimize.minimize(cost, start, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-9})
    found = best.x if best.fun <= cost(start) else start
    sy = 0.0 if fast_axis_only else float(found[0])
    sx = float(found[-1])
    return ShiftEstimate(
        shift_um=(sy * step[0], sx * step[1]),
        step_um=step,
        correlation=-float(min(best.fun, cost(start))),
        n_pixels=int(keep.sum()),
    )


def correct_shift(maps, shift_um: tuple[float, float]):
    """Maps moved into the phase's frame: ``shift_um`` (from :func:`estimate_shift`) is subtracted
    from their ``y``, ``x`` coordinates; the correction is recorded in ``attrs``."""
    sy, sx = (float(v) for v in shift_um)
    out = maps.assign_coords(y=maps["y"] - sy, x=maps["x"] - sx)
    out["y"].attrs = dict(maps["y"].attrs)
    out["x"].attrs = dict(maps["x"].attrs)
    out.attrs = {**maps.attrs, "shift_corrected_um": [sy, sx]}
    return out
