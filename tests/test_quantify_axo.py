"""Quantification with a real thin-film standard: the AXO scan of ../shared/data/aps-2ide.

Pipeline as a user runs it: ``convert`` the step-scan MDA, fit it with **the standard's own
elements** (the certified Ca, Fe, Cu of ``maps_standardinfo.txt``, plus what identification
finds in its spectrum: :func:`xmulti.xrf.standard.fit_standard_maps`), measure the sensitivities
with their uncertainties (counts per ug/cm2 per unit i0, :func:`calibration_from_maps`), save
them, load them back and apply them (``quantify_maps``). One fit of the 11 x 11 scan serves the
whole module, exactly the steps of :func:`xmulti.xrf.standard.fit_standard`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from shared_data import APS_2IDE  # noqa: E402

import xmulti
from xmulti.errors import InvalidInputError
from xmulti.io.convert import convert
from xmulti.xrf.standard import (
    calibration_from_maps,
    fit_standard_maps,
    load_standard_calibration,
    quantify_maps,
    read_standard_info,
    save_standard_calibration,
    scan_geometry,
    standard_provenance,
)

DATA = APS_2IDE
AXO_MDA = DATA / "mda" / "axo_std.mda"
INFO = DATA / "maps_standardinfo.txt"

pytestmark = pytest.mark.skipif(not AXO_MDA.exists(), reason="shared 2-ID-E data not available")


@pytest.fixture(scope="module")
def axo(tmp_path_factory):
    """The AXO scan converted, fitted with its own elements, and its calibration."""
    path = convert([AXO_MDA], tmp_path_factory.mktemp("axo") / "axo.h5")
    tree = xmulti.open_scan(path)
    certified = read_standard_info(INFO)
    maps = fit_standard_maps(tree, certified)
    calibration = calibration_from_maps(maps, certified, geometry=scan_geometry(tree),
                                        provenance=standard_provenance(path, INFO), where=str(path))
    return {"path": path, "tree": tree, "maps": maps, "certified": certified, "calibration": calibration}


def test_certified_values_are_read():
    assert read_standard_info(INFO) == {"Ca": 1.931, "Fe": 0.504, "Cu": 0.284}


def test_standard_is_fitted_with_its_own_elements(axo):
    maps, calibration = axo["maps"], axo["calibration"]
    assert maps.attrs["normalisation"] == "counts per i0 count"
    fitted = list(maps.attrs["elements"])
    assert {"Ca", "Fe", "Cu"} <= set(fitted)
    # nothing of a sample's list is forced in: every fitted element beyond the certified ones
    # was found in the standard's own spectrum by the identification
    assert calibration.metadata["fit"]["elements"] == fitted
    assert calibration.metadata["fit"]["n_pixels"] == 121
    # the fit explains the film's spectrum: left out, a constituent's peaks (La L at 4.65 keV,
    # Ar K at 2.96 keV, Pb M at 2.34 keV) stand at hundreds of sigma in the summed spectrum and
    # its reduced chi-square in the thousands, part of them absorbed by the certified components
    assert maps.attrs["summed_reduced_chi_square"] < 100


def test_sensitivities_are_physically_consistent(axo):
    """The Z trend the interpolation relies on: ``s(Z) = k * sigma_F(Z, E0) * eff(Z)`` with one
    ``k`` (flux per i0 count, solid angle) for all elements.

    At 10 keV the K-shell fluorescence cross-section per gram grows towards the K edge, so
    Ca < Fe < Cu (Cu's K edge, 8.98 keV, is just below the beam); dividing by xraylib's
    cross-section times the detector efficiency must leave the same k within a factor 1.5
    (the detector model's window and the film's own absorption are only nominal).
    """
    from xmulti.xrf.quantify import physical_sensitivity

    calibration = axo["calibration"]
    s = calibration.measured
    assert s["Ca"] < s["Fe"] < s["Cu"]
    k = np.array([s[el] / physical_sensitivity(el, 10.0) for el in ("Ca", "Fe", "Cu")])
    assert k.max() / k.min() < 1.5, dict(zip(("Ca", "Fe", "Cu"), k, strict=True))
    for el in s:
        sigma, fit_sigma = calibration.measured_sigma[el], calibration.metadata["fit_sigma"][el]
        # the standard error of a 121-pixel film mean: well under 2 % of the sensitivity, and
        # the pixel spread within 3x of what the per-pixel Poisson uncertainties predict
        assert 0 < sigma < 0.02 * s[el]
        assert fit_sigma / 3 < sigma < 3 * fit_sigma, (el, sigma, fit_sigma)


def test_areal_densities_reproduce_across_the_standard(axo):
    """Calibrate on the upper rows, apply to the lower rows of the same homogeneous film."""
    maps, certified = axo["maps"], axo["certified"]
    top, bottom = maps.isel(y=slice(0, 5)), maps.isel(y=slice(6, None))
    standard = calibration_from_maps(top, certified)
    density = quantify_maps(bottom, standard)
    for el, weight in certified.items():
        values = density[el].values
        assert density[el].attrs["units"] == "ug/cm2"
        assert values.mean() == pytest.approx(weight, rel=0.05)
        # a homogeneous film: pixel-to-pixel scatter within 3x the fit's own (Poisson)
        # relative uncertainty
        relative_sigma = np.median(bottom[f"{el}_sigma"].values / np.abs(bottom[el].values))
        assert np.std(values) / values.mean() < 3.0 * relative_sigma


def test_saved_calibration_round_trips_and_applies_identically(axo, tmp_path):
    calibration, maps = axo["calibration"], axo["maps"]
    path = save_standard_calibration(calibration, tmp_path / "axo.json")
    loaded = load_standard_calibration(path)
    assert loaded.measured == calibration.measured and loaded.measured_sigma == calibration.measured_sigma
    assert loaded.densities_ug_cm2 == axo["certified"]
    assert all(np.array_equal(a, b) for a, b in zip(loaded.log_k_by_z, calibration.log_k_by_z, strict=True))
    assert loaded.metadata["energy_calibration"] == calibration.metadata["energy_calibration"]
    assert loaded.metadata["provenance"]["standard_checksum"].startswith("sha256:")
    direct = quantify_maps(maps, calibration, scan_geometry(axo["tree"]))
    reused = quantify_maps(maps, loaded, scan_geometry(axo["tree"]))
    for name in direct.data_vars:
        np.testing.assert_array_equal(direct[name].values, reused[name].values)
        assert direct[name].attrs["sensitivity"] == reused[name].attrs["sensitivity"]
    # the film's own densities come back (the calibration's own pixels: exact up to float32 rounding)
    for el, weight in axo["certified"].items():
        assert float(reused[el].mean()) == pytest.approx(weight, rel=1e-6)  # float32 maps


def test_energy_mismatch_is_refused(axo):
    maps = axo["maps"].copy()
    maps.attrs = {**maps.attrs, "incident_energy_keV": 10.5}
    with pytest.raises(InvalidInputError, match=r"10\.500 keV.*10\.000 keV"):
        quantify_maps(maps, axo["calibration"])
    maps.attrs["incident_energy_keV"] = 10.004  # within 0.01 keV: the same monochromator setting
    quantify_maps(maps, axo["calibration"])


def test_damaged_saved_file_is_refused(axo, tmp_path):
    path = save_standard_calibration(axo["calibration"], tmp_path / "axo.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # an interrupted copy
    with pytest.raises(InvalidInputError, match="not a JSON file"):
        load_standard_calibration(path)
    document = json.loads(text)
    document["sensitivities"]["Ca"]["sigma"] = math.nan
    path.write_text(json.dumps(document))
    with pytest.raises(InvalidInputError, match=r"axo\.json: sensitivities\.Ca\.sigma"):
        load_standard_calibration(path)


def test_cli_standard_options_need_each_other(tmp_path, capsys):
    from xmulti.cli import main

    code = main(["fit-xrf", str(AXO_MDA), "--out", str(tmp_path / "r.zarr"),
                 "--standard-densities", "Fe=0.5"])
    assert code == 2
    assert "go with --standard" in capsys.readouterr().err
    code = main(["fit-xrf", str(AXO_MDA), "--out", str(tmp_path / "r.zarr"), "--standard", str(AXO_MDA),
                 "--standard-densities", "Fe:0.5"])
    assert code == 2
    assert "Ca=1.93" in capsys.readouterr().err
    assert not (tmp_path / "r.zarr").exists()
