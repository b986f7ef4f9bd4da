"""Joint reconstruction: accuracy against the separate reconstructions, and cost per iteration.

The sample: a simulated 5 um thick cell (protein) with self-absorption of the fluorescence
(10 keV, normal incidence, detector 15 degrees above the surface). The separate results are the
thickness from the reconstructed phase (levelled background: ramp and offset removed as the
joint start does) and the fitted XRF maps divided by the sensitivity (what a thin-film standard
gives) and interpolated to the phase grid; the joint result starts from them.

Printed: thickness and element NRMSE (on the well-lit region covered by the maps), separate vs
joint; the mean bias of P and S; the time per objective-and-gradient evaluation as a ratio to the
FFT floor (and per L-BFGS iteration: that times the evaluations per iteration), the forward + inverse complex64 FFTs of one frame per
position and probe mode (scipy.fft, same threads), measured interleaved in the same run (the
minimum of each is kept, so load from other processes affects both alike).

Defaults are those of :class:`xmulti.joint.JointSettings` (Poisson likelihood of the frames,
thickness prior at its empirical-Bayes weight); ``--noise gaussian --thickness-smoothing 0`` is
the objective before issue 8's fix. ``--ablation`` also prints the thickness NRMSE of those
variants from the same start (same separate reconstruction): Gaussian amplitudes without the
prior, Poisson without the prior. ``--xrf-noise poisson`` fits the XRF values with the shifted
Poisson likelihood instead of the Gaussian one; ``--compare-xrf-noise`` also fits with the other
XRF likelihood from the same start and prints its element NRMSE beside the main one.

Run: ``python benchmarks/bench_joint.py [--quick] [--iterations N] [--seed S] [--cell-um T]
[--ice-um T] [--noise poisson|gaussian] [--xrf-noise gaussian|poisson] [--thickness-smoothing W]
[--ablation] [--compare-xrf-noise]`` (quick: the tiny preset).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from floors import fft_floor  # benchmarks/floors.py (a script's own directory is on sys.path)

import xmulti
from xmulti.joint.setup import build_problem
from xmulti.joint.solve import solve
from xmulti.ptycho.fft import default_workers
from xmulti.register import maps_to_phase_grid
from xmulti.simulate import make_scan
from xmulti.xrf.quantify import physical_sensitivity


def nrmse(estimate: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    """RMS error over ``where`` divided by the RMS of the truth there."""
    return float(np.sqrt(np.mean((estimate - truth)[where] ** 2) / np.mean(truth[where] ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--cell-um", type=float, default=5.0, help="peak cell thickness (um)")
    parser.add_argument("--ice-um", type=float, default=0.0, help="ice layer the cells sit in (um)")
    parser.add_argument("--noise", choices=("poisson", "gaussian"), default="poisson")
    parser.add_argument("--xrf-noise", choices=("gaussian", "poisson"), default="gaussian")
    parser.add_argument("--compare-xrf-noise", action="store_true", help="also fit with the other XRF likelihood")
    parser.add_argument("--thickness-smoothing", type=float, default=1.0)
    parser.add_argument("--ablation", action="store_true", help="also fit without the prior (Poisson, Gaussian)")
    args = parser.parse_args()
    preset = "tiny" if args.quick else "small"
    sim = make_scan(preset, seed=args.seed, self_absorption=True, cell_thickness_um=args.cell_um,
                    ice_thickness_um=args.ice_um)
    cfg = sim.config
    sens = {el: cfg.flux * physical_sensitivity(el, cfg.energy_keV) * 1e-6 / cfg.i0_counts for el in sim.elements}
    with tempfile.TemporaryDirectory() as tmp:
        tree = xmulti.open_scan(sim.write(Path(tmp) / "thick.h5"))
        recon = xmulti.reconstruct(tree, "lsqml", iterations=100)
        maps = xmulti.fit_xrf(tree, list(sim.elements)).compute()
        common = dict(sensitivity=sens, ice_thickness_um=args.ice_um)
        problem, t0, c0, _ = build_problem(tree, recon, maps, noise=args.noise, xrf_noise=args.xrf_noise,
                                           thickness_smoothing=args.thickness_smoothing, **common)

        # cost of one evaluation (objective + gradients, probe refined) vs the FFT floor
        workers = default_workers()
        m, k, n = len(problem.positions_px), problem.probe.shape[0], problem.probe.shape[-1]
        floor, evaluation = np.inf, np.inf
        for _ in range(5):
            floor = min(floor, fft_floor(m * k, n, workers))
            start = time.perf_counter()
            problem.evaluate(t0, c0, problem.probe)
            evaluation = min(evaluation, time.perf_counter() - start)
        problem.evaluations = 0

        t, c, _, history = solve(problem, t0, c0, args.iterations)
        per_iteration = problem.evaluations / max(1, len(history) - 1)
        variants = {}
        if args.ablation:
            for noise in ("poisson", "gaussian"):
                other, _, _, _ = build_problem(tree, recon, maps, noise=noise, thickness_smoothing=0.0, **common)
                variants[f"{noise}, no thickness prior"] = solve(other, t0, c0, args.iterations)[0]
        other_xrf, c_other = None, None
        if args.compare_xrf_noise:
            other_xrf = "poisson" if args.xrf_noise == "gaussian" else "gaussian"
            other, _, _, _ = build_problem(tree, recon, maps, noise=args.noise, xrf_noise=other_xrf,
                                           thickness_smoothing=args.thickness_smoothing, **common)
            t_other_xrf, c_other, _, _ = solve(other, t0, c0, args.iterations)
            variants[f"XRF {other_xrf}"] = t_other_xrf

    separate = maps_to_phase_grid(maps[list(sim.elements)], recon["phase"])
    where = (recon["illumination"].values >= 0.1) & np.isfinite(separate[sim.elements[0]].values)
    print(f"preset {preset}: {m} positions, {n}x{n} frames, object {t0.shape}, {len(sim.elements)} elements, "
          f"{args.cell_um:g} um protein in {args.ice_um:g} um ice, self-absorption at 15 deg exit; {args.iterations} L-BFGS-B iterations, "
          f"{problem.evaluations} evaluations; noise {args.noise}, XRF {args.xrf_noise}, thickness smoothing {args.thickness_smoothing:g}")
    truth_t = sim.phantom.thickness_um
    print(f"thickness NRMSE  separate {nrmse(t0, truth_t, where):.4f}  joint {nrmse(t, truth_t, where):.4f}")
    for name, t_other in variants.items():
        print(f"thickness NRMSE  joint, {name}: {nrmse(t_other, truth_t, where):.4f}")
    for i, el in enumerate(sim.elements):
        truth = sim.phantom.composition_ug_cm2[i]
        sep = separate[el].values / sens[el]
        line = f"{el:>2} NRMSE        separate {nrmse(sep, truth, where):.4f}  joint {nrmse(c[i], truth, where):.4f}"
        if c_other is not None:
            line += f"  joint, XRF {other_xrf} {nrmse(c_other[i], truth, where):.4f}"
        mean = truth[where].mean()
        line += f"   mean bias separate {sep[where].mean() / mean - 1:+.3f}  joint {c[i][where].mean() / mean - 1:+.3f}"
        if c_other is not None:
            line += f"  joint, XRF {other_xrf} {c_other[i][where].mean() / mean - 1:+.3f}"
        print(line)
    print(f"FFT floor (fwd+inv, {m * k} frames {n}x{n}, {workers} threads): {floor * 1e3:.2f} ms")
    print(f"time per evaluation / floor: {evaluation / floor:.2f}")
    print(f"time per iteration / floor: {per_iteration * evaluation / floor:.2f} "
          f"({per_iteration:.2f} evaluations per iteration)")


if __name__ == "__main__":
    main()
