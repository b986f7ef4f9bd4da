"""Pipeline benchmark: wall time per stage and peak memory of client and workers, at two scan sizes.

Run:  python benchmarks/bench_pipeline.py [--sizes 50x50,100x100] [--iterations 10] [--workers 2]
      [--separate-scheduler]

Each size is simulated with the ``large`` preset's optics (128 x 128 frames, 2048 channels) and a
scan of the given shape, then ``xmulti.pipeline.run_pipeline`` runs on a local process cluster.
Peak memory is the peak resident set size (Linux ``VmHWM``) of the client process and of each
worker process over each stage only (each scan size runs in a fresh process): the peaks are reset (``/proc/self/clear_refs``) after
the scan is simulated and the cluster started. (``ru_maxrss`` would not do: a spawned worker
inherits its parent's peak across fork and exec.) Beside each peak is the resident size the stage
started from (what the process, its in-process Dask scheduler and the earlier stages left), so
a peak's growth can be told apart from the stage's own rise over its start. The floor printed beside the fit-xrf time is the time to read
the spectra once from the file (the I/O the stage cannot avoid).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    """Peak resident set size (MB) of this process since the last :func:`_reset_peak`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> None:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def _read_floor_s(scan_path: Path) -> float:
    """Seconds to read all spectra once (numpy, one process): what fit-xrf cannot go below."""
    import h5py
    import hdf5plugin  # noqa: F401

    start = time.perf_counter()
    with h5py.File(scan_path, "r", locking=False) as f:
        spectra = f["xrf/spectra"]
        step = spectra.chunks[0] * 8
        for i in range(0, spectra.shape[0], step):
            spectra[i : i + step]
    return time.perf_counter() - start


@contextlib.contextmanager
def _cluster(workers: int, separate_scheduler: bool, workdir: Path):
    """A client on a local cluster; ``separate_scheduler``: a ``dask scheduler`` process and
    ``dask worker`` processes (as on a real cluster), so the client's figures are its own and not
    those of a scheduler in the same process."""
    from xmulti.cluster import dask_client

    if not separate_scheduler:
        with dask_client(n_workers=workers) as client:
            yield client
        return
    info = workdir / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                               "0", "--no-dashboard", "--scheduler-file", str(info)], stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    try:
        while not info.exists():
            time.sleep(0.2)
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                       str(info), "--nworkers", str(workers), "--nthreads", "1", "--no-dashboard"],
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        with dask_client(json.loads(info.read_text())["address"], wait_for_workers=workers) as client:
            yield client
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def bench(scan_shape: tuple[int, int], iterations: int, workers: int, tile_positions: int, chunk_positions: int,
          stages: list[str], workdir: Path, separate_scheduler: bool = False) -> dict:
    from xmulti.options import PipelineOptions
    from xmulti.pipeline import run_pipeline

    scan = workdir / f"scan_{scan_shape[0]}x{scan_shape[1]}.h5"
    start = time.perf_counter()
    # simulated in a child process: the client's memory then holds only what the pipeline uses
    code = (f"from xmulti.simulate import simulate_scan; "
            f"simulate_scan({str(scan)!r}, 'large', seed=0, scan_shape={tuple(scan_shape)}, overwrite=True)")
    subprocess.run([sys.executable, "-c", code], check=True)
    simulate_s = time.perf_counter() - start
    options = PipelineOptions().override("xrf", elements=["P", "S", "K", "Ca", "Fe", "Cu", "Zn"])
    options = options.override("ptycho", iterations=iterations, max_tile_positions=tile_positions)
    options = options.override(chunk_positions=chunk_positions)
    floor = _read_floor_s(scan)
    store = workdir / f"results_{scan_shape[0]}x{scan_shape[1]}.zarr"
    seconds, client_peak, worker_peak, client_start, worker_start = {}, {}, {}, {}, {}
    with _cluster(workers, separate_scheduler, workdir) as client:
        for stage in stages:
            # peaks per stage: reset, run the one stage, read the high-water marks; right after the
            # reset the mark is the resident size the stage starts from (what earlier stages left)
            _reset_peak()
            client.run(_reset_peak)
            client_start[stage] = _peak_rss_mb()
            worker_start[stage] = max(client.run(_peak_rss_mb).values())
            reports = run_pipeline(scan, store, _with_stages(options, [stage]), client=client, force=True, log=None)
            seconds[stage] = sum(r.seconds for r in reports)
            client_peak[stage] = _peak_rss_mb()
            worker_peak[stage] = max(client.run(_peak_rss_mb).values())
    return {
        "positions": scan_shape[0] * scan_shape[1],
        "simulate_s": simulate_s,
        "read_floor_s": floor,
        "stages": seconds,
        "client_peak_mb": client_peak,
        "worker_peak_mb": worker_peak,
        "client_start_mb": client_start,
        "worker_start_mb": worker_start,
    }


def _with_stages(options, stages):
    import dataclasses

    return dataclasses.replace(options, stages=list(stages))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50x50,100x100", help="scan shapes, e.g. 50x50,100x100")
    parser.add_argument("--iterations", type=int, default=10, help="ptychography epochs")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--tile-positions", type=int, default=1250,
                        help="ptycho.max_tile_positions: the same tile size at every scan size")
    parser.add_argument("--chunk-positions", type=int, default=1024,
                        help="positions per Dask chunk: the same chunks at every scan size")
    parser.add_argument("--stages", default="fit-xrf,reconstruct,correlate",
                        help="stages to time (joint is slow on large scans: see docs/joint.md)")
    parser.add_argument("--separate-scheduler", action="store_true",
                        help="scheduler and workers in their own processes: client figures without the scheduler")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one size, JSON on stdout
    args = parser.parse_args()
    if args.one:
        shape = tuple(int(v) for v in args.one.split("x"))
        with tempfile.TemporaryDirectory(prefix="xmulti-bench-") as tmp:
            result = bench(shape, args.iterations, args.workers, args.tile_positions, args.chunk_positions,
                           args.stages.split(","), Path(tmp), args.separate_scheduler)
        print("RESULT " + json.dumps(result))
        return
    # each size in a fresh process: a client's peak then holds nothing left over from a bigger run
    results = []
    for size in args.sizes.split(","):
        command = [sys.executable, __file__, "--one", size, "--iterations", str(args.iterations), "--workers",
                   str(args.workers), "--tile-positions", str(args.tile_positions), "--chunk-positions",
                   str(args.chunk_positions), "--stages", args.stages] + (["--separate-scheduler"] * args.separate_scheduler)
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    print(f"pipeline benchmark: large-preset optics, {args.workers} worker processes, "
          f"{args.iterations} ptychography epochs, tiles of at most {args.tile_positions} positions, "
          f"{args.chunk_positions} positions per chunk, scheduler "
          f"{'in its own process' if args.separate_scheduler else 'in the client process'}")
    print("(start: resident size when the stage starts, left by the process and earlier stages; peak: the "
          "stage's high-water mark; all MB)")
    print(f"{'positions':>9s} {'stage':>12s} {'wall s':>8s} {'client start':>13s} {'client peak':>12s} "
          f"{'worker start':>13s} {'worker peak':>12s}")
    for r in results:
        for stage, secs in r["stages"].items():
            extra = f"  ({secs / r['read_floor_s']:.1f}x reading the spectra once)" if stage == "fit-xrf" else ""
            print(f"{r['positions']:9d} {stage:>12s} {secs:8.2f} {r['client_start_mb'][stage]:13.0f} "
                  f"{r['client_peak_mb'][stage]:12.0f} {r['worker_start_mb'][stage]:13.0f} "
                  f"{r['worker_peak_mb'][stage]:12.0f}{extra}")
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = b["positions"] / a["positions"]
        for stage in a["stages"]:
            rise = [r["client_peak_mb"][stage] - r["client_start_mb"][stage] for r in (a, b)]
            print(f"positions x{growth:.1f}, {stage}: client peak x{b['client_peak_mb'][stage] / a['client_peak_mb'][stage]:.2f} "
                  f"(rise over its start {rise[0]:.0f} -> {rise[1]:.0f} MB), "
                  f"worker peak x{b['worker_peak_mb'][stage] / a['worker_peak_mb'][stage]:.2f}")


if __name__ == "__main__":
    main()
