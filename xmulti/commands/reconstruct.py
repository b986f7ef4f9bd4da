"""``xmulti reconstruct SCAN.h5 --out RESULTS.zarr``: ptychographic reconstruction.

Writes ``/reconstructed`` (phase, amplitude, illumination, probe, pixel_size, error per epoch,
corrected positions) to the Zarr results store, with provenance attributes.
"""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    """Add the ``reconstruct`` subcommand."""
    parser = subparsers.add_parser(
        "reconstruct",
        help="ptychographic reconstruction of a scan into a Zarr results store",
        description="Reconstruct the object phase/amplitude and the probe from the diffraction "
        "frames of SCAN and write them to /reconstructed in the results store.",
    )
    parser.add_argument("scan", help="combined-scan HDF5 file")
    parser.add_argument("--out", required=True, help="Zarr results store (created if absent)")
    parser.add_argument("--engine", choices=["lsqml", "rpie", "epie"], default="lsqml",
                        help="reconstruction engine (default: lsqml)")
    parser.add_argument("--iterations", type=int, default=100, help="epochs (default: 100)")
    parser.add_argument("--probe-modes", type=int, default=1, help="incoherent probe modes (default: 1)")
    parser.add_argument("--position-correction", action="store_true", help="refine the scan positions")
    parser.add_argument("--noise", choices=["gaussian", "poisson"], default="gaussian",
                        help="noise model of the exit-wave update (default: gaussian)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(func=run)


def _progress_printer(stream=None, every_s: float = 0.25):
    """A progress bar on ``stream`` (default: the current stderr), redrawn at most every
    ``every_s`` seconds and at the end."""
    stream = stream or sys.stderr
    start = time.perf_counter()
    last = [-1.0]

    def show(epoch: int, total: int, error: float) -> None:
        elapsed = time.perf_counter() - start
        if epoch < total and elapsed - last[0] < every_s:
            return
        last[0] = elapsed
        width = 30
        filled = int(width * epoch / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        end = "\n" if epoch >= total else ""
        stream.write(f"\rreconstruct [{bar}] {epoch}/{total} error {error:.3e} {elapsed:.1f} s{end}")
        stream.flush()

    return show


def write_result(store: str, dataset, provenance: dict) -> str:
    """Write the reconstruction to ``/reconstructed`` of the results store."""
    from ..io.results import write_group

    return write_group(store, "/reconstructed", dataset, provenance=provenance)


def run(args: argparse.Namespace) -> int:
    """Open the scan, reconstruct, write the result."""
    from ..errors import InvalidInputError
    from ..io.results import provenance
    from ..io.scan import open_scan
    from ..ptycho.reconstruct import reconstruct

    if args.iterations < 1:
        raise InvalidInputError(f"--iterations must be >= 1, got {args.iterations}")
    if args.probe_modes < 1:
        raise InvalidInputError(f"--probe-modes must be >= 1, got {args.probe_modes}")
    tree = open_scan(args.scan)
    if "ptychography" not in tree.children:
        raise InvalidInputError(f"{args.scan}: /ptychography: the scan has no ptychography data")
    options = {
        "engine": args.engine,
        "iterations": args.iterations,
        "probe_modes": args.probe_modes,
        "position_correction": args.position_correction,
        "noise": args.noise,
    }
    result = reconstruct(
        tree,
        progress=None if args.quiet else _progress_printer(),
        **options,
    )
    write_result(args.out, result, provenance("reconstruct", options, args.scan))
    print(
        f"reconstructed {result.sizes['y']}x{result.sizes['x']} pixels of "
        f"{float(result['pixel_size']):.2f} nm from {result.sizes['position']} positions; "
        f"final error {float(result['error'][-1]):.3e}; written to {args.out}:/reconstructed"
    )
    return 0
