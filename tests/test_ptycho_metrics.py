"""xmulti.metrics: phase error removes exactly the ptychographic ambiguities; FRC behaves."""

from __future__ import annotations

import numpy as np
import pytest

from xmulti.errors import InvalidInputError
from xmulti.metrics import (
    align_phase,
    fourier_ring_correlation,
    frc_resolution,
    illumination_weight,
    phase_error,
)
from xmulti.simulate.optics import blob_object


@pytest.fixture(scope="module")
def truth():
    return blob_object((96, 96), seed=7)


def test_offset_and_ramp_are_removed(truth):
    yy, xx = np.indices(truth.shape)
    recon = truth * np.exp(1j * (2.5 + 0.03 * yy - 0.05 * xx))
    assert phase_error(recon, truth) < 1e-5
    assert phase_error(recon, truth, ramp=False) > 0.5
    np.testing.assert_allclose(align_phase(recon, truth), truth, atol=1e-5)


def test_error_equals_known_noise_level(truth):
    rng = np.random.default_rng(0)
    sigma = 0.02
    noise = rng.normal(0, sigma, truth.shape)
    recon = truth * np.exp(1j * noise)
    phi = np.angle(truth)
    expected = sigma / phi.std()
    assert phase_error(recon, truth) == pytest.approx(expected, rel=0.05)


def test_weight_restricts_region(truth):
    recon = truth.copy()
    recon[:10] *= np.exp(1j * 1.0)  # a bad, poorly illuminated strip
    w = np.ones(truth.shape)
    w[:12] = 0
    assert phase_error(recon, truth, w) < 1e-5
    assert phase_error(recon, truth) > 0.3
    np.testing.assert_array_equal(illumination_weight(np.array([[0.0, 0.5], [1.0, 0.05]]), 0.1),
                                  [[0, 1], [1, 0]])


def test_frc_identical_noise_and_resolution(truth):
    f, frc = fourier_ring_correlation(np.angle(truth), np.angle(truth))
    assert np.allclose(frc, 1.0)
    rng = np.random.default_rng(1)
    f, frc = fourier_ring_correlation(rng.standard_normal((96, 96)), rng.standard_normal((96, 96)))
    assert np.abs(frc[24:]).mean() < 0.1  # rings of >= 150 pixels: |FRC| ~ 1/sqrt(n)
    # two noisy halves: the more noise, the lower the resolution frequency
    res = []
    for s in (0.01, 0.1):
        a = np.angle(truth) + rng.normal(0, s, truth.shape)
        b = np.angle(truth) + rng.normal(0, s, truth.shape)
        res.append(frc_resolution(*fourier_ring_correlation(a, b)))
    assert res[0] > res[1]
    assert f[0] > 0 and f[-1] < 0.5


def test_metric_input_errors(truth):
    with pytest.raises(InvalidInputError, match="equal shape"):
        phase_error(truth, truth[:-1])
    with pytest.raises(InvalidInputError, match="weight"):
        phase_error(truth, truth, np.zeros(truth.shape))
    with pytest.raises(InvalidInputError, match="flat"):
        phase_error(np.ones((8, 8)), np.ones((8, 8)))
