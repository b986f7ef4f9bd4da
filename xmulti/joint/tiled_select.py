"""Per-element decisions of the tiled structure model, and one element's tiled solve (pure numpy).

As the untiled model decides (:func:`xmulti.joint.structure.select_features`,
:func:`xmulti.joint.bridge_structure._solve_structure`), on the tiles of
:mod:`xmulti.joint.tiled`: whether an element keeps the compartment feature (composite
likelihood-ratio test and enrichment on the search tiles), then every tile solved and stitched,
then the mix with Richardson-Lucy from every position's held-out prediction.
"""

from __future__ import annotations

import numpy as np

from .deconvolve import one_blas_thread
from .footprint_op import poisson_deviance
from .heldout import fold_of, unit_deviance
from .structure import posterior_map
from .tiled import TiledBasis, TiledFit, complete_fit, search_fit, tiled_heldout, tiled_map

__all__ = ["select_features_tiled", "solve_structure_tiled"]

# least restricted log-likelihood gain of an added variance component (as structure._LRT_GAIN)
_LRT_GAIN = 1.35


def _enrichment(tb: TiledBasis, fit: TiledFit, name: str) -> float:
    """Feature-weighted mean of ``name``'s coefficient field over the search tiles (stitching weights)."""
    num = den = 0.0
    for t in tb.search:
        basis = tb.basis(t)
        if name not in basis.names:
            continue
        beta, kir, _ = fit.parts[t]
        coefficient = posterior_map(basis, fit.log_weights[tb.index(t)], beta, kir)[1][name]
        f = (tb.tiles[t].weight * basis.features[basis.names.index(name)]).ravel()
        num += float(f @ (basis.interp @ coefficient.ravel()))
        den += float(f.sum())
    return num / max(den, 1e-300)


def select_features_tiled(tb: TiledBasis, b: np.ndarray, optional: tuple[str, ...] = ("compartment",),
                          base_fit: TiledFit | None = None) -> tuple[TiledBasis, TiledFit, dict]:
    """:func:`xmulti.joint.structure.select_features` on the search tiles: the optional features
    kept when the composite restricted likelihood gains more than 1.35 and the element is enriched
    in them. Returns the chosen model, its fit on the search tiles and the test's figures."""
    b = np.clip(np.asarray(b, dtype=float), 0.0, None)
    extra = [n for n in tb.names if n in optional]
    base = tb.subset([n for n in tb.names if n not in optional]) if extra else tb
    fit0 = search_fit(base, b) if base_fit is None else base_fit
    if not extra:
        return base, fit0, {}
    start = np.array([fit0.log_weights[base.names.index(n)] if n in base.names else np.nan for n in tb.names])
    fit1 = search_fit(tb, b, start)
    positions = np.concatenate([tb.tiles[t].members[tb.tiles[t].core] for t in tb.search])
    folds = _scan_folds(tb)
    floor = 1e-6 * max(float(b.mean()), 1e-30)
    dev = [unit_deviance(b[positions], np.nan_to_num(tiled_heldout(model, b, f, folds, tb.search)[positions]),
                         floor).mean() for model, f in ((base, fit0), (tb, fit1))]
    enrichment = {n: _enrichment(tb, fit1, n) for n in extra}
    info = {"heldout_deviance_base": float(dev[0]), "heldout_deviance_full": float(dev[1]),
            "restricted_log_likelihood_gain": float(fit1.reml - fit0.reml),
            **{f"{n}_coefficient_mean": v for n, v in enrichment.items()}}
    if fit1.reml - fit0.reml > _LRT_GAIN and all(v > 0 for v in enrichment.values()):
        return tb, fit1, info
    return base, fit0, info


def _scan_folds(tb: TiledBasis) -> np.ndarray:
    return fold_of(tb.positions_px, tb.spacing_px)


def solve_structure_tiled(tb: TiledBasis, b: np.ndarray, op, optional: tuple[str, ...], max_rl_iter: int,
                          blend: bool, base_fit: TiledFit | None = None, progress=None) -> tuple[np.ndarray, dict]:
    """One element by the tiled structure model (and its mix with Richardson-Lucy): map and attributes.

    The untiled counterpart is ``bridge_structure._solve_structure``: the optional features are chosen on
    the search tiles (:func:`select_features_tiled`), every tile is solved at the shared
    weights, the maps are stitched, and with ``blend`` the mix with Richardson-Lucy (on the whole
    grid, ``op``) is chosen by the held-out predictions of every position
    (:func:`xmulti.joint.heldout.mix_with_richardson_lucy`).

    Parameters
    ----------
    tb : TiledBasis
        With every feature offered (the optional ones ``zero_mean``).
    b : ndarray (P,)
        Counts (equivalent counts).
    op : FootprintOperator
        The footprint operator of the positions (Richardson-Lucy and the final deviance).
    optional : tuple of str
    max_rl_iter : int
    blend : bool
    base_fit : TiledFit, optional
        The base model's fit on the search tiles, if already made.
    progress : callable, optional
        ``progress(done, total)`` after each tile solved.
    """
    from .deconvolve import richardson_lucy
    from .heldout import mix_with_richardson_lucy, rl_heldout_prediction

    b = np.clip(np.asarray(b, dtype=float), 0.0, None)
    model, fit, chosen = select_features_tiled(tb, b, optional, base_fit)
    fit = complete_fit(model, b, fit, progress=progress)
    c, fitted = tiled_map(model, fit)
    tiny = 1e-9 * max(float(b.mean()), 1e-30)
    attrs = {"regularisation_weights_log": [float(v) for v in fit.log_weights], "features": list(model.names),
             "restricted_log_likelihood": fit.reml, "poisson_deviance": poisson_deviance(b, np.maximum(fitted, tiny)),
             "structure_weight": 1.0, "tiles": len(tb.tiles), "search_tiles": len(tb.search), **chosen}
    if blend:
        with one_blas_thread():
            folds = _scan_folds(tb)
            pred_s = np.nan_to_num(tiled_heldout(model, b, fit, folds))
            rl = richardson_lucy(op, b, max_iter=max_rl_iter)
            pred_r = rl_heldout_prediction(tb.intensity, tb.positions_px, tb.shape, b, folds, max_rl_iter)
            c, w, info = mix_with_richardson_lucy(b, c, pred_s, rl.c, pred_r)
        attrs.update(info, structure_weight=w, poisson_deviance=poisson_deviance(b, op.forward(c) + 1e-12))
    return c, attrs
