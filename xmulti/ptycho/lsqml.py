"""LSQ-ML updates: least-squares maximum-likelihood with optimal steps per update direction.

Odstrcil, Menzel & Guizar-Sicairos, "Iterative least-squares solver for generalized
maximum-likelihood ptychography", Opt. Express 26, 3108 (2018). Per mini-batch:

1. exit-wave updates ``chi_j`` from the Gaussian or Poisson likelihood (see
   :mod:`xmulti.ptycho.fourier`);
2. preconditioned update directions (their Eqs. 24-25, with regularisation ``delta``)::

       dO = sum_j conj(P_j) chi_j / (sum_j |P_j|^2 + delta_O)
       dP = sum_j conj(O_j) chi_j / (sum_j |O_j|^2 + delta_P)

3. on up to 64 positions spread over the batch, the step lengths ``(a_O, a_P)`` minimising
   ``|| chi_j - a_O dO_j P_j - a_P O_j dP ||^2`` (a 2x2 least-squares system, their Eq. 22);
4. object and probe move along their directions by the steps that minimise that sum over the
   sampled positions (one pooled 2x2 system).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import fused
from .batch import BatchWork
from .fft import FFT2
from .forward import extract_patches
from .shift import shifted_probes
from .state import EngineOptions, ReconState
from .updates import UpdateSums

__all__ = ["lsqml_update", "real_dot"]

# positions per batch on which the step lengths are estimated (their mean is what is applied)
_STEP_SAMPLE = 64


def real_dot(a: Any, b: Any, xp: Any = np) -> Any:
    """``sum Re(conj(a) b)`` over all axes but the first: (B,) float64.

    Computed as batched real dot products of the float32 views (BLAS, blocked summation),
    several times faster than an einsum accumulating in float64.
    """
    bsz = a.shape[0]
    av = xp.ascontiguousarray(a).view(np.float32).reshape(bsz, 1, -1)
    bv = xp.ascontiguousarray(b).view(np.float32).reshape(bsz, -1, 1)
    return xp.matmul(av, bv)[:, 0, 0].astype(np.float64)


def optimal_steps(
    chi: Any, d_obj: Any, d_probe: Any | None, xp: Any = np, pooled: bool = False
) -> tuple[Any, Any | None]:
    """Per-position least-squares steps for the object (and probe) directions.

    Parameters
    ----------
    chi : array (B, K, N, N)
        Exit-wave updates.
    d_obj : array (B, K, N, N)
        ``dO_j P_j``, the exit-wave change per unit object step.
    d_probe : array (B, K, N, N) or None
        ``O_j dP``, the exit-wave change per unit probe step (None: object only).

    pooled : bool
        One pair of steps for all the positions: the sums of their normal equations (what a
        step shared by every position should minimise).

    Returns
    -------
    a_obj, a_probe : arrays (B,) float64, (1,) when pooled (``a_probe`` None when
        ``d_probe`` is None)
    """
    a11 = real_dot(d_obj, d_obj, xp)
    b1 = real_dot(d_obj, chi, xp)
    if pooled:
        a11, b1 = a11.sum(keepdims=True), b1.sum(keepdims=True)
    if d_probe is None:
        return solve_steps(a11, None, None, b1, None)
    a22 = real_dot(d_probe, d_probe, xp)
    a12 = real_dot(d_obj, d_probe, xp)
    b2 = real_dot(d_probe, chi, xp)
    if pooled:
        a22, a12, b2 = (v.sum(keepdims=True) for v in (a22, a12, b2))
    return solve_steps(a11, a12, a22, b1, b2)


def solve_steps(a11: Any, a12: Any, a22: Any, b1: Any, b2: Any) -> tuple[Any, Any | None]:
    """Steps from the 2x2 normal equations ``[[a11, a12], [a12, a22]] (a_O, a_P) = (b1, b2)``
    (``a12``, ``a22``, ``b2`` None: object only, ``a_O = b1 / a11``)."""
    tiny = 1e-12 * (float(np.max(a11)) + 1e-30)
    if a22 is None:
        return b1 / (a11 + tiny), None
    # small Tikhonov term keeps the 2x2 solve stable when the directions are nearly parallel
    a11 = a11 + tiny + 1e-3 * a11
    a22 = a22 + tiny + 1e-3 * a22
    det = a11 * a22 - a12 * a12
    return (a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det


class LsqmlAccumulator:
    """Sums of one LSQ-ML batch, accumulated part by part (memory bounded by the part).

    ``add`` takes the exit-wave updates of a part of the batch's positions (all computed with
    the same object and probe); parts may be accumulated in separate accumulators (threads) and
    combined with ``merge``. ``apply`` forms the directions, estimates the steps on a sample of
    the positions and updates the state.

    Parameters
    ----------
    state : ReconState
    n_positions : int
        Positions of the whole batch.
    update_probe : bool
    xp : module
    corners : ndarray (n_positions, 2), optional
        Window corners of the whole batch: the sums live on their bounding box (default: the
        whole object array).
    """

    def __init__(self, state: ReconState, n_positions: int, update_probe: bool, xp: Any = np,
                 corners: np.ndarray | None = None):
        self.xp = xp
        self.update_probe = update_probe
        n = state.probe.shape[-1]
        if corners is None:
            corners = np.array([[0, 0], [state.obj.shape[0] - n, state.obj.shape[1] - n]])
        self.sums = UpdateSums(corners, state.probe.shape, update_probe, xp)
        self.stride = max(1, n_positions // _STEP_SAMPLE)
        self.seen = 0
        self.samples: list[tuple] = []

    def add(self, work: BatchWork, fft: FFT2, offset: int | None = None) -> None:
        """Accumulate one part (``work.chi`` is consumed).

        ``offset`` is the index of the part's first position in the batch (default: right after
        the parts added so far); it decides which positions are sampled for the step estimate.
        """
        offset = self.seen if offset is None else offset
        # positions kept for the step estimate: every stride-th of the whole batch
        first = (-offset) % self.stride
        pick = np.arange(first, len(work.index), self.stride)
        self.seen = offset + len(work.index)
        if len(pick):
            probes = None if work.shared_probe else work.probes[pick]
            frac = None if work.frac is None else work.frac[pick]
            self.samples.append(
                (offset, work.chi[pick], work.patches[pick], probes, work.corners[pick], frac)
            )
        self.sums.add(work, fft)

    def merge(self, other: LsqmlAccumulator) -> None:
        """Add the sums and samples of another part of the same batch."""
        self.sums.merge(other.sums)
        self.samples += other.samples

    def apply(self, state: ReconState, opts: EngineOptions, fft: FFT2) -> None:
        """Directions, optimal steps, and the update of ``state`` (in place)."""
        xp = self.xp
        sums = self.sums
        # samples in batch order: the pooled sums then do not depend on how the batch was split
        samples = sorted(self.samples, key=lambda s: s[0])
        illum = sums.illum
        floor = np.float32(opts.reg_object) * illum.max() + np.float32(1e-12)
        d_obj = sums.num  # on the batch's box; zero outside it
        fast = fused.usable(xp) and d_obj.dtype == np.complex64 and state.obj.dtype == np.complex64
        if fast:
            fused.divide(d_obj, illum, floor)
        else:
            illum += floor
            d_obj /= illum
        d_probe = None
        if self.update_probe:
            pden = sums.pden + np.float32(opts.reg_probe) * sums.pden.max() + np.float32(1e-12)
            d_probe = sums.pnum / pden[None]
        steps = self._fused_steps if fast else self._array_steps
        a_obj, a_probe = steps(samples, state, d_obj, d_probe, fft)
        # one step per direction, least squares over the sampled positions (the mean of
        # per-position steps, ratios of small noisy numbers near convergence, went negative
        # and stalled the object at 1.3x the noise floor), kept in a sane range: the directions
        # are normalised so that a step of 1 is a full projection where illumination is strong
        step_o = np.float32(opts.relax * np.clip(float(a_obj.mean()), 0.0, 2.0))
        if fast:
            fused.add_scaled(state.obj[sums.box], d_obj, step_o)
        else:
            d_obj *= step_o
            state.obj[sums.box] += d_obj
        if d_probe is not None:
            step_p = np.float32(opts.relax * np.clip(float(a_probe.mean()), 0.0, 2.0))
            d_probe *= step_p
            state.probe += d_probe

    def _fused_steps(self, samples: list, state: ReconState, d_obj: Any, d_probe: Any | None,
                     fft: FFT2) -> tuple[Any, Any | None]:
        """Pooled steps from the sampled windows in one pass per part (no temporaries)."""
        out = np.zeros(5)
        shifted = None
        if d_probe is not None and samples[0][5] is not None:
            # the probe direction as each sampled window sees it: one batch of shifts for all
            fracs = np.concatenate([s[5] for s in samples])
            shifted = shifted_probes(fft.forward(d_probe.copy()), fracs, fft)
        first = 0
        for _, chi, patches, probes, corners, _ in samples:
            probes = state.probe if probes is None else probes
            dp = d_probe if shifted is None else shifted[first : first + len(chi)]
            first += len(chi)
            fused.step_sums(chi, patches, probes, d_obj, corners - self.sums.lo, dp, out)
        a11, a12, a22, b1, b2 = (out[i : i + 1] for i in range(5))
        if d_probe is None:
            return solve_steps(a11, None, None, b1, None)
        return solve_steps(a11, a12, a22, b1, b2)

    def _array_steps(self, samples: list, state: ReconState, d_obj: Any, d_probe: Any | None,
                     fft: FFT2) -> tuple[Any, Any | None]:
        """Pooled steps from the sampled windows with array operations (any ``xp``)."""
        xp = self.xp
        n = state.probe.shape[-1]
        chi = xp.concatenate([s[1] for s in samples])
        patches = xp.concatenate([s[2] for s in samples])
        corners = np.concatenate([s[4] for s in samples]) - self.sums.lo
        shared = samples[0][3] is None
        probes = state.probe[None] if shared else xp.concatenate([s[3] for s in samples])
        dop = extract_patches(d_obj, corners, n, xp)[:, None] * probes
        if d_probe is not None:
            if shared:
                odp = patches[:, None] * d_probe[None]
            else:
                frac = np.concatenate([s[5] for s in samples])
                odp = patches[:, None] * shifted_probes(fft.forward(d_probe.copy()), frac, fft)
            return optimal_steps(chi, dop, odp, xp, pooled=True)
        return optimal_steps(chi, dop, None, xp, pooled=True)


def lsqml_update(
    state: ReconState, work: BatchWork, opts: EngineOptions, fft: FFT2, update_probe: bool
) -> None:
    """Apply the LSQ-ML object (and probe) update of one batch to ``state`` (in place)."""
    acc = LsqmlAccumulator(state, len(work.index), update_probe, fft.xp, work.corners)
    acc.add(work, fft)
    acc.apply(state, opts, fft)
