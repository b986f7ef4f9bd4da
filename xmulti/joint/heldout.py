"""Held-out prediction of the structure model, and its mix with Richardson-Lucy (resolution bridging).

Structure the phase does not show (granules far below the footprint) is better served by
Richardson-Lucy's positivity. :func:`blend_with_richardson_lucy` predicts held-out positions
(four interleaved folds, :func:`heldout_prediction`) with both estimates and mixes them with the
weight that predicts best (stacking: Wolpert, Neural Networks 5, 241 (1992); Breiman, Machine
Learning 24, 49 (1996)); the structure model is kept alone unless the mix is better by more than
one standard error.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from .deconvolve import one_blas_thread, richardson_lucy
from .footprint_op import footprint_rows, forward_operator, poisson_deviance
from .structure import StructureBasis, StructureFit, _reml

__all__ = ["unit_deviance", "heldout_prediction", "blend_with_richardson_lucy", "fold_of", "rl_heldout_prediction",
           "mix_with_richardson_lucy"]


def unit_deviance(b: np.ndarray, m: np.ndarray, floor: float) -> np.ndarray:
    """Per-position Poisson deviance ``2 [b log(b/m) - (b - m)]`` (``m`` floored)."""
    m = np.maximum(m, floor)
    return 2.0 * (np.where(b > 0, b * np.log(np.where(b > 0, b, 1.0) / m), 0.0) - (b - m))


def fold_of(positions_px: np.ndarray, spacing: float, n: int = 4) -> np.ndarray:
    """Fold of each position: parity of its row and column of the scan step (interleaved folds)."""
    cell = np.floor(np.asarray(positions_px) / spacing).astype(int)
    fold = 2 * (cell[:, 0] % 2) + cell[:, 1] % 2
    return fold % n


def blend_with_richardson_lucy(basis: StructureBasis, b: np.ndarray, fit: StructureFit, rl_c: np.ndarray,
                               max_rl_iter: int = 500) -> tuple[np.ndarray, float, dict]:
    """Mix the structure estimate with Richardson-Lucy by how well each predicts held-out positions.

    Four interleaved folds of positions: both estimators are refitted without a fold (the
    structure model at the full fit's weights and variances) and predict its counts; the mixing
    weight ``w`` minimises the held-out Poisson deviance of ``w s + (1 - w) r`` (the operator is
    linear, so the mix of the maps predicts the mix of the predictions). The structure estimate
    alone is kept unless the mix predicts better by more than one standard error (per-position
    deviance differences): the held-out counts see the footprint scale only.

    Returns
    -------
    c : ndarray
        ``w c_structure + (1 - w) c_RL``.
    w : float
        Weight of the structure estimate (1: the element follows the structure).
    info : dict
        Held-out deviance per position of each estimator and of the mix.
    """
    with one_blas_thread():
        return _blend(basis, b, fit, rl_c, max_rl_iter)


def heldout_prediction(basis: StructureBasis, b: np.ndarray, log_weights: np.ndarray,
                       variance: np.ndarray, folds: np.ndarray | None = None) -> np.ndarray:
    """Counts of each position predicted by the structure model fitted without its fold.

    Four interleaved folds of positions (:func:`fold_of`); the model keeps the given weights and
    variances (those of the full fit): the held-out error of the model as chosen (refitting the
    weights on three quarters of the data adds noise).

    Parameters
    ----------
    basis : StructureBasis
    b : ndarray (P,)
        Counts (equivalent counts) at the basis' positions.
    log_weights : ndarray (K,)
        Log smoothness weights of the fields (:attr:`StructureFit.log_weights`).
    variance : ndarray (P,)
        Variance of each count (the full fit's fitted counts, floored at 1).
    folds : ndarray (P,) int, optional
        Fold of each position (default :func:`fold_of` of the basis' positions; a tile passes
        those of the whole scan).

    Returns
    -------
    ndarray (P,)
        Predicted counts (positions of folds with too few training positions: NaN).
    """
    with one_blas_thread():
        b = np.clip(np.asarray(b, dtype=float), 0.0, None)
        if folds is None:
            folds = fold_of(basis.positions_px, basis.spacing_px)
        pred = np.full_like(b, np.nan)
        for k in np.unique(folds):
            test = folds == k
            rows = np.flatnonzero(~test)
            if rows.size < 8:
                continue
            gram = [g[np.ix_(rows, rows)] for g in basis.gram]
            _, (beta, kir) = _reml(log_weights, gram, basis.fixed[rows], b[rows], variance[rows])
            cross = [g[np.ix_(np.flatnonzero(test), rows)] for g in basis.gram]
            pred[test] = basis.fixed[test] @ beta + sum(g @ kir * np.exp(-lw)
                                                        for g, lw in zip(cross, log_weights, strict=True))
        return pred


def _blend(basis: StructureBasis, b, fit: StructureFit, rl_c, max_rl_iter: int):
    b = np.clip(np.asarray(b, dtype=float), 0.0, None)
    folds = fold_of(basis.positions_px, basis.spacing_px)
    pred_s = np.nan_to_num(heldout_prediction(basis, b, fit.log_weights, np.maximum(fit.fitted, 1.0), folds))
    pred_r = rl_heldout_prediction(basis.intensity, basis.positions_px, basis.shape, b, folds, max_rl_iter)
    return mix_with_richardson_lucy(b, fit.c, pred_s, rl_c, pred_r)


def rl_heldout_prediction(intensity: np.ndarray, positions_px: np.ndarray, shape: tuple[int, int], b: np.ndarray,
                          folds: np.ndarray, max_rl_iter: int = 500) -> np.ndarray:
    """Counts of each position predicted by Richardson-Lucy fitted without its fold (0 for folds
    with too few training positions)."""
    pred_r = np.zeros_like(b)
    for k in np.unique(folds):
        test = folds == k
        train = ~test
        if test.sum() == 0 or train.sum() < 8:
            continue
        op_train = forward_operator(footprint_rows(intensity, train), positions_px[train], shape)
        c_r = richardson_lucy(op_train, b[train], max_iter=max_rl_iter).c
        pred_r[test] = forward_operator(footprint_rows(intensity, test), positions_px[test], shape).forward(c_r)
    return pred_r


def mix_with_richardson_lucy(b: np.ndarray, c_s: np.ndarray, pred_s: np.ndarray, rl_c: np.ndarray,
                             pred_r: np.ndarray) -> tuple[np.ndarray, float, dict]:
    """The mix ``w c_s + (1 - w) c_RL`` whose held-out predictions fit the counts best (see
    :func:`blend_with_richardson_lucy`), from both estimators' held-out predictions."""
    floor = 1e-6 * max(float(b.mean()), 1e-30)

    def held_out(w: float) -> float:
        return poisson_deviance(b, np.maximum(w * pred_s + (1 - w) * pred_r, floor))

    inner = float(optimize.minimize_scalar(held_out, bounds=(0.0, 1.0), method="bounded",
                                           options={"xatol": 1e-3}).x)
    # bounded Brent never evaluates the ends: either estimator alone may be the best mix
    w = min((0.0, 1.0, inner), key=held_out)
    # one-standard-error rule (Breiman et al., Classification and Regression Trees (1984); Hastie,
    # Tibshirani & Friedman, Elements of Statistical Learning, 7.10): held-out counts only see the
    # footprint scale, where a mix with RL often predicts a little better while RL's pixel-scale
    # detail is noise; keep the structure model unless the mix is better by more than one
    # standard error of the per-position deviance difference
    gain = unit_deviance(b, pred_s, floor) - unit_deviance(b, w * pred_s + (1 - w) * pred_r, floor)
    if gain.mean() <= gain.std(ddof=1) / np.sqrt(gain.size):
        w = 1.0
    info = {"heldout_deviance_structure": held_out(1.0) / b.size, "heldout_deviance_rl": held_out(0.0) / b.size,
            "heldout_deviance_mix": held_out(w) / b.size}
    return w * np.asarray(c_s, dtype=float) + (1 - w) * np.asarray(rl_c, dtype=float), w, info
