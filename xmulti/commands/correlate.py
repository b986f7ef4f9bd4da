"""``xmulti correlate RESULTS.zarr``: cells from the phase, per-region structure and composition."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``correlate`` subcommand."""
    parser = subparsers.add_parser(
        "correlate",
        help="segment cells on the phase and tabulate mass, texture and elements per cell",
        description="Segment cells on /reconstructed/phase, then tabulate per cell: area, phase, "
        "projected areal mass of a stated matrix, texture, element means and totals (from "
        "/xrf/elemental_maps) and mass fractions, with uncertainties, plus pixelwise Pearson and "
        "Spearman correlations at the XRF resolution. Writes /correlation/labels, "
        "/correlation/regions and /correlation/pixelwise to the store and the table as CSV.",
    )
    parser.add_argument("store", help="xmulti results store (Zarr)")
    parser.add_argument("--elements", help="comma-separated element maps (default: all)")
    parser.add_argument("--energy-keV", type=float, dest="energy_keV",
                        help="photon energy (keV); default: from the store's attributes")
    parser.add_argument("--matrix", default="protein",
                        help="matter the phase is converted to mass of: protein, ice or FORMULA:DENSITY")
    parser.add_argument("--embedding", default="none",
                        help="medium the matrix displaces: none (dried), ice or FORMULA:DENSITY")
    parser.add_argument("--method", choices=("otsu", "multiotsu", "local"), default="otsu",
                        help="threshold of the segmentation (default otsu)")
    parser.add_argument("--min-area-um2", type=float, dest="min_area_um2", help="drop smaller regions")
    parser.add_argument("--no-split", action="store_true", help="do not split touching cells")
    parser.add_argument("--illumination-threshold", type=float, default=0.05, dest="illumination_threshold",
                        help="ignore phase pixels whose (footprint-smoothed) illumination is below this "
                        "fraction of its maximum, when /reconstructed has one (default 0.05; 0 keeps all)")
    parser.add_argument("--shift-reference", dest="shift_reference",
                        help="map (in /xrf/elemental_maps or /xrf/fit, e.g. compton or total_counts) that "
                        "grows with matter, to check the residual shift between XRF and phase")
    parser.add_argument("--correct-shift", action="store_true",
                        help="move the maps by the residual shift found with --shift-reference")
    parser.add_argument("--csv", help="CSV of the region table (default: STORE_regions.csv beside the store)")
    parser.add_argument("--figure", help="also draw the 2-D histogram and scatter of phase-derived mass vs the "
                        "first element at the XRF resolution (.png, .svg or .pdf)")
    parser.set_defaults(func=run)


def _figure(path, labels, phase, maps, element, energy, probe, args) -> None:
    """Phase-derived mass (blurred by the probe) against one element, pixel by pixel."""
    from ..correlate import phase_areal_mass
    from ..inputs import flatten_phase, map_units
    from ..register import maps_to_phase_grid, phase_to_scan_grid
    from ..viz import correlation_figure, save_figure

    flat, _ = flatten_phase(phase, labels)
    var = maps[element]
    matched = phase_to_scan_grid(flat, probe, var) if probe is not None else maps_to_phase_grid(flat, var)
    mass = phase_areal_mass(matched, energy, args.matrix, args.embedding)
    region = labels.sel(y=var["y"], x=var["x"], method="nearest").values
    fig = correlation_figure(mass.values, var.values, region=region, xlabel=f"areal mass of {args.matrix} (ug/cm2)",
                             ylabel=f"{element} ({map_units(var)})")
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    """Segment, tabulate, write the groups and the CSV."""
    from pathlib import Path

    from ..errors import InvalidInputError
    from ..io.results import provenance, write_group
    from ..options import CorrelateOptions
    from ..stages import correlate_groups

    if args.correct_shift and not args.shift_reference:
        raise InvalidInputError("--correct-shift needs --shift-reference")
    options = CorrelateOptions(
        elements=[e.strip() for e in args.elements.split(",") if e.strip()] if args.elements else None,
        matrix=args.matrix, embedding=args.embedding, method=args.method, min_area_um2=args.min_area_um2,
        split=not args.no_split, illumination_threshold=args.illumination_threshold,
        shift_reference=args.shift_reference, correct_shift=args.correct_shift,
    )
    options.check()
    csv = Path(args.csv) if args.csv else Path(str(Path(args.store)).rstrip("/").removesuffix(".zarr") + "_regions.csv")
    if not csv.parent.exists():
        raise InvalidInputError(f"{csv}: directory {csv.parent} does not exist")
    groups, table, context = correlate_groups(args.store, options, args.energy_keV, log=print)
    recorded = dict(options.__dict__, energy_keV=context["energy_keV"])
    input_path = context["maps"].attrs.get("input_path")
    prov = provenance("correlate", recorded, input_path if input_path and Path(input_path).is_file() else None)
    for group, dataset in groups.items():
        write_group(args.store, group, dataset, provenance=prov)
    table.to_csv(csv, float_format="%.6g")
    if args.figure:
        _figure(args.figure, context["labels"], context["phase"], context["maps"], context["elements"][0],
                context["energy_keV"], context["probe"], args)
    energy = context["energy_keV"]
    print(f"{len(table)} region(s) on the phase ({energy:g} keV, matrix {args.matrix}, embedding "
          f"{args.embedding}: {table.attrs['ug_cm2_per_rad']:.1f} ug/cm2 per rad); wrote "
          f"{', '.join(groups)} to {args.store} and {csv}")
    for label, row in table.iterrows():
        print(f"  region {label}: {row['area_um2']:.3g} um2, areal mass {row['areal_mass_ug_cm2']:.4g} "
              f"+- {row['areal_mass_err_ug_cm2']:.2g} ug/cm2, mass {row['mass_pg']:.4g} pg")
    return 0
