"""Position correction: least-squares shifts from the detector amplitudes or the exit-wave updates.

Moving a window by ``d`` (pixels) changes its exit wave by about ``P (d_y dO/dy + d_x dO/dx)``.
The engines (:func:`xmulti.ptycho.engine.run_engine`) take the Gauss-Newton step on the
detector amplitudes that this change implies (the translation gradient of Guizar-Sicairos &
Fienup, Opt. Express 16, 7264 (2008), solved per window as a 2x2 least-squares system); the
exit-wave form of Odstrcil, Menzel & Guizar-Sicairos, Opt. Express 26, 3108 (2018), Sec. 2.6,
``d = sum Re(conj(P dO/ds) chi) / sum |P dO/ds|^2``, is kept for callers without the measured
amplitudes. On the weak cell phantom the exit-wave form recovered only 10-25 % of a known
offset of the true object (the Fourier-modulus update keeps the model's phases, which carry
most of the shift), the detector form 90-98 % for offsets up to 1 px. A fraction of the shift,
limited to ``max_shift_px``, is applied each epoch. The normal equations are regularised by a
fraction of their typical (90th percentile) diagonal over the previous epoch, so windows over a
flat object (vacuum), which hold no position information, stay put instead of random-walking.
The mean correction over the well-determined positions is removed after each epoch (a global
shift of every position is a shift of the object, not an error). Removing the affine part of
the corrections as well was tried (with the exit-wave estimator) and did not help on the cell
phantom (0.96 against 1.00 px RMS on the small preset, worse on tiny, where the random errors
of few windows have a large affine projection), so it is not done.

Windows whose recorded position lies outside the basin of that step (the misfit of a window
over a smooth cell is flat beyond 2-3 px: errors of 4-6 px, the tail of 3 px RMS random errors,
never moved) are found by a grid search of integral offsets on the windows that fit much worse
than the others (:func:`search_shifts`, every ``position_search_every`` epochs). On the tiny
preset (3 px RMS errors, 100 LSQ-ML epochs, windows seeing cells) the result went from 1.07 /
0.44 px (two batch orders) to 0.35 / 0.42 px.

Known limit (small preset, 3 px RMS errors, 100 LSQ-ML epochs): 1.3 px RMS remain on the
windows that see cells. With the true object held fixed and four Gauss-Newton steps per epoch
the same windows reach a median of 0.3 px within 10 epochs, so the estimator is not the limit;
the coupling with the object being refined is. The remaining error is mostly a local
magnification of the positions about each cell (in one run: the mean y error of a row of
windows going from -0.6 px to +0.65 px across a cell region 80 px tall): over a smooth phase
dome a diffraction pattern mostly measures the phase gradient over its window (the beam
deflection), and spreading the positions about the dome while flattening it keeps those
gradients, so only the weaker curvature information resists it. The mode is nearly
unobservable: started from the true object and probe (all positions in one batch), the
positions first converged (median 0.38 px) and then drifted along it (median 0.59 px, RMS
0.9 px after 100 epochs) while the detector error stayed within 0.3 % of its value with the
true positions (3.439e-4 against 3.429e-4); the drift was smaller without the object momentum
(median 0.32 px) but the object then converges far more slowly from a flat start. Larger
position batches (all positions: 0.9-1.1 px), iterated Gauss-Newton steps against the object
being refined (1.5-2.0 px), the grid search (neutral), dark-field-only estimates (no
correction), removing the corrections' smooth part (0.87 px with all positions in one batch,
but 0.70-0.77 instead of 0.35-0.42 on tiny) and the affine part (the global affine part of the
remaining error is small, 0.4 px per 100 px) did not bring it to 0.5 px.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .batch import BatchWork
from .fft import FFT2, to_numpy
from .forward import extract_patches, window_corners
from .lsqml import real_dot
from .shift import is_integral, shifted_probes

__all__ = ["position_shifts", "refine_shifts", "search_shifts", "clip_positions"]


def _central_difference(patches: Any, axis: int, xp: Any) -> Any:
    g = xp.zeros_like(patches)
    lo = [slice(None)] * patches.ndim
    hi = [slice(None)] * patches.ndim
    mid = [slice(None)] * patches.ndim
    lo[axis], hi[axis], mid[axis] = slice(None, -2), slice(2, None), slice(1, -1)
    g[tuple(mid)] = (patches[tuple(hi)] - patches[tuple(lo)]) * np.float32(0.5)
    return g


def position_shifts(
    work: BatchWork,
    xp: Any = np,
    floor: float = 0.0,
    amplitude: Any = None,
    fft: Any = None,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares position change (B, 2) (y, x pixels) of each window of the batch.

    Must be called before ``work.chi`` is consumed by an update.

    Two estimators. Given the measured ``amplitude`` and ``fft``: Gauss-Newton on the detector
    amplitudes (the translation gradient of Guizar-Sicairos & Fienup, Opt. Express 16, 7264
    (2008), as a least-squares step): with ``Psi_k = F(P_k O)`` and ``G_ak = F(P_k dO/da)``,
    the model amplitude moves by ``J_a = sum_k Re(conj(Psi_k) G_ak) / |Psi|`` per pixel of
    shift along ``a``, and the shift solves the 2x2 system ``(J^T J + floor) d = J^T (A - |Psi|)``
    over the valid pixels. Otherwise from the exit-wave update ``chi`` (Odstrcil et al. 2018):
    that estimate was seen to recover only 10-25 % of a known offset of the true object on
    weak phase objects (the Fourier-modulus update keeps the model's phases), against which
    the detector estimate is unbiased to first order; it costs three FFTs per window.

    Parameters
    ----------
    work : BatchWork
    floor : float
        Added to the diagonal of the normal equations: windows over a flat object (vacuum)
        carry no position information, and without it their noise-driven shifts random-walk.
    amplitude : array (B, N, N), optional
        Measured amplitudes of the batch (unshifted FFT layout, ``-1`` = invalid pixel).
    fft : FFT2, optional
    scale : ndarray (B,), optional
        Per-frame amplitude factors of the model (the square root of the intensity factors).

    Returns
    -------
    shifts : ndarray (B, 2)
    strength : ndarray (B, 2)
        The diagonal of the normal equations (how well each shift is determined).
    """
    bsz = len(work.index)
    out = np.zeros((bsz, 2))
    strength = np.zeros((bsz, 2))
    probes = work.probes[None] if work.shared_probe else work.probes
    grads = [_central_difference(work.patches, axis, xp) for axis in (1, 2)]
    if amplitude is not None and fft is not None:
        psi = fft.forward(probes * work.patches[:, None])
        jac = [fft.forward(probes * g[:, None]) for g in grads]
        mod = xp.sqrt((xp.abs(psi) ** 2).sum(axis=1)) + np.float32(1e-6)
        j = [(psi.real * gk.real + psi.imag * gk.imag).sum(axis=1) / mod for gk in jac]
        if scale is not None:
            c = xp.asarray(np.asarray(scale, np.float32))[:, None, None]
            mod = mod * c
            j = [jk * c for jk in j]
        valid = amplitude >= 0
        res = xp.where(valid, amplitude - mod, 0).astype(np.float32)
        j = [xp.where(valid, jk, 0).astype(np.float32) for jk in j]
        jj = np.array([[to_numpy(_dot(j[a], j[b], xp)) for b in (0, 1)] for a in (0, 1)])  # (2, 2, B)
        jr = np.array([to_numpy(_dot(j[a], res, xp)) for a in (0, 1)])  # (2, B)
        strength[:] = np.stack([jj[0, 0], jj[1, 1]], axis=1)
        reg = floor + 1e-12 * (float(strength.max()) + 1e-30)
        mat = np.moveaxis(jj, 2, 0) + reg * np.eye(2)[None]
        out[:] = np.linalg.solve(mat, jr.T[:, :, None])[:, :, 0]
        return out, strength
    for axis in (0, 1):
        pg = probes * grads[axis][:, None]
        num = to_numpy(real_dot(pg, work.chi, xp))
        den = to_numpy(real_dot(pg, pg, xp))
        strength[:, axis] = den
        out[:, axis] = num / (den + floor + 1e-12 * (float(den.max()) + 1e-30))
    return out, strength


def _dot(a: Any, b: Any, xp: Any) -> Any:
    """``sum a b`` over all axes but the first, for real float32 arrays: (B,) float64."""
    bsz = a.shape[0]
    return xp.matmul(a.reshape(bsz, 1, -1), b.reshape(bsz, -1, 1))[:, 0, 0].astype(np.float64)


def clip_positions(positions_px: np.ndarray, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Positions limited so that every window stays inside the object array."""
    lo = n // 2
    hi = np.array(shape, dtype=np.float64) - (n - n // 2) - 1e-6
    return np.clip(positions_px, lo, hi)


def refine_shifts(
    work: BatchWork,
    obj: Any,
    probe: Any,
    positions_px: np.ndarray,
    amplitude: Any,
    fft: FFT2,
    floor: float = 0.0,
    scale: np.ndarray | None = None,
    iterations: int = 1,
    max_step_px: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton iterations of the window positions against a fixed object and probe.

    One Gauss-Newton step on the detector amplitudes (:func:`position_shifts`) recovers a
    shift well only while it is small against the object's features: on the cell phantom of
    the ``small`` preset, with the true object and probe, a first step recovered 100 % of a
    0.5 px offset, 86 % of 1 px, 52 % of 2 px and 31 % of 3 px. Iterating (re-cutting the
    windows at the moved positions and re-linearising) converges where one step would take
    many epochs, during which the object adapts to the wrong positions and locks them in.

    Parameters
    ----------
    work : BatchWork
        The batch as cut at ``positions_px`` (its windows and probes are reused for the first
        step); ``work.chi`` is not used.
    obj : array (Hy, Hx) complex64
    probe : array (K, N, N) complex64
    positions_px : ndarray (B, 2)
        Current beam centres of the batch (fractional object indices).
    amplitude : array (B, N, N)
        Measured amplitudes (unshifted FFT layout, ``-1`` = invalid).
    fft : FFT2
    floor : float
        Regularisation of the normal equations (see :func:`position_shifts`).
    scale : ndarray (B,), optional
        Per-frame amplitude factors of the model.
    iterations : int
        Gauss-Newton steps (each costs four FFTs per window and probe mode with subpixel
        positions, three with integral ones).
    max_step_px : float
        Largest move of a window per step, pixels (a step from a poor linearisation can
        overshoot).

    Returns
    -------
    shifts : ndarray (B, 2)
        Total move of each window (y, x pixels).
    strength : ndarray (B, 2)
        Diagonal of the normal equations of the first step.
    """
    xp = fft.xp
    n = probe.shape[-1]
    lo = n // 2
    hi = np.array(obj.shape, dtype=np.float64) - (n - n // 2) - 1e-6
    total = np.zeros((len(positions_px), 2))
    strength = None
    spec = None
    for it in range(max(1, iterations)):
        if it > 0:
            trial = np.clip(positions_px + total, lo, hi)
            total = trial - positions_px
            corners, frac = window_corners(trial, n)
            patches = extract_patches(obj, corners, n, xp)
            if is_integral(frac):
                frac, probes = None, probe
            else:
                spec = fft.forward(probe.copy()) if spec is None else spec
                probes = shifted_probes(spec, frac, fft)
            work = BatchWork(work.index, corners, frac, patches, probes, None, 0.0, 0.0)
        step, st = position_shifts(work, xp, floor, amplitude, fft, scale)
        if strength is None:
            strength = st
        total += np.clip(step, -max_step_px, max_step_px)
    return total, strength


def search_shifts(
    obj: Any,
    probe: Any,
    positions_px: np.ndarray,
    amplitude: Any,
    fft: FFT2,
    scale: np.ndarray | None = None,
    radius_px: int = 4,
    step_px: int = 2,
    sigmas: float = 4.0,
    min_gain: float = 0.2,
    outlier_factor: float = 2.0,
) -> np.ndarray:
    """Integer moves (B, 2) of the windows found by trying a grid of offsets (global search).

    Gauss-Newton only reaches the minimum of the detector misfit from within its basin, which
    on the cell phantom of the ``small`` preset (true object and probe) was 2-3 px wide: windows
    whose recorded position was 4-6 px off sat on a plateau of the misfit and never moved. As in
    the annealing correction of Maiden, Humphry, Sarahan, Kraus & Rodenburg, Ultramicroscopy 120,
    64 (2012), trial positions are evaluated and the best kept, here on a grid of integer
    offsets (so every trial sees the same subpixel-shifted probe: one FFT per trial and window).
    A window moves only when its misfit ``sum (c|Psi| - A)^2`` drops by more than ``sigmas``
    standard deviations of that drop's photon noise, ``sqrt(sum (m_t - m_0)^2)`` for model
    amplitudes ``m_t`` (trial) and ``m_0`` (current) with amplitude noise of variance 1/4
    (Poisson counts): over featureless regions nothing moves.

    Parameters
    ----------
    obj : array (Hy, Hx) complex64
    probe : array (K, N, N) complex64
    positions_px : ndarray (B, 2)
        Current beam centres (fractional object indices).
    amplitude : array (B, N, N)
        Measured amplitudes (unshifted FFT layout, ``-1`` = invalid).
    fft : FFT2
    scale : ndarray (B,), optional
        Per-frame amplitude factors of the model.
    radius_px, step_px : int
        Offsets ``-radius..radius`` in steps of ``step_px`` along each axis (pixels).
    sigmas : float
        Significance of the improvement required to move.
    min_gain : float
        Smallest relative drop of the misfit that moves a window: the object being refined
        is not the truth, and its own errors (not photon noise) limit how well a small
        difference in misfit can be trusted.
    outlier_factor : float
        Only windows whose misfit exceeds this multiple of the median misfit of the call's
        windows are searched.

    Returns
    -------
    ndarray (B, 2) float64
        The chosen offset of each window (zeros where none is significantly better).
    """
    xp = fft.xp
    n = probe.shape[-1]
    corners, frac = window_corners(positions_px, n)
    if is_integral(frac):
        probes = probe[None]
    else:
        probes = shifted_probes(fft.forward(probe.copy()), frac, fft)
    valid = amplitude >= 0
    amp = xp.where(valid, amplitude, 0).astype(np.float32)
    c = None if scale is None else xp.asarray(np.asarray(scale, np.float32))[:, None, None]

    def model(sel: np.ndarray, offset: np.ndarray) -> Any:
        patches = extract_patches(obj, corners[sel] + offset, n, xp)
        p = probes if probes.shape[0] == 1 else probes[sel]
        spec = fft.forward(p * patches[:, None])
        mod = xp.sqrt((spec.real**2 + spec.imag**2).sum(axis=1))
        mod = mod if c is None else mod * c[sel]
        return xp.where(valid[sel], mod, 0)

    def misfit(sel: np.ndarray, mod: Any) -> np.ndarray:
        d = mod - amp[sel]
        return to_numpy(_dot(d, d, xp))

    out = np.zeros((len(corners), 2))
    every = np.arange(len(corners))
    f_all = misfit(every, model(every, np.zeros(2, np.int64)))
    # only windows that fit much worse than the others are searched: over featureless regions
    # the misfit is at the noise level whatever the offset, and a move there is a random walk
    sel = np.flatnonzero(f_all > outlier_factor * np.median(f_all))
    if len(sel) == 0:
        return out
    m0 = model(sel, np.zeros(2, np.int64))
    f0 = f_all[sel]
    best = f0.copy()
    choice = np.zeros((len(sel), 2))
    hi = np.array(obj.shape) - n
    grid = range(-radius_px, radius_px + 1, step_px)
    for dy in grid:
        for dx in grid:
            if dy == 0 and dx == 0:
                continue
            offset = np.array([dy, dx], np.int64)
            inside = np.all((corners[sel] + offset >= 0) & (corners[sel] + offset <= hi), axis=1)
            # windows at the edge of the object array only try the offsets that keep them in it
            m = model(sel, np.where(inside[:, None], offset[None], 0))
            f = misfit(sel, m)
            diff = m - m0
            noise = np.sqrt(to_numpy(_dot(diff, diff, xp)))
            better = inside & (f < best) & (f < f0 - sigmas * noise) & (f < (1 - min_gain) * f0)
            best = np.where(better, f, best)
            choice[better] = [dy, dx]
    out[sel] = choice
    return out
