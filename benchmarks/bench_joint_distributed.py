"""Tile-parallel joint objective: time per evaluation in one process and on 1 and 2 Dask workers.

The problem: the joint objective (ptychography + XRF, probe refined, as in
``benchmarks/bench_joint.py``) of a simulated 5 um protein cell with self-absorption, built from
a short separate reconstruction (the cost of an evaluation does not depend on how converged the
start is). Timed: one objective-and-gradient evaluation (``JointProblem.evaluate(t, c, probe)``)

- in this process (FFT threads: all CPUs, as a plain ``joint_reconstruct`` runs; and 1 thread);
- on a process cluster of 1 worker (1 thread): one tile, frames held by the worker;
- on a process cluster of 2 workers (1 thread each): two tiles
  (:func:`xmulti.joint.distributed.distribute`).

Each time is the minimum of ``--repeats`` runs, and is printed as a ratio to the FFT floor: the
forward + inverse complex64 FFTs (scipy.fft, 1 thread, in place) of one frame per position and
probe mode, the work no evaluation can avoid, measured interleaved with every configuration in
the same run (the minimum over all is kept). The 2-worker speed-up is the 1-worker time over the
2-worker time. The agreement of the tiled objective with the one-process one is printed too.

Run: ``python benchmarks/bench_joint_distributed.py [--quick] [--repeats R]`` (default: the small
preset, 576 positions of 64x64 frames; quick: the tiny preset).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from floors import fft_floor  # benchmarks/floors.py (a script's own directory is on sys.path)

import xmulti
from xmulti.joint.distributed import distribute
from xmulti.joint.setup import build_problem
from xmulti.ptycho.fft import FFT2, default_workers
from xmulti.simulate import make_scan
from xmulti.xrf.quantify import physical_sensitivity


def timed(evaluate, floor_args, repeats: int, floors: list[float]) -> tuple[float, float]:
    """Minimum time of ``evaluate()`` over ``repeats`` runs (after one warm-up), each run followed
    by a floor measurement appended to ``floors``; returns (time, last value)."""
    value = evaluate()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        value = evaluate()
        best = min(best, time.perf_counter() - start)
        floors.append(fft_floor(*floor_args))
    return best, value


def slowest_tile(records: list[dict], tiles: int) -> float:
    """From a task stream: the least, over evaluations, of the compute time of the slowest of the
    evaluation's tile tasks (what the wall time would be with no communication or driver work).
    Evaluations do not overlap (each gathers its tiles before the next), so the tile tasks in
    order of start come in groups of ``tiles``."""
    spans = []
    for record in records:
        if str(record["key"]).startswith("_evaluate_tile"):
            start, stop = next((s["start"], s["stop"]) for s in record["startstops"] if s["action"] == "compute")
            spans.append((start, stop - start))
    spans.sort()
    groups = [spans[j : j + tiles] for j in range(0, len(spans) - tiles + 1, tiles)]
    return min(max(d for _, d in group) for group in groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from dask.distributed import Client, LocalCluster, get_task_stream

    from xmulti.worker_memory import tune_workers

    preset = "tiny" if args.quick else "small"
    sim = make_scan(preset, seed=2, self_absorption=True, cell_thickness_um=5.0)
    cfg = sim.config
    sens = {el: cfg.flux * physical_sensitivity(el, cfg.energy_keV) * 1e-6 / cfg.i0_counts for el in sim.elements}
    with tempfile.TemporaryDirectory() as tmp:
        tree = xmulti.open_scan(sim.write(Path(tmp) / "thick.h5"))
        recon = xmulti.reconstruct(tree, "lsqml", iterations=10)
        maps = xmulti.fit_xrf(tree, list(sim.elements)).compute()
        problem, t0, c0, _ = build_problem(tree, recon, maps, sensitivity=sens)
        probe = problem.probe.copy()
        m, k, n = len(problem.positions_px), probe.shape[0], probe.shape[-1]
        floor_args = (m * k, n, 1)
        floors: list[float] = []
        threads = default_workers()

        def in_process():
            return problem.evaluate(t0, c0, probe)[0]

        results = {}
        compute = {}
        results[f"in process, {threads} FFT threads"] = timed(in_process, floor_args, args.repeats, floors)
        problem.fft = FFT2(np, 1)
        problem.set_probe(probe)
        results["in process, 1 FFT thread"] = timed(in_process, floor_args, args.repeats, floors)
        reference = results["in process, 1 FFT thread"][1]
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                              silence_logs=40) as cluster, Client(cluster) as client:
                tune_workers(client)
                start = time.perf_counter()
                dist = distribute(problem, client)
                setup = time.perf_counter() - start
                with get_task_stream(client) as stream:
                    results[f"{workers} worker(s), {len(dist.parts)} tile(s)"] = timed(
                        lambda dist=dist: dist.evaluate(t0, c0, probe)[0], floor_args, args.repeats, floors)
                compute[workers] = slowest_tile(stream.data, len(dist.parts))
                sizes = [part.shape for part in dist.parts]
                dist.close()
            print(f"{workers} worker(s): distribute (frames read on the workers) {setup:.2f} s; tile sub-grids {sizes}")

    floor = min(floors)
    sent = sum(np.prod(s) for s in sizes) * 8 * (1 + len(sim.elements)) + probe.nbytes * len(sizes)
    print(f"preset {preset}: {m} positions, {k} probe mode(s), {n}x{n} frames, object {t0.shape}, "
          f"{len(sim.elements)} elements, probe refined")
    print(f"FFT floor (fwd+inv complex64, {m * k} frames {n}x{n}, scipy.fft, 1 thread): {floor * 1e3:.2f} ms")
    print(f"sent to the 2 tiles per evaluation: {sent / 1e6:.2f} MB (t, c crops and probe)")
    for name, (seconds, value) in results.items():
        print(f"{name:>32}: time per evaluation / floor {seconds / floor:7.2f}   "
              f"objective rel. diff. to one process {abs(value - reference) / abs(reference):.1e}")
    one = results[next(name for name in results if name.startswith("1 worker"))][0]
    two = results[next(name for name in results if name.startswith("2 worker"))][0]
    print(f"2-worker speed-up over 1 worker: {one / two:.2f}")
    for workers, seconds in compute.items():
        print(f"{workers} worker(s): slowest tile's compute time / floor {seconds / floor:7.2f} "
              f"(the rest of the wall time is communication and driver work)")


if __name__ == "__main__":
    main()
