"""The independent XRF generator (xmulti.simulate.independent_xrf) against xraylib and kinematics.

The generator is the outside data xmulti's calibration and identification are tested against,
so its own physics is checked here independently: line centroids at xraylib energies, K-beta /
K-alpha ratios from xraylib radiative rates, escape peaks 1.74 keV below their parent with the
set fraction, Compton scatter at the Compton energy, the continuum hump where it is put, total
counts conserved, pile-up sums, the map and its layout file.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xraylib

from xmulti.simulate.independent_xrf import (
    Continuum,
    Detector,
    PeakShape,
    Scatter,
    compton_energy_keV,
    element_lines,
    independent_map,
    independent_spectrum,
    outside_cases,
    write_map_scan,
)

DET = Detector(n_channels=2048, offset_keV=-0.02, gain_keV=0.01, fwhm_offset_keV=0.1, fanoprime=1.2e-4)
#: a detector that absorbs every photon of 1-20 keV: line ratios are the emitted ones
BLACK = dataclasses.replace(DET, be_window_um=0.0, si_thickness_um=20000.0)


def _centroid(energy, counts, centre, half_width):
    window = np.abs(energy - centre) < half_width
    return float(np.sum(energy[window] * counts[window]) / np.sum(counts[window]))


def _group_energy(symbol: str, names: tuple[str, ...]) -> float:
    """Radiative-rate-weighted xraylib energy of a group of K lines (same shell: same vacancy)."""
    z = xraylib.SymbolToAtomicNumber(symbol)
    rates, energies = [], []
    for name in names:
        macro = getattr(xraylib, f"{name}_LINE")
        rates.append(xraylib.RadRate(z, macro))
        energies.append(xraylib.LineEnergy(z, macro))
    return float(np.dot(rates, energies) / np.sum(rates))


@pytest.mark.parametrize(
    ("symbol", "detector"),
    [("Ca", BLACK), ("Zn", BLACK), ("Zn", dataclasses.replace(BLACK, quadratic_keV=2e-7, offset_keV=0.05))],
)
def test_gaussian_centroids_at_xraylib_energies(symbol, detector):
    spectrum = independent_spectrum({symbol: 1e6}, 12.0, detector=detector, noise=False)
    e = spectrum.energy_keV
    # Ca K-beta lies 6 sigma above K-alpha, 8x weaker: its centroid window would see K-alpha
    groups = (("KL2", "KL3"), ("KM2", "KM3")) if symbol == "Zn" else (("KL2", "KL3"),)
    for names in groups:
        truth = _group_energy(symbol, names)
        sigma = float(detector.sigma_keV(truth))
        found = _centroid(e, spectrum.expected, truth, 2.5 * sigma)
        local_gain = detector.gain_keV + 2 * detector.quadratic_keV * (truth - detector.offset_keV) / detector.gain_keV
        assert abs(found - truth) / local_gain < 0.05, (names, found, truth)


def test_gaussian_only_is_the_documented_resolution():
    """Pure Gaussians of sigma^2 = (FWHM_OFFSET / 2.3548)^2 + 3.58 E FANOPRIME, checked against
    exact channel integrals (erf differences at the channel edges)."""
    from scipy.special import erf

    spectrum = independent_spectrum({"Ca": 1e6}, 10.0, detector=DET, noise=False)
    edges = DET.energy_keV(np.arange(DET.n_channels + 1) - 0.5)
    exact = np.zeros(DET.n_channels)
    for line in spectrum.lines:
        sigma = np.sqrt((0.1 / 2.3548) ** 2 + 3.58 * line.energy_keV * 1.2e-4)
        exact += 1e6 * line.fraction * np.diff(0.5 * (1 + erf((edges - line.energy_keV) / (np.sqrt(2) * sigma))))
    assert np.max(np.abs(spectrum.expected - exact)) < 1e-4 * exact.max()


def test_total_counts_are_the_given_counts():
    shape = PeakShape(tail_fraction=0.1, tail_gamma=3.0, step_fraction=0.01, shelf_fraction=0.02, escape_fraction=0.01)
    counts = {"S": 2e5, "Fe": 1e6, "Zn": 3e5}
    spectrum = independent_spectrum(counts, 10.0, detector=DET, shape=shape, seed=3)
    for symbol, n in counts.items():
        # the response reaches 0 keV (steps, shelves) and the first channel is at -0.02 keV
        assert spectrum.components[symbol].sum() == pytest.approx(n, rel=2e-3)
    total = sum(counts.values())
    assert abs(spectrum.counts.sum() - total) < 5 * np.sqrt(total)
    assert spectrum.counts.dtype == np.int64 and np.all(spectrum.counts >= 0)


def test_seed_gives_the_same_counts_and_noise_is_poisson():
    a = independent_spectrum({"Fe": 1e5}, 10.0, detector=DET, seed=7)
    b = independent_spectrum({"Fe": 1e5}, 10.0, detector=DET, seed=7)
    c = independent_spectrum({"Fe": 1e5}, 10.0, detector=DET, seed=8)
    assert np.array_equal(a.counts, b.counts) and not np.array_equal(a.counts, c.counts)
    strong = a.expected > 100
    z = (a.counts[strong] - a.expected[strong]) / np.sqrt(a.expected[strong])
    assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2


@pytest.mark.parametrize("fraction", [0.01, 0.02])
def test_escape_peak_below_parent_with_the_set_fraction(fraction):
    si_ka = xraylib.LineEnergy(14, xraylib.KL3_LINE)
    plain = independent_spectrum({"Fe": 1e6}, 10.0, detector=DET, noise=False)
    escaped = independent_spectrum(
        {"Fe": 1e6}, 10.0, detector=DET, shape=PeakShape(escape_fraction=fraction), noise=False
    )
    extra = escaped.expected - plain.expected
    ka = _group_energy("Fe", ("KL2", "KL3"))
    e = plain.energy_keV
    window = np.abs(e - (ka - si_ka)) < 0.25
    # every Fe line is above the Si K edge: the escape peaks hold `fraction` of the counts
    assert extra[window].sum() / plain.expected.sum() == pytest.approx(fraction * 0.88, rel=0.05)
    assert np.clip(extra, 0, None).sum() / plain.expected.sum() == pytest.approx(fraction, rel=1e-3)
    assert abs(_centroid(e, np.clip(extra, 0, None), ka - si_ka, 0.2) - (ka - si_ka)) < 0.1 * DET.gain_keV


def test_no_escape_below_the_si_edge():
    # Al K lines (1.49, 1.56 keV) lie below the Si K edge (1.84 keV): no Si K-shell photoabsorption
    plain = independent_spectrum({"Al": 1e6}, 10.0, detector=DET, noise=False)
    escaped = independent_spectrum({"Al": 1e6}, 10.0, detector=DET, shape=PeakShape(escape_fraction=0.02), noise=False)
    assert np.allclose(plain.expected, escaped.expected)


@pytest.mark.parametrize("symbol", ["Fe", "Zn"])
def test_kbeta_to_kalpha_ratio_is_xraylibs(symbol):
    z = xraylib.SymbolToAtomicNumber(symbol)
    spectrum = independent_spectrum({symbol: 1e6}, 12.0, detector=BLACK, noise=False)
    ka, kb_energy = _group_energy(symbol, ("KL2", "KL3")), _group_energy(symbol, ("KM2", "KM3"))
    e, y = spectrum.energy_keV, spectrum.expected
    half = 0.5 * (kb_energy - ka)
    measured = y[np.abs(e - kb_energy) < half].sum() / y[np.abs(e - ka) < half].sum()
    rate = {}
    for name in ("KL2", "KL3", "KM2", "KM3", "KM4", "KM5", "KN2", "KN3"):
        try:
            rate[name] = xraylib.RadRate(z, getattr(xraylib, f"{name}_LINE"))
        except ValueError:  # no such line in xraylib for this element
            rate[name] = 0.0
    kb = sum(rate[n] for n in ("KM2", "KM3", "KM4", "KM5", "KN2", "KN3"))
    expected = kb / (rate["KL2"] + rate["KL3"])
    # the windows (half the K-alpha - K-beta distance) cut the Gaussians by well under 1 %
    assert measured == pytest.approx(expected, rel=0.01)
    lines = {line.name: line.fraction for line in spectrum.lines}
    assert (lines["KM2"] + lines["KM3"]) / (lines["KL2"] + lines["KL3"]) == pytest.approx(
        (rate["KM2"] + rate["KM3"]) / (rate["KL2"] + rate["KL3"]), rel=1e-6
    )


def test_l_lines_need_their_edges():
    # Pb at 10 keV: L3 edge 13.04 keV not reached, only M lines; at 16 keV all three L shells
    low = {line.family for line in element_lines("Pb", 10.0, DET)}
    high = element_lines("Pb", 16.0, DET)
    assert low == {"M"}
    assert {"L3M5", "L2M4", "L1M3"} <= {line.name for line in high}
    la = next(line for line in high if line.name == "L3M5")
    assert la.energy_keV == pytest.approx(xraylib.LineEnergy(82, xraylib.L3M5_LINE))


@pytest.mark.parametrize("profile", ["gaussian", "voigt", "asymmetric"])
def test_compton_at_the_compton_energy(profile):
    e0, angle = 10.0, 90.0
    ec = compton_energy_keV(e0, angle)
    assert ec == pytest.approx(xraylib.ComptonEnergy(e0, np.pi / 2), abs=1e-4)
    assert ec == pytest.approx(9.808, abs=1e-3)
    scatter = Scatter(elastic_counts=1e5, compton_counts=1e6, angle_deg=angle, compton_profile=profile)
    spectrum = independent_spectrum({}, e0, detector=DET, scatter=scatter, noise=False)
    compton = spectrum.components["compton"]
    peak = spectrum.energy_keV[np.argmax(compton)]
    assert abs(peak - ec) <= DET.gain_keV
    assert spectrum.energy_keV[np.argmax(spectrum.components["elastic"])] == pytest.approx(e0, abs=DET.gain_keV)
    width = np.sum(compton > compton.max() / 2) * DET.gain_keV
    assert width > 2.3548 * float(DET.sigma_keV(ec))  # broader than the detector alone
    if profile == "asymmetric":
        assert compton[spectrum.energy_keV < ec].sum() > 1.5 * compton[spectrum.energy_keV > ec].sum()


def test_scatter_outside_the_recorded_range_is_absent():
    scatter = Scatter(elastic_counts=1e6, compton_counts=1e6)
    spectrum = independent_spectrum({"Fe": 1e5}, 25.0, detector=DET, scatter=scatter, noise=False)
    assert spectrum.components["elastic"].sum() < 1.0
    assert spectrum.components["compton"].sum() < 1.0


def test_continuum_hump_where_it_is_put():
    continuum = Continuum(hump_counts=1e6, hump_centre_keV=5.0, hump_log_width=0.3)
    spectrum = independent_spectrum({}, 10.0, detector=DET, continuum=continuum, noise=False)
    hump = spectrum.components["hump"]
    mode = 5.0 * np.exp(-(0.3**2))  # mode of a lognormal density in E
    assert abs(spectrum.energy_keV[np.argmax(hump)] - mode) < 3 * DET.gain_keV
    assert hump.sum() == pytest.approx(1e6, rel=1e-3)
    # the other shapes: an exponential falls, a ramp falls linearly to zero at E0
    other = independent_spectrum(
        {}, 10.0, detector=DET, noise=False, continuum=Continuum(exp_counts=1e5, ramp_counts=1e5)
    )
    e = other.energy_keV
    ramp, fall = other.components["ramp"], other.components["exponential"]
    assert ramp[np.searchsorted(e, 10.2)] == 0 and ramp[np.searchsorted(e, 2.0)] > ramp[np.searchsorted(e, 6.0)]
    ratio = fall[np.searchsorted(e, 3.0)] / fall[np.searchsorted(e, 5.0)]
    assert ratio == pytest.approx(np.exp(2.0 / Continuum().exp_decay_keV), rel=0.01)


def test_tail_and_step_sit_below_the_peak():
    shape = PeakShape(tail_fraction=0.2, tail_gamma=3.0, step_fraction=0.02)
    plain = independent_spectrum({"Fe": 1e6}, 10.0, detector=DET, noise=False)
    tailed = independent_spectrum({"Fe": 1e6}, 10.0, detector=DET, shape=shape, noise=False)
    e = plain.energy_keV
    below = (e > 5.0) & (e < 6.0)
    above = (e > 7.5) & (e < 9.0)
    assert tailed.expected[below].sum() > 100 * max(plain.expected[below].sum(), 1.0)
    assert tailed.expected[above].sum() == pytest.approx(plain.expected[above].sum(), rel=0.1, abs=10)


def test_pileup_sum_peak_at_twice_the_line():
    spectrum = independent_spectrum({"Fe": 1e6}, 15.0, detector=DET, pileup_fraction=0.01, noise=False)
    pileup = spectrum.components["pileup"]
    ka = _group_energy("Fe", ("KL2", "KL3"))
    assert abs(spectrum.energy_keV[np.argmax(pileup)] - 2 * ka) < 0.03
    # 1 % of the recorded events are sums of two photons: M = N / (1 + p)
    assert pileup.sum() == pytest.approx(0.01 * 1e6 / 1.01, rel=0.02)
    assert spectrum.components["Fe"].sum() == pytest.approx(1e6 * 0.99 / 1.01, rel=1e-3)


def test_map_truth_and_layout(tmp_path):
    import xmulti

    small = dataclasses.replace(DET, n_channels=1024)
    result = independent_map(
        shape=(12, 10), elements=("Ca", "Fe"), mean_counts={"Ca": 300.0, "Fe": 100.0}, detector=small, seed=2
    )
    assert result.counts.shape == (12, 10, 1024) and result.counts.dtype == np.uint32
    assert result.element_counts.shape == (2, 12, 10)
    assert result.element_counts.mean(axis=(1, 2)) == pytest.approx([300.0, 100.0])
    assert np.all(result.element_counts > 0) and result.element_counts[0].std() > 0.1 * 300
    expected_total = result.element_counts.sum() + result.continuum_counts.sum()
    assert abs(result.counts.sum() - expected_total) < 5 * np.sqrt(expected_total) + 0.01 * expected_total
    path = write_map_scan(result, tmp_path / "map.h5")
    tree = xmulti.open_scan(path)
    xrf = tree["xrf"].ds
    assert xrf["spectra"].shape == (120, 1024)
    assert np.array_equal(xrf["spectra"].values, result.counts.reshape(120, 1024))
    assert np.allclose(xrf["energy"].values, result.energy_keV)
    assert tuple(tree.attrs["scan_shape"]) == (12, 10)
    assert tree.attrs["incident_energy_keV"] == 10.0


def test_cases_carry_their_truth():
    cases = outside_cases()
    assert {"bio7", "hump_map", "l_lines", "pileup", "bio7_escape0", "bio7_escape2", "bio7_voigt_compton",
            "scatter_outside_range", "bio7_strong_tails", "ti_vs_ba_is_ti", "s_pb_mo_is_pb",
            "as_vs_pb_is_as"} <= set(cases)
    assert cases["bio7"].elements == ("P", "S", "K", "Ca", "Fe", "Cu", "Zn")
    assert cases["hump_map"].elements == ("Ca", "Fe", "Cu", "Zn")
    for case in cases.values():
        if case.kind == "spectrum":
            assert tuple(case.settings["element_counts"]) == case.elements
        for true, readings in case.alternatives.items():
            assert true in case.elements and true not in readings
    spectrum = cases["ti_vs_ba_is_ba"].make(seed=1)
    assert spectrum.elements == ("Ca", "Ba", "Fe") and spectrum.counts.size == 2048


@pytest.mark.parametrize(
    ("symbol", "incident_energy_keV", "tolerance"),
    [("Ca", 10.0, 0.05), ("Fe", 10.0, 0.05), ("Zn", 10.0, 0.05), ("Ba", 10.0, 0.05), ("Pb", 16.0, 0.15)],
)
def test_jump_ratio_sensitivity_near_kissel(symbol, incident_energy_keV, tolerance):
    """The jump-ratio line intensities (this generator) against xraylib's Kissel cross-sections
    with cascades (another route, the fitter's): close, not equal."""
    from xmulti.simulate.independent_xrf import counts_from_concentrations, relative_sensitivity

    z = xraylib.SymbolToAtomicNumber(symbol)
    kissel = 0.0
    for line in element_lines(symbol, incident_energy_keV, BLACK):
        try:
            kissel += xraylib.CS_FluorLine_Kissel_Cascade(z, getattr(xraylib, f"{line.name}_LINE"), incident_energy_keV)
        except ValueError:  # line without a Kissel cross-section
            pass
    ratio = relative_sensitivity(symbol, incident_energy_keV, BLACK) / kissel
    assert abs(ratio - 1) < tolerance
    counts = counts_from_concentrations({symbol: 0.2, "Fe": 0.8}, incident_energy_keV, 1e6, BLACK)
    assert sum(counts.values()) == pytest.approx(1e6)


def test_continuum_ends_at_the_incident_energy_unless_told():
    continuum = Continuum(hump_counts=1e6, hump_centre_keV=6.0, hump_log_width=0.6)
    e0 = 8.0
    cut = independent_spectrum({}, e0, detector=DET, continuum=continuum, noise=False)
    e = cut.energy_keV
    above = e > e0 + 5 * float(DET.sigma_keV(e0))
    assert cut.expected[above].sum() < 1e-6 * 1e6
    free = independent_spectrum(
        {}, e0, detector=DET, noise=False, continuum=dataclasses.replace(continuum, high_keV=float("inf"))
    )
    assert free.expected[above].sum() > 0.1 * 1e6
    assert cut.expected.sum() == pytest.approx(1e6, rel=1e-3)
    assert 0.9 * 1e6 < free.expected.sum() < 1e6  # part of the free tail lies above the last channel
