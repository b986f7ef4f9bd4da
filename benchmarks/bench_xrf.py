"""Per-pixel XRF fitting speed, as ratios to the matrix-product floor measured in the same run.

Usage: ``python benchmarks/bench_xrf.py [--pixels 32768] [--repeat 5] [--workers 0]``

Spectra: the ``small`` simulated scan (2048 channels) tiled to ``--pixels`` spectra (uint32, as
detectors store counts). Single-threaded BLAS (per-core figures). Printed:

- floor: the float32 product of the same spectra by the design matrix (2048 x K), spectra
  already float32 in memory; and the same with the uint32 -> float32 cast included;
- the full per-pixel fit (unconstrained + non-negative estimates, uncertainties, chi-square)
  on float32 and on uint32 spectra, as ratios to the matching floor;
- the SNIP option (per-pixel SNIP background, then the linear fit without continuum);
- the calibration of one 2048-channel summed spectrum (best of ``--repeat``), with the element
  list given and with identification (``elements=None``), on this scan and on an independent
  generator's spectrum (:mod:`xmulti.simulate.independent_xrf`, case ``bio7``), in seconds
  and as a ratio to the per-pixel fit of a 10^4-pixel map and to that map's product floor;
- with ``--workers N``: ``fit_xrf``'s chunked fit (``xmulti.xrf.maps.fit_chunks``) over a Dask array on the local cluster
  :func:`xmulti.dask_client` starts, with 1 and N worker processes (scaling), ratio to one worker;
  and, for comparison, N plain processes running the cast + product floor against one.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # per-core figures; set before numpy loads
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def best_rate(func, n_items: int, repeat: int) -> float:
    """Items per second of the fastest of ``repeat`` runs."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return n_items / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=32768)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--snip-pixels", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=0, help="also time a Dask process cluster")
    parser.add_argument("--scaling-pixels", type=int, default=524288,
                        help="spectra of the Dask scaling run (enough work that scheduling is negligible)")
    args = parser.parse_args()

    from xmulti.simulate import make_scan
    from xmulti.xrf.calibrate import calibrate
    from xmulti.xrf.fit import fit_spectra, prepare_fit
    from xmulti.xrf.model import Calibration

    scan = make_scan("small", seed=1)
    cfg = scan.config
    reps = -(-args.pixels // len(scan.spectra))
    counts = np.ascontiguousarray(np.tile(scan.spectra, (reps, 1))[: args.pixels])
    counts_f32 = counts.astype(np.float32)
    n, n_channels = counts.shape
    print(f"spectra: {n} x {n_channels} channels, {counts.sum(axis=1).mean():.0f} counts per pixel")

    result = calibrate(
        scan.spectra.sum(axis=0), cfg.energy_keV, Calibration(*cfg.nominal_calibration_keV), list(scan.elements)
    )
    plan = prepare_fit(result.model, result.fitted / len(scan.spectra))
    k = plan.n_components
    design = np.zeros((n_channels, k), dtype=np.float32)
    design[plan.channel_slice] = result.model.matrix
    print(f"design matrix: {n_channels} x {k} ({plan.n_fit} fitted channels)")

    floor = best_rate(lambda: counts_f32 @ design, n, args.repeat)
    floor_cast = best_rate(lambda: counts.astype(np.float32) @ design, n, args.repeat)
    fitted_design = np.ascontiguousarray(design[plan.channel_slice])
    floor_fitted = best_rate(lambda: counts_f32[:, plan.channel_slice] @ fitted_design, n, args.repeat)
    fit_f32 = best_rate(lambda: fit_spectra(counts_f32, plan), n, args.repeat)
    fit_u32 = best_rate(lambda: fit_spectra(counts, plan), n, args.repeat)
    print(f"floor, float32 spectra @ design:           {floor / 1e3:9.1f} k pixels/s (1.00)")
    print(f"  the same over the fitted channels only:  {floor_fitted / 1e3:9.1f} k pixels/s "
          f"({floor_fitted / floor:.2f} of the float32 floor)")
    print(f"floor, uint32 -> float32 cast + product:   {floor_cast / 1e3:9.1f} k pixels/s "
          f"({floor_cast / floor:.2f} of the float32 floor)")
    print(f"fit, float32 spectra:                      {fit_f32 / 1e3:9.1f} k pixels/s "
          f"({fit_f32 / floor:.2f} of the float32 floor)")
    print(f"fit, uint32 spectra:                       {fit_u32 / 1e3:9.1f} k pixels/s "
          f"({fit_u32 / floor:.2f} of the float32 floor, {fit_u32 / floor_cast:.2f} of the cast floor)")

    calibration_times(scan, cfg, fit_u32, floor_cast, args.repeat)

    snip_plan = prepare_fit(result.model, result.fitted / len(scan.spectra), background="snip")
    m = min(args.snip_pixels, n)
    snip = best_rate(lambda: fit_spectra(counts[:m], snip_plan), m, max(1, args.repeat // 2))
    print(f"SNIP option (width {snip_plan.snip_width_channels} ch), uint32: {snip / 1e3:9.1f} k pixels/s "
          f"({snip / floor:.3f} of the float32 floor; {fit_u32 / snip:.1f}x slower than the linear continuum)")

    if args.workers:
        scaling(counts, plan, args.workers, args.scaling_pixels)


def calibration_times(scan, cfg, fit_rate: float, floor_rate: float, repeat: int, map_pixels: int = 10_000) -> None:
    """Seconds of one summed-spectrum calibration, and ratios to a map's per-pixel fit and floor."""
    from xmulti.simulate.independent_xrf import outside_cases
    from xmulti.xrf.calibrate import calibrate
    from xmulti.xrf.model import Calibration

    case = outside_cases()["bio7"]
    outside = case.make(seed=0).counts.astype(float)
    inputs = {
        "xmulti simulator": (scan.spectra.sum(axis=0).astype(float), cfg.energy_keV,
                             Calibration(*cfg.nominal_calibration_keV), list(scan.elements)),
        "independent bio7": (outside, case.incident_energy_keV, Calibration(*case.nominal_calibration_keV),
                             list(case.elements)),
    }
    fit_seconds, floor_seconds = map_pixels / fit_rate, map_pixels / floor_rate
    print(f"calibration of one summed spectrum, best of {repeat} (one BLAS thread); a {map_pixels}-pixel map's "
          f"per-pixel fit takes {fit_seconds * 1e3:.0f} ms, its cast + product floor {floor_seconds * 1e3:.0f} ms:")
    for name, (spectrum, energy, initial, elements) in inputs.items():
        for label, given in (("elements given", elements), ("elements=None", None)):
            best = np.inf
            for _ in range(max(1, repeat)):
                start = time.perf_counter()
                calibrate(spectrum, energy, initial, given)
                best = min(best, time.perf_counter() - start)
            print(f"  {name:17s} {label:15s} {best:6.2f} s = {best / fit_seconds:6.1f} x the map's fit, "
                  f"{best / floor_seconds:7.1f} x its floor")


def _floor_rate(seconds: float, queue) -> None:
    """Cast + product floor on 4096 spectra, repeated for ``seconds``; spectra per second to ``queue``."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, (4096, 2048)).astype(np.uint32)
    design = rng.random((2048, 18), dtype=np.float32)
    counts.astype(np.float32) @ design
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        counts.astype(np.float32) @ design
        n += 1
    queue.put(4096 * n / (time.perf_counter() - start))


def hardware_scaling(workers: int, seconds: float = 4.0) -> float:
    """Aggregate rate of the cast + product floor in ``workers`` processes over one process: the
    scaling the machine itself allows (memory bandwidth, shared cores), for comparison."""
    import multiprocessing

    rates = []
    for n in (1, workers):
        queue = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=_floor_rate, args=(seconds, queue)) for _ in range(n)]
        for proc in procs:
            proc.start()
        total = sum(queue.get() for _ in procs)
        for proc in procs:
            proc.join()
        rates.append(total)
    return rates[1] / rates[0]


def _known(keys, dask_scheduler=None) -> bool:
    return any(key in dask_scheduler.tasks for key in keys)


def scaling(counts, plan, workers: int, n_pixels: int) -> None:
    """``fit_xrf``'s chunked fit over a Dask array on 1 and ``workers`` worker processes."""
    import dask.array as da
    import xarray as xr
    from dask.distributed import futures_of, wait

    from xmulti.cluster import dask_client
    from xmulti.io.hdf5 import position_chunks
    from xmulti.xrf.fit import output_names
    from xmulti.xrf.maps import fit_chunks

    names = output_names(plan)
    mean = counts[:4096].mean(axis=0)  # small: what each worker draws its chunk from
    # the chunk open_scan gives such spectra (about 64 MB)
    rows = position_chunks(n_pixels, counts.shape[1] * counts.dtype.itemsize, None)

    def chunk(block_id=None):
        rng = np.random.default_rng(block_id[0])
        return rng.poisson(np.broadcast_to(mean, (rows, mean.size))).astype(np.uint32)

    n_chunks = max(1, n_pixels // rows)
    print(f"dask: {n_chunks} chunks of {rows} spectra")
    data = da.map_blocks(chunk, dtype=counts.dtype, chunks=((rows,) * n_chunks, (counts.shape[1],)))
    spectra = xr.DataArray(data, dims=("position", "channel"))
    rates, gathered = {}, {}
    for n_workers in sorted({1, workers}):
        # the local cluster xmulti starts (single-threaded worker processes, tuned allocator)
        with dask_client(n_workers=n_workers, wait_for_workers=n_workers) as client:
            persisted = spectra.persist()  # data in the workers: time the fit, not the transfer

            def fitted(data=persisted):
                return fit_chunks(data, plan, names)  # fit_xrf's own path

            def on_workers():  # results stay on the workers (as when they are written to Zarr)
                result = fitted().persist()
                wait(result)
                keys = [future.key for future in futures_of(result)]
                del result
                # the next call has the same keys: wait until the scheduler has forgotten these,
                # or it would hand them back without computing
                while client.run_on_scheduler(_known, keys):
                    time.sleep(0.005)

            on_workers()
            rates[n_workers] = best_rate(on_workers, rows * n_chunks, 5)
            gathered[n_workers] = best_rate(lambda: fitted().compute(), rows * n_chunks, 3)  # nothing kept
        print(f"dask, {n_workers} worker process(es): {rates[n_workers] / 1e3:9.1f} k pixels/s "
              f"({rates[n_workers] / rates[1]:.2f} x one worker; results kept on the workers), "
              f"{gathered[n_workers] / 1e3:.1f} k pixels/s ({gathered[n_workers] / gathered[1]:.2f} x) "
              f"with every result gathered to the client")
    print(f"the machine's own scaling: {workers} processes running the cast + product floor = "
          f"{hardware_scaling(workers):.2f} x one")


if __name__ == "__main__":
    main()
