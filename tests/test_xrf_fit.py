"""Per-pixel XRF fitting against the simulator's ground truth.

The simulator (``xmulti.simulate``) has its own plain spectral model; these tests run the whole
pipeline (calibration on the noisy summed spectrum, then the per-pixel fit) and compare with
the simulated expected counts. The per-pixel estimator is linear in the counts, so its bias is
exactly its result on the noise-free expected spectra: that is how bias is measured here, free of
Poisson noise; the noisy maps are compared with an oracle (per-pixel weighted least squares
with the true components and the true variances).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from xmulti.errors import InvalidInputError
from xmulti.simulate import make_scan
from xmulti.simulate.spectra import element_components as true_element_components
from xmulti.simulate.spectra import scatter_components as true_scatter_components
from xmulti.xrf.calibrate import calibrate
from xmulti.xrf.fit import fit_spectra, nonnegative, prepare_fit, unpack
from xmulti.xrf.model import Calibration

SMALL = dict(scan_shape=(30, 30), frame_size=16, probe_diameter_px=6.0)
#: flux giving about 300, 3,000 and 30,000 counts per pixel
FLUX_FOR_COUNTS = {300: 3e7, 3000: 3e8, 30000: 3e9}


@functools.cache
def fitted_scan(flux: float, elements: tuple = (), fit_elements: tuple = (), seed: int = 2):
    """Simulate, calibrate on the summed spectrum, prepare the estimator (cached per module)."""
    overrides = dict(SMALL, flux=flux)
    if elements:
        overrides["elements"] = dict(elements)
    scan = make_scan("tiny", seed=seed, **overrides)
    cfg = scan.config
    result = calibrate(
        scan.spectra.sum(axis=0),
        cfg.energy_keV,
        Calibration(*cfg.nominal_calibration_keV),
        list(fit_elements or scan.elements),
    )
    plan = prepare_fit(result.model, result.fitted / len(scan.spectra))
    return scan, result, plan


def oracle(scan, channel_slice):
    """Per-pixel BLUE with the simulator's true components and true Poisson variances."""
    cfg = scan.config
    det = scan.detector
    g = np.concatenate(
        [
            true_element_components(scan.elements, cfg.energy_keV, det),
            true_scatter_components(cfg.energy_keV, det, cfg.compton_extra_sigma_keV),
        ]
    ).T[channel_slice]
    y = scan.spectra[:, channel_slice].astype(float)
    lam = np.maximum(scan.expected_spectra[:, channel_slice].astype(float), 1e-9)
    return np.array(
        [np.linalg.solve(g.T @ (g / var[:, None]), g.T @ (yy / var)) for yy, var in zip(y, lam, strict=True)]
    )


@pytest.mark.parametrize("counts", [300, 3000, 30000])
def test_maps_unbiased_and_near_oracle_error(counts):
    scan, _, plan = fitted_scan(FLUX_FOR_COUNTS[counts])
    assert scan.spectra.sum(axis=1).mean() == pytest.approx(counts, rel=0.35)
    noisy = unpack(fit_spectra(scan.spectra, plan), plan)["amplitudes"]
    noise_free = unpack(fit_spectra(scan.expected_spectra, plan), plan)["amplitudes"]
    best = oracle(scan, plan.channel_slice)
    for j, element in enumerate(scan.elements):
        k = plan.names.index(element)
        truth = scan.line_counts[:, j]
        bias = noise_free[:, k].mean() / truth.mean() - 1.0
        assert abs(bias) < 0.01, (element, counts, bias)
        # the noisy map mean agrees too, within 1 % plus its statistical error
        error = noisy[:, k] - truth
        standard_error = error.std() / np.sqrt(error.size) / truth.mean()
        assert abs(error.mean() / truth.mean()) < 0.01 + 3 * standard_error, element
        rmse = np.sqrt(np.mean(error**2))
        rmse_oracle = np.sqrt(np.mean((best[:, j] - truth) ** 2))
        assert rmse <= 1.1 * rmse_oracle, (element, counts, rmse / rmse_oracle)


def test_uncertainties_and_chi_square_are_calibrated():
    scan, _, plan = fitted_scan(FLUX_FOR_COUNTS[3000])
    out = unpack(fit_spectra(scan.spectra, plan), plan)
    exact_var = scan.expected_spectra[:, plan.channel_slice].astype(float) @ plan.estimator() ** 2
    for j, element in enumerate(scan.elements):
        k = plan.names.index(element)
        # the reported variance matches the exact variance of the estimator (Poisson)
        assert np.mean(out["sigma"][:, k] ** 2) == pytest.approx(np.mean(exact_var[:, k]), rel=0.05)
        pull = (out["amplitudes"][:, k] - scan.line_counts[:, j]) / np.sqrt(exact_var[:, k])
        assert pull.std() == pytest.approx(1.0, abs=0.1), element
    assert np.median(out["reduced_chi_square"]) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(
    "present, absent",
    [(("K", "Fe", "Cu"), ("Ca", "Co", "Zn")), (("Ca", "Co", "Zn"), ("K", "Fe", "Cu"))],
)
def test_overlapping_lines_are_separated(present, absent):
    # K Kb / Ca Ka, Fe Kb / Co Ka, Cu Kb / Zn Ka
    levels = tuple((el, 0.5) for el in present)
    fit_elements = ("K", "Ca", "Fe", "Co", "Cu", "Zn")
    scan, _, plan = fitted_scan(FLUX_FOR_COUNTS[3000], levels, fit_elements)
    noise_free = unpack(fit_spectra(scan.expected_spectra, plan), plan)["amplitudes"]
    noisy = unpack(fit_spectra(scan.spectra, plan), plan)["amplitudes"]
    for source, target in zip(present, absent, strict=True):
        signal = scan.line_counts[:, scan.elements.index(source)].mean()
        leak = noise_free[:, plan.names.index(target)].mean()
        assert abs(leak) < 0.01 * signal, (source, target, leak / signal)
        noisy_leak = noisy[:, plan.names.index(target)]
        standard_error = noisy_leak.std() / np.sqrt(noisy_leak.size)
        assert abs(noisy_leak.mean()) < 0.01 * signal + 3 * standard_error


def test_nonnegative_estimate_is_the_constrained_least_squares_solution():
    from scipy.optimize import lsq_linear

    scan, result, plan = fitted_scan(FLUX_FOR_COUNTS[300])
    out = unpack(fit_spectra(scan.spectra, plan), plan)
    negative = np.flatnonzero(np.any(out["amplitudes"][:, plan.constrained] < 0, axis=1))
    assert negative.size > 50  # trace elements at 300 counts per pixel go negative
    assert np.all(out["nonneg"][:, plan.constrained] >= 0)
    g = result.model.matrix
    w = np.sqrt(plan.weights.astype(float))
    lower = np.where(plan.constrained, 0.0, -np.inf)
    for i in negative[:20]:
        y = scan.spectra[i, plan.channel_slice].astype(float)
        reference = lsq_linear(g * w[:, None], y * w, bounds=(lower, np.inf), tol=1e-12).x
        k = plan.constrained
        np.testing.assert_allclose(out["nonneg"][i, k], reference[k], atol=0.02 * max(1.0, reference.max()) + 0.05)


def test_nonnegative_leaves_positive_solutions_alone():
    normal = np.array([[2.0, 0.5], [0.5, 1.0]])
    a = np.array([[1.0, 2.0], [-1.0, 3.0]])
    b = a @ normal
    out = nonnegative(a, b, normal, np.array([True, True]))
    np.testing.assert_allclose(out[0], a[0])
    # second pixel: a0 -> 0, a1 -> b1 / N11 = (-0.5 + 3) / 1
    np.testing.assert_allclose(out[1], [0.0, b[1, 1] / normal[1, 1]], atol=1e-9)


def test_empty_nan_and_negative_spectra():
    scan, _, plan = fitted_scan(FLUX_FOR_COUNTS[300])
    spectra = scan.spectra[:4].astype(np.float32)
    spectra[1] = 0.0
    out = unpack(fit_spectra(spectra, plan), plan)
    assert np.all(out["amplitudes"][1] == 0) and np.all(out["nonneg"][1] == 0)
    assert np.all(np.isinf(out["sigma"][1])) and out["reduced_chi_square"][1] == 0
    assert np.all(np.isfinite(out["sigma"][[0, 2, 3]]))
    bad = spectra.copy()
    bad[2, 500] = np.nan
    with pytest.raises(InvalidInputError, match="NaN or negative"):
        fit_spectra(bad, plan)
    bad[2, 500] = -1.0
    with pytest.raises(InvalidInputError, match="NaN or negative"):
        fit_spectra(bad, plan)
    with pytest.raises(InvalidInputError, match="NaN or negative"):  # signed raw counts (int16 files)
        fit_spectra(bad.astype(np.int16), plan)
    with pytest.raises(InvalidInputError, match="position, channel"):
        fit_spectra(spectra[0], plan)


def test_snip_option_runs_vectorised_and_is_reasonable_for_major_elements():
    scan, result, _ = fitted_scan(FLUX_FOR_COUNTS[30000])
    plan = prepare_fit(result.model, result.fitted / len(scan.spectra), background="snip")
    assert "continuum_0" not in plan.names
    out = unpack(fit_spectra(scan.spectra, plan), plan)["amplitudes"]
    for element in ("K", "P"):
        truth = scan.line_counts[:, scan.elements.index(element)]
        assert out[:, plan.names.index(element)].mean() == pytest.approx(truth.mean(), rel=0.1)


def test_thin_film_standard_gives_areal_densities():
    from xmulti.xrf.quantify import calibrate_standard, physical_sensitivity

    scan, _, _ = fitted_scan(FLUX_FOR_COUNTS[3000])
    cfg = scan.config
    # the simulator's counts per (ug/cm2) per unit i0 at nominal beam (its truth)
    k = cfg.flux * 1e-6 / cfg.i0_counts
    truth = {
        el: k * physical_sensitivity(el, cfg.energy_keV, cfg.be_window_um, cfg.detector_si_mm)
        for el in scan.elements
    }
    standard = calibrate_standard(
        {"K": truth["K"] * 2.0, "Fe": truth["Fe"] * 0.5}, {"K": 2.0, "Fe": 0.5}, cfg.energy_keV
    )
    for el in ("Ca", "Cu", "Zn", "P"):
        assert standard.sensitivity(el) == pytest.approx(truth[el], rel=1e-6)
    with pytest.raises(InvalidInputError, match="shares no element"):
        calibrate_standard({"Zn": 1.0}, {"Fe": 1.0}, 10.0)


# --- the labelled operation and the CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("xrf") / "scan.h5"
    scan = make_scan("tiny", seed=4, flux=4.5e8, scan_shape=(12, 14), frame_size=16, probe_diameter_px=6.0)
    scan.write(path)
    return scan, path


FIT_ELEMENTS = ["P", "S", "K", "Ca", "Fe", "Cu", "Zn"]


@pytest.fixture(scope="module")
def scan_calibration(scan_file):
    from xmulti.io.scan import open_scan
    from xmulti.xrf.maps import calibrate_scan

    return calibrate_scan(open_scan(scan_file[1]), FIT_ELEMENTS)


def test_fit_xrf_on_a_scan_matches_truth_and_is_chunk_independent(scan_file):
    import xarray as xr

    from xmulti.io.scan import open_scan
    from xmulti.xrf.maps import fit_xrf

    scan, path = scan_file
    tree = open_scan(path, chunks=50)
    assert tree["xrf"]["spectra"].chunks is not None
    maps = fit_xrf(tree, FIT_ELEMENTS, normalize=False)
    assert maps["Fe"].chunks is not None  # lazy until computed
    maps = maps.compute()
    ny, nx = scan.config.scan_shape
    assert maps["Fe"].dims == ("y", "x") and maps["Fe"].shape == (ny, nx)
    # coordinates: mean recorded position of each row / column (um)
    np.testing.assert_allclose(maps["y"], scan.positions_um[:, 0].reshape(ny, nx).mean(axis=1))
    np.testing.assert_allclose(maps["x"], scan.positions_um[:, 1].reshape(ny, nx).mean(axis=0))
    for j, element in enumerate(scan.elements):
        truth = scan.line_counts[:, j].reshape(ny, nx)
        error = maps[element].values - truth
        assert abs(error.mean()) < 0.01 * truth.mean() + 3 * error.std() / np.sqrt(error.size), element
        assert np.all(maps[f"{element}_nonneg"].values >= 0)
        assert np.all(np.isfinite(maps[f"{element}_sigma"].values))
    for name in ("elastic", "compton", "continuum", "reduced_chi_square", "total_counts"):
        assert name in maps
    assert maps.attrs["elements"] == FIT_ELEMENTS
    assert maps.attrs["calibration_gain_keV"] == pytest.approx(scan.config.energy_gain_keV, rel=1e-3)
    # same numbers from an in-memory numpy Dataset (no dask) as from the chunked file
    memory = tree["xrf"].to_dataset().compute()
    memory.attrs["incident_energy_keV"] = scan.config.energy_keV
    memory.attrs["scan_shape"] = [ny, nx]
    direct = fit_xrf(memory, FIT_ELEMENTS, normalize=False)
    xr.testing.assert_allclose(direct["Fe"], maps["Fe"], rtol=1e-5)


@pytest.mark.cluster
def test_fit_xrf_on_a_process_cluster_matches_local(scan_file, scan_calibration):
    import xarray as xr
    from dask.distributed import Client, LocalCluster

    from xmulti.io.scan import open_scan
    from xmulti.xrf.maps import fit_xrf

    _, path = scan_file
    local = fit_xrf(open_scan(path, chunks=40), calibration=scan_calibration).compute(scheduler="sync")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster):
            distributed = fit_xrf(open_scan(path, chunks=40), calibration=scan_calibration).compute()
    xr.testing.assert_allclose(distributed, local, rtol=1e-6)


def test_fit_xrf_normalises_by_i0_and_dead_time(scan_file, scan_calibration):
    from xmulti.io.scan import open_scan
    from xmulti.xrf.maps import fit_xrf
    from xmulti.xrf.quantify import areal_density_maps, calibrate_standard, physical_sensitivity

    scan, path = scan_file
    tree = open_scan(path)
    result = scan_calibration
    raw = fit_xrf(tree, calibration=result, normalize=False).compute()
    norm = fit_xrf(tree, calibration=result, normalize=True).compute()
    ny, nx = scan.config.scan_shape
    factor = (scan.real_time_s / scan.live_time_s / scan.i0).reshape(ny, nx)
    np.testing.assert_allclose(norm["Zn"].values, raw["Zn"].values * factor, rtol=1e-5)
    assert norm["Zn"].attrs["units"] == "counts per i0 count"
    # areal densities via a standard built from the simulator's sensitivity (K only)
    cfg = scan.config
    k = cfg.flux * 1e-6 / cfg.i0_counts
    s_k = k * physical_sensitivity("K", cfg.energy_keV, cfg.be_window_um, cfg.detector_si_mm)
    standard = calibrate_standard({"K": 1.0 * s_k}, {"K": 1.0}, cfg.energy_keV)
    density = areal_density_maps(norm, standard)
    beam_live = (scan.beam_factor * scan.live_time_s / scan.real_time_s)[:, None]
    sens = np.array([k * physical_sensitivity(el, cfg.energy_keV) for el in scan.elements]) * cfg.i0_counts
    true_density = scan.line_counts / (beam_live * sens[None, :])
    for element in ("P", "K", "Zn"):
        j = scan.elements.index(element)
        assert density[element].values.mean() == pytest.approx(true_density[:, j].mean(), rel=0.02)
        assert density[element].attrs["units"] == "ug/cm2"


def test_fit_xrf_grids_irregular_positions(scan_file, scan_calibration):
    from xmulti.io.scan import open_scan
    from xmulti.xrf.maps import fit_xrf

    scan, path = scan_file
    ds = open_scan(path)["xrf"].to_dataset().compute()
    ds.attrs["incident_energy_keV"] = scan.config.energy_keV  # no scan_shape: irregular
    maps = fit_xrf(ds, calibration=scan_calibration, normalize=False)
    assert "gridding" in maps.attrs
    y, x = scan.positions_um[:, 0], scan.positions_um[:, 1]
    step = float(np.diff(maps["x"].values).mean())
    assert maps["y"].values.min() == pytest.approx(y.min()) and maps["x"].values.min() == pytest.approx(x.min())
    assert x.max() - 1e-9 <= maps["x"].values.max() <= x.max() + 0.5 * step
    assert np.all(np.isfinite(maps["K"].values))
    # the gridded K map, sampled back at the positions, follows the per-position values
    from scipy.interpolate import RegularGridInterpolator

    back = RegularGridInterpolator((maps["y"].values, maps["x"].values), maps["K"].values, bounds_error=False, fill_value=None)(
        scan.positions_um
    )
    truth = scan.line_counts[:, scan.elements.index("K")]
    assert np.corrcoef(back, truth)[0, 1] > 0.9


def test_fit_xrf_bad_input(scan_file, scan_calibration):
    from xmulti.errors import InvalidScanError
    from xmulti.io.scan import open_scan
    from xmulti.xrf.maps import fit_xrf

    scan, path = scan_file
    ds = open_scan(path)["xrf"].to_dataset().compute()
    ds.attrs["incident_energy_keV"] = 10.0
    with pytest.raises(InvalidScanError, match="missing energy axis"):
        fit_xrf(ds.drop_vars("energy"), ["Fe"])
    with pytest.raises(InvalidInputError, match="unknown element symbol 'Xx'"):
        fit_xrf(ds, ["Fe", "Xx"])
    with pytest.raises(InvalidInputError, match="no .* line excited"):
        fit_xrf(ds, ["Fe", "U"], incident_energy_keV=3.0, energy_range_keV=(1.0, 3.0))
    bad = ds.copy()
    bad["spectra"] = bad["spectra"].astype(np.float32)
    bad["spectra"][3, 400] = np.nan
    with pytest.raises(InvalidScanError, match="NaN"):
        fit_xrf(bad, ["Fe"])
    negative = ds.copy()
    negative["spectra"] = negative["spectra"].astype(np.float32)
    negative["spectra"][3, 400] = -5.0
    with pytest.raises(InvalidInputError, match="negative"):
        fit_xrf(negative, calibration=scan_calibration).compute()
    zero_i0 = ds.copy()
    zero_i0["i0"] = zero_i0["i0"].where(np.arange(zero_i0.sizes["position"]) != 5, 0.0)
    with pytest.raises(InvalidScanError, match="i0 <= 0"):
        fit_xrf(zero_i0, ["Fe"])
    with pytest.raises(InvalidInputError, match="DataTree"):
        fit_xrf(np.zeros((3, 3)), ["Fe"])


def test_cli_fit_xrf_writes_maps_and_diagnostics(scan_file, tmp_path, capsys):
    import xarray as xr

    from xmulti.cli import main

    scan, path = scan_file
    out = tmp_path / "results.zarr"
    code = main(["fit-xrf", str(path), "--out", str(out), "--elements", "P,S,K,Ca,Fe,Cu,Zn"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "calibration:" in printed and "Zn" in printed
    tree = xr.open_datatree(out, engine="zarr")
    maps = tree["xrf/elemental_maps"].to_dataset()
    assert sorted(maps.data_vars) == sorted(FIT_ELEMENTS)
    assert maps.attrs["xmulti_stage"] == "fit-xrf"
    diagnostics = tree["xrf/fit"].to_dataset()
    for name in ("Fe_sigma", "Fe_nonneg", "reduced_chi_square", "summed_spectrum", "summed_residual"):
        assert name in diagnostics
    assert main(["fit-xrf", str(path), "--out", str(tmp_path / "b.zarr"), "--elements", "Fe,Qq"]) == 2
    assert "unknown element symbol 'Qq'" in capsys.readouterr().err


def test_cli_quantifies_against_a_standard(tmp_path, capsys):
    """``xmulti fit-xrf --standard``: a scan quantified against itself as the standard returns the
    densities it was given; the other elements get theirs through the cross-section shape over Z
    (the physics of the sensitivities is tested on the real AXO standard in test_quantify_axo.py)."""
    import xarray as xr

    from xmulti.cli import main
    from xmulti.simulate import simulate_scan

    scan = simulate_scan(tmp_path / "scan.h5", "tiny", seed=2)
    store = tmp_path / "r.zarr"
    code = main(["fit-xrf", str(scan), "--out", str(store), "--elements", "P,S,K,Ca,Fe,Cu,Zn",
                 "--standard", str(scan), "--standard-densities", "K=1.5,Fe=0.08"])
    assert code == 0
    assert "areal density (ug/cm2)" in capsys.readouterr().out
    density = xr.open_datatree(store, engine="zarr")["xrf/areal_density"].ds
    # the standard is fitted with its own elements (K, Fe), the sample with seven: the same
    # scan's K and Fe differ by about 1.5 % between the two fits
    assert float(density["K"].mean()) == pytest.approx(1.5, rel=0.05)
    assert float(density["Fe"].mean()) == pytest.approx(0.08, rel=0.05)
    assert density["Zn"].attrs["units"] == "ug/cm2" and np.isfinite(density["Zn"].values).all()
    assert density["Zn"].attrs["sensitivity"] > 0


def test_band_product_equals_the_dense_estimator():
    """The banded product skips only zeros of ``[W G | 1]``: same amplitudes as ``y P``."""
    scan, result, plan = fitted_scan(FLUX_FOR_COUNTS[3000])
    assert len(plan.bands) > 1 and plan.bands[0][0] == 0 and plan.bands[-1][1] == plan.n_fit
    assert all(a[1] == b[0] for a, b in zip(plan.bands[:-1], plan.bands[1:], strict=True))
    mults = sum((hi - lo) * len(cols) for lo, hi, cols in plan.bands)
    assert mults < 0.8 * plan.n_fit * (plan.n_components + 1)
    y = scan.spectra[:, plan.channel_slice].astype(float)
    out = unpack(fit_spectra(scan.spectra, plan), plan)
    dense = y @ plan.estimator()
    assert np.max(np.abs(out["amplitudes"] - dense) / out["sigma"]) < 1e-3
    np.testing.assert_allclose(out["total_counts"], y.sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize("layout", ["uint32", "float64", "int16", "fortran", "readonly", "big-endian"])
def test_one_pass_kernel_equals_the_array_code(layout, monkeypatch):
    """The fused cast + squares pass (numpy) gives the array code's fit, on every input layout,
    and rejects NaN and negative counts the same way."""
    from xmulti.xrf import fused

    if not fused.ENABLED:
        pytest.skip("numba not installed")
    scan, _, plan = fitted_scan(FLUX_FOR_COUNTS[3000])
    spectra = {
        "uint32": scan.spectra.astype(np.uint32),
        "float64": scan.spectra.astype(np.float64),
        "int16": scan.spectra.astype(np.int16),
        "fortran": np.asfortranarray(scan.spectra.astype(np.uint32)),
        "readonly": scan.spectra.astype(np.uint32),
        "big-endian": scan.spectra.astype(">u4"),
    }[layout]
    spectra.flags.writeable = layout != "readonly"
    results = {}
    for enabled in (True, False):
        monkeypatch.setattr(fused, "ENABLED", enabled)
        results[enabled] = unpack(fit_spectra(spectra, plan), plan)
    for name in ("amplitudes", "nonneg", "sigma", "total_counts"):
        np.testing.assert_allclose(results[True][name], results[False][name], rtol=1e-5, atol=1e-6)
    # chi-square: the squares summed in another order (float32), relative to its size
    np.testing.assert_allclose(results[True]["reduced_chi_square"], results[False]["reduced_chi_square"], rtol=1e-4)
    monkeypatch.setattr(fused, "ENABLED", True)
    assert fused.usable(np, spectra) == (layout != "big-endian")  # byte-swapped: the array code
    if layout in ("float64", "int16"):
        for enabled in (True, False):
            monkeypatch.setattr(fused, "ENABLED", enabled)
            bad = spectra.copy()
            bad[3, plan.channel_slice.start + 200] = -1
            with pytest.raises(InvalidInputError, match="NaN or negative"):
                fit_spectra(bad, plan)
            if layout == "float64":
                bad[3, plan.channel_slice.start + 200] = np.nan
                with pytest.raises(InvalidInputError, match="NaN or negative"):
                    fit_spectra(bad, plan)
