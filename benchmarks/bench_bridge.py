"""Resolution bridging: element maps on the phase grid vs simulated truth, and solve time vs its FFT floor.

For each element: NRMSE against the true composition on the object grid (in map units:
composition times the counts per ug/cm2 fitted between the noise-free counts and the
footprint-weighted truth), over the pixels the interpolated map covers (the scanned area), of

- ``interp``: the XRF map interpolated onto the phase grid (:func:`interpolate_map`);
- ``RL``: Richardson-Lucy with the probe intensity, stopped by the discrepancy principle;
- ``guided``: :func:`guided_solve` (Poisson + phase-guided directional smoothness);

and the ratio guided / interp. Two input sets: the true probe and phase, and the probe and
phase of an :func:`xmulti.reconstruct` run on the same scan (its result is interpolated onto the
truth grid for the comparison). Maps: Poisson draws of the simulator's expected counts (no beam
fluctuation or dead time, so the maps are counts).

Speed: the guided solve's time as a ratio to its floor, the FFTs of one ``A`` + ``A^T``
application (four real FFTs of the zero-padded grid) times the L-BFGS-B iteration count,
measured in the same run (minimum of repeats). ``ffts/floor`` is the ratio of the FFTs actually
done (line searches evaluate more than once per iteration) to that floor's FFT count.

Run: ``python benchmarks/bench_bridge.py [--quick] [--iterations N]`` (``--quick``: tiny preset).
"""

# ruff: noqa: E402  (BLAS threads are set before numpy is imported)
from __future__ import annotations

import os

# one BLAS thread, like the single-threaded FFT floor: L-BFGS-B's vector operations on a
# multi-threaded BLAS slow down ~10x on a loaded 2-core machine (measured: 18 ms vs 2 ms per step)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import fft as sfft

from xmulti.footprint import probe_intensity
from xmulti.grid import image_axes_um
from xmulti.joint.bridge import (
    forward_operator,
    guided_solve,
    interpolate_map,
    phase_guide,
    richardson_lucy,
)
from xmulti.simulate import make_scan


def fft_floor(shape: tuple[int, int], repeats: int = 20) -> float:
    """Seconds of one A + A^T application's FFTs: 2 x (rfft2 + irfft2) of the padded grid."""
    a = np.random.default_rng(0).random(shape)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(2):
            sfft.irfft2(sfft.rfft2(a), s=shape)
        best = min(best, time.perf_counter() - t)
    return best


def nrmse(estimate: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    return float(np.sqrt(np.mean((estimate[where] - truth[where]) ** 2) / np.mean(truth[where] ** 2)))


def run(scan, label: str, phase: xr.DataArray, probe: np.ndarray, maps: xr.Dataset, truth: dict, grid) -> None:
    """Print the table for one (phase, probe) input set; results compared on the truth grid."""
    intensity = probe_intensity(probe)
    origin = np.array([float(phase["y"][0]), float(phase["x"][0])])
    dx = float(phase["y"][1] - phase["y"][0])
    op = forward_operator(intensity, (scan.true_positions_um - origin) / dx, phase.shape)
    guide = phase_guide(phase.values)
    interp = interpolate_map(maps, grid, list(scan.elements))
    where = np.isfinite(interp[scan.elements[0]].values)
    floor = fft_floor(op.padded)
    print(f"\n{label}: object grid {phase.shape}, padded {op.padded}, {op.n_positions} positions, "
          f"floor (one A + A^T) {floor * 1e3:.3f} ms")
    print(f"{'el':4s} {'interp':>7s} {'RL':>7s} {'guided':>7s} {'g/interp':>9s} {'g/RL':>6s} {'iter':>6s} "
          f"{'time/floor':>10s} {'ffts/floor':>10s}")
    for el in scan.elements:
        b = maps[el].values.ravel()

        def on_truth_grid(c: np.ndarray) -> np.ndarray:
            da = xr.DataArray(c, dims=("y", "x"), coords={"y": phase["y"].values, "x": phase["x"].values})
            return da.interp(y=grid["y"].values, x=grid["x"].values).values

        rl = richardson_lucy(op, b)
        op.n_ffts = 0
        t = time.perf_counter()
        g = guided_solve(op, b, guide=guide)
        elapsed = time.perf_counter() - t
        e_i = nrmse(interp[el].values, truth[el], where)
        e_rl = nrmse(on_truth_grid(rl.c), truth[el], where)
        e_g = nrmse(on_truth_grid(g.c), truth[el], where)
        print(f"{el:4s} {e_i:7.3f} {e_rl:7.3f} {e_g:7.3f} {e_g / e_i:9.2f} {e_g / e_rl:6.2f} {g.iterations:6d} "
              f"{elapsed / (g.iterations * floor):10.1f} {op.n_ffts / (4 * g.iterations):10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset")
    parser.add_argument("--iterations", type=int, default=60, help="ptychography epochs")
    args = parser.parse_args()
    preset = "tiny" if args.quick else "small"
    scan = make_scan(preset, seed=0, i0_fluctuation=0.0, dead_time_fraction=0.0)
    ny, nx = scan.config.scan_shape
    y, x = image_axes_um(scan.object.shape, scan.pixel_size_um, scan.origin_um)
    grid = xr.DataArray(np.angle(scan.object), dims=("y", "x"), coords={"y": y, "x": x})
    counts = np.random.default_rng(1).poisson(scan.line_counts).astype(float)
    pos = scan.true_positions_um
    maps = xr.Dataset(
        {el: (("y", "x"), counts[:, j].reshape(ny, nx), {"units": "counts"}) for j, el in enumerate(scan.elements)},
        coords={"y": pos[:, 0].reshape(ny, nx).mean(axis=1), "x": pos[:, 1].reshape(ny, nx).mean(axis=0)},
    )
    op = forward_operator(probe_intensity(scan.probe), scan.fractional_positions(), scan.object.shape)
    truth = {}
    for j, el in enumerate(scan.elements):
        comp = scan.phantom.composition_ug_cm2[j]
        seen = op.forward(comp)
        truth[el] = comp * float(seen @ scan.line_counts[:, j] / (seen @ seen))
    print(f"preset {preset}: scan {ny} x {nx}, probe {scan.probe.shape}, pixel {scan.pixel_size_um * 1e3:.1f} nm")
    run(scan, "true probe and phase", grid, scan.probe, maps, truth, grid)

    from xmulti import open_scan, reconstruct

    with tempfile.TemporaryDirectory() as tmp:
        path = scan.write(Path(tmp) / "scan.h5")
        t = time.perf_counter()
        recon = reconstruct(open_scan(path), iterations=args.iterations)
        print(f"\nreconstruct: {args.iterations} epochs in {time.perf_counter() - t:.1f} s")
    probe = np.asarray(recon["probe"].values)
    run(scan, f"reconstructed probe and phase ({args.iterations} epochs lsqml)", recon["phase"], probe, maps, truth,
        grid)


if __name__ == "__main__":
    main()
