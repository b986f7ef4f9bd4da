"""Calibration on the summed spectrum against the simulator's true detector parameters.

The simulator writes a nominal MCA calibration (offset 0, gain 10.4 eV) while the truth is
offset -12 eV, gain 10.5 eV: about 9 channels off at the Compton peak.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from xmulti.errors import InvalidInputError
from xmulti.simulate import make_scan
from xmulti.xrf.calibrate import DEFAULT_FIT_PARAMETERS, calibrate
from xmulti.xrf.model import Calibration

SETTINGS = dict(scan_shape=(20, 20), frame_size=16, probe_diameter_px=6.0, flux=2e9)


@functools.cache
def scan_for(seed: int = 0, extra: tuple = ()):
    elements = None
    if extra:
        from xmulti.simulate.config import DEFAULT_ELEMENT_LEVELS_UG_CM2

        elements = dict(DEFAULT_ELEMENT_LEVELS_UG_CM2, **dict(extra))
    overrides = dict(SETTINGS, **({"elements": elements} if elements else {}))
    return make_scan("tiny", seed=seed, **overrides)


def _errors_in_channels(result, cfg):
    cal = result.calibration
    channels = np.arange(result.model.channel_slice.start, result.model.channel_slice.stop)
    energy_error = (cal.offset_keV - cfg.energy_offset_keV) + (cal.gain_keV - cfg.energy_gain_keV) * channels
    return (cal.offset_keV - cfg.energy_offset_keV) / cfg.energy_gain_keV, np.abs(energy_error).max() / cfg.energy_gain_keV


@pytest.mark.parametrize(
    "start",
    [
        "nominal",  # the MCA's calibration as written to the file
        "far",  # 50 eV offset error and 1.5 % gain error: ~25 channels off at the Compton peak
    ],
)
def test_recovers_energy_scale_noise_and_fano(start):
    scan = scan_for(0)
    cfg = scan.config
    if start == "nominal":
        initial = Calibration(*cfg.nominal_calibration_keV)
    else:
        initial = Calibration(cfg.energy_offset_keV + 0.05, cfg.energy_gain_keV * 0.985)
    result = calibrate(scan.spectra.sum(axis=0), cfg.energy_keV, initial, list(scan.elements))
    offset_error, worst_error = _errors_in_channels(result, cfg)
    assert abs(offset_error) < 0.1
    assert worst_error < 0.1  # offset and gain together, over the whole fitted range
    cal = result.calibration
    assert cal.noise_fwhm_keV == pytest.approx(cfg.noise_fwhm_keV, rel=0.05)
    assert cal.fano == pytest.approx(cfg.fano, rel=0.05)
    assert cal.compton_width_keV == pytest.approx(cfg.compton_extra_sigma_keV, rel=0.05)
    # the summed fit weights channels with a 2 % line-shape tolerance (robust on real
    # detectors); on a simulator with exact line shapes that costs a few per cent of Poisson
    # chi-square (1.047 with a 0.5 % tolerance, 1.08-1.11 with 2 %)
    assert 0.9 < result.reduced_chi_square < 1.15
    assert result.tolerant_reduced_chi_square < 1.0
    # amplitudes of the summed spectrum: the simulated total counts per element
    for j, element in enumerate(scan.elements):
        assert result.amplitudes[element] == pytest.approx(scan.line_counts[:, j].sum(), rel=0.02)
    assert result.suggested_elements == []


def test_elements_none_finds_the_simulated_elements():
    scan = scan_for(1)
    cfg = scan.config
    result = calibrate(
        scan.spectra.sum(axis=0), cfg.energy_keV, Calibration(*cfg.nominal_calibration_keV), None
    )
    assert set(result.elements) == set(scan.elements)
    _, worst_error = _errors_in_channels(result, cfg)
    assert worst_error < 0.1


def test_unmodelled_element_is_suggested_from_residual_peaks():
    scan = scan_for(0, (("Mn", 0.05),))
    cfg = scan.config
    fit_elements = [el for el in scan.elements if el != "Mn"]
    result = calibrate(
        scan.spectra.sum(axis=0), cfg.energy_keV, Calibration(*cfg.nominal_calibration_keV), fit_elements,
    )
    assert result.elements == tuple(fit_elements)  # a given list is fitted as given: Mn is suggested
    assert result.suggested_elements, "the Mn K-alpha peak should stand out of the residuals"
    strongest = result.suggested_elements[0]
    assert strongest["energy_keV"] == pytest.approx(5.895, abs=0.03)
    assert strongest["candidates"][0] == "Mn"
    assert strongest["significance"] > 8
    # and the residuals show it: Pearson residuals around Mn K-alpha are large and positive
    near = np.abs(result.energy_keV - 5.9) < 0.1
    assert result.residuals[near].mean() > 3


def test_bad_input():
    cal = Calibration(0.0, 0.0104)
    spectrum = np.ones(1024)
    spectrum[10] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        calibrate(spectrum, 10.0, cal, ["Fe"])
    with pytest.raises(InvalidInputError, match="one summed spectrum"):
        calibrate(np.ones((2, 1024)), 10.0, cal, ["Fe"])
    with pytest.raises(InvalidInputError, match="cannot fit"):
        calibrate(np.ones(1024), 10.0, cal, ["Fe"], fit_parameters=("offset_keV", "colour"))
    with pytest.raises(InvalidInputError, match="no counts"):
        calibrate(np.zeros(1024), 10.0, cal, ["Fe"])
    with pytest.raises(InvalidInputError, match="unknown element symbol"):
        calibrate(np.ones(1024), 10.0, cal, ["Fe", "Qq"])


def test_pileup_component_recovers_added_sum_peaks():
    from xmulti.xrf.model import build_model

    scan = scan_for(0)
    cfg = scan.config
    summed = scan.expected_spectra.sum(axis=0).astype(float)
    initial = Calibration(*cfg.nominal_calibration_keV)
    plain = calibrate(summed, cfg.energy_keV, initial, list(scan.elements))
    # add 20,000 pile-up counts shaped from the true lines (K K-alpha + Compton is strongest)
    truth_cal = Calibration(cfg.energy_offset_keV, cfg.energy_gain_keV, 0.0, cfg.noise_fwhm_keV, cfg.fano)
    energies, counts = [], []
    for comp in plain.model.components:
        if comp.kind == "element":
            energies += list(comp.line_energies_keV)
            counts += list(plain.amplitudes[comp.name] * np.asarray(comp.line_weights))
    energies += [cfg.energy_keV, 9.81]
    counts += [plain.amplitudes["elastic"], plain.amplitudes["compton"]]
    lines = (np.array(energies), np.array(counts))
    shape = build_model([], cfg.energy_keV, truth_cal, cfg.n_channels, n_continuum=0, scatter=False,
                        pileup_lines=lines, channel_slice=slice(0, cfg.n_channels)).matrix[:, 0]
    # the simulator's lines have no tail; a free tail fraction trades with the 3,000 pile-up
    # counts inside the range under the 2 % shape tolerance, so it is held at 0 here
    no_tail = tuple(p for p in DEFAULT_FIT_PARAMETERS if p != "tail_fraction")
    exact = calibrate(summed + 2e4 * shape, cfg.energy_keV, initial, list(scan.elements), pileup=True,
                      fit_parameters=no_tail)
    # noise-free: the summed fit's families are free (K, L each its own column), which leaves
    # the small pile-up a few per cent of room
    assert exact.amplitudes["pileup"] == pytest.approx(2e4, rel=0.04)
    spectrum = np.random.default_rng(0).poisson(summed + 2e4 * shape).astype(float)
    with_pileup = calibrate(spectrum, cfg.energy_keV, initial, list(scan.elements), pileup=True,
                            fit_parameters=no_tail)
    assert "pileup" in with_pileup.model.names
    # Poisson noise: 3,000 counts in range under a 7e6-count spectrum, weighted with the shape
    # tolerance: within 3 of its own sigmas, and that sigma under a third of the value
    sigma = with_pileup.amplitude_sigmas["pileup"]
    assert 0 < sigma < 2e4 / 3
    assert abs(with_pileup.amplitudes["pileup"] - 2e4) < 3 * sigma
    assert with_pileup.reduced_chi_square == pytest.approx(1.0, abs=0.1)


def test_wrong_element_list_is_a_poor_fit_with_suggestions():
    """A given list missing most elements: the fit is marked poor, the message names the
    ranges it cannot explain and the missing elements, and the energy scale is still right
    (calibrated with the missing elements, which are reported, not fitted)."""
    scan = scan_for(0)
    cfg = scan.config
    result = calibrate(scan.spectra.sum(axis=0), cfg.energy_keV, Calibration(*cfg.nominal_calibration_keV), ["Fe"])
    assert result.elements == ("Fe",)
    assert result.quality == "poor" and "POOR" in result.message and " keV" in result.message
    found = {p["candidates"][0] for p in result.suggested_elements if p["candidates"]}
    assert {"K", "S"} <= found  # the strongest missing lines
    assert "K" in result.message
    _, worst_error = _errors_in_channels(result, cfg)
    assert worst_error < 0.3


def test_quadratic_energy_term_is_recovered():
    """A detector with a quadratic energy scale (3 channels of curvature at the Compton peak):
    fitting ``quadratic_keV`` puts every peak of the fitted range within 0.1 channel again,
    while a linear calibration cannot."""
    quadratic = 3.0e-8  # keV / channel^2: 0.027 keV (2.6 channels) at channel 950
    scan = make_scan("tiny", seed=4, energy_quadratic_keV=quadratic, **SETTINGS)
    cfg = scan.config
    initial = Calibration(*cfg.nominal_calibration_keV)
    summed = scan.spectra.sum(axis=0)
    quad = calibrate(summed, cfg.energy_keV, initial, list(scan.elements),
                     fit_parameters=("offset_keV", "gain_keV", "quadratic_keV", "noise_fwhm_keV", "fano",
                                     "compton_shift_keV", "compton_width_keV"))
    linear = calibrate(summed, cfg.energy_keV, initial, list(scan.elements))

    def worst_channel_error(result):
        cal = result.calibration
        ch = np.arange(result.model.channel_slice.start, result.model.channel_slice.stop, dtype=float)
        fitted = cal.offset_keV + cal.gain_keV * ch + cal.quadratic_keV * ch**2
        true = cfg.energy_offset_keV + cfg.energy_gain_keV * ch + quadratic * ch**2
        return np.abs(fitted - true).max() / cfg.energy_gain_keV

    assert quad.calibration.quadratic_keV == pytest.approx(quadratic, rel=0.1)
    assert worst_channel_error(quad) < 0.1
    assert quad.reduced_chi_square == pytest.approx(1.0, abs=0.1)
    assert worst_channel_error(linear) > 0.3 and linear.reduced_chi_square > quad.reduced_chi_square
