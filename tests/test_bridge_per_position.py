"""Resolution bridging with a probe that changes along the scan (one footprint per position)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from xmulti.errors import InvalidInputError
from xmulti.footprint import probe_intensity
from xmulti.grid import image_axes_um
from xmulti.joint.bridge import bridge_resolution, footprints, forward_operator, interpolate_map
from xmulti.joint.footprint_op import footprint_matrix
from xmulti.simulate import make_scan


def _nrmse(estimate, truth, where) -> float:
    return float(np.sqrt(np.mean((estimate[where] - truth[where]) ** 2) / np.mean(truth[where] ** 2)))


def test_per_position_operator_is_each_positions_own_footprint():
    rng = np.random.default_rng(3)
    shape = (28, 31)
    positions = np.array([[10.0, 12.0], [4.5, 25.2], [20.0, 6.7], [12.3, 17.8]])
    stack = np.stack([probe_intensity(rng.normal(size=(7, 7)) + 1j * rng.normal(size=(7, 7))) for _ in positions])
    op = forward_operator(stack, positions, shape)
    assert op.per_position
    c = rng.random(shape)
    b = op.forward(c)
    for j in range(len(positions)):  # row j: the shared-footprint operator of footprint j at position j
        alone = forward_operator(stack[j], positions[j : j + 1], shape)
        assert b[j] == pytest.approx(alone.forward(c)[0], rel=1e-12)
    r = rng.random(len(positions))
    assert np.dot(b, r) == pytest.approx(np.sum(c * op.adjoint(r)), rel=1e-12)
    # the same footprint at every position: the FFT operator
    same = forward_operator(np.repeat(stack[:1], len(positions), axis=0), positions, shape)
    shared = forward_operator(stack[0], positions, shape)
    np.testing.assert_allclose(same.forward(c), shared.forward(c), rtol=1e-12)
    np.testing.assert_allclose(same.adjoint(r), shared.adjoint(r), rtol=1e-10, atol=1e-15)
    with pytest.raises(InvalidInputError, match="3 per-position footprints for 4 positions"):
        footprint_matrix(stack[:3], positions, shape)


@pytest.fixture(scope="module")
def drifting_scene():
    """The tiny scan, its probe defocused (blurred) for the right half of the positions, as a
    focus drift would; Poisson counts from those per-position footprints."""
    scan = make_scan("tiny", seed=0, i0_fluctuation=0.0, dead_time_fraction=0.0)
    ny, nx = scan.config.scan_shape
    y, x = image_axes_um(scan.object.shape, scan.pixel_size_um, scan.origin_um)
    blurred = ndimage.gaussian_filter(scan.probe.real, 2.5) + 1j * ndimage.gaussian_filter(scan.probe.imag, 2.5)
    pos = scan.true_positions_um
    right = pos[:, 1] > np.median(pos[:, 1])
    probes = np.where(right[:, None, None], blurred[None], scan.probe[None])
    stack = np.stack([probe_intensity(p) for p in probes])
    frac = scan.fractional_positions()
    per_position = forward_operator(stack, frac, scan.object.shape)
    rng = np.random.default_rng(4)
    truth, maps = {}, {}
    for j, el in enumerate(scan.elements):
        comp = scan.phantom.composition_ug_cm2[j]
        seen = per_position.forward(comp)
        truth[el] = comp * float(seen @ scan.line_counts[:, j] / (seen @ seen))
        maps[el] = (("y", "x"), rng.poisson(per_position.forward(truth[el])).astype(float).reshape(ny, nx),
                    {"units": "counts"})
    maps = xr.Dataset(maps, coords={"y": pos[:, 0].reshape(ny, nx).mean(axis=1),
                                    "x": pos[:, 1].reshape(ny, nx).mean(axis=0)})
    phase = (("y", "x"), np.angle(scan.object))
    shared = xr.Dataset({"phase": phase, "probe": (("probe_y", "probe_x"), scan.probe)}, coords={"y": y, "x": x})
    varying = xr.Dataset({"phase": phase, "probe": (("position", "probe_y", "probe_x"), probes)},
                         coords={"y": y, "x": x})
    return scan, maps, truth, shared, varying


def test_per_position_probe_follows_a_drifting_focus(drifting_scene):
    """With the probe of each position the maps of the elements that follow the matter are closer
    to the truth than with the one probe of the first half, and still at most half the error of
    interpolation; Richardson-Lucy takes the per-position footprints too."""
    scan, maps, truth, shared, varying = drifting_scene
    kw = {"positions_um": scan.true_positions_um, "elements": ["S", "K"], "footprint_power": 1.0}
    with_stack = bridge_resolution(maps, varying, **kw)
    with_one = bridge_resolution(maps, shared, **kw)
    assert with_stack.attrs["per_position_footprint"] == 1 and with_one.attrs["per_position_footprint"] == 0
    interp = interpolate_map(maps, shared["phase"], ["S", "K"])
    where = np.isfinite(interp["S"].values)
    for el in ("S", "K"):
        e_stack, e_one = (_nrmse(r[el].values, truth[el], where) for r in (with_stack, with_one))
        e_interp = _nrmse(interp[el].values, truth[el], where)
        assert e_stack < 0.8 * e_one and e_stack <= 0.5 * e_interp, (el, e_stack, e_one, e_interp)
    rl_stack = bridge_resolution(maps, varying, method="richardson_lucy", **{**kw, "footprint_power": 1.0})
    rl_one = bridge_resolution(maps, shared, method="richardson_lucy", **{**kw, "footprint_power": 1.0})
    assert rl_stack["S"].attrs["poisson_deviance"] < rl_one["S"].attrs["poisson_deviance"]


def test_per_position_probe_with_modes_and_bad_counts(drifting_scene):
    scan, maps, _, shared, varying = drifting_scene
    # modes add incoherently, per position
    modes = varying["probe"].expand_dims(probe_mode=2).transpose("position", "probe_mode", "probe_y", "probe_x")
    stack = footprints(modes, len(scan.true_positions_um))
    np.testing.assert_allclose(stack, footprints(varying["probe"], len(scan.true_positions_um)), rtol=1e-12)
    assert stack.shape == (len(scan.true_positions_um), *scan.probe.shape)
    with pytest.raises(InvalidInputError, match="the probe has 10 positions; the maps have"):
        bridge_resolution(maps, varying.isel(position=slice(0, 10)), elements=["S"])
