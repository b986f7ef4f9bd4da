"""Pixel-level deconvolution of XRF maps with the probe footprint (pure numpy kernels).

- :func:`richardson_lucy`: Richardson-Lucy / MLEM with the probe intensity and the actual
  positions (Richardson, JOSA 62, 55 (1972); Lucy, AJ 79, 745 (1974); Shepp & Vardi, IEEE TMI
  1, 113 (1982)), stopped by the discrepancy principle;
- :func:`guided_solve`: Poisson likelihood, non-negativity and a quadratic *directional*
  smoothness guided by the phase, ``R(c) = 1/2 sum |grad c|^2 - gamma (xi . grad c)^2``
  (:func:`xmulti.joint.guide.phase_guide`): ``c`` is smooth where the phase is, and free to
  change across phase edges. Minimised by L-BFGS-B with bounds (Byrd, Lu, Nocedal & Zhu, SIAM J.
  Sci. Comput. 16, 1190 (1995)); the weight of ``R`` is chosen by a discrepancy principle
  corrected for the effective degrees of freedom: the Poisson deviance of the fit equals its
  expected value ``P - dof(w)`` (``P`` measurements, ``dof`` the trace of the fit's influence
  matrix, estimated by one randomised re-solve, Girard, Numer. Math. 56, 1 (1989)).

Threads: L-BFGS-B does its vector algebra through BLAS; on a loaded machine a multi-threaded
BLAS makes each step ~10x slower than one thread, so the solves run under a one-thread limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from .footprint_op import FootprintOperator, poisson_deviance
from .guide import Guide, phase_guide, regulariser

__all__ = ["SolveResult", "richardson_lucy", "guided_solve", "one_blas_thread"]


@dataclass
class SolveResult:
    """A solution on the object grid and how it was reached."""

    c: np.ndarray
    iterations: int
    objective: float
    deviance: float
    weight: float
    method: str
    dof: float = 0.0


def richardson_lucy(op: FootprintOperator, b, c0=None, max_iter: int = 500, discrepancy: bool = True) -> SolveResult:
    """Richardson-Lucy / MLEM: ``c <- c / (A^T 1) * A^T (b / A c)``.

    Stopped at the first iteration whose Poisson deviance is at most the number of
    measurements (discrepancy principle) when ``discrepancy``, else after ``max_iter``.

    Parameters
    ----------
    op : FootprintOperator
    b : ndarray (P,)
        Counts (non-negative).
    c0 : ndarray (ny, nx), optional
        Positive start (default: uniform at the mean of ``b``).
    """
    b = np.clip(np.asarray(b, dtype=float), 0.0, None)
    sens = op.adjoint(np.ones_like(b))
    seen = sens > 1e-9 * sens.max()
    c = np.full(op.shape, max(b.mean(), 1e-12)) if c0 is None else np.clip(np.asarray(c0, float), 1e-12, None)
    tiny = 1e-12 * max(b.mean(), 1e-30)
    it = 0
    m = op.forward(c) + tiny
    dev = poisson_deviance(b, m)
    while it < max_iter and not (discrepancy and dev <= b.size):
        c = np.where(seen, c * op.adjoint(b / m) / np.where(seen, sens, 1.0), c)
        m = op.forward(c) + tiny
        dev = poisson_deviance(b, m)
        it += 1
    return SolveResult(c, it, float(np.sum(m - b * np.log(m))), dev, 0.0, "richardson_lucy")


def one_blas_thread():
    """A context limiting BLAS to one thread when threadpoolctl is installed (else a no-op).

    L-BFGS-B's vector algebra on a few thousand unknowns gains nothing from BLAS threads and
    loses ~10x to their contention on a busy machine (measured: 18 ms vs 2 ms per step).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _lbfgsb(op, b, c0, weight, guide, gamma, max_iter, tiny):
    with one_blas_thread():
        return _lbfgsb_run(op, b, c0, weight, guide, gamma, max_iter, tiny)


def _lbfgsb_run(op, b, c0, weight, guide, gamma, max_iter, tiny):
    from scipy.optimize import Bounds, minimize

    shape = op.shape

    def fun(v):
        c = v.reshape(shape)
        m = op.forward(c) + tiny
        r_val, r_grad = regulariser(c, guide, gamma)
        # half the Poisson deviance: the likelihood up to a constant, near P/2 at the solution,
        # so L-BFGS-B's relative tolerance means the same at any count level
        value = 0.5 * poisson_deviance(b, m) + weight * r_val
        grad = op.adjoint(1.0 - b / m) + weight * r_grad
        return value, grad.ravel()

    res = minimize(fun, c0.ravel(), jac=True, method="L-BFGS-B", bounds=Bounds(0.0, np.inf),
                   options={"maxiter": max_iter, "ftol": 1e-7, "gtol": 1e-6})
    return res.x.reshape(shape), int(res.nit), float(res.fun)


def guided_solve(
    op: FootprintOperator,
    b,
    phase=None,
    *,
    c0=None,
    gamma: float = 0.95,
    weight: float | None = None,
    max_iter: int = 500,
    max_weights: int = 14,
    guide: Guide | None = None,
    rule: str = "edf",
) -> SolveResult:
    """Poisson maximum a posteriori estimate with non-negativity and phase-guided smoothness.

    Minimises ``sum_j [(A c)_j - b_j log (A c)_j] + w R(c)`` over ``c >= 0`` (L-BFGS-B),
    ``R`` the directional quadratic smoothness of the module doc.

    Parameters
    ----------
    op : FootprintOperator
    b : ndarray (P,)
        Counts (non-negative).
    phase : ndarray (ny, nx), optional
        Phase (rad) on the object grid: the guide. Without it ``R`` is plain smoothness.
    c0 : ndarray (ny, nx), optional
        Start (default: uniform at the mean of ``b``).
    gamma : float
        How much of the gradient along the phase edges is exempt from smoothing (0..1).
    weight : float, optional
        Weight ``w`` of ``R``. Default: chosen by ``rule`` on the ladder ``4^-k / mean(b)``
        (each solve warm-starts the next), refined by interpolating the gap in ``log w``.
    rule : {"edf", "morozov"}
        ``"edf"``: the Poisson deviance equals its expected value ``P - dof(w)``, with
        ``dof`` the effective degrees of freedom of the fit (trace of the influence matrix,
        estimated by one warm re-solve with Rademacher-perturbed data; Girard, Numer. Math.
        56, 1 (1989)); ``"morozov"``: the deviance equals ``P`` (Morozov's discrepancy
        principle; over-smooths when the unknowns outnumber the data, as here).
    max_iter : int
        L-BFGS-B iterations per weight.
    max_weights : int
        Longest ladder of weights tried.
    guide : Guide, optional
        Precomputed :func:`phase_guide` (overrides ``phase``).
    """
    b = np.clip(np.asarray(b, dtype=float), 0.0, None)
    if not 0.0 <= gamma < 1.0:
        raise InvalidInputError(f"gamma must be in [0, 1), got {gamma}")
    if guide is None and phase is not None:
        guide = phase_guide(phase)
    tiny = 1e-9 * max(b.mean(), 1e-30)
    c = np.full(op.shape, max(b.mean(), 1e-12)) if c0 is None else np.clip(np.asarray(c0, float), 0.0, None)
    if weight is not None:
        c, it, fval = _lbfgsb(op, b, c, float(weight), guide, gamma, max_iter, tiny)
        return SolveResult(c, it, fval, poisson_deviance(b, op.forward(c) + tiny), float(weight), "guided")
    if rule not in ("edf", "morozov"):
        raise InvalidInputError(f"rule must be 'edf' or 'morozov', not {rule!r}")
    size = float(b.size)
    z = np.random.default_rng(0).choice([-1.0, 1.0], b.size)  # fixed probe: reproducible weights
    total_it = 0

    def evaluate(w: float, start):
        """Solve at weight w; the gap ``deviance - (P - dof)`` (dof = 0 for Morozov's rule)."""
        nonlocal total_it
        c, it, fval = _lbfgsb(op, b, start, w, guide, gamma, max_iter, tiny)
        total_it += it
        m = op.forward(c) + tiny
        dev = poisson_deviance(b, m)
        dof = 0.0
        if rule == "edf":
            # Monte-Carlo trace of the influence of the data on the fit (Girard 1989,
            # Hutchinson 1989): perturb by half a Poisson sigma, re-solve warm, project
            sd = np.sqrt(np.maximum(m, 1.0))
            step = np.where(b >= 0.5 * sd, 0.5 * z * sd, 0.0)
            c2, it2, _ = _lbfgsb(op, b + step, c, w, guide, gamma, max_iter, tiny)
            total_it += it2
            moved = step != 0
            response = (op.forward(c2) + tiny - m)[moved] / step[moved]
            dof = float(np.clip(np.sum(response), 0.0, size - 1))
        return c, fval, dev, dof, dev - (size - dof)

    # weights from heavy smoothing down by factors of 4 (warm starts) until the deviance
    # reaches its expected value, then one log-linear interpolation of the gap
    w = float(1.0 / max(b.mean(), 1e-12))  # both terms in counts: R ~ counts^2, so w ~ 1/counts
    c, fval, dev, dof, gap = evaluate(w, c)
    for _ in range(4):  # a start that already meets the target is too light: go up
        if gap > 0:
            break
        w *= 4.0
        c, fval, dev, dof, gap = evaluate(w, c)
    previous = None
    for _ in range(max_weights):
        if gap <= 0:
            break
        previous = (c, w, gap)
        w *= 0.25
        c, fval, dev, dof, gap = evaluate(w, c)
    result = SolveResult(c, 0, fval, dev, w, "guided", dof)
    if previous is not None and gap <= 0:
        c_prev, w_prev, gap_prev = previous
        # root of the gap, linear in log(weight) between the last two weights
        w_star = float(np.exp(np.log(w) + (np.log(w_prev) - np.log(w)) * (-gap) / (gap_prev - gap)))
        c_star, it, f_star = _lbfgsb(op, b, c_prev, w_star, guide, gamma, max_iter, tiny)
        total_it += it
        # dof reported is that of the bracketing lighter weight (not re-estimated at w_star)
        result = SolveResult(c_star, 0, f_star, poisson_deviance(b, op.forward(c_star) + tiny), w_star, "guided", dof)
    result.iterations = total_it
    return result
