"""Tile-parallel ptychography: time per epoch on 1 and 2 worker processes, peak worker memory.

A scan of the ``large`` preset (100 x 100 positions, 128 x 128 frames) is simulated into a
temporary directory and reconstructed through the public API
(``xmulti.reconstruct(tree, tiles=..., sync_every=..., client=...)``, known probe, LSQ-ML) on a
fresh ``LocalCluster`` of 1, then 2 worker processes with 1 thread each, same tiles, same sync.

Figures, each measured in this run:

- time per epoch: from the progress callback, between the end of the first round (which also
  reads the frames) and the end of the last, so setup and reading are excluded;
- the FFT floor: one forward + inverse complex64 FFT (scipy.fft, 1 thread) per position and probe
  mode of every tile, halo duplicates included, i.e. the FFTs one epoch cannot avoid; with
  ``w`` workers the floor is that divided by ``w``;
- speed-up: time per epoch on 1 worker / on 2 workers (target >= 1.7 on 2 cores);
- client time per round: the wall time the client waits in a synchronisation (the alignment's
  pair tasks on the overlap strips, submitting the overlap exchange, the probe sharing); the
  exchange itself runs on the workers, ahead of the next round's tile tasks (the final alignment
  before the stitch is counted too);
- peak worker memory: the largest ``VmHWM`` of the worker processes over the reconstruction
  (reset after the cluster starts), next to the bytes of one tile's frames and of the scan's.

``--memory-scaling`` instead reconstructs two scans with the same tile size (the second twice as
wide and tall, with twice the tiles along each axis) with streamed frames and prints the peak
worker memory of each: bounded by the tile, it should not grow with the scan.

Run: ``python benchmarks/bench_tiles.py [--scan-shape 40 40] [--epochs 6] [--sync-every 2]
[--tiles 2x2] [--workers 1 2] [--memory-scaling]``. The machine must be otherwise idle for the
speed-up to mean anything.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft

import xmulti
import xmulti.ptycho.distributed as distributed
from xmulti.ptycho.tiles import split_tiles
from xmulti.simulate import simulate_scan


def fft_floor(m: int, n: int, repeats: int = 3) -> float:
    """Seconds (min of ``repeats``) for forward + inverse FFTs of m complex64 n x n frames, 1 thread."""
    best = np.inf
    chunk = max(1, int(64e6 // (8 * n * n)))  # in chunks: the same work without a huge array
    a = np.ones((min(chunk, m), n, n), np.complex64)
    for _ in range(repeats):
        t = time.perf_counter()
        for start in range(0, m, chunk):
            b = a[: min(chunk, m - start)]
            b = sfft.fft2(b, axes=(-2, -1), norm="ortho", overwrite_x=False, workers=1)
            sfft.ifft2(b, axes=(-2, -1), norm="ortho", overwrite_x=True, workers=1)
        best = min(best, time.perf_counter() - t)
    return best


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM restarts from the current RSS


def _peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class _ClientClock:
    """Accumulates the time the client spends in the synchronisation (alignment, exchange, probe)."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, name: str):
        original = getattr(distributed, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += name == "exchange_on_cluster"

        setattr(distributed, name, timed)
        return original


def run(tree, workers: int, tiles, epochs: int, sync_every: int | None, resident: bool | None):
    """Reconstruct on a fresh cluster; returns (s per epoch, total s, peak worker bytes, client s
    per round, result)."""
    from dask.distributed import Client, LocalCluster

    probe = tree["truth"].ds["probe"].values
    stamps: list[tuple[int, float]] = []
    clock = _ClientClock()
    originals = {name: clock.wrap(name) for name in ("align_on_cluster", "exchange_on_cluster", "shared_probe")}
    try:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=40, memory_limit=0) as cluster, Client(cluster) as client:
            client.run(_reset_peak)
            start = time.perf_counter()
            result = _reconstruct(tree, client, probe, tiles, epochs, sync_every,
                                  lambda done, total, err: stamps.append((done, time.perf_counter())), resident)
            total = time.perf_counter() - start
            peak = max(client.run(_peak_bytes).values())
    finally:
        for name, original in originals.items():
            setattr(distributed, name, original)
    (e0, t0), (e1, t1) = stamps[0], stamps[-1]
    per_epoch = (t1 - t0) / max(e1 - e0, 1)
    return per_epoch, total, peak, clock.seconds / max(clock.calls, 1), result


def _reconstruct(tree, client, probe, tiles, epochs, sync_every, progress, resident):
    from xmulti.ptycho.reconstruct import _ptycho_dataset
    from xmulti.ptycho.tiled import reconstruct_tiled

    return reconstruct_tiled(_ptycho_dataset(tree), "lsqml", epochs, 1, False, tiles=tiles, sync_every=sync_every,
                             client=client, probe=probe, progress=progress, resident_frames=resident)


def tile_positions(result, tree, tiles) -> tuple[int, int]:
    """(positions of all tiles together, halo duplicates included; largest tile's positions)."""
    dx_um = float(result.attrs["pixel_size_nm"]) * 1e-3
    positions = np.stack([result.position_y.values, result.position_x.values], 1)
    positions_px = (positions - np.asarray(result.attrs["origin_um"])) / dx_um
    n = tree["ptychography"].ds.sizes["det_x"]
    split = split_tiles(positions_px, n, result.phase.shape, grid=tuple(tiles), halo_px=result.attrs["halo_um"] / dx_um)
    sizes = [len(t.members) for t in split]
    return sum(sizes), max(sizes)


def speed(args, directory: Path) -> None:
    t = time.perf_counter()
    path = simulate_scan(directory / "scan.h5", args.preset, seed=0, **_shape(args))
    tree = xmulti.open_scan(path)
    m, n = tree["ptychography"].ds.sizes["position"], tree["ptychography"].ds.sizes["det_x"]
    print(f"scan: {m} positions, {n}x{n} frames, simulated in {time.perf_counter() - t:.0f} s")
    times = {}
    for w in args.workers:
        per_epoch, total, peak, client_round, result = run(tree, w, args.tiles, args.epochs, args.sync_every,
                                                           args.resident)
        all_tiles, largest = tile_positions(result, tree, args.tiles)
        floor = fft_floor(all_tiles, n)
        times[w] = per_epoch
        print(f"{w} worker(s): {per_epoch:.3f} s/epoch = {per_epoch / (floor / w):.1f}x the FFT floor "
              f"({floor / w:.3f} s on {w} core(s)); run {total:.1f} s; client sync {client_round * 1e3:.0f} ms per "
              f"round; peak worker memory {peak / 2**20:.0f} MiB (largest tile's frames "
              f"{largest * n * n * 4 / 2**20:.0f} MiB, scan's {m * n * n * 4 / 2**20:.0f} MiB)")
        print(f"   positions with halo duplicates {all_tiles} = {all_tiles / m:.2f}x the scan's {m}; "
              f"halo {result.attrs['halo_um']:.2f} um")
    if 1 in times and 2 in times:
        print(f"speed-up 2 workers over 1: {times[1] / times[2]:.2f}x (target >= 1.7)")


def memory_scaling(args, directory: Path) -> None:
    ny, nx = args.scan_shape or (50, 50)
    ty, tx = args.tiles
    for scale in (1, 2):
        shape = (ny * scale, nx * scale)
        tiles = (ty * scale, tx * scale)
        path = simulate_scan(directory / f"scan{scale}.h5", args.preset, seed=0, scan_shape=shape,
                             **({"frame_size": args.frame_size} if args.frame_size else {}))
        tree = xmulti.open_scan(path)
        m, n = tree["ptychography"].ds.sizes["position"], tree["ptychography"].ds.sizes["det_x"]
        per_epoch, _, peak, client_round, result = run(tree, 2, tiles, args.epochs, args.sync_every, False)
        all_tiles, largest = tile_positions(result, tree, tiles)
        print(f"scan {shape[0]}x{shape[1]} ({m * n * n * 4 / 2**20:.0f} MiB of frames), tiles {tiles[0]}x{tiles[1]}"
              f" (largest {largest * n * n * 4 / 2**20:.0f} MiB): peak worker memory {peak / 2**20:.0f} MiB; "
              f"{per_epoch:.2f} s/epoch; client sync {client_round * 1e3:.0f} ms per round for a "
              f"{result.phase.shape[0]}x{result.phase.shape[1]} object; {all_tiles / m:.2f}x positions with halo")


def _shape(args) -> dict:
    out = {}
    if args.scan_shape:
        out["scan_shape"] = tuple(args.scan_shape)
    if args.frame_size:
        out["frame_size"] = args.frame_size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="large")
    parser.add_argument("--scan-shape", type=int, nargs=2, default=None, help="positions (ny nx)")
    parser.add_argument("--frame-size", type=int, default=None)
    parser.add_argument("--tiles", default="2x2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sync-every", type=int, default=2, help="0: independent tiles")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--resident", choices=["auto", "yes", "no"], default="auto",
                        help="frames kept on the workers (yes), read each round (no)")
    parser.add_argument("--memory-scaling", action="store_true")
    args = parser.parse_args()
    args.tiles = tuple(int(v) for v in args.tiles.lower().split("x"))
    args.sync_every = args.sync_every or None
    args.resident = {"auto": None, "yes": True, "no": False}[args.resident]
    if args.sync_every is None:
        raise SystemExit("time per epoch needs at least two rounds: give --sync-every >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        (memory_scaling if args.memory_scaling else speed)(args, Path(tmp))


if __name__ == "__main__":
    main()
