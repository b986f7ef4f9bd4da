"""``xmulti convert SOURCE... --out SCAN.h5``: beamline files to the combined layout."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``convert`` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert beamline files (MDA, flyXRF, MAPS, Eiger, CXI) to a combined scan",
        description="Assemble one combined-scan HDF5 file from beamline files: an XRF source (an MDA "
        "step scan with its spectra, an MDA fly scan with its flyXRF/ files beside it, or a MAPS "
        "v9/v10 file) and/or a ptychography source (an Eiger master or data file, or a CXI file). "
        "Positions end up in one stage frame in um; i0 is the upstream ion chamber. "
        "With --out NAME.cxi, export the ptychography of a combined scan to CXI instead.",
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="input files")
    parser.add_argument("--out", required=True, help="combined-scan HDF5 file to write")
    parser.add_argument(
        "--energy-keV",
        type=float,
        default=None,
        help="incident energy (keV) when not recorded (default: COHERENT_SCT_ENERGY of "
        "maps_fit_parameters_override.txt in the dataset)",
    )
    parser.add_argument(
        "--live-time",
        choices=("icr-ocr", "mca"),
        default="icr-ocr",
        help="live time written with the raw counts: effective, from the input/output counters "
        "(default; real/live is then the ICR/OCR dead-time correction), or the MCA's as recorded",
    )
    parser.add_argument("--crop", type=int, default=None, help="crop Eiger frames to N x N pixels")
    parser.add_argument(
        "--beam-center",
        default=None,
        help="beam centre 'Y,X' (pixels) for --crop, or 'auto' (default: the master file's)",
    )
    parser.add_argument("--detector-distance-m", type=float, default=None)
    parser.add_argument("--detector-pixel-size-m", type=float, default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=run)


def _beam_center(text: str | None):
    from ..errors import InvalidInputError

    if text is None or text == "auto":
        return text
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidInputError(
            f"--beam-center must be 'Y,X' in pixels or 'auto', got {text!r}"
        ) from None
    return (y, x)


def run(args: argparse.Namespace) -> int:
    """Convert and print a one-line summary."""
    from ..io.convert import convert

    path = convert(
        args.sources,
        args.out,
        energy_keV=args.energy_keV,
        live_time=args.live_time,
        crop_size=args.crop,
        beam_center_yx=_beam_center(args.beam_center),
        detector_distance_m=args.detector_distance_m,
        detector_pixel_size_m=args.detector_pixel_size_m,
        overwrite=args.overwrite,
    )
    print(f"wrote {path}")
    return 0
