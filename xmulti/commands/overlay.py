"""``xmulti overlay RESULTS.zarr --elements Fe,Zn -o figure.png``: element maps over the phase."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``overlay`` subcommand."""
    parser = subparsers.add_parser(
        "overlay",
        help="draw element maps over the ptychographic phase (PNG, SVG or PDF)",
        description="Read /xrf/elemental_maps and /reconstructed from a results store and draw each "
        "element in a colour map over the phase in grey at their true stage positions, plus an RGB "
        "composite of 2-3 elements; scale bar in um, colour bars with units.",
    )
    parser.add_argument("store", help="xmulti results store (Zarr)")
    parser.add_argument("--elements", required=True, help="comma-separated element maps, e.g. Fe,Zn")
    parser.add_argument("-o", "--out", required=True, help="figure file: .png, .svg or .pdf")
    parser.add_argument("--cmap", default="inferno", help="colour map of the elements (default inferno)")
    parser.add_argument("--alpha", type=float, default=0.7, help="largest opacity of the element (default 0.7)")
    parser.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    parser.add_argument("--illumination-threshold", type=float, default=0.05, dest="illumination_threshold",
                        help="blank phase pixels whose (footprint-smoothed) illumination is below this "
                        "fraction of its maximum, when /reconstructed has one (default 0.05; 0 keeps all)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw and save the overlay figure."""
    import matplotlib as mpl

    from ..correlate import select_elements
    from ..errors import InvalidInputError
    from ..register import overlap_extent_um
    from ..viz import overlay_figure, save_figure

    if not 0 < args.alpha <= 1:
        raise InvalidInputError("--alpha must be in (0, 1]")
    if args.cmap not in mpl.colormaps:
        raise InvalidInputError(f"unknown colour map {args.cmap!r}")
    from ..stages import load_phase_and_maps, mask_unilluminated

    phase, maps, recon = load_phase_and_maps(args.store)
    phase = mask_unilluminated(phase, recon, args.illumination_threshold)
    elements = select_elements(maps, args.elements)
    for name in elements:
        overlap_extent_um(maps[name], phase)
    fig = overlay_figure(phase, maps, elements, cmap=args.cmap, alpha=args.alpha)
    path = save_figure(fig, args.out, dpi=args.dpi)
    print(f"wrote {path}: {', '.join(elements)} over the phase")
    return 0
