"""Standards done once: the calibration file (schema, atomic write, validation), its reuse by
``fit-xrf`` and ``run`` without refitting, and the refusals (energy, geometry, elements, damaged
files). Tiny simulated scans stand in for sample and standard here; the real AXO film's
physics is in tests/test_quantify_axo.py.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from xmulti.cli import main
from xmulti.errors import InvalidInputError
from xmulti.xrf.quantify import calibrate_standard
from xmulti.xrf.standard import (
    FORMAT_NAME,
    check_compatible,
    load_standard_calibration,
    save_standard_calibration,
)

#: Elements the simulated "standard" holds at high enough levels for a 5-sigma film mean.
DENSITIES = "K=2.0,Fe=0.1"


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A sample, a stand-in standard (another simulated scan, same setup) and one at 10.2 keV."""
    from xmulti.simulate import simulate_scan

    root = tmp_path_factory.mktemp("standard")
    return {
        "sample": simulate_scan(root / "sample.h5", "tiny", seed=0),
        "standard": simulate_scan(root / "standard.h5", "tiny", seed=1),
        "standard_10.2keV": simulate_scan(root / "standard_e.h5", "tiny", seed=1, energy_keV=10.2),
    }


@pytest.fixture(scope="module")
def saved(scans, tmp_path_factory):
    """``xmulti standard`` run once: the calibration file of the stand-in standard."""
    out = tmp_path_factory.mktemp("saved") / "standard.json"
    assert main(["standard", str(scans["standard"]), "--densities", DENSITIES, "--out", str(out)]) == 0
    return out


def _synthetic(tmp_path):
    """A calibration built directly (no fit) and saved, for the file-format tests."""
    calibration = calibrate_standard({"Ca": 0.0123, "Fe": 0.00893, "Cu": 0.00921}, {"Ca": 1.931, "Fe": 0.504,
                                     "Cu": 0.284}, 10.0, fitted_sigma={"Ca": 4e-5, "Fe": 3e-5, "Cu": 2e-5})
    calibration.metadata = {
        "geometry": {"/@scattering_angle_deg": 90.0},
        "energy_calibration": {"offset_keV": 0.01, "gain_keV": 0.0094},
        "fit": {"elements": ["Ca", "Fe", "Cu", "Ar"], "identified_elements": ["Ar"], "summed_reduced_chi_square": 3.2, "n_pixels": 121,
                "background": "linear", "n_continuum": 8, "energy_range_keV": None, "pileup": None},
        "fit_sigma": {"Ca": 1e-5, "Fe": 2e-5, "Cu": 1.5e-5},
        "provenance": {"xmulti_version": "0", "standard_scan": "/data/axo.h5", "standard_checksum": "sha256:00",
                       "standard_info": None, "created_utc": "2026-01-01T00:00:00+00:00"},
    }
    return calibration, save_standard_calibration(calibration, tmp_path / "cal.json")


def test_file_round_trips_exactly(tmp_path):
    calibration, path = _synthetic(tmp_path)
    document = json.loads(path.read_text())
    assert document["format"] == FORMAT_NAME and document["version"] == 1
    assert document["units"]["sensitivity"] == "counts per (ug/cm2) per i0 count"
    loaded = load_standard_calibration(path)
    assert loaded.measured == calibration.measured  # float equality: JSON keeps every bit
    assert loaded.measured_sigma == calibration.measured_sigma
    assert loaded.densities_ug_cm2 == calibration.densities_ug_cm2
    assert loaded.incident_energy_keV == calibration.incident_energy_keV
    for mine, theirs in zip(loaded.log_k_by_z, calibration.log_k_by_z, strict=True):
        assert np.array_equal(mine, theirs)
    for key in ("geometry", "energy_calibration", "fit", "fit_sigma", "provenance"):
        assert loaded.metadata[key] == calibration.metadata[key], key
    # interpolated elements identical too, and a second save writes the same text
    assert loaded.sensitivity("Zn") == calibration.sensitivity("Zn")
    again = save_standard_calibration(loaded, tmp_path / "again.json")
    assert again.read_text() == path.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def _damage(document, change):
    kind, key, value = change
    target = document
    *parents, last = key.split(".")
    for part in parents:
        target = target[part]
    if kind == "drop":
        del target[last]
    else:
        target[last] = value
    return document


@pytest.mark.parametrize("change, named", [
    (("set", "format", "something-else"), "format"),
    (("set", "version", 2), "version"),
    (("drop", "sensitivities", None), "sensitivities"),
    (("drop", "incident_energy_keV", None), "incident_energy_keV"),
    (("set", "sensitivities.Fe.value", math.nan), "sensitivities.Fe.value"),
    (("set", "sensitivities.Cu.sigma", -1.0), "sensitivities.Cu.sigma"),
    (("set", "incident_energy_keV", math.inf), "incident_energy_keV"),
    (("drop", "certified_densities_ug_cm2.Ca", None), "certified_densities_ug_cm2.Ca"),
    (("set", "sensitivities.Xq", {"value": 1.0, "sigma": 0.1, "fit_sigma": None}), "sensitivities.Xq"),
    (("set", "energy_calibration.gain_keV", "fast"), "energy_calibration.gain_keV"),
])
def test_damaged_file_is_refused_naming_file_and_key(tmp_path, change, named):
    _, path = _synthetic(tmp_path)
    document = _damage(json.loads(path.read_text()), change)
    path.write_text(json.dumps(document))  # json writes NaN / Infinity tokens, which json.loads accepts
    with pytest.raises(InvalidInputError) as info:
        load_standard_calibration(path)
    message = str(info.value)
    assert str(path) in message and named in message, message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["", "{\"format\": \"xmulti-standard-cal", "[1, 2]"])
def test_truncated_or_foreign_file_is_refused(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match="bad.json"):
        load_standard_calibration(path)


def test_save_is_atomic_and_refuses_what_it_could_not_read_back(tmp_path, monkeypatch):
    calibration, path = _synthetic(tmp_path)
    before = path.read_bytes()
    broken = calibrate_standard({"Fe": 0.01}, {"Fe": 0.5}, 10.0)  # no uncertainty: not a complete file
    with pytest.raises(InvalidInputError, match="sensitivities.Fe.sigma"):
        save_standard_calibration(broken, path)
    assert path.read_bytes() == before

    def interrupted(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", interrupted)
    with pytest.raises(InvalidInputError, match="No space left"):
        save_standard_calibration(calibration, path)
    assert path.read_bytes() == before  # the old file untouched, no half-written one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.json"]


def test_energy_and_geometry_mismatch_refused_naming_both(tmp_path):
    calibration, _ = _synthetic(tmp_path)
    check_compatible(calibration, 10.005, {"/@scattering_angle_deg": 90.02})  # within tolerances
    with pytest.raises(InvalidInputError, match=r"10\.500 keV.*10\.000 keV"):
        check_compatible(calibration, 10.5, {}, sample="cell.h5")
    with pytest.raises(InvalidInputError, match=r"scattering_angle_deg = 75\.0.*90\.0"):
        check_compatible(calibration, 10.0, {"/@scattering_angle_deg": 75.0})
    # an attribute only one side records is not compared (nothing to compare it with)
    check_compatible(calibration, 10.0, {"/xrf/@detector_elements": 4})


def test_standard_command_writes_a_valid_file(saved, scans):
    loaded = load_standard_calibration(saved)
    assert set(loaded.measured) == {"K", "Fe"}
    assert loaded.densities_ug_cm2 == {"K": 2.0, "Fe": 0.1}
    assert {"K", "Fe"} <= set(loaded.metadata["fit"]["elements"])
    assert loaded.metadata["provenance"]["standard_scan"] == str(scans["standard"].resolve())
    assert loaded.metadata["provenance"]["standard_checksum"].startswith("sha256:")
    assert all(0 < loaded.measured_sigma[el] < 0.5 * loaded.measured[el] for el in loaded.measured)


def _areal_density(store):
    import xarray as xr

    return xr.open_zarr(str(store), group="xrf/areal_density", consolidated=False).load()


def test_fit_xrf_reuses_the_standard_without_its_scan(scans, tmp_path, capsys):
    standard = tmp_path / "standard.h5"
    shutil.copy(scans["standard"], standard)
    first = tmp_path / "first.zarr"
    args = ["fit-xrf", str(scans["sample"]), "--elements", "P,S,K,Ca,Fe,Cu,Zn"]
    assert main([*args, "--out", str(first), "--standard", str(standard), "--standard-densities", DENSITIES]) == 0
    err = capsys.readouterr().err
    assert "standard: fitting the summed spectrum" in err and "standard: saved" in err  # says what it does
    cache = tmp_path / "first.zarr.standard-calibration.json"
    assert load_standard_calibration(cache).metadata["provenance"]["standard_scan"] == str(standard.resolve())
    # the same command again: the file beside the store is reused, the standard not refitted
    assert main([*args, "--out", str(first), "--standard", str(standard), "--standard-densities", DENSITIES]) == 0
    err = capsys.readouterr().err
    assert "standard: reusing" in err and "standard: fitting" not in err
    # the saved file alone, with the standard's scan gone: no refit possible, same areal densities
    standard.unlink()
    second = tmp_path / "second.zarr"
    assert main([*args, "--out", str(second), "--standard-calibration", str(cache)]) == 0
    err = capsys.readouterr().err
    assert "standard: fitting" not in err and "applying" in err
    a, b = _areal_density(first), _areal_density(second)
    for name in ("K", "Fe", "Zn"):
        assert b[name].attrs["units"] == "ug/cm2"
        np.testing.assert_array_equal(a[name].values, b[name].values)


def _refused(capsys, argv, *expected):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and all(e in last for e in expected), last
    return last


def test_fit_xrf_refusals_write_nothing(scans, saved, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    sample = str(scans["sample"])
    # a standard scan at another energy: refused before it is fitted
    _refused(capsys, ["fit-xrf", sample, "--out", str(out), "--standard", str(scans["standard_10.2keV"]),
                      "--standard-densities", DENSITIES], "10.000 keV", "10.200 keV")
    # a saved calibration of another energy
    other = tmp_path / "other.json"
    document = json.loads(saved.read_text())
    document["incident_energy_keV"] = 10.5
    other.write_text(json.dumps(document))
    _refused(capsys, ["fit-xrf", sample, "--out", str(out), "--standard-calibration", str(other)],
             "10.000 keV", "10.500 keV", str(other))
    # a damaged file
    document["sensitivities"]["K"]["value"] = "many"
    other.write_text(json.dumps(document))
    _refused(capsys, ["fit-xrf", sample, "--out", str(out), "--standard-calibration", str(other)],
             str(other), "sensitivities.K.value")
    # an unknown symbol among the densities
    _refused(capsys, ["fit-xrf", sample, "--out", str(out), "--standard", str(scans["standard"]),
                      "--standard-densities", "K=2.0,Kx=1"], "'Kx' is not an element symbol")
    # another recorded geometry (copies of the scans given a scattering angle)
    import h5py

    angled = {}
    for name, angle in (("sample", 90.0), ("standard", 75.0)):
        angled[name] = tmp_path / f"{name}_angle.h5"
        shutil.copy(scans[name], angled[name])
        with h5py.File(angled[name], "r+") as handle:
            handle.attrs["scattering_angle_deg"] = angle
    _refused(capsys, ["fit-xrf", str(angled["sample"]), "--out", str(out), "--standard", str(angled["standard"]),
                      "--standard-densities", DENSITIES], "/@scattering_angle_deg = 90.0", "75.0")
    assert not out.exists() and not (tmp_path / "r.zarr.standard-calibration.json").exists()


def test_standard_listing_an_absent_element_is_refused(scans, tmp_path, capsys):
    out = tmp_path / "cal.json"
    # the simulated cells hold no Cr: its fitted film mean is noise, and the file is not written
    _refused(capsys, ["standard", str(scans["standard"]), "--densities", "K=2.0,Cr=0.1", "--out", str(out)],
             "no Cr signal")
    assert not out.exists()


def test_options_file_takes_a_calibration(tmp_path, saved):
    from xmulti.options import load_options

    config = tmp_path / "o.yaml"
    config.write_text(f"xrf:\n  standard_calibration: {saved}\n")
    assert load_options(config).xrf.standard_calibration == str(saved)
    config.write_text("xrf:\n  standard_info: info.txt\n")
    with pytest.raises(InvalidInputError, match="need xrf.standard"):
        load_options(config)


@pytest.mark.cluster
def test_run_keeps_the_standard_calibration_beside_the_store(scans, tmp_path, capsys):
    config = tmp_path / "o.yaml"
    config.write_text(f"xrf:\n  elements: [P, S, K, Ca, Fe, Cu, Zn]\n  standard: {scans['standard']}\n"
                      f"  standard_densities: {{K: 2.0, Fe: 0.1}}\n")
    store = tmp_path / "r.zarr"
    argv = ["run", str(scans["sample"]), "--out", str(store), "--config", str(config), "--stages", "fit-xrf",
            "--workers", "1"]
    assert main(argv) == 0
    assert "standard: fitting" in capsys.readouterr().err
    cache = tmp_path / "r.zarr.standard-calibration.json"
    first = _areal_density(store)
    assert load_standard_calibration(cache).densities_ug_cm2 == {"K": 2.0, "Fe": 0.1}
    assert main([*argv, "--force"]) == 0
    err = capsys.readouterr().err
    assert "standard: reusing" in err and "standard: fitting" not in err
    np.testing.assert_array_equal(first["Fe"].values, _areal_density(store)["Fe"].values)


def test_cache_never_overwrites_what_is_not_its_own(scans, tmp_path):
    from xmulti.xrf.standard import cached_standard_calibration

    foreign = tmp_path / "notes.json"
    foreign.write_text('{"my": "notes"}')
    with pytest.raises(InvalidInputError, match="notes.json: format"):
        cached_standard_calibration(scans["standard"], {"K": 2.0}, foreign)
    assert foreign.read_text() == '{"my": "notes"}'
    _, other = _synthetic(tmp_path)  # the calibration of /data/axo.h5
    before = other.read_bytes()
    with pytest.raises(InvalidInputError, match=r"another standard \(/data/axo.h5\)"):
        cached_standard_calibration(scans["standard"], {"K": 2.0}, other)
    assert other.read_bytes() == before
    with pytest.raises(InvalidInputError, match="does not exist"):  # refused before fitting
        cached_standard_calibration(scans["standard"], {"K": 2.0}, tmp_path / "no" / "c.json")


def test_pipeline_applies_a_saved_calibration_and_refuses_another_energy(scans, saved, tmp_path):
    from xmulti.io.results import has_group, read_group
    from xmulti.options import load_options
    from xmulti.pipeline import run_pipeline

    config = tmp_path / "o.yaml"
    config.write_text(f"stages: [fit-xrf]\nxrf:\n  elements: [P, S, K, Ca, Fe, Cu, Zn]\n"
                      f"  standard_calibration: {saved}\n")
    run_pipeline(scans["sample"], tmp_path / "r.zarr", load_options(config), log=None)
    density = read_group(tmp_path / "r.zarr", "/xrf/areal_density").load()
    maps = read_group(tmp_path / "r.zarr", "/xrf/elemental_maps").load()
    standard = load_standard_calibration(saved)
    assert density.attrs["standard_calibration"] == str(saved)
    np.testing.assert_allclose(density["Fe"].values, maps["Fe"].values / standard.sensitivity("Fe"), rtol=1e-6)
    # the same file at another energy: refused before the sample is fitted, nothing written
    other = tmp_path / "other.json"
    document = json.loads(saved.read_text())
    document["incident_energy_keV"] = 12.0
    other.write_text(json.dumps(document))
    config.write_text(f"stages: [fit-xrf]\nxrf:\n  standard_calibration: {other}\n")
    with pytest.raises(InvalidInputError, match=r"10\.000 keV.*12\.000 keV"):
        run_pipeline(scans["sample"], tmp_path / "s.zarr", load_options(config), log=None)
    assert not has_group(tmp_path / "s.zarr", "/xrf/elemental_maps")
