"""Pipeline benchmark: wall time per stage and peak memory of client and workers, at two scan sizes.

Run:  python benchmarks/bench_pipeline.py [--sizes 50x50,100x100] [--iterations 10] [--workers 2]

Each size is simulated with the ``large`` preset's optics (128 x 128 frames, 2048 channels) and a
scan of the given shape, then ``xmulti.pipeline.run_pipeline`` runs on a local process cluster.
Peak memory is the peak resident set size (Linux ``VmHWM``) of the client process and of each
worker process over the pipeline run only: the peaks are reset (``/proc/self/clear_refs``) after
the scan is simulated and the cluster started. (``ru_maxrss`` would not do: a spawned worker
inherits its parent's peak across fork and exec.) The floor printed beside the fit-xrf time is the time to read
the spectra once from the file (the I/O the stage cannot avoid).
"""

from __future__ import annotations

import argparse
import resource
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


def bench(scan_shape: tuple[int, int], iterations: int, workers: int, workdir: Path) -> dict:
    from xmulti.cluster import dask_client
    from xmulti.options import PipelineOptions
    from xmulti.pipeline import run_pipeline
    from xmulti.simulate import simulate_scan

    scan = workdir / f"scan_{scan_shape[0]}x{scan_shape[1]}.h5"
    start = time.perf_counter()
    simulate_scan(scan, "large", seed=0, scan_shape=scan_shape, overwrite=True)
    simulate_s = time.perf_counter() - start
    options = PipelineOptions().override("xrf", elements=["P", "S", "K", "Ca", "Fe", "Cu", "Zn"])
    options = options.override("ptycho", iterations=iterations)
    floor = _read_floor_s(scan)
    with dask_client(n_workers=workers) as client:
        _reset_peak()
        client.run(_reset_peak)
        reports = run_pipeline(scan, workdir / f"results_{scan_shape[0]}x{scan_shape[1]}.zarr", options,
                               client=client, force=True, log=None)
        worker_peaks = client.run(_peak_rss_mb)
    return {
        "positions": scan_shape[0] * scan_shape[1],
        "simulate_s": simulate_s,
        "read_floor_s": floor,
        "stages": {r.name: r.seconds for r in reports},
        "client_peak_mb": _peak_rss_mb(),
        "worker_peak_mb": max(worker_peaks.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50x50,100x100", help="scan shapes, e.g. 50x50,100x100")
    parser.add_argument("--iterations", type=int, default=10, help="ptychography epochs")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="xmulti-bench-") as tmp:
        results = [bench(shape, args.iterations, args.workers, Path(tmp)) for shape in sizes]
    print(f"pipeline benchmark: large-preset optics, {args.workers} worker processes, "
          f"{args.iterations} ptychography epochs")
    header = f"{'positions':>9s} {'fit-xrf s':>10s} {'(x read floor)':>15s} {'reconstruct s':>14s} " \
             f"{'client peak MB':>15s} {'worker peak MB':>15s}"
    print(header)
    for r in results:
        fit = r["stages"].get("fit-xrf", float("nan"))
        print(f"{r['positions']:9d} {fit:10.2f} {fit / r['read_floor_s']:14.1f}x "
              f"{r['stages'].get('reconstruct', float('nan')):14.2f} {r['client_peak_mb']:15.0f} "
              f"{r['worker_peak_mb']:15.0f}")
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = b["positions"] / a["positions"]
        print(f"positions x{growth:.1f}: client peak x{b['client_peak_mb'] / a['client_peak_mb']:.2f}, "
              f"worker peak x{b['worker_peak_mb'] / a['worker_peak_mb']:.2f}")


if __name__ == "__main__":
    main()
