"""``xmulti run SCAN.h5 --out RESULTS.zarr``: every stage of the pipeline, resumable."""

from __future__ import annotations

import argparse
import sys


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """--scheduler / --cluster / --workers, shared by commands that use Dask."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="join a running Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--cluster", metavar="PROFILE", help="start a dask-jobqueue cluster from a profile (see `xmulti cluster list`)")
    parser.add_argument("--workers", type=int, metavar="N", help="local cluster: worker processes (default: one per core)")


def register(subparsers) -> None:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run the whole pipeline (fit-xrf, reconstruct, ...) into a Zarr results store",
        description="Fit the XRF spectra and reconstruct the ptychographic image of a combined scan, "
        "writing every result group atomically to a Zarr store. Rerunning skips stages whose "
        "results are up to date (same options and input); --force redoes them.",
    )
    parser.add_argument("scan", help="combined-scan HDF5 file (never modified unless --write-hdf5)")
    parser.add_argument("--out", required=True, help="results store (Zarr, created if absent)")
    parser.add_argument("--config", help="YAML options file (see docs/pipeline.md); flags override it")
    parser.add_argument("--stages", help="comma-separated stages to run (default: all)")
    parser.add_argument("--elements", help="XRF: comma-separated element symbols (default: suggested)")
    parser.add_argument("--engine", choices=["lsqml", "rpie"], help="ptychography engine")
    parser.add_argument("--iterations", type=int, help="ptychography epochs")
    parser.add_argument("--probe-modes", type=int, help="incoherent probe modes")
    parser.add_argument("--position-correction", action="store_true", default=None, help="refine positions")
    parser.add_argument("--force", action="store_true", help="redo stages that are up to date")
    parser.add_argument("--write-hdf5", action="store_true",
                        help="also write maps and reconstruction into the scan file (raw data untouched)")
    parser.add_argument("--figures", metavar="DIR",
                        help="also write overlay PNGs (Fe+Zn, P+S+K over the phase) and regions.csv to DIR")
    add_cluster_arguments(parser)
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace):
    """Options file overridden by the flags given."""
    from ..options import load_options

    options = load_options(args.config)
    if args.stages:
        options = options.override(stages=[s.strip() for s in args.stages.split(",") if s.strip()])
    elements = [e.strip() for e in args.elements.split(",") if e.strip()] if args.elements else None
    options = options.override("xrf", elements=elements)
    options = options.override(
        "ptycho", engine=args.engine, iterations=args.iterations, probe_modes=args.probe_modes,
        position_correction=args.position_correction,
    )
    options = options.override("cluster", scheduler=args.scheduler, profile=args.cluster, n_workers=args.workers)
    options.check()
    return options


def run(args: argparse.Namespace) -> int:
    """Validate everything first, then run the stages on the chosen cluster."""
    from ..cluster import dask_client
    from ..io.scan import validate_scan
    from ..pipeline import check_output_path, run_pipeline, summary_table

    options = options_from_args(args)
    validate_scan(args.scan)
    store = check_output_path(args.out)
    if options.xrf.standard is not None and options.xrf.standard_calibration is None:
        # the standard's calibration is fitted once and kept beside the store for the next runs
        from .fit_xrf import standard_cache_path

        options = options.override("xrf", standard_calibration=str(standard_cache_path(store)))

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    cluster = options.cluster
    with dask_client(cluster.scheduler, cluster.profile, cluster.n_workers) as client:
        log(f"dask: {len(client.scheduler_info()['workers'])} worker(s) at {client.scheduler.address}")
        reports = run_pipeline(args.scan, store, options, client=client, force=args.force, log=log)
    if args.write_hdf5:
        from ..io.scan_results import write_results_to_scan

        written = write_results_to_scan(args.scan, store)
        log(f"wrote {', '.join(written)} into {args.scan}")
    if args.figures:
        from ..figures import write_figures
        from ..io.results import has_group

        needed = [g for g in ("xrf/elemental_maps", "reconstructed") if not has_group(store, g)]
        if needed:
            log(f"figures: skipped (the store has no /{', /'.join(needed)})")
        else:
            written = write_figures(store, args.figures)
            log(f"figures: {', '.join(str(p) for p in written.values())}")
    print(summary_table(reports))
    print(f"results: {store}  (open with xr.open_datatree({str(store)!r}, engine='zarr'))")
    return 0
