"""``xmulti cluster list`` and ``xmulti cluster script PROFILE`` (dry-run job script)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``cluster`` subcommand."""
    parser = subparsers.add_parser(
        "cluster",
        help="dask-jobqueue cluster profiles (SLURM, PBS)",
        description="List the shipped cluster profiles or print the batch job script a profile would "
        "submit (dry run). Profiles are YAML files; see cluster/README.md.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="list the shipped profiles")
    script = actions.add_parser("script", help="print the job script of PROFILE (nothing is submitted)")
    script.add_argument("profile", help="name of a shipped profile or path to a YAML profile")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List profiles or print a job script."""
    from ..cluster import job_script, list_profiles, load_profile

    if args.action == "list":
        for name, description in list_profiles().items():
            print(f"{name:24s} {description}")
        return 0
    profile = load_profile(args.profile)
    print(f"# xmulti cluster profile {profile.source}: {profile.jobs} job(s) of the script below")
    print(job_script(args.profile))
    return 0
