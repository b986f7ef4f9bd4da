"""XRF calibration and element identification on data xmulti did not simulate: a printed report.

Usage: ``python benchmarks/validate_xrf.py [--cases bio7,l_lines] [--seed 0] [--map-shape 128 128]
[--no-map] [--no-real] [--no-true-list]``

Inputs:

- every case of :func:`xmulti.simulate.independent_xrf.outside_cases` (an independent spectrum
  generator whose physics differ from the fitter's), summed spectrum, started from the case's
  nominal calibration (off the truth by +15 eV in offset and +0.4 % in gain unless the case says
  otherwise);
- PyMca's shipped spectra: ``XRFSpectrum.mca`` started from the calibration of PyMca's own test
  (``PyMca5/tests/XrfTest.py``: zero -0.492773 keV, gain 0.00502883 keV/ch, 17.5 keV) and
  ``Steel.spe`` from ``Steel.cfg`` (read with :mod:`xmulti.io.pymca`);
- the 2-ID-E files: the AXO standard step scan and the 2xfm_0011 fly scan, converted with
  :func:`xmulti.io.convert.convert`, started from the MCA calibration in the file.

For each: ``calibrate(summed, E0, initial, elements=None)`` and a confusion table (true elements,
found, missed, false), the calibration shift in channels against the truth (or, for real data,
against the reference calibration: PyMca's, or MAPS' fitted one in the override file), the
reduced chi-square and the time. Real data have no ground truth: their "true" lists are the
reference lists named in the table (certified, fitted by PyMca's test, or the beamline's fit
list), so "false" there means "not in the reference list", not necessarily wrong. The outside
cases are also calibrated with their true element list (``--no-true-list`` skips it): the shift,
chi-square and each element's fitted counts against the truth.

The map case (128 x 128 x 2048 by default): the calibration on its summed spectrum, then
``fit_xrf`` with the true element list and the calibration found, and each element's bias
``mean(fitted) / mean(true) - 1`` with the calibration time beside the per-pixel fit time.

Only public functions are used (``calibrate``, ``fit_xrf``, ``open_scan``, the generator, the
readers, ``convert``), so the script keeps working when internals change. It prints; it does not
assert.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

import xmulti
from xmulti.simulate.independent_xrf import outside_cases, write_map_scan
from xmulti.xrf import Calibration
from xmulti.xrf.calibrate import calibrate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not (SHARED / "aps-2ide").is_dir():
    SHARED = Path("/work/shared/data")

#: PyMca's own test fit of XRFSpectrum.mca (PyMca5/tests/XrfTest.py in silx-kit/pymca): the
#: calibration, excitation and element list of its configuration.
PYMCA_TEST_XRFSPECTRUM = {
    "offset_keV": -0.492773,
    "gain_keV": 0.00502883,
    "incident_energy_keV": 17.5,
    "elements": ("Ni", "Zn", "Co", "Sr", "Ca", "Mn", "As", "Cd", "Pb", "Tl", "Ar", "Ti", "Fe", "V", "Sb",
                 "Cu", "Se", "Cr"),
}
#: Certified elements of the AXO standard (maps_standardinfo.txt) and the two uncertified
#: constituents xmulti's AXO test adds (tests/test_quantify_axo.py).
AXO_REFERENCE = ("Ca", "Fe", "Cu", "La", "Pb")


def _calibration_shift(cal, true_offset, true_gain, true_quad, n_channels, e_max_keV):
    """Offset shift (channels), gain shift at the channel of ``e_max_keV`` (channels) and the
    largest energy error over 1 keV .. ``e_max_keV`` (channels)."""
    ch = np.arange(n_channels, dtype=float)
    e_true = true_offset + true_gain * ch + true_quad * ch**2
    e_fit = cal.offset_keV + cal.gain_keV * ch + getattr(cal, "quadratic_keV", 0.0) * ch**2
    window = (e_true >= 1.0) & (e_true <= e_max_keV)
    ref = float(ch[window][-1]) if window.any() else float(n_channels - 1)
    d_offset = (cal.offset_keV - true_offset) / true_gain
    d_gain = (cal.gain_keV - true_gain) * ref / true_gain
    worst = float(np.max(np.abs(e_fit - e_true)[window]) / true_gain) if window.any() else math.nan
    return d_offset, d_gain, worst


def _run_calibrate(summed, e0, initial, elements=None):
    """calibrate() with warnings recorded; returns (result or None, seconds, warnings, error)."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = calibrate(np.asarray(summed, dtype=np.float64), float(e0), initial, elements)
            error = None
        except Exception as exc:  # printed, not raised: the report goes on
            result, error = None, f"{type(exc).__name__}: {exc}"
    return result, time.perf_counter() - start, [str(w.message) for w in caught], error


def _row(name, truth, result, seconds, warned, error, shift, alternatives=None):
    truth = tuple(truth)
    if result is None:
        return dict(name=name, truth=truth, found=(), missed=truth, false=(), shift=(math.nan,) * 3,
                    chi2=math.nan, seconds=seconds, warned=warned, error=error, overlap="")
    found = tuple(getattr(result, "elements", ()))
    missed = tuple(e for e in truth if e not in found)
    false = tuple(e for e in found if e not in truth)
    overlap = []
    for true, readings in (alternatives or {}).items():
        read = [r for r in readings if r in found]
        overlap.append(f"{true}{'+' if true in found else '->'}{'/'.join(read)}" if read
                       else (f"{true} ok" if true in found else f"{true} lost"))
    return dict(name=name, truth=truth, found=found, missed=missed, false=false, shift=shift,
                chi2=float(getattr(result, "reduced_chi_square", math.nan)), seconds=seconds,
                warned=warned, error=error, overlap=" ".join(overlap))


def _print_table(rows, title):
    print(f"\n## {title}\n")
    header = (f"{'case':26s} {'n_true':>6s} {'found':>5s} {'missed':>6s} {'false':>5s} "
              f"{'d_off':>7s} {'d_gain':>7s} {'max|dE|':>7s} {'chi2_r':>9s} {'t[s]':>6s}  details")
    print(header)
    print("-" * len(header))
    for r in rows:
        d_off, d_gain, worst = r["shift"]
        print(f"{r['name']:26s} {len(r['truth']):6d} {len(r['found']):5d} {len(r['missed']):6d} "
              f"{len(r['false']):5d} {d_off:7.2f} {d_gain:7.2f} {worst:7.2f} {r['chi2']:9.2f} "
              f"{r['seconds']:6.1f}  ", end="")
        parts = [f"true {','.join(r['truth'])}"]
        if r["missed"]:
            parts.append(f"missed {','.join(r['missed'])}")
        if r["false"]:
            parts.append(f"false {','.join(r['false'])}")
        if r["overlap"]:
            parts.append(f"overlap {r['overlap']}")
        if r["warned"]:
            parts.append("warned")
        if r["error"]:
            parts.append(f"ERROR {r['error'][:160]}")
        print("; ".join(parts))
    tp = sum(len(r["truth"]) - len(r["missed"]) for r in rows)
    fn = sum(len(r["missed"]) for r in rows)
    fp = sum(len(r["false"]) for r in rows)
    exact = sum(1 for r in rows if not r["missed"] and not r["false"] and not r["error"])
    print(f"\ntotal: {tp} found of {tp + fn} true ({fn} missed), {fp} false; "
          f"{exact}/{len(rows)} cases with exactly the true list")
    print("d_off: offset shift / true gain (channels); d_gain: gain shift times the channel of "
          "min(E0, top of the range) (channels); max|dE|: largest energy error 1 keV .. that "
          "channel (channels)")


def run_outside(names, seed, true_list=True):
    cases = outside_cases()
    rows, given_rows = [], []
    for name in names:
        case = cases[name]
        if case.kind != "spectrum":
            continue
        spectrum = case.make(seed=seed)
        det = case.detector
        off, gain = case.nominal_calibration_keV
        result, seconds, caught, error = _run_calibrate(
            spectrum.counts, case.incident_energy_keV, Calibration(offset_keV=off, gain_keV=gain)
        )
        e_max = min(case.incident_energy_keV, float(spectrum.energy_keV[-1]))
        shift = (_calibration_shift(result.calibration, det.offset_keV, det.gain_keV, det.quadratic_keV,
                                    det.n_channels, e_max) if result is not None else (math.nan,) * 3)
        rows.append(_row(name, case.elements, result, seconds, bool(caught), error, shift, case.alternatives))
        print(f"  {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
        if true_list:
            given, t_given, caught_given, error_given = _run_calibrate(
                spectrum.counts, case.incident_energy_keV, Calibration(offset_keV=off, gain_keV=gain),
                list(case.elements),
            )
            given_rows.append((name, spectrum, given, t_given, bool(caught_given), error_given, det, e_max))
    _print_table(rows, f"Outside cases (independent generator, seed {seed}): calibrate(elements=None)")
    if true_list:
        _print_true_list(given_rows)
    return rows


def _print_true_list(given_rows):
    """Calibration with the true element list: shift, chi-square and each element's counts."""
    print("\n## Outside cases: calibrate(elements=true list)\n")
    header = (f"{'case':26s} {'d_off':>7s} {'d_gain':>7s} {'max|dE|':>7s} {'chi2_r':>9s} {'t[s]':>6s} "
              f"{'worst bias':>16s}  counts fitted / true - 1 per element")
    print(header)
    print("-" * len(header))
    for name, spectrum, result, seconds, warned, error, det, e_max in given_rows:
        if result is None:
            print(f"{name:26s} ERROR {error[:160]}")
            continue
        d_off, d_gain, worst = _calibration_shift(result.calibration, det.offset_keV, det.gain_keV,
                                                  det.quadratic_keV, det.n_channels, e_max)
        amplitudes = getattr(result, "amplitudes", {}) or {}
        bias = {el: amplitudes[el] / n - 1 for el, n in spectrum.element_counts.items() if el in amplitudes}
        worst_el = max(bias, key=lambda el: abs(bias[el])) if bias else ""
        worst_txt = f"{worst_el} {bias[worst_el]:+.1%}" if bias else "n/a"
        chi2 = float(getattr(result, "reduced_chi_square", math.nan))
        print(f"{name:26s} {d_off:7.2f} {d_gain:7.2f} {worst:7.2f} {chi2:9.2f} {seconds:6.1f} {worst_txt:>16s}  "
              + " ".join(f"{el} {b:+.1%}" for el, b in bias.items()) + ("; warned" if warned else ""))
    print("true counts: each element's detected counts over its whole response (tails, escape, "
          "the part outside the channels), before pile-up; fitted: CalibrationResult.amplitudes")


def run_real(workdir: Path):
    from xmulti.io.pymca import read_fit_config, read_mca

    rows = []
    pymca = SHARED / "pymca"
    if (pymca / "XRFSpectrum.mca").exists():
        ref = PYMCA_TEST_XRFSPECTRUM
        counts = read_mca(pymca / "XRFSpectrum.mca").counts
        initial = Calibration(offset_keV=ref["offset_keV"], gain_keV=ref["gain_keV"])
        result, seconds, caught, error = _run_calibrate(counts, ref["incident_energy_keV"], initial)
        shift = (_calibration_shift(result.calibration, ref["offset_keV"], ref["gain_keV"], 0.0, counts.size,
                                    ref["incident_energy_keV"]) if result else (math.nan,) * 3)
        rows.append(_row("pymca XRFSpectrum.mca", ref["elements"], result, seconds, bool(caught), error, shift))
        print(f"  XRFSpectrum.mca: {seconds:.1f} s", file=sys.stderr, flush=True)
    if (pymca / "Steel.spe").exists():
        cfg = read_fit_config(pymca / "Steel.cfg")
        counts = read_mca(pymca / "Steel.spe").counts
        initial = Calibration(offset_keV=cfg.offset_keV, gain_keV=cfg.gain_keV)
        result, seconds, caught, error = _run_calibrate(counts, cfg.incident_energy_keV, initial)
        shift = (_calibration_shift(result.calibration, cfg.offset_keV, cfg.gain_keV, 0.0, counts.size,
                                    cfg.incident_energy_keV) if result else (math.nan,) * 3)
        rows.append(_row("pymca Steel.spe", cfg.elements, result, seconds, bool(caught), error, shift))
        print(f"  Steel.spe: {seconds:.1f} s", file=sys.stderr, flush=True)
    aps = SHARED / "aps-2ide"
    if (aps / "mda" / "axo_std.mda").exists():
        from xmulti.io.convert import convert, read_fit_override

        override = read_fit_override(aps / "maps_fit_parameters_override.txt")
        maps_offset = float(override["CAL_OFFSET_[E_OFFSET]"])
        maps_gain = float(override["CAL_SLOPE_[E_LINEAR]"])
        beamline_list = tuple(e.strip() for e in override["ELEMENTS_TO_FIT"].split(","))
        for label, mda, reference in (
            ("2-ID-E AXO standard", aps / "mda" / "axo_std.mda", AXO_REFERENCE),
            ("2-ID-E 2xfm_0011 fly", aps / "mda" / "2xfm_0011.mda", beamline_list),
        ):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    path = convert([mda], workdir / f"{mda.stem}.h5", overwrite=True)
                xrf = xmulti.open_scan(path)["xrf"].ds
                tree_attrs = xmulti.open_scan(path).attrs
                summed = np.asarray(xrf["spectra"].sum("position", dtype=np.float64).values)
                e0 = float(tree_attrs["incident_energy_keV"])
                energy = np.asarray(xrf["energy"].values, dtype=float)
                gain, offset = np.polyfit(np.arange(energy.size), energy, 1)
                initial = Calibration(offset_keV=float(offset), gain_keV=float(gain))
            except Exception as exc:
                rows.append(_row(label, reference, None, 0.0, False, f"{type(exc).__name__}: {exc}", (math.nan,) * 3))
                continue
            result, seconds, caught, error = _run_calibrate(summed, e0, initial)
            shift = (_calibration_shift(result.calibration, maps_offset, maps_gain, 0.0, summed.size, e0)
                     if result else (math.nan,) * 3)
            rows.append(_row(label, reference, result, seconds, bool(caught), error, shift))
            print(f"  {label}: {seconds:.1f} s", file=sys.stderr, flush=True)
    _print_table(rows, "Real spectra: calibrate(elements=None) against reference lists and calibrations")
    print("references: XRFSpectrum.mca - the element list and calibration of PyMca's test fit "
          "(XrfTest.py); Steel.spe - Steel.cfg's [peaks] and [detector]; AXO - certified Ca, Fe, Cu "
          "plus La, Pb (tests/test_quantify_axo.py), shift vs MAPS' fitted calibration "
          "(maps_fit_parameters_override.txt); 2xfm_0011 - the override's ELEMENTS_TO_FIT, shift "
          "vs the same MAPS calibration")
    return rows


def run_map(shape, seed, workdir: Path):
    case = outside_cases()["hump_map"]
    start = time.perf_counter()
    truth = case.make(seed=seed, shape=tuple(shape))
    t_make = time.perf_counter() - start
    path = write_map_scan(truth, workdir / "hump_map.h5", overwrite=True)
    scan = xmulti.open_scan(path)
    summed = np.asarray(scan["xrf"].ds["spectra"].sum("position", dtype=np.float64).values)
    det = case.detector
    off, gain = case.nominal_calibration_keV
    initial = Calibration(offset_keV=off, gain_keV=gain)
    e0 = case.incident_energy_keV
    print(f"\n## Map case hump_map: {shape[0]} x {shape[1]} x {det.n_channels}, seed {seed} "
          f"(generated in {t_make:.1f} s), elements {','.join(case.elements)}")
    result, seconds, caught, error = _run_calibrate(summed, e0, initial)
    shift = (_calibration_shift(result.calibration, det.offset_keV, det.gain_keV, det.quadratic_keV,
                                det.n_channels, e0) if result else (math.nan,) * 3)
    _print_table([_row("hump_map (summed)", case.elements, result, seconds, bool(caught), error, shift)],
                 "Map case: calibrate(elements=None) on the summed spectrum")
    true_cal, t_cal, caught, error = _run_calibrate(summed, e0, initial, list(case.elements))
    if true_cal is None:
        print(f"calibrate with the true elements failed: {error}")
        return
    d_off, d_gain, worst = _calibration_shift(true_cal.calibration, det.offset_keV, det.gain_keV,
                                              det.quadratic_keV, det.n_channels, e0)
    print(f"\ncalibrate(true elements): {t_cal:.1f} s, reduced chi-square {true_cal.reduced_chi_square:.2f}, "
          f"d_off {d_off:.2f} ch, d_gain {d_gain:.2f} ch, max|dE| {worst:.2f} ch"
          f"{' (warned)' if caught else ''}")
    start = time.perf_counter()
    try:
        maps = xmulti.fit_xrf(scan, list(case.elements), calibration=true_cal)
        how = "fit_xrf(scan, true elements, calibration=that result)"
    except TypeError:
        maps = xmulti.fit_xrf(scan, list(case.elements))
        how = "fit_xrf(scan, true elements) (calibration included)"
    maps = maps.compute()
    t_fit = time.perf_counter() - start
    n_pixels = shape[0] * shape[1]
    print(f"{how}: {t_fit:.1f} s for {n_pixels} pixels ({n_pixels / t_fit:,.0f} pixels/s); "
          f"calibration time / per-pixel fit time = {t_cal / t_fit:.2f}")
    print(f"\n{'element':8s} {'mean true':>10s} {'mean fit':>10s} {'bias':>8s} {'bias nonneg':>12s} {'rms err/true':>13s}")
    for i, element in enumerate(case.elements):
        true_map = truth.element_counts[i]
        if element not in maps:
            print(f"{element:8s} {true_map.mean():10.2f} {'absent':>10s}")
            continue
        fitted = np.asarray(maps[element].values, dtype=float)
        nonneg = np.asarray(maps[f"{element}_nonneg"].values, dtype=float) if f"{element}_nonneg" in maps else None
        bias = fitted.mean() / true_map.mean() - 1
        bias_nn = nonneg.mean() / true_map.mean() - 1 if nonneg is not None else math.nan
        rms = np.sqrt(np.mean((fitted - true_map) ** 2)) / true_map.mean()
        print(f"{element:8s} {true_map.mean():10.2f} {fitted.mean():10.2f} {bias:+8.2%} {bias_nn:+12.2%} {rms:13.3f}")
    print("true = expected detected counts of all the element's lines per pixel (whole response, "
          "escape included); fit = fit_xrf's unconstrained estimate (counts, no i0 in the file)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="all", help="comma-separated outside case names, or 'all'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--map-shape", type=int, nargs=2, default=(128, 128))
    parser.add_argument("--no-map", action="store_true")
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--no-true-list", action="store_true",
                        help="skip the second calibration of each outside case with its true element list")
    args = parser.parse_args()
    cases = outside_cases()
    names = list(cases) if args.cases == "all" else [n.strip() for n in args.cases.split(",")]
    unknown = [n for n in names if n not in cases]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose among {sorted(cases)}")
    print(f"# validate_xrf: xmulti {getattr(xmulti, '__version__', '?')}, numpy {np.__version__}")
    t0 = time.perf_counter()
    run_outside(names, args.seed, true_list=not args.no_true_list)
    with tempfile.TemporaryDirectory(prefix="validate_xrf_") as tmp:
        if not args.no_real:
            try:
                run_real(Path(tmp))
            except Exception:
                print("real data: failed\n" + traceback.format_exc())
        if not args.no_map and ("hump_map" in names):
            try:
                run_map(args.map_shape, args.seed, Path(tmp))
            except Exception:
                print("map case: failed\n" + traceback.format_exc())
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
