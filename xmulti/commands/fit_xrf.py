"""``xmulti fit-xrf SCAN.h5 --out RESULTS.zarr [--elements P,S,K,Ca,Fe,Cu,Zn]``: elemental maps.

Calibrates the detector on the summed spectrum, fits every pixel (continuum inside the linear
model), writes ``/xrf/elemental_maps/<El>`` (the unconstrained maps, same paths as the input
layout) and ``/xrf/fit`` (non-negative maps, uncertainties, chi-square, scatter,
continuum, total counts, and the summed-spectrum fit) to a Zarr results store, and prints a
per-element summary.

With a thin-film standard it also writes ``/xrf/areal_density`` (ug/cm2):
``--standard-calibration FILE`` applies a saved calibration (``xmulti standard``) without
refitting; ``--standard STANDARD.h5`` with ``--standard-info`` / ``--standard-densities`` fits the
standard with its own elements, keeps its calibration beside the store
(``RESULTS.zarr.standard-calibration.json``, or the ``--standard-calibration FILE`` given) and
reuses it on the next call while the standard's scan is unchanged. The standard is settled, and
checked against the scan's incident energy and geometry, before the scan is fitted: a refused
standard writes nothing. Steps are logged to stderr, one line each.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``fit-xrf`` subcommand."""
    parser = subparsers.add_parser(
        "fit-xrf",
        help="fit XRF spectra into elemental maps",
        description="Calibrate on the summed spectrum, fit every pixel with a physical spectral "
        "model (continuum inside the linear fit) and write elemental maps, uncertainties and "
        "diagnostics to a Zarr results store.",
    )
    parser.add_argument("scan", help="HDF5 file in the combined layout")
    parser.add_argument("--out", required=True, help="results store (Zarr), created if absent")
    parser.add_argument(
        "--elements",
        help="comma-separated element symbols, e.g. P,S,K,Ca,Fe,Cu,Zn (default: suggested from "
        "the summed spectrum)",
    )
    parser.add_argument(
        "--background", choices=("linear", "snip"), default="linear",
        help="continuum inside the linear fit (default, unbiased) or per-pixel SNIP",
    )
    parser.add_argument("--n-continuum", type=int, default=8, help="continuum B-splines (default 8)")
    parser.add_argument(
        "--energy-range", type=float, nargs=2, metavar=("LOW_KEV", "HIGH_KEV"),
        help="fitted energy range (default 1.0 keV to the incident energy + 0.6 keV)",
    )
    parser.add_argument("--pileup", action="store_true", help="fit a pile-up (sum peak) component")
    parser.add_argument("--no-normalize", action="store_true", help="keep raw counts (no i0 / dead time)")
    parser.add_argument("--chunks", type=int, help="positions per Dask chunk (default: about 64 MB)")
    quant = parser.add_argument_group(
        "quantification against a thin-film standard (writes /xrf/areal_density)",
        "Either apply a saved calibration (--standard-calibration FILE, made by `xmulti standard` or "
        "by an earlier --standard run), or fit the standard's scan with its own elements "
        "(--standard with --standard-info or --standard-densities); its calibration is then saved "
        "beside the results store (RESULTS.zarr.standard-calibration.json, or the "
        "--standard-calibration FILE given) and reused while the standard's scan is unchanged.",
    )
    quant.add_argument("--standard", metavar="STANDARD.h5", help="scan of the standard (combined layout, with i0)")
    quant.add_argument("--standard-info", metavar="FILE", help="MAPS maps_standardinfo.txt with the certified densities")
    quant.add_argument("--standard-densities", metavar="El=UG_CM2,...",
                       help="certified areal densities, e.g. Ca=1.931,Fe=0.504,Cu=0.284 (ug/cm2)")
    quant.add_argument("--standard-calibration", metavar="FILE",
                       help="saved standard calibration (JSON) to apply; with --standard, where it is kept")
    parser.set_defaults(func=run)


def write_results(store, group: str, dataset, provenance: dict) -> None:
    """Write one group of the results store (the lead's atomic Zarr writer)."""
    from ..io.results import write_group

    write_group(store, group, dataset, provenance=provenance)


def standard_cache_path(out: str | os.PathLike) -> Path:
    """Where ``--standard`` keeps the standard's calibration: beside the results store."""
    out = Path(out)
    return out.with_name(out.name + ".standard-calibration.json")


def _log(line: str) -> None:
    import sys

    print(f"fit-xrf: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Fit the scan and write the results; returns the exit code."""
    import time

    import numpy as np

    from ..errors import InvalidInputError
    from ..io.results import provenance
    from ..io.scan import open_scan
    from ..xrf.maps import calibrate_scan, calibration_diagnostics, fit_xrf
    from ..xrf.standard import (
        cached_standard_calibration,
        check_compatible,
        check_standard_scan,
        load_standard_calibration,
        quantify_maps,
        scan_energy_keV,
        scan_geometry,
    )

    elements = None
    if args.elements:
        elements = [e.strip() for e in args.elements.split(",") if e.strip()]
        if not elements:
            raise InvalidInputError("--elements is empty")
    densities = _standard_densities(args)  # every standard argument checked before any work
    if args.no_normalize and (densities is not None or args.standard_calibration is not None):
        raise InvalidInputError("areal densities need maps normalised by i0: drop --no-normalize")
    saved = None
    if densities is None and args.standard_calibration is not None:
        saved = load_standard_calibration(args.standard_calibration)
    energy_range = tuple(args.energy_range) if args.energy_range else None
    _log(f"opening {args.scan}")
    tree = open_scan(args.scan, chunks=args.chunks)
    energy, geometry = scan_energy_keV(tree), scan_geometry(tree)
    options = {
        "elements": elements,
        "background": args.background,
        "n_continuum": args.n_continuum,
        "energy_range_keV": args.energy_range,
        "normalize": not args.no_normalize,
        "pileup": args.pileup,
    }
    standard = None
    if saved is not None:
        check_compatible(saved, energy, geometry, sample=args.scan)
        standard = saved
        _log(f"standard: applying {args.standard_calibration} (measured on "
             f"{saved.metadata['provenance'].get('standard_scan')}, not refitted)")
        options.update(standard_calibration=str(args.standard_calibration))
    elif densities is not None:
        check_standard_scan(args.standard, energy, geometry, sample=args.scan)  # before minutes of fitting
        cache = args.standard_calibration or standard_cache_path(args.out)
        # the standard is fitted with its own elements, with the sample's model options
        standard = cached_standard_calibration(
            args.standard, densities, cache, standard_info=args.standard_info, log=_log,
            background=args.background, n_continuum=args.n_continuum, energy_range_keV=energy_range,
            pileup=args.pileup,
        )
        check_compatible(standard, energy, geometry, sample=args.scan)
        options.update(standard=str(args.standard), standard_densities=densities, standard_calibration=str(cache))

    _log(f"calibrating the detector on the summed spectrum of {tree['xrf'].ds.sizes['position']} spectra")
    start = time.perf_counter()
    result = calibrate_scan(
        tree, elements, n_continuum=args.n_continuum, energy_range_keV=energy_range, pileup=args.pileup
    )
    _log(f"calibrated in {time.perf_counter() - start:.1f} s")
    for line in result.report_lines():
        _log(line)
    _log("fitting every pixel")
    start = time.perf_counter()
    maps = fit_xrf(
        tree,
        result.elements,
        calibration=result,
        background=args.background,
        normalize=not args.no_normalize,
        n_continuum=args.n_continuum,
        energy_range_keV=energy_range,
    ).compute()
    _log(f"fitted the pixels in {time.perf_counter() - start:.1f} s")
    element_names = [n for n in maps.data_vars if maps[n].attrs.get("component") == "element"
                     and not n.endswith(("_nonneg", "_sigma"))]
    density = quantify_maps(maps, standard, geometry) if standard is not None else None
    prov = provenance("fit-xrf", options, args.scan)
    elemental = maps[element_names]
    write_results(args.out, "/xrf/elemental_maps", elemental, prov)
    diagnostics = maps.drop_vars(element_names).merge(calibration_diagnostics(result))
    diagnostics.attrs = {**maps.attrs, **diagnostics.attrs}
    write_results(args.out, "/xrf/fit", diagnostics, prov)
    if density is not None:
        write_results(args.out, "/xrf/areal_density", density, prov)

    cal = result.calibration
    print(f"calibration: offset {cal.offset_keV:.4f} keV, gain {cal.gain_keV * 1e3:.4f} eV/ch, "
          f"noise {cal.noise_fwhm_keV * 1e3:.1f} eV FWHM, Fano {cal.fano:.3f}; "
          f"summed fit {result.quality} (reduced chi-square {result.tolerant_reduced_chi_square:.2f} "
          f"with the 2 % shape tolerance, {result.reduced_chi_square:.2f} Poisson)")
    unit = maps.attrs.get("normalisation", "counts")
    print(f"{'element':8s} {'mean':>12s} {'median sigma':>13s} {'max':>12s} {'>3 sigma':>9s}   [{unit}]")
    for name in element_names:
        value = maps[name].values
        sigma = maps[f"{name}_sigma"].values
        finite = np.isfinite(sigma)
        detected = np.mean(value[finite] > 3 * sigma[finite]) if finite.any() else 0.0
        print(f"{name:8s} {np.mean(value):12.4g} {np.median(sigma[finite]) if finite.any() else np.inf:13.4g} "
              f"{np.max(value):12.4g} {100 * detected:8.1f}%")
    for peak in result.suggested_elements[:5]:
        print(f"unexplained peak at {peak['energy_keV']:.3f} keV ({peak['significance']:.0f} sigma): "
              f"candidates {', '.join(peak['candidates'][:5]) or 'none'}")
    if density is not None:
        quantified = [n for n in element_names if n in density]
        print("areal density (ug/cm2), mean over the map: "
              + ", ".join(f"{n} {float(np.nanmean(density[n].values)):.4g}" for n in quantified))
    groups = "/xrf/elemental_maps, /xrf/fit" + (", /xrf/areal_density" if density is not None else "")
    print(f"wrote {groups} to {args.out}")
    return 0


def _standard_densities(args: argparse.Namespace) -> dict[str, float] | None:
    """The standard's certified densities, or None when no standard is given (checked up front)."""
    from ..errors import InvalidInputError
    from ..xrf.standard import parse_densities, read_standard_info

    given = [args.standard_info is not None, args.standard_densities is not None]
    if args.standard is None:
        if any(given):
            raise InvalidInputError("--standard-info and --standard-densities go with --standard STANDARD.h5")
        return None
    if sum(given) != 1:
        raise InvalidInputError("--standard needs exactly one of --standard-info FILE or --standard-densities El=..")
    if args.standard_info is not None:
        return read_standard_info(args.standard_info)
    return parse_densities(args.standard_densities)
