"""The ``xmulti`` command line: thin subcommands over the library.

Each subcommand lives in its own module of :mod:`xmulti.commands` exposing ``register(subparsers)``
(which adds its parser and sets ``func``). Any :class:`~xmulti.errors.XmultiError` becomes one
line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__
from .errors import XmultiError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of :mod:`xmulti.commands` registered."""
    from . import commands

    parser = argparse.ArgumentParser(
        prog="xmulti",
        description="Simultaneous XRF + ptychography microscopy: simulate, inspect, fit, "
        "reconstruct and correlate combined scans.",
    )
    parser.add_argument("--version", action="version", version=f"xmulti {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 bad input or usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except XmultiError as exc:
        print(f"xmulti {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xmulti {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
