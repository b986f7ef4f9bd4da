"""``xmulti fit-xrf SCAN.h5 --out RESULTS.zarr [--elements P,S,K,Ca,Fe,Cu,Zn]``: elemental maps.

Calibrates the detector on the summed spectrum, fits every pixel (continuum inside the linear
model), writes ``/xrf/elemental_maps/<El>`` (the unconstrained maps, same paths as the input
layout) and ``/xrf/fit`` (non-negative maps, uncertainties, chi-square, scatter,
continuum, total counts, and the summed-spectrum fit) to a Zarr results store, and prints a
per-element summary.
"""

from __future__ import annotations

import argparse


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
    quant = parser.add_argument_group("quantification against a thin-film standard (writes /xrf/areal_density)")
    quant.add_argument("--standard", metavar="STANDARD.h5", help="scan of the standard (combined layout, with i0)")
    quant.add_argument("--standard-info", metavar="FILE", help="MAPS maps_standardinfo.txt with the certified densities")
    quant.add_argument("--standard-densities", metavar="El=UG_CM2,...",
                       help="certified areal densities, e.g. Ca=1.931,Fe=0.504,Cu=0.284 (ug/cm2)")
    parser.set_defaults(func=run)


def write_results(store, group: str, dataset, provenance: dict) -> None:
    """Write one group of the results store (the lead's atomic Zarr writer)."""
    from ..io.results import write_group

    write_group(store, group, dataset, provenance=provenance)


def run(args: argparse.Namespace) -> int:
    """Fit the scan and write the results; returns the exit code."""
    import numpy as np

    from ..errors import InvalidInputError
    from ..io.results import provenance
    from ..io.scan import open_scan
    from ..xrf.maps import calibrate_scan, calibration_diagnostics, fit_xrf

    elements = None
    if args.elements:
        elements = [e.strip() for e in args.elements.split(",") if e.strip()]
        if not elements:
            raise InvalidInputError("--elements is empty")
    densities = _standard_densities(args)
    tree = open_scan(args.scan, chunks=args.chunks)
    options = {
        "elements": elements,
        "background": args.background,
        "n_continuum": args.n_continuum,
        "energy_range_keV": args.energy_range,
        "normalize": not args.no_normalize,
        "pileup": args.pileup,
    }
    if densities is not None:
        options.update(standard=str(args.standard), standard_densities=densities)
    energy_range = tuple(args.energy_range) if args.energy_range else None
    result = calibrate_scan(
        tree, elements, n_continuum=args.n_continuum, energy_range_keV=energy_range, pileup=args.pileup
    )
    maps = fit_xrf(
        tree,
        result.elements,
        calibration=result,
        background=args.background,
        normalize=not args.no_normalize,
        n_continuum=args.n_continuum,
        energy_range_keV=energy_range,
    ).compute()
    element_names = [n for n in maps.data_vars if maps[n].attrs.get("component") == "element"
                     and not n.endswith(("_nonneg", "_sigma"))]
    prov = provenance("fit-xrf", options, args.scan)
    elemental = maps[element_names]
    write_results(args.out, "/xrf/elemental_maps", elemental, prov)
    diagnostics = maps.drop_vars(element_names).merge(calibration_diagnostics(result))
    diagnostics.attrs = {**maps.attrs, **diagnostics.attrs}
    write_results(args.out, "/xrf/fit", diagnostics, prov)
    density = None
    if densities is not None:
        from ..xrf.standard import quantify_against_standard

        density = quantify_against_standard(maps, result.elements, args.standard, densities,
                                            background=args.background, n_continuum=args.n_continuum,
                                            energy_range_keV=energy_range)
        write_results(args.out, "/xrf/areal_density", density, prov)

    cal = result.calibration
    print(f"calibration: offset {cal.offset_keV:.4f} keV, gain {cal.gain_keV * 1e3:.4f} eV/ch, "
          f"noise {cal.noise_fwhm_keV * 1e3:.1f} eV FWHM, Fano {cal.fano:.3f}; "
          f"summed-spectrum reduced chi-square {result.reduced_chi_square:.2f}")
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
