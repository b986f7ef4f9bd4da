"""``xmulti simulate OUT.h5 --preset tiny|small|large [--seed N]``: write a synthetic scan."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``simulate`` subcommand."""
    parser = subparsers.add_parser(
        "simulate",
        help="write a synthetic combined scan with ground truth",
        description="Simulate a combined XRF + ptychography scan of cell-like phantoms and write it "
        "in the combined layout, with the ground truth in /truth.",
    )
    parser.add_argument("out", help="output HDF5 file")
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "large"],
                        help="size: tiny (tests), small (demo), large (benchmarks); default small")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Simulate and write; print where and what."""
    from ..simulate import config_for, simulate_scan

    cfg = config_for(args.preset)
    path = simulate_scan(args.out, preset=args.preset, seed=args.seed, overwrite=args.overwrite)
    ny, nx = cfg.scan_shape
    print(
        f"wrote {path}: {ny} x {nx} positions, {cfg.frame_size} x {cfg.frame_size} frames, "
        f"{cfg.n_channels} channels, elements {', '.join(cfg.elements)} (preset {args.preset}, seed {args.seed})"
    )
    return 0
