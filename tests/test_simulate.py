"""Physics of the simulator: line energies, geometry, Poisson statistics, probe normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from xmulti import physics
from xmulti.errors import InvalidInputError
from xmulti.simulate import make_scan
from xmulti.simulate.optics import (
    far_field_intensity,
    gather_windows,
    shifted_probes,
    window_indices,
)


@pytest.mark.parametrize("symbol", ["P", "S", "K", "Ca", "Fe", "Cu", "Zn"])
def test_summed_spectrum_peaks_sit_on_xraylib_line_energies(symbol):
    # one element at a time, so a neighbour's line (K Kb under Ca Ka) does not pull the peak
    scan = make_scan("tiny", seed=11, flux=2e10, elements={symbol: 1.0})
    total = scan.spectra.sum(axis=0).astype(float)
    energy = scan.channel_energy_keV
    gain = scan.config.energy_gain_keV
    lines = physics.emission_lines(symbol, scan.config.energy_keV)
    strongest = max(lines, key=lambda line: line.cross_section_cm2_g)
    # the measured peak is the blend of the unresolved doublet (e.g. K-L3 and K-L2, 13 eV apart
    # for Fe): its centroid is the cross-section-weighted mean energy of the lines within 50 eV
    blend = [line for line in lines if abs(line.energy_keV - strongest.energy_keV) < 0.05]
    centroid = sum(line.energy_keV * line.cross_section_cm2_g for line in blend) / sum(
        line.cross_section_cm2_g for line in blend)
    near = np.flatnonzero(np.abs(energy - centroid) < 3 * gain)
    peak_channel = near[np.argmax(total[near])]
    assert abs(energy[peak_channel] - centroid) <= gain
    assert abs(centroid - strongest.energy_keV) < 0.01  # and the blend sits on the main line


def test_compton_and_elastic_peak_positions():
    from xmulti.simulate.spectra import scatter_components

    scan = make_scan("tiny", seed=0)
    energy = scan.channel_energy_keV
    gain = scan.config.energy_gain_keV
    elastic, compton, continuum = scatter_components(10.0, scan.detector, 0.08)
    # Compton at E0 / (1 + E0/511 (1 - cos 90)) = 9.808 keV, elastic at E0
    assert abs(energy[np.argmax(compton)] - physics.compton_energy_keV(10.0, 90.0)) <= gain
    assert abs(energy[np.argmax(elastic)] - 10.0) <= gain
    # Compton broadening: wider than the detector response at the same energy
    def fwhm(profile):
        return np.count_nonzero(profile > profile.max() / 2) * gain
    assert fwhm(compton) > 1.2 * fwhm(elastic)
    assert continuum.min() >= 0 and continuum[energy > 10.5].max() < 1e-3 * continuum.max()


def test_escape_peak_of_k_ka_has_the_reed_ware_fraction():
    from xmulti.simulate.spectra import element_components

    scan = make_scan("tiny", seed=0)
    det = scan.detector
    spectrum = element_components(("K",), 10.0, det)[0]
    energy = scan.channel_energy_keV
    ka = 3.313
    escape = np.abs(energy - (ka - physics.SI_KA_ESCAPE_KEV)) < 0.15
    parent = np.abs(energy - ka) < 0.25
    measured = spectrum[escape].sum() / (spectrum[parent].sum() + spectrum[escape].sum())
    assert measured == pytest.approx(physics.si_escape_fraction(ka), rel=0.1)
    assert 0.008 < physics.si_escape_fraction(ka) < 0.012  # ~1 % for K Ka
    assert spectrum.sum() == pytest.approx(1.0, rel=1e-3)  # one detected count per unit


def test_object_pixel_size_formula():
    # PTYCHO.md: 10 keV, z = 2 m, N = 256, p = 75 um gives 12.9 nm
    assert physics.object_pixel_size_m(10.0, 2.0, 256, 75e-6) == pytest.approx(12.91e-9, rel=1e-3)
    scan = make_scan("tiny", seed=0)
    cfg = scan.config
    wavelength = 12.398419843e-10 / cfg.energy_keV
    expected_um = wavelength * cfg.detector_distance_m / (cfg.frame_size * cfg.detector_pixel_size_m) * 1e6
    assert scan.pixel_size_um == pytest.approx(expected_um, rel=1e-9)
    # raster step = (1 - overlap) * probe diameter, in object pixels
    step = np.diff(scan.true_positions_um.reshape(*cfg.scan_shape, 2)[:, :, 1], axis=1).mean()
    assert step / scan.pixel_size_um == pytest.approx((1 - cfg.overlap) * cfg.probe_diameter_px, rel=0.05)


def _expected_frames(scan):
    frac = scan.fractional_positions()
    corner, fraction = window_indices(frac, scan.config.frame_size)
    probes = shifted_probes(scan.probe, fraction)
    waves = probes * gather_windows(scan.object, corner, scan.config.frame_size)
    return far_field_intensity(waves) * scan.beam_factor[:, None, None]


def test_diffraction_is_poisson_around_the_far_field_of_probe_times_object(tiny_scan):
    scan, _ = tiny_scan
    expected = _expected_frames(scan)
    good = (expected > 20) & ~scan.mask[None]
    z = (scan.diffraction[good] - expected[good]) / np.sqrt(expected[good])
    assert abs(z.mean()) < 0.05
    assert z.var() == pytest.approx(1.0, abs=0.05)
    assert np.all(scan.diffraction[:, scan.mask] == 0)  # dead pixels read zero


def test_probe_normalisation_and_frame_totals(tiny_scan):
    scan, _ = tiny_scan
    assert np.sum(np.abs(scan.probe) ** 2) == pytest.approx(scan.config.photons_per_frame, rel=1e-9)
    # Parseval: a frame's expected total = incident photons x beam factor x transmitted fraction
    expected = _expected_frames(scan).sum(axis=(1, 2))
    ratio = expected / (scan.config.photons_per_frame * scan.beam_factor)
    assert np.all(ratio <= 1.0 + 1e-9) and np.all(ratio > 0.9)
    measured = (scan.diffraction.sum(axis=(1, 2)) + 0.0) / expected
    live = ~scan.mask
    assert np.all(np.abs(measured - live.mean()) < 0.02)  # within Poisson and dead-pixel loss


def test_xrf_spectra_are_poisson_and_line_counts_follow_composition(tiny_scan):
    scan, _ = tiny_scan
    exp = scan.expected_spectra.astype(float)
    good = exp > 20
    z = (scan.spectra[good] - exp[good]) / np.sqrt(exp[good])
    assert abs(z.mean()) < 0.05 and z.var() == pytest.approx(1.0, abs=0.1)
    # positions over a cell see more of every element than positions off the cells
    totals = scan.line_counts.sum(axis=1)
    assert totals.max() > 20 * max(totals.min(), 1e-9)
    # i0 follows the beam flux
    assert np.corrcoef(scan.i0, scan.beam_factor)[0, 1] > 0.9


def test_seeded_and_deterministic():
    a, b, c = make_scan("tiny", seed=5), make_scan("tiny", seed=5), make_scan("tiny", seed=6)
    np.testing.assert_array_equal(a.diffraction, b.diffraction)
    np.testing.assert_array_equal(a.spectra, b.spectra)
    assert not np.array_equal(a.spectra, c.spectra)


def test_position_errors_and_jitter():
    scan = make_scan("tiny", seed=2, position_error_px=3.0)
    error_px = (scan.positions_um - scan.true_positions_um) / scan.pixel_size_um
    assert np.sqrt(np.mean(error_px**2)) == pytest.approx(3.0, rel=0.2)


def test_bad_settings_raise():
    with pytest.raises(InvalidInputError, match="unknown simulation setting"):
        make_scan("tiny", bogus=1)
    with pytest.raises(InvalidInputError, match="unknown preset"):
        make_scan("huge")
    with pytest.raises(InvalidInputError, match="MCA range"):
        make_scan("tiny", n_channels=256)
    with pytest.raises(InvalidInputError, match="unknown element"):
        make_scan("tiny", elements={"Xx": 1.0})
