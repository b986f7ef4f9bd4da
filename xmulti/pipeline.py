"""The end-to-end pipeline behind ``xmulti run``: stages, resumable atomic results, progress.

Each stage reads the lazy scan, computes its results (on the Dask client given) and writes
them as whole groups of the results store (:mod:`xmulti.io.results`). A stage whose groups exist
with the same options and input is skipped on a rerun (``force=True`` redoes it); a stage killed
half-way leaves no group of its own behind, and earlier stages' groups intact.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidInputError
from .options import PipelineOptions

__all__ = ["Stage", "StageReport", "run_pipeline", "STAGE_TABLE"]


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: its name, the result groups it writes, the option sections its results
    depend on, the function computing them ``(tree, store, options, client, log) -> {group:
    Dataset}`` and the scan groups it needs."""

    name: str
    groups: tuple[str, ...]
    sections: tuple[str, ...]
    compute: Callable[..., dict[str, Any]]
    needs: tuple[str, ...]


@dataclass
class StageReport:
    """What happened to one stage in one run."""

    name: str
    status: str  # "done", "skipped (up to date)", "skipped (no /xrf)", ...
    seconds: float = 0.0
    groups: list[str] = field(default_factory=list)


def _fit_xrf(tree, store, options: PipelineOptions, client, log):
    from .stages import fit_xrf_groups

    return fit_xrf_groups(tree, options.xrf, client, log)


def _reconstruct(tree, store, options: PipelineOptions, client, log):
    from .stages import reconstruct_groups

    return reconstruct_groups(tree, options.ptycho, client, log)


def _correlate(tree, store, options: PipelineOptions, client, log):
    from .stages import correlate_groups

    groups, _, _ = correlate_groups(store, options.correlate, tree.attrs.get("incident_energy_keV"), log)
    return groups


def _joint(tree, store, options: PipelineOptions, client, log):
    from .joint.stage import joint_groups

    return joint_groups(tree, store, options.joint, client, log)


STAGE_TABLE: dict[str, Stage] = {
    "fit-xrf": Stage("fit-xrf", ("/xrf/elemental_maps", "/xrf/fit"), ("xrf",), _fit_xrf, ("xrf",)),
    "reconstruct": Stage("reconstruct", ("/reconstructed",), ("ptycho",), _reconstruct, ("ptychography",)),
    # correlation builds on both earlier stages: its options include theirs, so it reruns when they do
    "correlate": Stage(
        "correlate", ("/correlation/labels", "/correlation/regions", "/correlation/pixelwise"),
        ("xrf", "ptycho", "correlate"), _correlate, ("xrf", "ptychography"),
    ),
    "joint": Stage(
        "joint", ("/joint/self_absorption", "/joint/bridged", "/joint/reconstruction"),
        ("xrf", "ptycho", "joint"), _joint, ("xrf", "ptychography"),
    ),
}


def _stage_options(stage: Stage, options: PipelineOptions) -> dict[str, Any]:
    everything = options.to_dict()
    return {section: everything[section] for section in stage.sections}


def run_pipeline(
    scan_path: str | os.PathLike,
    store: str | os.PathLike,
    options: PipelineOptions | None = None,
    *,
    client=None,
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> list[StageReport]:
    """Run the stages of ``options.stages`` on a scan, writing results to a Zarr store.

    Parameters
    ----------
    scan_path : path-like
        Combined-scan HDF5 file (never modified).
    store : path-like
        Results store (created if absent; an existing path must be an xmulti store).
    options : PipelineOptions, optional
        Stage options (defaults: :class:`~xmulti.options.PipelineOptions`).
    client : dask.distributed.Client, optional
        Where Dask work runs; None uses the threaded scheduler.
    force : bool
        Redo stages whose results are up to date.
    log : callable or None
        Receives progress lines; None is silent.

    Returns
    -------
    list of StageReport
        One per stage, with its wall time.
    """
    from .io.results import create_store, provenance, stage_is_done, write_group
    from .io.scan import open_scan

    options = options or PipelineOptions()
    options.check()
    tree = open_scan(scan_path, chunks=options.chunk_positions)
    store = create_store(store)
    reports = []
    for name in options.stages:
        stage = STAGE_TABLE[name]
        stage_opts = _stage_options(stage, options)
        missing = [group for group in stage.needs if group not in tree.children]
        if missing:
            reports.append(StageReport(name, f"skipped (the scan has no /{', /'.join(missing)})"))
            continue
        done = all(stage_is_done(store, group, name, stage_opts) for group in stage.groups)
        if done and not force:
            reports.append(StageReport(name, "skipped (up to date)", groups=list(stage.groups)))
            if log:
                log(f"{name}: up to date in {store}, skipped (--force redoes it)")
            continue
        if log:
            log(f"{name}: running")
        start = time.perf_counter()
        results = stage.compute(tree, store, options, client, log)
        record = provenance(name, stage_opts, scan_path)
        for group, dataset in results.items():
            write_group(store, group, dataset, provenance=record)
        seconds = time.perf_counter() - start
        reports.append(StageReport(name, "done", seconds, list(results)))
        if log:
            log(f"{name}: done in {seconds:.1f} s -> {', '.join(results)}")
        # the results are in the store: drop them (lazy ones hold the tiles on the workers) and
        # give the freed memory back, so the next stage starts from the same footprint whatever
        # this one's size
        del results
        _release_memory(client)
    return reports


def _release_memory(client) -> None:
    """Collect garbage and trim the heap of the client and of every worker between stages."""
    import gc

    from .worker_memory import trim_heap

    gc.collect()
    trim_heap()
    if client is not None:
        try:
            client.run(trim_heap)
        except (OSError, TimeoutError):  # a worker gone: nothing to release there
            pass


def summary_table(reports: list[StageReport]) -> str:
    """Per-stage wall-time summary, one line per stage."""
    width = max([len(r.name) for r in reports] + [5])
    lines = [f"{'stage':{width}s}  {'wall time':>10s}  status"]
    for r in reports:
        lines.append(f"{r.name:{width}s}  {r.seconds:9.1f}s  {r.status}")
    total = sum(r.seconds for r in reports)
    lines.append(f"{'total':{width}s}  {total:9.1f}s")
    return "\n".join(lines)


def check_output_path(store: str | os.PathLike) -> Path:
    """Refuse an output that exists but is not an xmulti store, or cannot be written, before any work."""
    from .io.results import create_store

    path = Path(store)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{path}: exists and is not an xmulti results store (a file)")
    return create_store(path)
