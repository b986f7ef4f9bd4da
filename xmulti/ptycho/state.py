"""Reconstruction state and options: small dataclasses, no globals.

The state holds everything an engine changes (object, probe, positions) for a *set* of positions
on an object *array*; a tile of a decomposed reconstruction is the same dataclass with a
sub-array of the object and its positions expressed in that sub-array's indices, so tiles can
run any engine and exchange probe/object every few epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ReconState", "EngineOptions"]


@dataclass
class ReconState:
    """What an engine refines.

    Attributes
    ----------
    obj : array (Hy, Hx) complex64
        Object transmission on its array (pixel (i, j) = object index (i, j)).
    probe : array (K, N, N) complex64
        Probe modes; pixel (N//2, N//2) is the beam centre.
    positions_px : ndarray (M, 2) float64
        Beam centres as fractional indices of ``obj`` (y, x); changed by position correction.
    errors : list of float
        Normalised amplitude error after each epoch (see :func:`xmulti.ptycho.fourier`).
    epoch : int
        Epochs done so far (position correction and probe update schedule on it).
    velocity : (array, array) or None
        Momentum of object and probe (engines with ``momentum > 0``).
    intensity_scale : ndarray (M,) float64 or None
        Incident intensity of each frame relative to the probe's (beam-flux fluctuations),
        mean 1 over the usable frames; refined with ``EngineOptions.intensity_correction``.
        None: all 1.
    probe_support : array (N, N) bool or None
        Where the probe's spectrum may be nonzero (unshifted FFT layout), e.g. the aperture
        seen in the mean diffraction pattern; applied after each epoch. None: no constraint.
    """

    obj: Any
    probe: Any
    positions_px: np.ndarray
    errors: list[float] = field(default_factory=list)
    epoch: int = 0
    velocity: tuple[Any, Any] | None = None
    probe_support: Any = None
    intensity_scale: np.ndarray | None = None

    def copy(self) -> ReconState:
        """A deep copy (arrays copied)."""
        return ReconState(
            self.obj.copy(), self.probe.copy(), self.positions_px.copy(), list(self.errors),
            self.epoch, probe_support=self.probe_support,
            intensity_scale=None if self.intensity_scale is None else self.intensity_scale.copy(),
        )  # momentum is not carried over: a copy starts afresh


@dataclass
class EngineOptions:
    """Options of the engines (defaults tuned on simulated 64x64-frame problems).

    Attributes
    ----------
    batch_size : int or None
        Positions updated together; 1 gives the classic sequential ePIE/rPIE. None: the
        engine's default, 32 for rPIE/ePIE, all positions for LSQ-ML (an exact gradient step per
        epoch, which converges to the maximum-likelihood solution instead of fluctuating around
        it).
    chunk_bytes : float
        LSQ-ML works through a batch in chunks of positions whose complex64 exit waves take
        at most this many bytes (memory bounded by the chunk, not the scan). 2 MB keeps a
        chunk's working arrays in the CPU caches: on the reference problem an epoch took
        0.8-0.9x the FFT floor with 1-2 MB chunks against 1.2x with 16 MB (integral positions),
        and 1.6x against 6.5x with subpixel positions.
    alpha : float
        rPIE object regularisation (Maiden, Johnson & Li, Optica 4, 736 (2017)); ``alpha=1``
        with ``beta=1`` is ePIE-like (step normalised by the maximum illumination).
    beta : float
        rPIE probe regularisation.
    noise : {"poisson", "gaussian"} or None
        Likelihood of the exit-wave update (Odstrcil et al., Opt. Express 26, 3108 (2018)).
        None: Poisson for LSQ-ML (the Gaussian amplitude model is biased at low counts and
        lost 4-5 % of the phase contrast of weak objects, see :mod:`xmulti.ptycho.fourier`),
        Gaussian for rPIE/ePIE (their fixed step suits the amplitude projection; with the
        Poisson update they converged about 2x slower).
    relax : float
        Fraction of the computed step applied (LSQ-ML's relaxation; < 1 averages the noise of
        successive mini-batches).
    momentum : float
        Epoch-level momentum on object and probe (as in mPIE, Maiden, Johnson & Li, Optica 4,
        736 (2017)): after each epoch the accumulated change times ``momentum`` is added again;
        0 disables it. It speeds up the slow, low-spatial-frequency convergence (the overlap
        constraint pins low frequencies only weakly). None: 0.9 for LSQ-ML (0.8 left the cells
        of a weak phase object 5-10 % too shallow after 100 epochs), 0 for rPIE/ePIE.
    reg_object, reg_probe : float
        LSQ-ML preconditioner regularisation, a fraction of the maximum illumination.
    probe_update_start : int
        First epoch (0-based) at which the probe is refined.
    update_probe : bool
        False keeps the probe fixed (e.g. a known probe).
    position_correction : bool
        Refine positions (after ``position_start`` epochs).
    position_batch_size : int
        Batch size of the epochs with position correction (small batches let the object follow
        the moving positions; larger ones were seen to stall at about 1.3 px RMS).
    position_start : int
    position_step : float
        Fraction of the least-squares shift applied each time.
    max_shift_px : float
        Largest position change per update, pixels.
    position_reg : float
        Regularisation of the position shifts, a fraction of the typical gradient strength
        (keeps windows over featureless regions in place).
    position_iterations : int
        Gauss-Newton steps per position update, re-linearised at the moved window against the
        current object (see :func:`xmulti.ptycho.positions.refine_shifts`; 1 = one step).
    position_step_px : float
        Largest move of a window per Gauss-Newton step, pixels.
    position_search_every : int
        Every this many epochs of position correction, windows that fit much worse than the
        others try a grid of integral offsets (:func:`xmulti.ptycho.positions.search_shifts`);
        0 disables it.
    position_search_radius_px : int
        Half width of that grid, pixels (offsets in steps of half of it).
    intensity_correction : bool
        Fit the incident intensity of every frame (beam-flux fluctuations; Odstrcil et al.
        2018, Sec. 2.7), from epoch ``intensity_start``.
    intensity_start : int
    orthogonalize_every : int
        Orthogonalise probe modes every this many epochs (mixed states only).
    seed : int
        Seed of the random batch order.
    """

    batch_size: int | None = None
    alpha: float = 0.1
    beta: float = 1.0
    noise: str | None = None
    reg_object: float = 0.02
    reg_probe: float = 0.02
    relax: float = 1.0
    momentum: float | None = None
    chunk_bytes: float = 2e6
    position_batch_size: int = 8
    probe_update_start: int = 2
    update_probe: bool = True
    position_correction: bool = False
    position_start: int = 10
    position_step: float = 0.5
    max_shift_px: float = 0.5
    position_reg: float = 0.1
    position_iterations: int = 1
    position_step_px: float = 1.0
    position_search_every: int = 20
    position_search_radius_px: int = 4
    intensity_correction: bool = True
    intensity_start: int = 1
    orthogonalize_every: int = 1
    seed: int = 0
