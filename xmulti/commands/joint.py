"""``xmulti joint RESULTS.zarr``: self-absorption, resolution bridging, joint reconstruction."""

from __future__ import annotations

import argparse

from .run import add_cluster_arguments


def register(subparsers) -> None:
    """Add the ``joint`` subcommand."""
    parser = subparsers.add_parser(
        "joint",
        help="self-absorption correction, XRF at the ptychographic pixel, joint reconstruction",
        description="From the fitted maps and the reconstruction in a results store (and the scan's "
        "diffraction frames): element maps corrected for self-absorption with the matrix mass from "
        "the phase (/joint/self_absorption), element maps at the ptychographic pixel solved with the "
        "probe footprint and the structure the phase shows (/joint/bridged), and thickness and element maps "
        "of one object fitted to both modalities (/joint/reconstruction). See docs/joint.md.",
    )
    parser.add_argument("store", help="xmulti results store (Zarr) with the fit-xrf and reconstruct results")
    parser.add_argument("--scan", help="the scan file (default: the input recorded in the store's provenance)")
    parser.add_argument("--elements", help="comma-separated elements (default: all fitted)")
    parser.add_argument("--iterations", type=int, help="joint reconstruction iterations (default 40)")
    parser.add_argument("--xrf-weight", type=float, dest="xrf_weight", help="weight of the XRF likelihood (default 1)")
    parser.add_argument("--xrf-noise", choices=("gaussian", "poisson"), dest="xrf_noise",
                        help="likelihood of the fitted XRF values (default gaussian)")
    parser.add_argument("--matrix", help="matter that sets the phase: protein (default), ice or FORMULA:DENSITY")
    parser.add_argument("--ice-thickness-um", type=float, dest="ice_thickness_um",
                        help="ice layer the sample is embedded in (um; default 0, a dried sample)")
    parser.add_argument("--incident-angle", type=float, dest="incident_angle_deg",
                        help="beam direction from the sample surface (degrees; default 90)")
    parser.add_argument("--exit-angle", type=float, dest="exit_angle_deg",
                        help="XRF detector direction from the sample surface (degrees; default 15)")
    add_cluster_arguments(parser)
    parser.set_defaults(func=run)


def _recorded_scan(store) -> str:
    from ..errors import InvalidInputError
    from ..io.results import read_group

    path = read_group(store, "/reconstructed").attrs.get("input_path")
    if not path:
        raise InvalidInputError(f"{store}: /reconstructed records no input scan: give --scan SCAN.h5")
    return str(path)


def run(args: argparse.Namespace) -> int:
    """Compute the three joint groups and write them to the store."""
    import dataclasses
    import sys

    import numpy as np

    from ..cluster import dask_client
    from ..errors import InvalidInputError
    from ..io.results import provenance, read_group, write_group
    from ..io.scan import open_scan
    from ..joint.stage import joint_groups
    from ..options import ClusterOptions, JointOptions

    if args.iterations is not None and args.iterations < 1:
        raise InvalidInputError(f"--iterations must be >= 1, got {args.iterations}")
    given = {k: getattr(args, k) for k in ("iterations", "xrf_weight", "xrf_noise", "matrix", "ice_thickness_um",
                                           "incident_angle_deg", "exit_angle_deg") if getattr(args, k) is not None}
    if args.elements:
        given["elements"] = [e.strip() for e in args.elements.split(",") if e.strip()]
    options = JointOptions(**given)
    options.check()
    cluster = ClusterOptions(args.scheduler, args.cluster, args.workers)
    cluster.check()
    scan = args.scan or _recorded_scan(args.store)
    tree = open_scan(scan)
    if "ptychography" not in tree.children:
        raise InvalidInputError(f"{scan}: /ptychography: the scan has no diffraction data")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # bridging one task per worker, the joint objective tile by tile on the workers
    with dask_client(cluster.scheduler, cluster.profile, cluster.n_workers) as client:
        log(f"dask: {len(client.scheduler_info()['workers'])} worker(s) at {client.scheduler.address}")
        groups = joint_groups(tree, args.store, options, client=client, log=log)
    prov = provenance("joint", dataclasses.asdict(options), scan)
    for group, ds in groups.items():
        write_group(args.store, group, ds, provenance=prov)
    joint = groups["/joint/reconstruction"]
    thickness = joint["thickness"].values
    print(f"joint reconstruction: thickness {np.nanmin(thickness):.3g} to {np.nanmax(thickness):.3g} um; "
          f"objective {float(joint['objective'][0]):.4g} -> {float(joint['objective'][-1]):.4g}")
    corrected = groups["/joint/self_absorption"]
    original = read_group(args.store, "/xrf/elemental_maps")
    gains = [f"{el} {100 * (np.nanmean(corrected[el].values) / np.nanmean(original[el].values) - 1):+.1f} %"
             for el in corrected.data_vars if el in original and not el.endswith("_sigma")]
    print("self-absorption correction of the map means: " + ", ".join(gains))
    print(f"wrote {', '.join(groups)} to {args.store}")
    return 0
