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
    parser.add_argument("--noise", choices=["gaussian", "poisson"],
                        help="noise model of the exit-wave update (default: poisson for lsqml, gaussian for rpie)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("--tiles", metavar="NYxNX", help="tile-parallel reconstruction on a Dask cluster, e.g. 2x2")
    parser.add_argument("--halo", type=float, metavar="UM", help="tiles: halo width (um; default: probe radius or 2 steps)")
    parser.add_argument("--sync-every", type=int, metavar="K", help="tiles: epochs between probe/overlap sync (default: never)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="tiles: join a running Dask scheduler (default: local cluster)")
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


def _parse_tiles(text: str | None) -> tuple[int, int] | None:
    """``"2x3"`` -> (2, 3)."""
    from ..errors import InvalidInputError

    if text is None:
        return None
    try:
        ny, nx = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidInputError(f"--tiles must look like 2x2, got {text!r}") from None
    if ny < 1 or nx < 1:
        raise InvalidInputError(f"--tiles must be positive, got {text!r}")
    return ny, nx


def run(args: argparse.Namespace) -> int:
    """Open the scan, reconstruct, write the result."""
    import contextlib

    from ..cluster import dask_client
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
    tiles = _parse_tiles(args.tiles)
    if tiles is not None:
        options.update(tiles=list(tiles), halo_um=args.halo, sync_every=args.sync_every)
    elif args.halo is not None or args.sync_every is not None or args.scheduler:
        raise InvalidInputError("--halo, --sync-every and --scheduler go with --tiles")
    progress = None if args.quiet else _progress_printer()
    # tiled: the image is blended and written block by block on the workers, so the result is
    # written inside the client block
    with dask_client(args.scheduler) if tiles is not None else contextlib.nullcontext() as client:
        result = reconstruct(tree, progress=progress, client=client, lazy=client is not None, **options)
        write_result(args.out, result, provenance("reconstruct", options, args.scan))
    print(
        f"reconstructed {result.sizes['y']}x{result.sizes['x']} pixels of "
        f"{float(result['pixel_size']):.2f} nm from {result.sizes['position']} positions; "
        f"final error {float(result['error'][-1]):.3e}; written to {args.out}:/reconstructed"
    )
    return 0
