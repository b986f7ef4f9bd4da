"""``xmulti info SCAN.h5``: summary of a combined scan and its validation result."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``info`` subcommand."""
    parser = subparsers.add_parser(
        "info",
        help="summarise and validate a combined scan",
        description="Print groups, dims, sizes, chunks, energy range, object pixel size and scan grid "
        "of a combined-scan file, and whether it follows the layout. Reads no spectra or frames.",
    )
    parser.add_argument("scan", help="HDF5 file in the combined layout")
    parser.set_defaults(func=run)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def describe(tree) -> list[str]:
    """Lines describing an opened scan (DataTree from :func:`xmulti.open_scan`)."""
    import numpy as np

    lines = [f"file: {tree.attrs.get('source')}", f"layout version: {tree.attrs.get('layout_version', 1)}"]
    if "incident_energy_keV" in tree.attrs:
        lines.append(f"incident energy: {tree.attrs['incident_energy_keV']:g} keV")
    for node in tree.subtree:
        if node is tree or not node.data_vars:
            continue
        ds = node.to_dataset(inherit=False)
        dims = ", ".join(f"{k}: {v}" for k, v in ds.sizes.items())
        lines.append(f"{node.path}  ({dims})")
        for name, var in ds.data_vars.items():
            chunks = ""
            if var.chunks:
                chunks = "  chunks " + " x ".join(str(c[0]) for c in var.chunks) + f" ({len(var.chunks[0])} along {var.dims[0]})"
            units = var.attrs.get("units")
            lines.append(
                f"    {name} ({', '.join(var.dims)}) {var.dtype} {_fmt_bytes(var.nbytes)}"
                + (f" [{units}]" if units else "") + chunks
            )
    if "xrf" in tree.children:
        energy = tree["xrf"].ds["energy"].values
        lines.append(f"XRF channels: {energy.size}, {energy[0]:.3f} to {energy[-1]:.3f} keV")
    for group in ("xrf", "ptychography"):
        if group in tree.children:
            ds = tree[group].ds
            y, x = ds["position_y"].values, ds["position_x"].values
            lines.append(
                f"positions ({group}): {y.size}, y {y.min():.3f} to {y.max():.3f} um, x {x.min():.3f} to {x.max():.3f} um"
            )
            break
    if "scan_shape" in tree.attrs:
        ny, nx = tree.attrs["scan_shape"]
        lines.append(f"scan grid: {ny} x {nx} (raster, y slow, x fast)")
    if "ptychography" in tree.children:
        attrs = tree["ptychography"].attrs
        lines.append(
            f"ptychography: {attrs['energy_keV']:g} keV, distance {attrs['detector_distance_m']:g} m, "
            f"detector pixel {attrs['detector_pixel_size_m'] * 1e6:g} um, object pixel "
            f"{attrs['object_pixel_size_m'] * 1e9:.2f} nm"
        )
        if "mask" in tree["ptychography"].ds:
            lines.append(f"bad pixels: {int(np.count_nonzero(tree['ptychography'].ds['mask'].values))}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Open (validating) and print the summary."""
    from ..io.scan import open_scan

    tree = open_scan(args.scan)
    for line in describe(tree):
        print(line)
    print("validation: OK (follows the combined-scan layout v1)")
    return 0
