"""Dask clients: a local process cluster by default, a scheduler address, or a dask-jobqueue profile.

Profiles are YAML files (``cluster/*.yaml`` ship with xmulti; see ``cluster/README.md``):
``kind`` (slurm or pbs), ``jobs`` (batch jobs to start) and ``job`` (keyword arguments of
``dask_jobqueue.SLURMCluster`` / ``PBSCluster``, checked against their signatures).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

__all__ = [
    "ClusterProfile", "list_profiles", "load_profile", "job_script", "local_cluster_size", "start_client", "dask_client",
]

_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


@dataclass(frozen=True)
class ClusterProfile:
    """A dask-jobqueue cluster description loaded from YAML."""

    name: str
    kind: str
    jobs: int
    job: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""


def _profiles_dir():
    return resources.files("xmulti").joinpath("cluster_profiles")


def list_profiles() -> dict[str, str]:
    """Shipped profiles: name to description."""
    import yaml

    out = {}
    for entry in sorted(_profiles_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = yaml.safe_load(entry.read_text()).get("description", "")
    return out


def _job_parameters(kind: str) -> set[str]:
    """Keyword arguments accepted by the dask-jobqueue job class of ``kind``."""
    from dask_jobqueue.core import Job

    module = __import__(f"dask_jobqueue.{kind}", fromlist=["x"])
    job_cls = getattr(module, f"{kind.upper()}Job")
    names = set(inspect.signature(job_cls.__init__).parameters) | set(inspect.signature(Job.__init__).parameters)
    return names - {"self", "scheduler", "name", "config_name", "base_class_kwargs"}


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def load_profile(profile: str | os.PathLike) -> ClusterProfile:
    """Load and check a profile: a path to a YAML file or the name of a shipped profile.

    Raises
    ------
    InvalidInputError
        Unknown profile, unreadable YAML, unknown kind or job keys, wrong types. Requires the
        ``hpc`` extra (dask-jobqueue) to check job keys.
    """
    import yaml

    path = Path(profile)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        shipped = _profiles_dir().joinpath(f"{profile}.yaml")
        if not shipped.is_file():
            raise InvalidInputError(
                f"cluster profile {profile!r}: no such file or shipped profile "
                f"(shipped: {', '.join(list_profiles())})"
            )
        text, source = shipped.read_text(), f"cluster/{profile}.yaml"
    else:
        text, source = path.read_text(), str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{source}: a profile is a mapping with kind, jobs and job")
    unknown = set(raw) - {"kind", "jobs", "job", "description"}
    if unknown:
        raise InvalidInputError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    kind = raw.get("kind")
    if kind not in _KINDS:
        raise InvalidInputError(f"{source}: kind: must be one of {', '.join(_KINDS)}, got {kind!r}")
    jobs = raw.get("jobs", 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise InvalidInputError(f"{source}: jobs: must be a positive integer, got {jobs!r}")
    job = raw.get("job") or {}
    if not isinstance(job, dict):
        raise InvalidInputError(f"{source}: job: must be a mapping of dask-jobqueue options")
    try:
        allowed = _job_parameters(kind)
    except ImportError:
        raise InvalidInputError(
            "cluster profiles need dask-jobqueue: pip install \"xmulti[hpc]\""
        ) from None
    bad = sorted(set(job) - allowed)
    if bad:
        raise InvalidInputError(f"{source}: job: unknown dask-jobqueue option(s) {', '.join(bad)}")
    job = {key: _expand(value) for key, value in job.items() if value is not None}
    return ClusterProfile(Path(source).stem, kind, jobs, job, str(raw.get("description", "")), source)


def _jobqueue_cluster(profile: ClusterProfile, dry_run: bool = False):
    import dask_jobqueue

    cls = getattr(dask_jobqueue, _KINDS[profile.kind])
    options = dict(profile.job)
    if dry_run:
        # the compute nodes' interface (ib0, hsn0...) need not exist where the script is printed:
        # keep the scheduler on loopback, the workers' --interface stays in the script
        options["scheduler_options"] = {"host": "127.0.0.1"}
    try:
        return cls(**options)
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        raise InvalidInputError(f"{profile.source}: cannot start a {profile.kind} cluster: {exc}") from None


def job_script(profile: str | os.PathLike) -> str:
    """The batch script the profile would submit (dry run: nothing is submitted)."""
    loaded = load_profile(profile)
    cluster = _jobqueue_cluster(loaded, dry_run=True)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def local_cluster_size(memory_bytes: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(workers, memory per worker in bytes) for a local process cluster sized to the machine:
    one single-threaded worker process per core, the memory shared equally."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return cores, int(memory_bytes * 0.9 / cores)


def start_client(
    scheduler: str | None = None,
    profile: str | os.PathLike | None = None,
    n_workers: int | None = None,
    wait_for_workers: int = 1,
    timeout_s: float = 30.0,
) -> Any:
    """A ``dask.distributed.Client`` on a local process cluster, a running scheduler or batch jobs.

    For notebooks: the client stays open until ``client.close()``, which also shuts down a local
    cluster it started (a dask-jobqueue cluster is ``client.cluster``: close it, or it is closed
    when Python exits). In scripts prefer :func:`dask_client`, which closes everything at the
    end of a ``with`` block.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) to join.
    profile : str or path, optional
        dask-jobqueue profile to start (see :func:`load_profile`).
    n_workers : int, optional
        Local cluster only: worker processes (default one per core).
    wait_for_workers : int
        Wait until this many workers are up (local and scheduler address).
    timeout_s : float
        How long to wait for a scheduler or workers.

    Returns
    -------
    dask.distributed.Client

    Without ``scheduler`` or ``profile``: a local cluster of single-threaded worker *processes*
    sized to the machine (HDF5 reads scale with processes, not threads), its HTTP server on a
    free port (Dask's dashboard at ``client.dashboard_link`` when bokeh is installed; the
    ``notebooks`` and ``hpc`` extras include it). Every worker, whichever the kind of cluster,
    gets the allocator settings of :mod:`xmulti.worker_memory`.
    """
    from dask.distributed import Client

    from .worker_memory import tune_workers

    if scheduler and profile:
        raise InvalidInputError("give either a scheduler address or a cluster profile, not both")
    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout_s)
        except (OSError, TimeoutError) as exc:
            raise InvalidInputError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None
    elif profile:
        loaded = load_profile(profile)
        cluster = _jobqueue_cluster(loaded)
        cluster.scale(jobs=loaded.jobs)
        client = Client(cluster)
    else:
        workers, memory = local_cluster_size()
        # given cluster keywords, the client starts the LocalCluster and owns it: closing the
        # client closes the cluster
        client = Client(
            n_workers=n_workers or workers, threads_per_worker=1, processes=True, memory_limit=memory,
            dashboard_address=":0", silence_logs=40,
        )
    try:
        tune_workers(client)
        if wait_for_workers and not profile:
            client.wait_for_workers(wait_for_workers, timeout=timeout_s)
    except BaseException:
        _close(client, owned_cluster=bool(profile))
        raise
    return client


def _close(client: Any, owned_cluster: bool) -> None:
    cluster = client.cluster if owned_cluster else None
    client.close()
    if cluster is not None:
        cluster.close()


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    profile: str | os.PathLike | None = None,
    n_workers: int | None = None,
    wait_for_workers: int = 1,
    timeout_s: float = 30.0,
) -> Iterator[Any]:
    """:func:`start_client` for the duration of a ``with`` block: the client and any cluster it
    started (local or dask-jobqueue) are closed at the end; a cluster joined by address is not.

    Parameters are those of :func:`start_client`.
    """
    client = start_client(scheduler, profile, n_workers, wait_for_workers, timeout_s)
    try:
        yield client
    finally:
        _close(client, owned_cluster=bool(profile))
