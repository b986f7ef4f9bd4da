"""Quantification with a real thin-film standard: the AXO scan of ../shared/data/aps-2ide.

Pipeline as a user runs it: ``convert`` the step-scan MDA, ``fit_xrf`` (calibration on the
summed spectrum, per-pixel fits, normalised by i0 and dead time) with the beamline's element
list plus La and Pb, ``calibrate_standard`` with the certified areal densities of ``maps_standardinfo.txt``
(counts per ug/cm2 per unit i0), ``areal_density_maps`` to apply them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from shared_data import APS_2IDE  # noqa: E402

import xmulti
from xmulti.io.convert import convert, read_fit_override

DATA = APS_2IDE
AXO_MDA = DATA / "mda" / "axo_std.mda"

pytestmark = pytest.mark.skipif(not AXO_MDA.exists(), reason="shared 2-ID-E data not available")


def _standard_info(path: Path) -> dict[str, float]:
    """Certified areal densities (ug/cm2) from a MAPS ``maps_standardinfo.txt``."""
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.strip().partition(":")
        if key in ("ELEMENTS_IN_STANDARD", "WEIGHT"):
            fields[key] = [v.strip() for v in value.split(",")]
    return dict(zip(fields["ELEMENTS_IN_STANDARD"], map(float, fields["WEIGHT"]), strict=True))


@pytest.fixture(scope="module")
def axo_maps(tmp_path_factory):
    from xmulti.xrf import fit_xrf

    scan = xmulti.open_scan(convert([AXO_MDA], tmp_path_factory.mktemp("axo") / "axo.h5"))
    override = read_fit_override(DATA / "maps_fit_parameters_override.txt")
    # the beamline's element list, plus the standard's uncertified constituents that the
    # residual-peak search of the summed fit reports at hundreds of sigma (La L at 4.65 keV,
    # Pb M at 2.34 keV): left out, their peaks are absorbed by the Ca and Ti components
    elements = [e.strip() for e in override["ELEMENTS_TO_FIT"].split(",")] + ["La", "Pb"]
    maps = fit_xrf(scan, elements, normalize=True).compute()
    return maps, _standard_info(DATA / "maps_standardinfo.txt")


def test_certified_values_are_read():
    assert _standard_info(DATA / "maps_standardinfo.txt") == {"Ca": 1.931, "Fe": 0.504, "Cu": 0.284}


def test_calibration_factors_positive_and_physically_ordered(axo_maps):
    from xmulti.xrf import calibrate_standard
    from xmulti.xrf.quantify import physical_sensitivity

    maps, certified = axo_maps
    assert maps.attrs["normalisation"] == "counts per i0 count"
    fitted = {el: float(maps[el].mean()) for el in certified}
    standard = calibrate_standard(fitted, certified, 10.0)
    factors = standard.measured  # counts per (ug/cm2) per unit i0
    assert all(f > 0 for f in factors.values())
    # at 10 keV the K-shell fluorescence cross-section per gram grows towards the K edge:
    # Ca < Fe < Cu (Cu's K edge, 8.98 keV, is just below the beam energy)
    assert factors["Ca"] < factors["Fe"] < factors["Cu"]
    # what remains after dividing by xraylib's cross-section times the detector efficiency is
    # the geometry and the ion chamber's counts per photon: the same for all three lines
    k = np.array([factors[el] / physical_sensitivity(el, 10.0) for el in certified])
    assert k.max() / k.min() < 1.5, dict(zip(certified, k, strict=True))


def test_areal_densities_reproduce_across_the_standard(axo_maps):
    """Calibrate on the upper rows, apply to the lower rows of the same homogeneous film."""
    from xmulti.xrf import areal_density_maps, calibrate_standard

    maps, certified = axo_maps
    top, bottom = maps.isel(y=slice(0, 5)), maps.isel(y=slice(6, None))
    standard = calibrate_standard({el: float(top[el].mean()) for el in certified}, certified, 10.0)
    density = areal_density_maps(bottom, standard)
    for el, weight in certified.items():
        values = density[el].values
        assert density[el].attrs["units"] == "ug/cm2"
        assert values.mean() == pytest.approx(weight, rel=0.05)
        # a homogeneous film: pixel-to-pixel scatter within 3x the fit's own (Poisson)
        # relative uncertainty
        relative_sigma = np.median(bottom[f"{el}_sigma"].values / np.abs(bottom[el].values))
        assert np.std(values) / values.mean() < 3.0 * relative_sigma


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
