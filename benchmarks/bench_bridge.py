"""Resolution bridging: element maps on the phase grid vs simulated truth, and solve time vs a floor.

For each element: NRMSE against the true composition on the object grid (in map units:
composition times the counts per ug/cm2 fitted between the noise-free counts and the
footprint-weighted truth), over the pixels the interpolated map covers (the scanned area), of

- ``interp``: the XRF map interpolated onto the phase grid (:func:`interpolate_map`);
- ``RL``: Richardson-Lucy with the probe intensity, stopped by the discrepancy principle;
- ``struct``: the structure model alone with the probe intensity as reconstructed
  (``bridge_resolution(method="structure", blend=False, footprint_power=1)``);
- ``g=1``: that model mixed with RL by held-out prediction (as the default was before session 6);
- ``default``: ``bridge_resolution`` as it is called by default (one call for all the elements:
  the footprint power ``g`` chosen by held-out prediction of every element's counts,
  :mod:`xmulti.joint.footprint_fit`; then per element the structure model, the compartment
  feature where kept (``cmp``), the mix with RL (``w``: the structure model's weight));
- ``guided`` (with ``--guided``): the pixel-level phase-guided Poisson MAP;

and the ratios default / interp and default / RL. Two input sets: the true probe and phase, and the
probe and phase of an :func:`xmulti.reconstruct` run on the same scan (its result is
interpolated onto the truth grid for the comparison). Maps: Poisson draws of the simulator's
expected counts (no beam fluctuation or dead time, so the maps are counts).

Speed: time per element of the default (its one call's time over the number of elements) and of
``g=1`` as ratios to the time of one Richardson-Lucy solve of the same element (the
deconvolution baseline), and the default's time per element as a ratio to one application of the
footprint operator and its adjoint (``A + A^T`` on the whole grid, column ``d/op``; CPU times of
this process, both single-threaded, so other jobs on the machine move it less): the floor that
grows with the scan, so a flat ratio across scan sizes is a cost linear in the positions; all
measured in this run. The structure model's shared setup (the tiles' footprint matrices and
data-space covariances) is timed once per input set as a ratio to one A + A^T application's FFTs
(four real FFTs of the padded grid).

Run: ``python benchmarks/bench_bridge.py [--quick] [--positions N] [--seed S] [--iterations N] [--true-only]
[--guided] [--no-compartments] [--untiled]``
(``--quick``: tiny preset; ``--positions N``: the small preset (64 x 64 frames) on an N x N scan,
cells in proportion to its area (default 24, the preset itself); ``--seed``: of the simulated scan,
default 0; ``--iterations``: ptychography epochs, default 100, as ``xmulti run`` does
(``ptycho.iterations``); ``--true-only``: only the true probe and phase (no reconstruction);
``--no-compartments``: the structure model without the compartment feature, as before it was added;
``--untiled``: one structure model of every position, as before issue 17).
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
    _features,
    bridge_resolution,
    forward_operator,
    interpolate_map,
    richardson_lucy,
    structure_tiles,
)
from xmulti.joint.structure import scan_step_px
from xmulti.joint.tiled import tiled_basis
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


def operator_time(op, repeats: int = 10) -> float:
    """CPU seconds of one application of the footprint operator and its adjoint (best of ``repeats``).

    CPU time of this process, as the bridging time it divides: both run on one thread, and on
    a shared machine the wall time of either swings with the other jobs."""
    rng = np.random.default_rng(0)
    c, b = rng.random(op.shape), rng.random(op.n_positions)
    best = np.inf
    for _ in range(repeats):
        t = time.process_time()
        op.adjoint(op.forward(c) + b)
        best = min(best, time.process_time() - t)
    return best


def nrmse(estimate: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    return float(np.sqrt(np.mean((estimate[where] - truth[where]) ** 2) / np.mean(truth[where] ** 2)))


def run(scan, label: str, recon: xr.Dataset, maps: xr.Dataset, truth: dict, grid, guided: bool,
        compartments: bool = True, tile_steps: float | None = 12.0) -> None:
    """Print the table for one (phase, probe) input set; results compared on the truth grid."""
    phase = recon["phase"]
    intensity = probe_intensity(np.asarray(recon["probe"].values))
    origin = np.array([float(phase["y"][0]), float(phase["x"][0])])
    dx = float(phase["y"][1] - phase["y"][0])
    frac = (scan.true_positions_um - origin) / dx
    op = forward_operator(intensity, frac, phase.shape)
    interp = interpolate_map(maps, grid, list(scan.elements))
    where = np.isfinite(interp[scan.elements[0]].values)
    floor = fft_floor(op.padded)
    t_op = operator_time(op)
    t = time.perf_counter()
    features = _features(recon, intensity, compartments)
    tiles = structure_tiles(intensity, frac, phase.shape, None, tile_steps, 1000) or []
    if tiles:
        model = tiled_basis(intensity, frac, features, tiles, scan_step_px(frac), ("compartment",))
        for k in range(len(tiles)):
            model.basis(k)
    else:
        from xmulti.joint.structure import structure_basis

        structure_basis(intensity, frac, features, zero_mean=("compartment",))
    setup = time.perf_counter() - t
    print(f"\n{label}: object grid {phase.shape}, {op.n_positions} positions, "
          f"{len(tiles) or 1} tile(s); structure setup {setup:.2f} s = {setup / floor:.0f} x one A + A^T's FFTs "
          f"({floor * 1e3:.2f} ms); one A + A^T {t_op * 1e3:.2f} ms CPU")
    head = (f"{'el':4s} {'interp':>7s} {'RL':>7s} {'struct':>7s} {'g=1':>7s} {'default':>7s} {'g':>5s} {'w':>5s} "
            f"{'cmp':>3s} {'d/interp':>9s} {'d/RL':>6s}")
    print(head + (f" {'guided':>7s}" if guided else "") + f" {'g=1/RL':>7s} {'d/RL t':>7s} {'d/op':>7s}")

    def on_truth_grid(c: np.ndarray) -> np.ndarray:
        da = xr.DataArray(c, dims=("y", "x"), coords={"y": phase["y"].values, "x": phase["x"].values})
        return da.interp(y=grid["y"].values, x=grid["x"].values).values

    kw = {"positions_um": scan.true_positions_um, "compartments": compartments, "tile_steps": tile_steps}
    t, cpu = time.perf_counter(), time.process_time()
    default = bridge_resolution(maps, recon, elements=list(scan.elements), **kw)
    t_default = (time.perf_counter() - t) / len(scan.elements)
    cpu_default = (time.process_time() - cpu) / len(scan.elements)
    # the floor again after the solve (best of both): on a shared machine one burst can be slow
    t_op = min(t_op, operator_time(op))
    print(f"default: {t_default:.2f} s per element ({cpu_default:.2f} s CPU) = {cpu_default / t_op:.0f} x one "
          f"A + A^T ({t_op * 1e3:.2f} ms CPU)", flush=True)
    for el in scan.elements:
        b = maps[el].values.ravel()
        t = time.perf_counter()
        rl = richardson_lucy(op, b)
        t_rl = time.perf_counter() - t
        alone = bridge_resolution(maps, recon, elements=[el], blend=False, footprint_power=1.0, **kw)
        t = time.perf_counter()
        plain = bridge_resolution(maps, recon, elements=[el], footprint_power=1.0, **kw)
        t_plain = time.perf_counter() - t
        e_i = nrmse(interp[el].values, truth[el], where)
        e_rl = nrmse(on_truth_grid(rl.c), truth[el], where)
        e_s = nrmse(on_truth_grid(alone[el].values), truth[el], where)
        e_p = nrmse(on_truth_grid(plain[el].values), truth[el], where)
        e_d = nrmse(on_truth_grid(default[el].values), truth[el], where)
        attrs = default[el].attrs
        kept = "compartment" in attrs["features"]
        line = (f"{el:4s} {e_i:7.3f} {e_rl:7.3f} {e_s:7.3f} {e_p:7.3f} {e_d:7.3f} {default.attrs['footprint_power']:5.2f} "
                f"{attrs['structure_weight']:5.2f} {'yes' if kept else 'no':>3s} {e_d / e_i:9.2f} {e_d / e_rl:6.2f}")
        if guided:
            g = bridge_resolution(maps, recon, elements=[el], method="guided", positions_um=scan.true_positions_um)
            line += f" {nrmse(on_truth_grid(g[el].values), truth[el], where):7.3f}"
        print(line + f" {t_plain / t_rl:7.1f} {t_default / t_rl:7.1f} {cpu_default / t_op:7.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated scan")
    parser.add_argument("--iterations", type=int, default=100,
                        help="ptychography epochs (default: the pipeline's ptycho.iterations)")
    parser.add_argument("--guided", action="store_true", help="also the pixel-level guided solve (slow)")
    parser.add_argument("--no-compartments", action="store_true", help="without the compartment feature")
    parser.add_argument("--positions", type=int, default=24,
                        help="small preset on an N x N scan (cells in proportion to the area); default 24")
    parser.add_argument("--true-only", action="store_true", help="only the true probe and phase")
    parser.add_argument("--untiled", action="store_true", help="one structure model of every position")
    args = parser.parse_args()
    preset = "tiny" if args.quick else "small"
    overrides = {}
    if not args.quick and args.positions != 24:
        overrides = {"scan_shape": (args.positions, args.positions),
                     "n_cells": max(1, round(3 * (args.positions / 24) ** 2))}
    scan = make_scan(preset, seed=args.seed, i0_fluctuation=0.0, dead_time_fraction=0.0, **overrides)
    tile_steps = None if args.untiled else 12.0
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
    print(f"preset {preset}, seed {args.seed}: scan {ny} x {nx}, probe {scan.probe.shape}, pixel {scan.pixel_size_um * 1e3:.1f} nm")
    true_recon = xr.Dataset({"phase": grid, "probe": (("probe_y", "probe_x"), scan.probe)})
    run(scan, "true probe and phase", true_recon, maps, truth, grid, args.guided, not args.no_compartments, tile_steps)
    if args.true_only:
        return

    from xmulti import open_scan, reconstruct

    with tempfile.TemporaryDirectory() as tmp:
        path = scan.write(Path(tmp) / "scan.h5")
        t = time.perf_counter()
        recon = reconstruct(open_scan(path), iterations=args.iterations).compute()
        print(f"\nreconstruct: {args.iterations} epochs in {time.perf_counter() - t:.1f} s")
    run(scan, f"reconstructed probe and phase ({args.iterations} epochs lsqml)", recon, maps, truth, grid, args.guided,
        not args.no_compartments, tile_steps)


if __name__ == "__main__":
    main()
