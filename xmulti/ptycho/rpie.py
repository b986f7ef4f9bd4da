"""rPIE / ePIE updates, sequential (batch of 1) or mini-batched.

Maiden & Rodenburg, Ultramicroscopy 109, 1256 (2009) (ePIE); Maiden, Johnson & Li, Optica 4,
736 (2017) (rPIE). For a batch of positions with exit-wave updates ``chi_j``::

    O += sum_j conj(P_j) chi_j / ((1 - alpha) sum_j |P_j|^2 + alpha max(sum_j |P_j|^2))
    P += sum_j conj(O_j) chi_j / ((1 - beta) sum_j |O_j|^2 + beta max(sum_j |O_j|^2))

With one position per batch this is the published sequential rPIE; ``alpha = beta = 1`` gives
the ePIE step normalisation. Object and probe are updated simultaneously from the same exit
waves.
"""

from __future__ import annotations

import numpy as np

from . import fused
from .batch import BatchWork
from .fft import FFT2, get_xp
from .state import EngineOptions, ReconState
from .updates import UpdateSums

__all__ = ["rpie_apply", "rpie_update"]


def rpie_apply(state: ReconState, sums: UpdateSums, opts: EngineOptions) -> None:
    """Apply the rPIE object (and probe, when ``sums`` has its sums) update of a batch (in place).

    ``sums`` is consumed.
    """
    if fused.usable(get_xp(state.obj)) and state.obj.dtype == np.complex64:
        # one pass over the batch's box (the array code below makes five)
        fused.divided_step(state.obj[sums.box], sums.num, sums.illum, 1 - opts.alpha, opts.alpha,
                           1e-12, opts.relax)
        if sums.pnum is not None:
            for k in range(len(state.probe)):
                fused.divided_step(state.probe[k], sums.pnum[k], sums.pden, 1 - opts.beta,
                                   opts.beta, 1e-12, opts.relax)
        return
    a = np.float32(opts.alpha)
    illum = sums.illum
    den = illum * (1 - a)
    den += a * illum.max() + np.float32(1e-12)
    den /= np.float32(opts.relax)
    num = sums.num
    num /= den
    state.obj[sums.box] += num
    if sums.pnum is not None:
        b = np.float32(opts.beta)
        pd = sums.pden * (1 - b)
        pd += b * sums.pden.max() + np.float32(1e-12)
        pd /= np.float32(opts.relax)
        pnum = sums.pnum
        pnum /= pd[None]
        state.probe += pnum


def rpie_update(
    state: ReconState, work: BatchWork, opts: EngineOptions, fft: FFT2, update_probe: bool
) -> None:
    """Apply the rPIE object (and probe) update of one batch to ``state`` (in place)."""
    sums = UpdateSums(work.corners, state.probe.shape, update_probe, fft.xp)
    sums.add(work, fft)
    rpie_apply(state, sums, opts)
