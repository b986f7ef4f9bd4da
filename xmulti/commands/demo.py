"""``xmulti demo``: simulate a small scan, run the whole pipeline on a local cluster, draw figures."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="simulate a small scan and run the whole pipeline on it, with figures",
        description="Simulate a small combined scan of cells, run every stage of `xmulti run` on a "
        "local process cluster, write the Zarr results store and PNG figures, and say what they show.",
    )
    parser.add_argument("--out", default="xmulti-demo", help="output directory (default ./xmulti-demo)")
    parser.add_argument("--preset", default="small", choices=["tiny", "small"], help="scan size (default small)")
    parser.add_argument("--iterations", type=int, default=100, help="ptychography epochs (default 100)")
    parser.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Simulate, run, draw, report."""
    from pathlib import Path

    import numpy as np

    from ..cluster import dask_client
    from ..errors import InvalidInputError
    from ..figures import write_figures
    from ..options import PipelineOptions
    from ..pipeline import check_output_path, run_pipeline, summary_table
    from ..simulate import simulate_scan
    from ..stages import load_phase_and_maps, mask_unilluminated

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    scan = simulate_scan(out / "scan.h5", args.preset, seed=args.seed, overwrite=True)
    log(f"simulated {scan} (preset {args.preset}, seed {args.seed})")
    store = check_output_path(out / "results.zarr")
    options = PipelineOptions().override("xrf", elements=["P", "S", "K", "Ca", "Fe", "Cu", "Zn"])
    options = options.override("ptycho", iterations=args.iterations)
    with dask_client(n_workers=args.workers) as client:
        log(f"dask: local cluster of {len(client.scheduler_info()['workers'])} worker processes")
        reports = run_pipeline(scan, store, options, client=client, log=log)

    write_figures(store, out)
    phase, maps, recon = load_phase_and_maps(store)
    phase = mask_unilluminated(phase, recon, 0.05)
    import xarray as xr

    tree = xr.open_datatree(store, engine="zarr")
    regions = tree["correlation/regions"].to_dataset()
    print(summary_table(reports))
    print(f"\nresults store: {store}  (xr.open_datatree({str(store)!r}, engine='zarr'))")
    print(f"  /xrf/elemental_maps: {', '.join(map(str, maps.data_vars))} on a {maps.sizes['y']} x "
          f"{maps.sizes['x']} scan grid")
    print(f"  /reconstructed: phase {phase.sizes['y']} x {phase.sizes['x']} pixels of "
          f"{float(recon['pixel_size']):.1f} nm, phase range {np.nanmin(phase.values):.2f} to "
          f"{np.nanmax(phase.values):.2f} rad")
    print(f"  /correlation: {regions.sizes.get('label', 0)} cell(s) segmented on the phase")
    print("figures:")
    print(f"  {out / 'overlay_Fe_Zn.png'}: Fe and Zn (trace metals, granules) over the phase, and their RGB composite")
    print(f"  {out / 'overlay_P_S_K.png'}: P (nuclei), S and K (following the cell mass) over the phase")
    print(f"  {out / 'regions.csv'}: the per-cell table (area, phase-derived mass, element means)")
    return 0
