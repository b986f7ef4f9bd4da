"""``xmulti standard STANDARD.h5 --info maps_standardinfo.txt --out CAL.json``: a standard's calibration.

Fits a thin-film standard's scan with its own elements (those it is certified for, plus what
element identification finds in its spectrum), measures its sensitivities (counts per ug/cm2
per i0 count, with uncertainties) and saves them to a small JSON file (schema:
:mod:`xmulti.xrf.standard`), which ``xmulti fit-xrf SCAN.h5 --standard-calibration CAL.json``
and ``xrf.standard_calibration`` of ``xmulti run`` apply without refitting.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the ``standard`` subcommand."""
    parser = subparsers.add_parser(
        "standard",
        help="fit a thin-film standard once and save its calibration (JSON)",
        description="Fit a thin-film standard's scan with its own elements and save its sensitivities "
        "(counts per ug/cm2 per i0 count) to a JSON file that fit-xrf --standard-calibration and "
        "run (xrf.standard_calibration) apply without refitting.",
    )
    parser.add_argument("scan", help="scan of the standard (combined layout, with i0)")
    parser.add_argument("--out", "-o", required=True, help="calibration file to write (JSON, replaced atomically)")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--info", metavar="FILE", help="MAPS maps_standardinfo.txt with the certified densities")
    given.add_argument("--densities", metavar="El=UG_CM2,...",
                       help="certified areal densities, e.g. Ca=1.931,Fe=0.504,Cu=0.284 (ug/cm2)")
    parser.add_argument("--background", choices=("linear", "snip"), default="linear",
                        help="continuum of the fit (as fit-xrf; default linear)")
    parser.add_argument("--n-continuum", type=int, default=8, help="continuum B-splines (default 8)")
    parser.add_argument("--energy-range", type=float, nargs=2, metavar=("LOW_KEV", "HIGH_KEV"),
                        help="fitted energy range (default 1.0 keV to the incident energy + 0.6 keV)")
    parser.add_argument("--pileup", action="store_true", help="fit a pile-up (sum peak) component")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fit the standard and write its calibration; returns the exit code."""
    from pathlib import Path

    from ..errors import InvalidInputError
    from ..xrf.standard import (
        fit_standard,
        parse_densities,
        read_standard_info,
        save_standard_calibration,
    )

    def log(line: str) -> None:
        print(f"standard: {line.removeprefix('standard: ')}", file=sys.stderr, flush=True)

    densities = read_standard_info(args.info) if args.info is not None else parse_densities(args.densities)
    out = Path(args.out)
    inputs = [Path(p).resolve() for p in (args.scan, args.info) if p is not None]
    if out.resolve() in inputs:
        raise InvalidInputError(f"{out}: is an input file; choose another --out")
    if not out.parent.is_dir():
        raise InvalidInputError(f"{out}: the directory {out.parent} does not exist")
    options = {"background": args.background, "n_continuum": args.n_continuum,
               "energy_range_keV": tuple(args.energy_range) if args.energy_range else None}
    if args.pileup:  # else fit_xrf's default
        options["pileup"] = True
    calibration = fit_standard(args.scan, densities, standard_info=args.info, log=log, **options)
    save_standard_calibration(calibration, out)
    fit = calibration.metadata["fit"]
    print(f"standard {args.scan}: {calibration.incident_energy_keV:g} keV, fitted "
          f"{', '.join(fit['elements'])} (summed-spectrum reduced chi-square {fit['summed_reduced_chi_square']:.1f}, "
          f"{fit['n_pixels']} pixels)")
    print(f"{'element':8s} {'ug/cm2':>8s} {'sensitivity':>12s} {'sigma':>10s} {'fit sigma':>10s}   "
          "[counts per (ug/cm2) per i0 count; sigma from the pixel spread]")
    fit_sigma = calibration.metadata.get("fit_sigma", {})
    for el, value in calibration.measured.items():
        print(f"{el:8s} {calibration.densities_ug_cm2[el]:8.4g} {value:12.5g} {calibration.measured_sigma[el]:10.2g} "
              f"{fit_sigma.get(el, float('nan')):10.2g}")
    print(f"wrote {out}")
    return 0
