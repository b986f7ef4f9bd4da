"""Forward model, geometry and subpixel shifts of xmulti.ptycho against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest

from xmulti.errors import InvalidInputError
from xmulti.ptycho import FFT2, far_field, object_grid, window_corners
from xmulti.ptycho.forward import accumulate_patches, extract_patches
from xmulti.ptycho.shift import is_integral, shift_images, shifted_probes
from xmulti.simulate.optics import blob_object, zone_plate_probe


@pytest.fixture(scope="module")
def setup():
    obj = blob_object((60, 64), seed=3)
    probe = zone_plate_probe(16, 8, 1e4, stop_fraction=0.4, astigmatism=0.0).astype(np.complex64)
    return obj, probe


def direct_intensity(probe, obj, corner, frac=(0.0, 0.0)):
    """|fftshift(fft2(shift(P, frac) * O[y:y+N, x:x+N], ortho))|^2 written out longhand."""
    n = probe.shape[0]
    k = np.fft.fftfreq(n)
    ramp = np.exp(-2j * np.pi * (frac[0] * k[:, None] + frac[1] * k[None, :]))
    shifted = np.fft.ifft2(np.fft.fft2(probe) * ramp)
    window = obj[corner[0] : corner[0] + n, corner[1] : corner[1] + n]
    return np.abs(np.fft.fftshift(np.fft.fft2(shifted * window, norm="ortho"))) ** 2


def test_far_field_matches_formula_integral_and_subpixel(setup):
    obj, probe = setup
    n = probe.shape[0]
    # beam centre f: window top-left f - N//2, integer part = corner, remainder shifts the probe
    positions = np.array([[20.0, 21.0], [25.3, 30.75], [30.0, 40.5]])
    frames = far_field(probe, obj, positions)
    for pos, frame in zip(positions, frames, strict=True):
        corner = np.floor(pos - n // 2).astype(int)
        frac = pos - n // 2 - corner
        expect = direct_intensity(probe, obj, corner, frac)
        np.testing.assert_allclose(frame, expect, rtol=2e-4, atol=2e-4 * expect.max())


def test_far_field_conserves_photons(setup):
    obj, probe = setup
    frames = far_field(probe, np.ones_like(obj), np.array([[30.0, 30.0], [31.5, 29.25]]))
    # unit transmission: the orthonormal FFT keeps sum |P|^2 photons (Parseval)
    np.testing.assert_allclose(frames.sum(axis=(1, 2)), np.sum(np.abs(probe) ** 2), rtol=1e-4)


def test_window_convention():
    corner, frac = window_corners(np.array([[10.0, 10.0], [10.25, 9.5], [10.9999999, 3.0]]), 8)
    np.testing.assert_array_equal(corner, [[6, 6], [6, 5], [7, -1]])
    np.testing.assert_allclose(frac, [[0, 0], [0.25, 0.5], [0, 0]], atol=1e-6)


def test_object_grid_holds_all_windows():
    rng = np.random.default_rng(0)
    pos_um = rng.uniform(-1.0, 2.0, (50, 2))
    dx = 0.013
    origin, shape = object_grid(pos_um, dx, 32, margin_px=2)
    corner, _ = window_corners((pos_um - origin) / dx, 32)
    assert corner.min() >= 2
    assert (corner + 32 <= np.array(shape) - 2).all()


def test_integer_fourier_shift_is_a_roll_and_subpixel_is_reversible():
    rng = np.random.default_rng(1)
    img = (rng.standard_normal((2, 16, 16)) + 1j * rng.standard_normal((2, 16, 16))).astype(np.complex64)
    fft = FFT2()
    out = shift_images(img, np.array([[2.0, -3.0], [1.0, 1.0]]), fft)
    np.testing.assert_allclose(out[0], np.roll(img[0], (2, -3), axis=(0, 1)), atol=1e-5)
    back = shift_images(shift_images(img, np.array([[0.3, 0.7], [0.5, 0.1]]), fft),
                        np.array([[-0.3, -0.7], [-0.5, -0.1]]), fft)
    np.testing.assert_allclose(back, img, atol=1e-4)
    spec = fft.forward(img[:1].copy())
    np.testing.assert_allclose(shifted_probes(spec, np.array([[0.0, 0.0]]), fft)[0], img[:1], atol=1e-5)
    assert is_integral(np.array([[0.0, 1.0], [0.99999, 0.0]]))
    assert not is_integral(np.array([[0.0, 0.1]]))


def test_extract_and_accumulate_patches():
    obj = np.arange(100, dtype=np.float32).reshape(10, 10)
    corners = np.array([[0, 0], [2, 3], [2, 3]])
    patches = extract_patches(obj, corners, 4)
    np.testing.assert_array_equal(patches[1], obj[2:6, 3:7])
    target = np.zeros((10, 10), np.float32)
    accumulate_patches(target, np.ones((3, 4, 4), np.float32), corners)
    assert target[3, 4] == 2 and target[0, 0] == 1 and target.sum() == 48


def test_window_leaving_object_is_an_error(setup):
    obj, probe = setup
    with pytest.raises(InvalidInputError, match="leave the object"):
        far_field(probe, obj, np.array([[30.0, 30.0], [5.0, 30.0]]))
