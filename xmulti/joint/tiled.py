"""The structure model of resolution bridging on overlapping tiles: cost linear in the positions (pure numpy).

The model of :mod:`xmulti.joint.structure` is fitted tile by tile (:mod:`xmulti.joint.bridge_tiles`:
the positions of a core plus a halo of a few footprint radii, on the object window they see), and
the tiles' maps are blended with weights that sum to 1. What is shared and what is local:

- the smoothness weights (REML hyperparameters) of an element are *shared* by its tiles: they
  maximise the sum of the tiles' restricted log likelihoods (a composite likelihood: B. G.
  Lindsay, Contemp. Math. 80, 221 (1988); C. Varin, N. Reid & D. Firth, Stat. Sinica 21, 5
  (2011)) over a bounded set of *search tiles*, those holding the most matter, up to about
  ``search_positions`` positions. The search, by far the dearest part (hundreds of
  evaluations), then costs the same whatever the scan size; every tile is then solved once per
  variance pass at those weights. The halos count some positions in several tiles, so the
  summed likelihood is scaled by the number of distinct positions over the number of members
  before a likelihood-ratio test (:func:`select_features_tiled`);
- the fixed effects (the affine trends of the coefficient fields, with a flat prior) are *shared*
  too: one trend per field over the whole grid, estimated by generalised least squares from
  every tile at once (each tile's own trends, 9 more unknowns per tile, made the maps noisier:
  small preset, true probe, S NRMSE 0.015 against 0.011 untiled; shared, 0.009);
- the coefficient fields' smooth deviations from their trends are *local*: each tile has its
  own posterior.

Decisions made once per element, as in the untiled model: the compartment feature (likelihood
ratio and enrichment on the search tiles) and the footprint power (held-out deviance on the
search tiles' cores). The held-out predictions of the mix with Richardson-Lucy are made by every
tile for its core positions, so the mix is chosen on every position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import linalg
from scipy.linalg import lapack

from .bridge_tiles import BridgeTile, stitch
from .deconvolve import one_blas_thread
from .footprint_op import footprint_rows
from .structure import (
    StructureBasis,
    factor_covariance,
    fitted_counts,
    maximise_log_weights,
    posterior_map,
    structure_basis,
    subset_basis,
)

__all__ = ["TiledBasis", "TiledFit", "tiled_basis", "search_fit", "complete_fit", "tiled_map", "tiled_heldout"]


@dataclass
class TiledBasis:
    """Structure bases of the tiles (built on first use) and which tiles choose the hyperparameters.

    Attributes
    ----------
    tiles : list of BridgeTile
    names : list of str
        Feature names of the model (a tile's basis holds those not zero on its window).
    intensity, positions_px, features, spacing_px, zero_mean : the inputs of
        :func:`xmulti.joint.structure.structure_basis` for the whole scan.
    search : list of int
        Tiles whose summed restricted likelihood sets the shared weights.
    shape : (ny, nx)
        Object grid shape.
    """

    tiles: list[BridgeTile]
    names: list[str]
    intensity: np.ndarray
    positions_px: np.ndarray
    features: dict[str, np.ndarray]
    spacing_px: float
    zero_mean: tuple[str, ...]
    search: list[int]
    shape: tuple[int, int]
    _bases: dict[int, StructureBasis] = field(default_factory=dict)
    _to_local: dict[int, np.ndarray] = field(default_factory=dict)

    def basis(self, t: int) -> StructureBasis:
        """Tile ``t``'s structure basis (on its window, positions relative to it)."""
        if t not in self._bases:
            tile = self.tiles[t]
            local = {k: self.features[k][tile.window] for k in self.names}
            pos = self.positions_px[tile.members] - np.asarray(tile.offset, dtype=float)
            self._bases[t] = structure_basis(footprint_rows(self.intensity, tile.members), pos, local,
                                             self.spacing_px, zero_mean=self.zero_mean)
        return self._bases[t]

    def index(self, t: int) -> np.ndarray:
        """Positions in :attr:`names` of tile ``t``'s features."""
        return np.array([self.names.index(n) for n in self.basis(t).names], dtype=int)

    @property
    def n_fixed(self) -> int:
        """Number of shared fixed effects: an affine trend (3) per field without a zero-mean prior."""
        return 3 * sum(n not in self.zero_mean for n in self.names)

    def to_local(self, t: int) -> np.ndarray:
        """``(n_local, n_fixed)``: tile ``t``'s fixed effects from the shared ones.

        The shared trend of a field is affine in the grid's normalised coordinates ``Y, X`` in
        ``[-1, 1]``; a tile's trend columns are affine in its window's, ``y, x``, with ``Y = a +
        s y`` (and likewise ``X``), so ``[1, Y, X] = [1, y, x] M``.
        """
        if t not in self._to_local:
            basis, tile = self.basis(t), self.tiles[t]
            (y0, x0), (h, w) = tile.offset, tile.weight.shape
            ny, nx = self.shape
            m = np.array([[1.0, (2 * y0 + h - 1) / max(ny - 1, 1) - 1, (2 * x0 + w - 1) / max(nx - 1, 1) - 1],
                          [0.0, (h - 1) / max(ny - 1, 1), 0.0],
                          [0.0, 0.0, (w - 1) / max(nx - 1, 1)]])
            shared = [n for n in self.names if n not in self.zero_mean]
            out = np.zeros((basis.fixed.shape[1], self.n_fixed))
            for i, name in enumerate(basis.names):
                cols = basis.fixed_columns(i)
                if cols.size:
                    j = 3 * shared.index(name)
                    out[np.ix_(cols, np.arange(j, j + 3))] = m
            self._to_local[t] = out
        return self._to_local[t]

    def shared_fixed(self, t: int) -> np.ndarray:
        """Tile ``t``'s design of the shared fixed effects ``(M, n_fixed)``."""
        return self.basis(t).fixed @ self.to_local(t)

    def subset(self, names: list[str]) -> TiledBasis:
        """The model restricted to some features (the tiles' bases reused)."""
        out = TiledBasis(self.tiles, [n for n in self.names if n in names], self.intensity, self.positions_px,
                         self.features, self.spacing_px, self.zero_mean, self.search, self.shape)
        for t, basis in self._bases.items():
            out._bases[t] = subset_basis(basis, [n for n in basis.names if n in names])
        return out

    def overlap(self, tiles: list[int]) -> float:
        """Members of ``tiles`` per distinct position (>= 1: halos shared by neighbours)."""
        members = [self.tiles[t].members for t in tiles]
        return sum(m.size for m in members) / max(np.unique(np.concatenate(members)).size, 1)


@dataclass
class TiledFit:
    """Shared log weights (per name of the model) and each fitted tile's REML solution.

    ``parts[t] = (beta, kir, fitted)`` of tile ``t`` (``beta``: the shared fixed effects in the
    tile's own trend coordinates); ``reml``: the composite restricted log likelihood of the search
    tiles divided by their overlap (:meth:`TiledBasis.overlap`)."""

    log_weights: np.ndarray
    parts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
    reml: float


def tiled_basis(intensity: np.ndarray, positions_px: np.ndarray, features: dict[str, np.ndarray],
                tiles: list[BridgeTile], spacing_px: float, zero_mean: tuple[str, ...] = (),
                search_positions: int = 1000) -> TiledBasis:
    """The tiled structure model of one footprint: tiles, features and the search tiles.

    Parameters
    ----------
    intensity : ndarray (N, M) or (P, N, M)
        Footprint (normalised to sum 1), or one per position.
    positions_px : ndarray (P, 2)
        Beam centres as fractional object-pixel indices.
    features : dict of str to ndarray (ny, nx)
        :func:`xmulti.joint.guide.structure_features` of the whole grid (scaled once, globally).
    tiles : list of BridgeTile
        :func:`xmulti.joint.bridge_tiles.split_bridge_tiles`.
    spacing_px : float
        Coarse grid spacing of the coefficient fields (the same in every tile).
    zero_mean : tuple of str
        As :func:`xmulti.joint.structure.structure_basis`.
    search_positions : int
        Members of the search tiles, about (at least one tile): the tiles with the most matter
        (the ``"matter"`` feature under their stitching weight) first.
    """
    names = [k for k in features if np.any(np.asarray(features[k]) != 0)]
    shape = tuple(np.shape(features[names[0]]))
    ranking = "matter" if "matter" in names else names[0]
    content = [float(np.sum(t.weight * features[ranking][t.window])) for t in tiles]
    search, total = [], 0
    for t in np.argsort(content)[::-1]:
        if search and total + tiles[t].members.size > search_positions:
            break
        search.append(int(t))
        total += tiles[t].members.size
    return TiledBasis(tiles, names, np.asarray(intensity, dtype=float), np.asarray(positions_px, dtype=float),
                      {k: np.asarray(features[k], dtype=float) for k in names}, float(spacing_px), tuple(zero_mean),
                      sorted(search), shape)


def _composite_reml(tb: TiledBasis, tiles: list[int], log_w: np.ndarray, b: np.ndarray, var: dict,
                    gradient: bool = False, rows: dict | None = None):
    """Composite restricted log likelihood of ``tiles`` with shared fixed effects.

    The tiles are independent given the fixed effects ``beta`` (shared: the affine trends of the
    coefficient fields over the whole grid), which have a flat prior: ``sum_t -1/2 log|K_t| -
    1/2 log|F| - 1/2 sum_t r_t' K_t^-1 r_t`` with ``F = sum_t X_t' K_t^-1 X_t``, ``beta`` the
    generalised least squares fit and ``r_t = b_t - X_t beta``. With ``gradient``, also its
    derivatives by the log weights (the terms of :func:`xmulti.joint.structure._reml` summed, the
    trace correction through ``F``). ``rows[t]``: a subset of the tile's members (held-out
    fits), default all.

    Returns
    -------
    value : float (-inf when a covariance is not positive definite)
    beta : ndarray (n_fixed,) or None
    kir : dict of tile to ``K_t^-1 r_t``
    grad : ndarray (K,) or None (only with ``gradient``)
    """
    n_fixed = tb.n_fixed
    f_mat = np.zeros((n_fixed, n_fixed))
    u = np.zeros(n_fixed)
    logdet = 0.0
    state = {}
    for t in tiles:
        basis = tb.basis(t)
        sel = rows[t] if rows is not None else slice(None)
        idx = tb.index(t)
        gram = [g[np.ix_(sel, sel)] for g in basis.gram] if rows is not None else basis.gram
        x = tb.shared_fixed(t)[sel]
        bt = b[tb.tiles[t].members][sel]
        chol = factor_covariance(log_w[idx], gram, var[t])
        if chol is None:
            return -np.inf, None, {}, None
        rhs = np.empty((len(bt), 1 + n_fixed), order="F")
        rhs[:, 0] = bt
        rhs[:, 1:] = x
        solved, _ = lapack.dpotrs(chol, rhs, lower=True, overwrite_b=True)
        kib, kif = solved[:, 0], solved[:, 1:]
        f_mat += x.T @ kif
        u += x.T @ kib
        logdet += float(np.sum(np.log(chol.diagonal())))
        state[t] = (chol if gradient else None, gram, x, bt, kib, kif)
    # a field absent from these tiles has no data on its trend: a vanishing ridge keeps F definite
    f_mat[np.diag_indices(n_fixed)] += 1e-12 * max(float(np.trace(f_mat)), 1e-300)
    try:
        fkf = linalg.cho_factor(f_mat, lower=True, check_finite=False)
    except linalg.LinAlgError:
        return -np.inf, None, {}, None
    beta = linalg.cho_solve(fkf, u, check_finite=False)
    quad = 0.0
    kir = {}
    for t, (_, _, x, bt, kib, kif) in state.items():
        kir[t] = kib - kif @ beta
        quad += float((bt - x @ beta) @ kir[t])
    value = -(logdet + float(np.sum(np.log(np.diag(fkf[0]))))) - 0.5 * quad
    if not gradient:
        return value, beta, kir, None
    f_inv = linalg.cho_solve(fkf, np.eye(n_fixed), check_finite=False)
    grad = np.zeros(len(log_w))
    for t, (chol, gram, _, _, _, kif) in state.items():
        inverse, _ = lapack.dpotri(chol, lower=True, overwrite_c=True)
        inverse = np.tril(inverse)  # K^-1's lower triangle (the upper holds K): tr(K^-1 G) = 2 L.G - diag
        m = kif @ f_inv
        for i, k in enumerate(tb.index(t)):
            g = gram[i]
            trace = (2.0 * float(np.sum(inverse * g)) - float(np.diagonal(inverse) @ np.diagonal(g))
                     - float(np.sum((g @ kif) * m)))
            grad[k] += 0.5 * np.exp(-log_w[k]) * (trace - float(kir[t] @ (g @ kir[t])))
    return value, beta, kir, grad


def _parts(tb: TiledBasis, tiles, log_w: np.ndarray, beta: np.ndarray, kir: dict) -> dict:
    """Each tile's ``(beta in its trend coordinates, K^-1 r, fitted counts)``."""
    out = {}
    for t in tiles:
        local = tb.to_local(t) @ beta
        out[t] = (local, kir[t], fitted_counts(tb.basis(t), log_w[tb.index(t)], local, kir[t]))
    return out


def search_fit(tb: TiledBasis, b: np.ndarray, start: np.ndarray | None = None, passes: int = 2) -> TiledFit:
    """Shared log weights maximising the search tiles' composite restricted likelihood, and their fits.

    As :func:`xmulti.joint.structure.structure_solve`: ``passes`` searches, the variance of
    each count the data, then the fitted counts (floored at 1); ``start`` as there.
    """
    with one_blas_thread():
        b = np.clip(np.asarray(b, dtype=float), 0.0, None)
        search = tb.search
        var = {t: np.maximum(b[tb.tiles[t].members], 1.0) for t in search}

        def cost(log_w):
            return -_composite_reml(tb, search, log_w, b, var)[0]

        def cost_and_gradient(log_w):
            value, _, _, grad = _composite_reml(tb, search, log_w, b, var, gradient=True)
            return (-value, -grad) if grad is not None else (np.inf, np.zeros(len(log_w)))

        log_w = start
        parts = {}
        for _ in range(passes):
            scales = []
            for k in range(len(tb.names)):  # trace G_k / sum var over the tiles holding field k
                trace = sum(float(np.trace(tb.basis(t).gram[list(tb.index(t)).index(k)]))
                            for t in search if k in tb.index(t))
                scales.append(np.log(max(trace, 1e-300) / max(sum(float(v.sum()) for v in var.values()), 1e-300)))
            log_w = maximise_log_weights(cost, scales, log_w, cost_and_gradient)
            _, beta, kir, _ = _composite_reml(tb, search, log_w, b, var)
            parts = _parts(tb, search, log_w, beta, kir)
            var = {t: np.maximum(parts[t][2], 1.0) for t in search}  # Poisson: the variance is the mean
        value = _composite_reml(tb, search, log_w, b, var)[0] / tb.overlap(search)
        return TiledFit(np.asarray(log_w, dtype=float), parts, float(value))


def complete_fit(tb: TiledBasis, b: np.ndarray, fit: TiledFit, passes: int = 2,
                 progress=None) -> TiledFit:
    """Every tile's fit at the shared weights, the fixed effects shared by all the tiles.

    ``passes`` as :func:`search_fit` (the variance the data, then the fitted counts);
    ``progress(done, total)``, if given, is called after each tile of the last pass."""
    with one_blas_thread():
        b = np.clip(np.asarray(b, dtype=float), 0.0, None)
        everything = list(range(len(tb.tiles)))
        var = {t: np.maximum(b[tb.tiles[t].members], 1.0) for t in everything}
        for p in range(passes):
            value, beta, kir, _ = _composite_reml(tb, everything, fit.log_weights, b, var)
            if beta is None:
                raise np.linalg.LinAlgError("a tile's data covariance is not positive definite")
            parts = _parts(tb, everything, fit.log_weights, beta, kir)
            var = {t: np.maximum(parts[t][2], 1.0) for t in everything}
            if progress is not None and p == passes - 1:
                for t in everything:
                    progress(t + 1, len(everything))
        return TiledFit(fit.log_weights, parts, fit.reml)


def tiled_map(tb: TiledBasis, fit: TiledFit) -> tuple[np.ndarray, np.ndarray]:
    """Stitched map (counts on the object grid, >= 0) and fitted counts of every position (from its core's tile)."""
    maps = []
    fitted = np.zeros(len(tb.positions_px))
    for t, tile in enumerate(tb.tiles):
        beta, kir, fit_t = fit.parts[t]
        maps.append(posterior_map(tb.basis(t), fit.log_weights[tb.index(t)], beta, kir)[0])
        fitted[tile.members[tile.core]] = fit_t[tile.core]
    return stitch(maps, tb.tiles, tb.shape), fitted


def tiled_heldout(tb: TiledBasis, b: np.ndarray, fit: TiledFit, folds: np.ndarray,
                  tiles: list[int] | None = None) -> np.ndarray:
    """Held-out predictions of the core positions of ``tiles`` (default all fitted), NaN elsewhere.

    As :func:`xmulti.joint.heldout.heldout_prediction`: per fold of the scan, the model at the
    fit's weights and variances is fitted to the other folds' positions of every tile (the
    shared fixed effects re-estimated from them) and predicts the fold's positions.
    """
    with one_blas_thread():
        b = np.clip(np.asarray(b, dtype=float), 0.0, None)
        tiles = sorted(fit.parts) if tiles is None else list(tiles)
        pred = np.full(len(b), np.nan)
        for k in np.unique(folds):
            train = {t: np.flatnonzero(folds[tb.tiles[t].members] != k) for t in tiles}
            use = [t for t in tiles if train[t].size >= 8]
            if not use:
                continue
            var = {t: np.maximum(fit.parts[t][2], 1.0)[train[t]] for t in use}
            _, beta, kir, _ = _composite_reml(tb, use, fit.log_weights, b, var, rows=train)
            if beta is None:
                continue
            for t in use:
                tile, basis = tb.tiles[t], tb.basis(t)
                test = np.flatnonzero((folds[tile.members] == k) & tile.core)
                lw = fit.log_weights[tb.index(t)]
                pred[tile.members[test]] = tb.shared_fixed(t)[test] @ beta + sum(
                    g[np.ix_(test, train[t])] @ kir[t] * np.exp(-w) for g, w in zip(basis.gram, lw, strict=True))
        return pred
