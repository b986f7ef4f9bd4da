"""Structure model of resolution bridging: an element map as slowly varying multiples of the phase's structure.

Model (on the object grid, in counts): ``c(r) = sum_k a_k(r) f_k(r)`` with the features ``f_k`` of
:func:`xmulti.joint.guide.structure_features`: the projected matter ``m`` (from the phase), the
strength of its edges ``e`` and a uniform map ``1``. Physically ``a_m`` is the element's mass
fraction in the matter (a phosphorus or sulfur content varies slowly across a cell, while the
mass it multiplies carries the cell's fine structure), ``a_e`` a membrane or boundary excess,
and ``a_1`` the part of the element that follows no structure (granules, diffuse pools). The
data resolve the ``a_k`` at about the scan step: each is bilinear on a grid of that spacing.

Prior and hyperparameters: each ``a_k`` is an affine trend (flat prior) plus a Gaussian field
with the thin-plate (squared-Laplacian) smoothness ``lambda_k a^T L^2 a``, ``L`` the Neumann
grid Laplacian, diagonal in the discrete cosine basis. The counts are Poisson, approximated as
Gaussian with variance the fitted counts (two passes). Everything is then linear-Gaussian
and the weights ``lambda_k`` maximise the restricted marginal likelihood (REML, type-II
maximum likelihood: Patterson & Thompson, Biometrika 58, 545 (1971); Rasmussen & Williams,
*Gaussian Processes for Machine Learning* (2006), sections 2.7 and 5.4), so an element whose
distribution does not follow the matter gets ``a_m`` stiff and ``a_1`` free: the data choose.
The posterior mean is computed in data space (``P x P`` systems, ``P`` positions), so a solve
costs a few hundred ``P^3 / 3`` Cholesky factorisations, not an iteration over the object grid.
They run on one BLAS thread: at these sizes threads gain little, and on a loaded 2-core machine
a multi-threaded OpenBLAS made a solve 8x slower (measured: 17 s against 2 s).

Compartments (optional features, :func:`select_features`): the phase may show a compartment
(a nucleus) only as a small thickness step, which ``a_m m`` with a coefficient smooth at the
scan step cannot turn into the sharp step of an element enriched there. The compartment map of
:func:`xmulti.joint.guide.compartment_feature` is offered as a fourth feature whose coefficient
has a proper zero-mean prior (no flat trend), so the models with and without it have the same
fixed effects and their restricted likelihoods compare; it is kept for an element when the
gain passes a likelihood-ratio test and the element is enriched in it.

Fallback: structure the phase does not show (granules far below the footprint) is better
served by Richardson-Lucy's positivity: :mod:`xmulti.joint.heldout` mixes the two by held-out
prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import linalg, optimize
from scipy.linalg import blas, lapack

from ..errors import InvalidInputError
from .deconvolve import one_blas_thread
from .footprint_op import footprint_matrix, poisson_deviance

__all__ = ["StructureBasis", "StructureFit", "structure_basis", "structure_solve", "scan_step_px", "subset_basis",
           "select_features"]


@dataclass
class StructureBasis:
    """What a structure solve needs of the grid, probe, positions and features (shared by elements).

    Attributes
    ----------
    names : list of str
        Feature names, in the order of ``whitened`` and ``fixed``.
    features : ndarray (K, ny, nx)
    interp : scipy.sparse matrix (ny * nx, n)
        Bilinear interpolation from the coarse grid to the object grid.
    coarse_shape : (ky, kx)
    whitened : list of ndarray (P, n)
        ``A diag(f_k) S`` in the prior's whitened DCT coordinates (constant mode dropped).
    gram : list of ndarray (P, P)
        ``whitened_k whitened_k^T``: the data covariance of field ``k`` at unit weight.
    fixed : ndarray (P, 3 K)
        The affine trends of each field seen by the data.
    trend : ndarray (n, 3)
        Affine basis on the coarse grid.
    eigenvalues : ndarray (ky, kx)
        Of the thin-plate penalty in the DCT basis (``inf`` for the constant mode).
    positions_px, intensity, shape : the footprint operator's inputs (for Richardson-Lucy).
    spacing_px : float
        Coarse grid spacing (pixels).
    zero_mean : list of bool
        Per feature: its coefficient field has no flat-prior trend (no columns in ``fixed``)
        but a proper zero-mean prior (see :func:`structure_basis`).
    """

    names: list[str]
    features: np.ndarray
    interp: object
    coarse_shape: tuple[int, int]
    whitened: list[np.ndarray]
    gram: list[np.ndarray]
    fixed: np.ndarray
    trend: np.ndarray
    eigenvalues: np.ndarray
    positions_px: np.ndarray
    intensity: np.ndarray
    shape: tuple[int, int]
    spacing_px: float
    zero_mean: list[bool] = field(default_factory=list)

    def fixed_columns(self, i: int) -> np.ndarray:
        """Columns of ``fixed`` (and entries of the fixed effects) of feature ``i``."""
        nt = self.trend.shape[1]
        zero = self.zero_mean or [False] * len(self.names)
        start = nt * sum(not z for z in zero[:i])
        return np.arange(start, start if zero[i] else start + nt)

    def field_eigenvalues(self, i: int) -> np.ndarray:
        """Prior precision eigenvalues (DCT basis) of feature ``i``'s field."""
        if not (self.zero_mean and self.zero_mean[i]):
            return self.eigenvalues
        eig = self.eigenvalues.copy()
        eig[0, 0] = float(np.min(eig[np.isfinite(eig) & (eig > 0)]))
        return eig


@dataclass
class StructureFit:
    """A structure-model solution: map (counts, on the object grid), weights and fit quality."""

    c: np.ndarray
    log_weights: np.ndarray
    fitted: np.ndarray
    deviance: float
    reml: float
    coefficients: dict[str, np.ndarray] = field(default_factory=dict)


def _bilinear(n: int, spacing: float):
    """Sparse (n, k) linear interpolation from ``k`` equally spaced nodes spanning ``0..n-1``."""
    import scipy.sparse as sp

    k = max(2, int(np.ceil((n - 1) / spacing)) + 1)
    f = np.arange(n) * (k - 1) / max(n - 1, 1)
    i = np.clip(np.floor(f).astype(int), 0, k - 2)
    t = f - i
    rows = np.r_[np.arange(n), np.arange(n)]
    return sp.csr_matrix((np.r_[1 - t, t], (rows, np.r_[i, i + 1])), shape=(n, k))


def scan_step_px(positions_px: np.ndarray) -> float:
    """Median distance (pixels) from each beam position to its nearest neighbour."""
    from scipy.spatial import cKDTree

    pos = np.asarray(positions_px, dtype=float)
    if len(pos) < 2:
        raise InvalidInputError("need at least 2 beam positions")
    dist, _ = cKDTree(pos).query(pos, k=2)
    return float(np.median(dist[:, 1]))


def structure_basis(intensity: np.ndarray, positions_px: np.ndarray, features: dict[str, np.ndarray],
                    spacing_px: float | None = None, zero_mean: tuple[str, ...] = ()) -> StructureBasis:
    """Precompute the data-space covariances of the structure model for one grid and probe.

    Parameters
    ----------
    intensity : ndarray (N, M) or (P, N, M)
        Probe intensity normalised to sum 1, beam centre at ``(N//2, M//2)``; a stack: one
        footprint per position.
    positions_px : ndarray (P, 2)
        Beam centres as fractional object-pixel indices (y, x).
    features : dict of str to ndarray (ny, nx)
        The maps the element may follow (:func:`xmulti.joint.guide.structure_features`).
    spacing_px : float, optional
        Coarse grid spacing of the coefficient fields; default the scan step (what the data
        resolve).
    zero_mean : tuple of str
        Features whose coefficient has no flat-prior affine trend but a proper prior with mean
        0: the thin-plate field with its constant mode given the precision of the smoothest
        non-constant mode. Models with and without such a feature have the same fixed effects,
        so their restricted likelihoods can be compared (REML values of models with different
        fixed effects cannot: Welham & Thompson, J. R. Stat. Soc. B 59, 701 (1997)).
    """
    with one_blas_thread():
        return _structure_basis(intensity, positions_px, features, spacing_px, zero_mean)


def _structure_basis(intensity, positions_px, features, spacing_px, zero_mean=()) -> StructureBasis:
    import scipy.sparse as sp

    # a feature that is zero everywhere (no matter in the field of view) explains nothing
    names = [k for k in features if np.any(np.asarray(features[k]) != 0)]
    if not names:
        raise InvalidInputError("every structure feature is zero")
    stack = np.stack([np.asarray(features[k], dtype=float) for k in names])
    shape = stack.shape[1:]
    pos = np.asarray(positions_px, dtype=float)
    spacing = float(spacing_px) if spacing_px is not None else scan_step_px(pos)
    if not spacing > 0:
        raise InvalidInputError(f"coarse grid spacing must be positive, got {spacing}")
    by, bx = _bilinear(shape[0], spacing), _bilinear(shape[1], spacing)
    interp = sp.kron(by, bx, format="csr")
    ky, kx = by.shape[1], bx.shape[1]
    # thin-plate penalty (L_y + L_x)^2 with Neumann Laplacians: eigenvalues in the DCT-II basis
    ly = 4.0 * np.sin(np.pi * np.arange(ky) / (2 * ky)) ** 2
    lx = 4.0 * np.sin(np.pi * np.arange(kx) / (2 * kx)) ** 2
    eig = (ly[:, None] + lx[None, :]) ** 2
    eig[0, 0] = np.inf  # the constant is in the flat-prior trend
    yy, xx = np.meshgrid(np.linspace(-1, 1, ky), np.linspace(-1, 1, kx), indexing="ij")
    trend = np.stack([np.ones(ky * kx), yy.ravel(), xx.ravel()], axis=1)
    a = footprint_matrix(intensity, pos, shape)
    zero = [n in zero_mean for n in names]
    out = StructureBasis(names, stack, interp, (ky, kx), [], [], np.zeros((len(pos), 0)), trend, eig, pos,
                         np.asarray(intensity, dtype=float), tuple(shape), spacing, zero)
    fixed = []
    for i, f in enumerate(stack):
        mk = np.asarray((a @ sp.diags(f.ravel()) @ interp).todense())
        # rows of A diag(f) S in the DCT basis over sqrt(eigenvalue): B B^T = A diag(f) S R^+ S^T diag(f) A^T,
        # the data covariance of a field with the thin-plate prior R (pseudo-inverse: constant left out)
        bk = (sfft.dctn(mk.reshape(-1, ky, kx), type=2, axes=(1, 2), norm="ortho")
              / np.sqrt(out.field_eigenvalues(i))).reshape(len(mk), -1)
        out.whitened.append(bk)
        out.gram.append(bk @ bk.T)
        if not zero[i]:
            fixed.append(mk @ trend)
    out.fixed = np.hstack(fixed) if fixed else np.zeros((len(pos), 0))
    return out


def factor_covariance(log_w: np.ndarray, gram: list[np.ndarray], var: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor (Fortran order, upper triangle not cleaned) of ``K = diag(var) + sum_k
    exp(-log_w_k) G_k``, assembled in place; None when ``K`` is not positive definite."""
    n = len(var)
    flat = np.diag(var).reshape(-1)
    for g, lw in zip(gram, log_w, strict=True):
        flat = blas.daxpy(g.reshape(-1), flat, a=np.exp(-lw))  # k += w g in one pass (in place)
    k = flat.reshape(n, n)
    # k is symmetric, so its transpose (Fortran order, no copy) can be factored in place
    chol, info = lapack.dpotrf(k.T, lower=True, overwrite_a=True, clean=False)
    return chol if info == 0 else None


def _reml(log_w: np.ndarray, gram: list[np.ndarray], fixed: np.ndarray, b: np.ndarray, var: np.ndarray,
          gradient: bool = False):
    """Restricted log marginal likelihood (up to a constant) and what the posterior mean needs.

    ``K = diag(var) + sum_k exp(-log_w_k) G_k`` is assembled in place and factored by LAPACK
    without copies, and ``K^-1 [b, X]`` is one LAPACK call: the search calls this thousands
    of times per element, and the temporaries of the plain expression took a third of its time.

    With ``gradient``, also the derivatives of the value by the log weights (third element):
    ``d/d log_w_k = w_k / 2 [tr(P G_k) - r^T K^-1 G_k K^-1 r]`` with ``P = K^-1 - K^-1 X (X^T K^-1
    X)^-1 X^T K^-1`` (Harville, J. Am. Stat. Assoc. 72, 320 (1977)); ``K^-1`` from the Cholesky
    factor costs about two more factorisations.
    """
    n = len(b)
    chol = factor_covariance(log_w, gram, var)
    if chol is None:
        return (-np.inf, None, None) if gradient else (-np.inf, None)
    rhs = np.empty((n, 1 + fixed.shape[1]), order="F")
    rhs[:, 0] = b
    rhs[:, 1:] = fixed
    solved, info = lapack.dpotrs(chol, rhs, lower=True, overwrite_b=True)
    kib, kif = solved[:, 0], solved[:, 1:]
    try:
        fkf = linalg.cho_factor(fixed.T @ kif, lower=True, check_finite=False)
    except linalg.LinAlgError:
        return (-np.inf, None, None) if gradient else (-np.inf, None)
    beta = linalg.cho_solve(fkf, fixed.T @ kib, check_finite=False)
    kir = kib - kif @ beta
    value = -(np.sum(np.log(chol.diagonal())) + np.sum(np.log(np.diag(fkf[0])))) - 0.5 * float((b - fixed @ beta) @ kir)
    if not gradient:
        return float(value), (beta, kir)
    inverse, info = lapack.dpotri(chol, lower=True, overwrite_c=True)
    inverse = np.tril(inverse)  # K^-1's lower triangle (the upper holds K): tr(K^-1 G) = 2 L.G - diag
    m = linalg.cho_solve(fkf, kif.T, check_finite=False)  # (X^T K^-1 X)^-1 X^T K^-1
    grad = np.empty(len(gram))
    for i, (g, lw) in enumerate(zip(gram, log_w, strict=True)):
        trace = (2.0 * float(np.sum(inverse * g)) - float(np.diagonal(inverse) @ np.diagonal(g))
                 - float(np.sum((g @ kif) * m.T)))
        grad[i] = 0.5 * np.exp(-lw) * (trace - float(kir @ (g @ kir)))
    return float(value), (beta, kir), grad


def _maximise_reml(gram, fixed, b, var, start: np.ndarray | None) -> np.ndarray:
    """log weights maximising REML: a coarse grid (factors of e^3) then Nelder-Mead."""
    def cost(log_w):
        return -_reml(log_w, gram, fixed, b, var)[0]

    def cost_and_gradient(log_w):
        value, _, grad = _reml(log_w, gram, fixed, b, var, gradient=True)
        return -value, (-grad if grad is not None else np.zeros(len(log_w)))

    scales = [np.log(max(np.trace(g), 1e-300) / max(np.sum(var), 1e-300)) for g in gram]
    return maximise_log_weights(cost, scales, start, cost_and_gradient)


def maximise_log_weights(cost, scales: list[float], start: np.ndarray | None,
                         cost_and_gradient=None) -> np.ndarray:
    """Minimise ``cost(log_w)`` (minus a restricted log likelihood): a coarse grid, then Nelder-Mead.

    Parameters
    ----------
    cost : callable
        Of the log weights (K,).
    scales : list of float
        Per field, the log weight at which its covariance matches the data variance in size
        (``log(trace G_k / sum var)``): the centre of its grid.
    start : ndarray (K,), optional
        Starting log weights; NaN entries (default: all) are searched on the grid first.
    cost_and_gradient : callable, optional
        ``(cost, gradient)`` of the log weights: the grid's best point is then refined by
        L-BFGS-B (a few tens of evaluations) instead of Nelder-Mead (a few hundred).
    """
    offsets = np.arange(-6.0, 13.0, 3.0)
    n = len(scales)
    start = np.full(n, np.nan) if start is None else np.asarray(start, dtype=float)
    free = np.flatnonzero(~np.isfinite(start))
    if cost_and_gradient is not None and free.size:
        start = _coordinate_grid(cost, scales, start, free, offsets)
    elif free.size == n:  # everything free: a grid of every weight, centred on the first field's scale
        axes = [scales[0] + offsets] * free.size
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, free.size)
        start = grid[int(np.argmin([cost(g) for g in grid]))]
    elif free.size:
        # weights added to a fitted model: a grid of the added weights (centred on their own fields'
        # scales) jointly with each given weight in turn (an added field often trades off against one
        # of the others, e.g. compartments against the matter), the rest held at their start
        best, best_cost = start, np.inf
        for k in [None, *np.flatnonzero(np.isfinite(start))]:
            dims = list(free) if k is None else [k, *free]
            axes = [(start[d] + offsets - 3.0) if d == k else (scales[d] + offsets) for d in dims]
            grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(dims))
            for g in grid:
                trial = start.copy()
                trial[dims] = g
                value = cost(trial)
                if value < best_cost:
                    best, best_cost = trial, value
        start = best
    start = np.asarray(start, float)
    if cost_and_gradient is not None and np.isfinite(cost(start)):
        # bounds: a field 30 e-folds from the start is gone (or free) for every purpose
        res = optimize.minimize(cost_and_gradient, start, jac=True, method="L-BFGS-B",
                                bounds=[(v - 30.0, v + 30.0) for v in start],
                                options={"maxiter": 200, "ftol": 1e-10, "gtol": 1e-4})
        return np.asarray(res.x)
    res = optimize.minimize(cost, start, method="Nelder-Mead",
                            options={"xatol": 0.05, "fatol": 0.01, "maxfev": 400})
    return np.asarray(res.x)


def _coordinate_grid(cost, scales, start: np.ndarray, free: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Coarse start of a gradient search: the grid's values one weight at a time (two sweeps).

    Free weights start at their own fields' scale (+3, the grid's middle) and sweep their
    grids; given weights then sweep ``start +- 9``, then the free ones again: a few tens of
    evaluations where the full grid of every weight costs ``7^K``; the gradient search that
    follows resolves what the sweeps leave coupled (e.g. compartments against the matter).
    """
    point = start.copy()
    point[free] = [scales[d] + 3.0 for d in free]
    best_cost = cost(point)
    given = np.flatnonzero(np.isfinite(start))
    if given.size == 0:
        order = [*free, *free]
    else:
        order = [*free, *given, *free]
    for d in order:
        axis = (scales[d] + offsets) if d in free else (start[d] + offsets - 3.0)
        for v in axis:
            if v == point[d]:
                continue
            trial = point.copy()
            trial[d] = v
            value = cost(trial)
            if value < best_cost:
                point, best_cost = trial, value
    return point


def _fit_rows(basis: StructureBasis, b: np.ndarray, rows: np.ndarray, start, passes: int):
    """REML fit on the positions ``rows``: log weights, fixed effects, K^-1 r, fitted counts."""
    gram = [g[np.ix_(rows, rows)] for g in basis.gram]
    fixed = basis.fixed[rows]
    data = b[rows]
    var = np.maximum(data, 1.0)
    log_w = start
    for _ in range(passes):
        log_w = _maximise_reml(gram, fixed, data, var, log_w)
        _, (beta, kir) = _reml(log_w, gram, fixed, data, var)
        fitted = fixed @ beta + sum(g @ kir * np.exp(-lw) for g, lw in zip(gram, log_w, strict=True))
        var = np.maximum(fitted, 1.0)  # Poisson: the variance is the mean
    return log_w, beta, kir, fitted


def structure_solve(basis: StructureBasis, b: np.ndarray, passes: int = 2,
                    start: np.ndarray | None = None) -> StructureFit:
    """The structure model's posterior mean of one element map (counts on the object grid).

    Parameters
    ----------
    basis : StructureBasis
        From :func:`structure_basis`.
    b : ndarray (P,)
        Counts at the basis' positions (equivalent counts for normalised maps).
    passes : int
        Re-fits with the variance set to the fitted counts (the first uses the data).
    start : ndarray (K,), optional
        Starting log weights of the REML search; NaN entries (default: all) are first searched
        on a coarse grid (factors of e^3) with the others held.

    Returns
    -------
    StructureFit
        ``c`` clipped at 0 (areal densities are not negative).
    """
    with one_blas_thread():
        return _structure_solve(basis, b, passes, start)


def _structure_solve(basis: StructureBasis, b, passes: int, start=None) -> StructureFit:
    b = np.clip(np.asarray(b, dtype=float), 0.0, None)
    if b.shape != (basis.fixed.shape[0],):
        raise InvalidInputError(f"expected {basis.fixed.shape[0]} counts, got shape {b.shape}")
    rows = np.arange(len(b))
    log_w, beta, kir, fitted = _fit_rows(basis, b, rows, start, passes)
    value = _reml(log_w, basis.gram, basis.fixed, b, np.maximum(fitted, 1.0))[0]
    c, coefficients = posterior_map(basis, log_w, beta, kir)
    tiny = 1e-9 * max(float(b.mean()), 1e-30)
    return StructureFit(c, log_w, fitted, poisson_deviance(b, np.maximum(fitted, tiny)), value, coefficients)


def fitted_counts(basis: StructureBasis, log_w: np.ndarray, beta: np.ndarray, kir: np.ndarray) -> np.ndarray:
    """The model's counts at the basis' positions: ``X beta + sum_k w_k G_k K^-1 r``."""
    return basis.fixed @ beta + sum(g @ kir * np.exp(-lw) for g, lw in zip(basis.gram, log_w, strict=True))


def posterior_map(basis: StructureBasis, log_w: np.ndarray, beta: np.ndarray, kir: np.ndarray
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Posterior mean map (counts, clipped at 0) and coefficient fields from a REML solution.

    ``beta`` and ``kir`` are the fixed effects and ``K^-1 r`` of :func:`_reml` at ``log_w``.
    """
    ky, kx = basis.coarse_shape
    c = np.zeros(basis.shape[0] * basis.shape[1])
    coefficients = {}
    for i, name in enumerate(basis.names):
        # posterior mean of the field: trend + prior covariance x (A diag(f) S)^T K^-1 r
        z = (basis.whitened[i].T @ kir).reshape(ky, kx) / np.sqrt(basis.field_eigenvalues(i))
        cols = basis.fixed_columns(i)
        trend = basis.trend @ beta[cols] if cols.size else 0.0
        field_k = trend + np.exp(-log_w[i]) * sfft.idctn(z, type=2, norm="ortho").ravel()
        coefficients[name] = field_k.reshape(ky, kx)
        c += basis.features[i].ravel() * (basis.interp @ field_k)
    return np.clip(c.reshape(basis.shape), 0.0, None), coefficients


# least restricted log-likelihood gain of an added variance component (5 % level, boundary test)
_LRT_GAIN = 1.35


def subset_basis(basis: StructureBasis, names: list[str]) -> StructureBasis:
    """The structure basis restricted to some of its features (no recomputation)."""
    index = [basis.names.index(n) for n in names]
    cols = np.concatenate([basis.fixed_columns(i) for i in index]).astype(int)
    zero = basis.zero_mean or [False] * len(basis.names)
    return StructureBasis([basis.names[i] for i in index], basis.features[index], basis.interp, basis.coarse_shape,
                          [basis.whitened[i] for i in index], [basis.gram[i] for i in index], basis.fixed[:, cols],
                          basis.trend, basis.eigenvalues, basis.positions_px, basis.intensity, basis.shape,
                          basis.spacing_px, [zero[i] for i in index])


def select_features(basis: StructureBasis, b: np.ndarray, optional: tuple[str, ...] = ("compartment",),
                    base_fit: StructureFit | None = None) -> tuple[StructureBasis, StructureFit, dict]:
    """Whether an element is enriched in the optional features (compartments): kept or dropped.

    The model without the ``optional`` features (the base) and the model with them are fitted
    by REML (the larger one started from the base's weights, its new weights searched on a
    coarse grid first). The optional features must be ``zero_mean`` in the basis
    (:func:`structure_basis`): both models then have the same fixed effects and their
    restricted likelihoods compare. The larger model is kept when

    - its restricted log likelihood is higher by more than 1.35 (a likelihood-ratio test of a
      variance component on the boundary at the 5 % level: twice the gain against the 50:50
      mixture of chi-square with 0 and 1 degrees of freedom, critical value 2.71; Self & Liang,
      J. Am. Stat. Assoc. 82, 605 (1987)), and
    - the element is *enriched* in each optional feature: the feature-weighted mean of its
      coefficient field is positive. Why the sign: with a reconstructed probe and phase, the
      compartment map (the top-hat of the matter) also absorbs cell-scale mismatches of the
      footprint model, which the elements that only follow the matter pick up with a negative
      coefficient and a likelihood gain although their maps move away from the truth (measured
      on the ``small`` simulation: S, K, Fe). An element depleted in a compartment is still
      described by the base model (a lower ``a_m``).

    The held-out Poisson deviance of both (:func:`xmulti.joint.heldout.heldout_prediction`, four interleaved folds)
    is reported, not used: at the footprint scale it does not see the compartment edges (on
    the ``small`` simulation it preferred the base model for P, whose map the compartment
    improves, and the larger one for S and K, whose maps it degrades).

    Parameters
    ----------
    basis : StructureBasis
        With every feature (:func:`structure_basis`).
    b : ndarray (P,)
        Counts (equivalent counts) at the basis' positions.
    optional : tuple of str
        Features the element may or may not follow (those absent from the basis are ignored).
    base_fit : StructureFit, optional
        The base model's fit, if already made.

    Returns
    -------
    basis : StructureBasis
        Of the chosen model.
    fit : StructureFit
    info : dict
        ``heldout_deviance_base`` and ``heldout_deviance_full`` per position, the REML gain and
        the weighted mean coefficient of each optional feature (absent when there was none).
    """
    from .heldout import heldout_prediction, unit_deviance  # it builds on this module

    with one_blas_thread():
        b = np.clip(np.asarray(b, dtype=float), 0.0, None)
        extra = [n for n in basis.names if n in optional]
        zero = basis.zero_mean or [False] * len(basis.names)
        if not all(zero[basis.names.index(n)] for n in extra):
            raise InvalidInputError(f"the optional features {', '.join(extra)} must be zero_mean in the structure "
                                    "basis (structure_basis(..., zero_mean=...)) for their likelihoods to compare")
        base = subset_basis(basis, [n for n in basis.names if n not in optional]) if extra else basis
        fit0 = _structure_solve(base, b, 2) if base_fit is None else base_fit
        if not extra:
            return base, fit0, {}
        start = np.array([fit0.log_weights[base.names.index(n)] if n in base.names else np.nan
                          for n in basis.names])
        fit1 = _structure_solve(basis, b, 2, start)
        floor = 1e-6 * max(float(b.mean()), 1e-30)
        dev = [unit_deviance(b, np.nan_to_num(heldout_prediction(bs, b, f.log_weights, np.maximum(f.fitted, 1.0))),
                             floor).mean() for bs, f in ((base, fit0), (basis, fit1))]
        enrichment = {}
        for n in extra:
            f = basis.features[basis.names.index(n)].ravel()
            enrichment[n] = float(f @ (basis.interp @ fit1.coefficients[n].ravel()) / max(float(f.sum()), 1e-300))
        info = {"heldout_deviance_base": float(dev[0]), "heldout_deviance_full": float(dev[1]),
                "restricted_log_likelihood_gain": float(fit1.reml - fit0.reml),
                **{f"{n}_coefficient_mean": v for n, v in enrichment.items()}}
        if fit1.reml - fit0.reml > _LRT_GAIN and all(v > 0 for v in enrichment.values()):
            return basis, fit1, info
        return base, fit0, info
