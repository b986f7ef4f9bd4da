"""Spectral model kernels: line physics from xraylib, detector response, escape, scatter, SNIP."""

from __future__ import annotations

import numpy as np
import pytest

from xmulti import physics
from xmulti.errors import InvalidInputError
from xmulti.xrf.model import (
    Calibration,
    build_model,
    channel_edges_keV,
    continuum_basis,
    element_components,
    gaussian_peaks,
    peak_columns,
    pileup_column,
)
from xmulti.xrf.snip import snip_background

CAL = Calibration(offset_keV=-0.012, gain_keV=0.0105, noise_fwhm_keV=0.11, fano=0.118)
CHANNELS = np.arange(1024)


def _centroid_and_sigma(column, channels=CHANNELS, cal=CAL):
    lo, hi = channel_edges_keV(channels, cal)
    centres = 0.5 * (lo + hi)
    mean = np.sum(column * centres) / column.sum()
    return mean, np.sqrt(np.sum(column * (centres - mean) ** 2) / column.sum())


def test_gaussian_peak_area_centre_and_width_follow_the_detector_formula():
    lo, hi = channel_edges_keV(CHANNELS, CAL)
    sigma = physics.detector_sigma_keV(6.4, CAL.noise_fwhm_keV, CAL.fano)
    column = gaussian_peaks(lo, hi, [6.4], [sigma])[:, 0]
    assert column.sum() == pytest.approx(1.0, abs=1e-9)
    mean, width = _centroid_and_sigma(column)
    assert mean == pytest.approx(6.4, abs=1e-6)
    # binning adds gain^2 / 12 to the variance
    assert width == pytest.approx(np.sqrt(sigma**2 + CAL.gain_keV**2 / 12), rel=1e-4)
    # sigma^2 = (noise / 2.3548)^2 + 0.00385 * fano * E, about 150 eV FWHM at 6.4 keV here
    assert 2.3548 * sigma == pytest.approx(
        np.sqrt(CAL.noise_fwhm_keV**2 + 2.3548**2 * 0.00385 * CAL.fano * 6.4), rel=1e-4
    )


def test_line_ratios_are_xraylib_cross_sections_times_efficiency():
    (fe,) = element_components(["Fe"], 10.0, families=("K",))
    lines = physics.emission_lines("Fe", 10.0, ("K",))
    assert fe.line_energies_keV == tuple(line.energy_keV for line in lines)
    cs = np.array([line.cross_section_cm2_g for line in lines])
    np.testing.assert_allclose(fe.line_weights, cs / cs.sum(), rtol=1e-12)
    column = peak_columns([fe], CHANNELS, CAL, 10.0, escape=False)[:, 0]
    lo, hi = channel_edges_keV(CHANNELS, CAL)
    centres = 0.5 * (lo + hi)
    kb = column[(centres > 6.8) & (centres < 7.4)].sum()
    ka = column[(centres > 6.0) & (centres < 6.75)].sum()
    eff = physics.detector_efficiency(np.array([6.40, 7.06]))
    expected = cs[2:].sum() * eff[1] / (cs[:2].sum() * eff[0])
    assert kb / ka == pytest.approx(expected, rel=0.01)


def test_escape_peak_sits_1740_eV_below_with_reed_ware_fraction():
    (k,) = element_components(["K"], 10.0)
    column = peak_columns([k], CHANNELS, CAL, 10.0)[:, 0]
    lo, hi = channel_edges_keV(CHANNELS, CAL)
    centres = 0.5 * (lo + hi)
    window = (centres > 1.3) & (centres < 2.2)
    escape = column[window].sum()
    assert 0.005 < physics.si_escape_fraction(3.31) < 0.02  # about 1 % at K K-alpha
    energies = np.array(k.line_energies_keV)
    weights = np.array(k.line_weights) * physics.detector_efficiency(energies)
    weights /= weights.sum()
    expected = np.sum(weights * physics.si_escape_fraction(energies))
    assert escape == pytest.approx(expected, rel=0.01)
    mean, _ = _centroid_and_sigma(np.where(window, column, 0.0))
    escape_weights = weights * physics.si_escape_fraction(energies)
    expected_mean = np.average(energies - physics.SI_KA_ESCAPE_KEV, weights=escape_weights)
    assert mean == pytest.approx(expected_mean, abs=0.005)
    assert column.sum() == pytest.approx(1.0, abs=1e-6)


def test_model_agrees_with_the_simulators_independent_spectrum():
    from xmulti.simulate.spectra import DetectorModel
    from xmulti.simulate.spectra import element_components as simulated_components

    detector = DetectorModel(1024, CAL.offset_keV, CAL.gain_keV, 0.0, CAL.noise_fwhm_keV, CAL.fano, 8.0, 0.35)
    elements = ("P", "K", "Fe", "Zn")
    truth = simulated_components(elements, 10.0, detector).T
    comps = element_components(elements, 10.0)
    ours = peak_columns(comps, CHANNELS, CAL, 10.0, be_window_um=8.0, si_thickness_mm=0.35)
    np.testing.assert_allclose(ours, truth, atol=1e-6 * truth.max())


def test_compton_peak_at_free_electron_energy_broadened():
    from xmulti.xrf.model import Component

    cal = CAL.replace(compton_width_keV=0.08, compton_shift_keV=0.0)
    cols = peak_columns([Component("elastic", "scatter"), Component("compton", "scatter")], CHANNELS, cal, 10.0, escape=False)
    elastic_mean, elastic_sigma = _centroid_and_sigma(cols[:, 0])
    compton_mean, compton_sigma = _centroid_and_sigma(cols[:, 1])
    assert elastic_mean == pytest.approx(10.0, abs=1e-4)
    assert compton_mean == pytest.approx(9.808, abs=1e-3)
    det = physics.detector_sigma_keV(9.808, cal.noise_fwhm_keV, cal.fano)
    assert compton_sigma == pytest.approx(np.sqrt(det**2 + 0.08**2 + cal.gain_keV**2 / 12), rel=1e-3)


def test_continuum_basis_is_a_partition_of_unity_ending_at_the_edge():
    ch = np.arange(100, 1000)
    basis = continuum_basis(ch, 8)
    assert basis.shape == (900, 8) and np.all(basis >= 0)
    np.testing.assert_allclose(basis.sum(axis=1), 1.0, atol=1e-12)
    edged = continuum_basis(ch, 8, edge_channel=900.0, edge_width_channels=5.0)
    total = edged.sum(axis=1)
    assert total[ch < 870].min() > 0.99 and total[ch > 930].max() < 1e-3
    assert total[ch == 900][0] == pytest.approx(0.5, abs=0.01)


def test_pileup_sum_peak_energy():
    column = pileup_column([3.31, 6.40], [1.0, 0.0], CHANNELS, CAL)
    mean, _ = _centroid_and_sigma(column)
    assert mean == pytest.approx(6.62, abs=1e-3)


def test_build_model_columns_and_bad_input():
    model = build_model(["K", "Ca", "Fe"], 10.0, CAL, 1024, n_continuum=6)
    assert model.names[:5] == ["K", "Ca", "Fe", "elastic", "compton"]
    assert len(model.indices("continuum")) == 6
    energies = CAL.offset_keV + CAL.gain_keV * np.arange(1024)[model.channel_slice]
    assert energies[0] >= 1.0 and energies[-1] <= 10.6
    with pytest.raises(InvalidInputError, match="unknown element symbol 'Xx'"):
        build_model(["Fe", "Xx"], 10.0, CAL, 1024)
    with pytest.raises(InvalidInputError, match="'Zn' has no .* line excited at 0.9 keV"):
        element_components(["Zn"], 0.9)
    with pytest.raises(InvalidInputError, match="listed twice"):
        element_components(["Fe", "Fe"], 10.0)
    with pytest.raises(InvalidInputError, match="fitted energy range"):
        build_model(["Fe"], 10.0, CAL, 1024, energy_range_keV=(20.0, 30.0))


def test_untied_families_split_k_and_l():
    comps = element_components(["Zn"], 10.0, tie_families=False)
    assert [c.name for c in comps] == ["Zn", "Zn_L"]
    assert [c.family for c in comps] == ["K", "L"]


@pytest.mark.parametrize("decimate", [1, 3])
def test_snip_recovers_a_smooth_background_and_is_vectorised(decimate):
    x = np.arange(1024, dtype=float)
    background = 50.0 * np.exp(-x / 600.0) + 5.0
    peaks = 400.0 * np.exp(-0.5 * ((x - 300) / 6.0) ** 2) + 200.0 * np.exp(-0.5 * ((x - 620) / 7.0) ** 2)
    spectra = np.stack([background + peaks, 2 * (background + peaks)])
    estimate = snip_background(spectra, width_channels=30, decimate=decimate)
    away = (np.abs(x - 300) > 40) & (np.abs(x - 620) > 40) & (x > 40) & (x < 984)
    np.testing.assert_allclose(estimate[0, away], background[away], rtol=0.05)
    under_peak = estimate[0, 295:305].mean() / background[295:305].mean()
    assert 0.9 < under_peak < 1.15
    # rows are independent: the batch equals row-by-row calls
    np.testing.assert_allclose(estimate[1], snip_background(spectra[1], 30, decimate=decimate), rtol=1e-6)
