"""Self-absorption of fluorescence (issue 8): factors against JOINT.md and a simulated thick sample."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xmulti import physics
from xmulti.errors import InvalidInputError
from xmulti.grid import image_axes_um
from xmulti.joint.absorption import (
    areal_mass_from_phase,
    attenuation_coefficients_cm2_g,
    correct_self_absorption,
    effective_line_energy_keV,
    self_absorption_factor,
)
from xmulti.simulate import make_scan

ENERGY = 10.0
# JOINT.md: 5 um frozen-hydrated layer, 15 degree exit, 10 keV: depth-averaged loss (%)
JOINT_MD_LOSS = {"P": 39.0, "S": 29.0, "K": 12.0, "Ca": 9.0, "Fe": 1.8, "Zn": 0.7}


def test_losses_reproduce_joint_md_for_5um_ice_at_15_degrees():
    # vitreous ice (H2O, 0.92 g/cm3), normal incidence, detector 15 degrees above the surface
    energies = {el: effective_line_energy_keV(el, ENERGY) for el in JOINT_MD_LOSS}
    chi = attenuation_coefficients_cm2_g(energies, "H2O", ENERGY, 90.0, 15.0)
    mass = 5e-4 * physics.ICE.density_g_cm3
    for el, expected in JOINT_MD_LOSS.items():
        loss = 100.0 * (1.0 - self_absorption_factor(chi[el], mass))
        # JOINT.md leaves out the incident-beam term (at most +0.12 points here) and uses K-alpha
        assert loss == pytest.approx(expected, abs=1.0), el
    # the attenuation lengths of JOINT.md (ice, um) at the effective line energies
    for el, length in {"P": 17.9, "S": 26.4, "K": 75.0, "Fe": 536.0}.items():
        mu = physics.mass_attenuation_cm2_g("H2O", energies[el])
        assert 1e4 / (mu * physics.ICE.density_g_cm3) == pytest.approx(length, rel=0.05), el


def test_effective_line_energy_is_the_weighted_k_family():
    fe = effective_line_energy_keV("Fe", ENERGY)
    assert 6.40 < fe < 6.60  # between K-alpha (6.40) and K-beta (7.06), K-alpha dominant; not the L lines
    assert effective_line_energy_keV("Zn", 9.0) < 1.1  # below the Zn K edge only L lines remain
    with pytest.raises(InvalidInputError, match="no fluorescence line"):
        effective_line_energy_keV("H", ENERGY)


def test_factor_is_stable_and_has_the_right_limits():
    chi = np.array([1.0, 100.0, 1000.0])
    mass = np.array([[0.0], [1e-14], [1e-6], [10.0]])
    f = self_absorption_factor(chi, mass)
    assert f.shape == (4, 3)
    np.testing.assert_array_equal(f[0], 1.0)
    x = chi * mass
    np.testing.assert_allclose(f[1:3], 1.0 - x[1:3] / 2 + x[1:3] ** 2 / 6 - x[1:3] ** 3 / 24, rtol=1e-12)
    np.testing.assert_allclose(f[3], (1.0 - np.exp(-x[3])) / x[3], rtol=1e-12)  # -> 1/x when thick
    assert np.all(np.diff(self_absorption_factor(50.0, np.linspace(0, 0.1, 50))) < 0)
    with pytest.raises(InvalidInputError, match="exit_angle_deg"):
        attenuation_coefficients_cm2_g({"P": 2.0}, "H2O", ENERGY, 90.0, 0.0)
    with pytest.raises(InvalidInputError, match="matrix"):
        attenuation_coefficients_cm2_g({"P": 2.0}, "Xx9", ENERGY, 90.0, 15.0)


def _maps(scan) -> xr.Dataset:
    """fit_xrf on an in-memory Dataset of a simulated scan (counts, not normalised)."""
    from xmulti.xrf.maps import fit_xrf

    offset, gain = scan.config.nominal_calibration_keV
    ds = xr.Dataset(
        {"spectra": (("position", "channel"), scan.spectra)},
        coords={
            "energy": ("channel", offset + gain * np.arange(scan.spectra.shape[1])),
            "position_y": ("position", scan.positions_um[:, 0]),
            "position_x": ("position", scan.positions_um[:, 1]),
        },
        attrs={"incident_energy_keV": ENERGY, "scan_shape": list(scan.config.scan_shape)},
    )
    return fit_xrf(ds, list(scan.elements), normalize=False)


@pytest.fixture(scope="module")
def thick():
    """Same-seed tiny scans of 5 um cells in 5 um of ice, with and without self-absorption."""
    kw = dict(cell_thickness_um=5.0, ice_thickness_um=5.0, flux=2e9, elements={"P": 2.0, "S": 1.0, "K": 1.5})
    absorbed = make_scan("tiny", seed=3, self_absorption=True, exit_angle_deg=15.0, **kw)
    thin = make_scan("tiny", seed=3, **kw)
    return absorbed, _maps(absorbed), _maps(thin)


def _bias(values, reference, mask) -> float:
    return float((values[mask] - reference[mask]).sum() / reference[mask].sum())


def test_correction_removes_the_bias_of_p_and_s_maps(thick):
    """fit_xrf maps of the absorbing scan, corrected with the true (or phase-derived) areal mass,
    against the maps of the same-seed scan without self-absorption: summed relative bias over
    the map pixels where the element is above 30 % of its maximum."""
    scan, absorbed, thin = thick
    cfg = scan.config
    y, x = image_axes_um(scan.phantom.thickness_um.shape, scan.pixel_size_um, scan.origin_um)
    t = scan.phantom.thickness_um
    coords = {"y": y, "x": x}
    true_mass = xr.Dataset(
        {
            "matrix": (("y", "x"), t * 1e-4 * cfg.matrix_density_g_cm3, {"formula": cfg.matrix_formula}),
            "ice": (("y", "x"), np.clip(cfg.ice_thickness_um - t, 0, None) * 1e-4 * 0.92, {"formula": "H2O"}),
        },
        coords=coords,
    )
    phase = xr.DataArray(np.angle(scan.object), dims=("y", "x"), coords=coords)
    background = float(np.median(phase.values[scan.phantom.cell_labels == 0]))  # ice outside the cells
    phase_mass = areal_mass_from_phase(phase, ENERGY, ice_thickness_um=cfg.ice_thickness_um, background_rad=background)
    geometry = dict(incident_energy_keV=ENERGY, incident_angle_deg=90.0, exit_angle_deg=15.0)
    from_truth = correct_self_absorption(absorbed, true_mass, **geometry)
    from_phase = correct_self_absorption(absorbed, phase_mass, **geometry)
    for el in ("P", "S"):
        ref = thin[el].values
        mask = ref > 0.3 * ref.max()
        before = _bias(absorbed[el].values, ref, mask)
        assert before < -0.2, el  # a 5 um cell in ice loses a quarter to a third of P and S
        for corrected in (from_truth, from_phase):
            after = _bias(corrected[el].values, ref, mask)
            assert abs(after) <= abs(before) / 5, (el, before, after)
        low, high = from_truth.attrs["self_absorption"]["elements"][el]["self_absorption_factor_range"]
        assert 0.5 < low < high < 1.0
    assert from_truth.attrs["self_absorption"]["exit_angle_deg"] == 15.0
    assert from_truth["P_sigma"].attrs["self_absorption_corrected"]
    np.testing.assert_array_equal(from_truth["compton"].values, absorbed["compton"].values)


def test_default_simulation_is_unchanged_by_the_option():
    a = make_scan("tiny", seed=5)
    b = make_scan("tiny", seed=5, self_absorption=False, exit_angle_deg=30.0)
    np.testing.assert_array_equal(a.line_counts, b.line_counts)
    c = make_scan("tiny", seed=5, self_absorption=True, exit_angle_deg=15.0)
    # per unit live time: less fluorescence also means less dead time
    rate_a = a.line_counts / a.live_time_s[:, None]
    rate_c = c.line_counts / c.live_time_s[:, None]
    seen = rate_a > 1e-6 * rate_a.max(axis=0)
    ratio = np.where(seen, rate_c / np.where(seen, rate_a, 1.0), 1.0)
    assert np.all(ratio <= 1.0 + 1e-12)
    p, zn = a.elements.index("P"), a.elements.index("Zn")
    # a 2 um protein cell at 15 degrees: P loses up to ~20 %, Zn under 1 %
    assert 0.7 < ratio[:, p].min() < 0.9 and ratio[:, zn].min() > 0.99


def test_bad_input_is_named():
    maps = xr.Dataset({"P": (("y", "x"), np.ones((3, 4)))}, coords={"y": np.arange(3.0), "x": np.arange(4.0)})
    with pytest.raises(InvalidInputError, match="incident energy"):
        correct_self_absorption(maps, 1e-4)
    with pytest.raises(InvalidInputError, match="no map for element"):
        correct_self_absorption(maps, 1e-4, incident_energy_keV=ENERGY, elements=["Fe"])
    with pytest.raises(InvalidInputError, match="negative"):
        correct_self_absorption(maps, -1.0, incident_energy_keV=ENERGY)
    far = xr.DataArray(np.ones((3, 4)), dims=("y", "x"), coords={"y": np.arange(3.0) + 100, "x": np.arange(4.0)})
    with pytest.raises(InvalidInputError, match="do not overlap"):
        correct_self_absorption(maps, far, incident_energy_keV=ENERGY)
    out = correct_self_absorption(maps, 5e-4 * 0.92, incident_energy_keV=ENERGY)
    assert float(out["P"][0, 0]) == pytest.approx(1 / 0.6125, rel=0.01)  # 38.75 % loss
