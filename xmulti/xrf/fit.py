"""Per-pixel linear fit of XRF spectra: the kernel that makes elemental maps.

With the calibration frozen (from the summed spectrum, :mod:`xmulti.xrf.calibrate`) the
expected spectrum of a pixel is linear in the component amplitudes, ``mu = G a``, with the
continuum inside ``G`` (a few smooth functions), so no per-pixel background is clipped and the
estimate is unbiased at any count level.

Weighting: the weighted least-squares estimate ``a = (G^T W G)^-1 G^T W y`` is unbiased for any
fixed weights; with ``W = diag(1 / mu_mean)``, the inverse Poisson variance of the scan's mean
spectrum (a per-pixel scale factor would cancel), it is close to the best linear unbiased
estimate for every pixel whose spectrum has roughly the mean's shape. The weights being shared,
the data enter only through ``b = G^T W y``, one float32 matrix product per chunk of spectra (the
cost floor), and everything else works in the small component space:

- the counts are read once: on numpy, the cast to float32, the NaN/negative check and the
  squares of the chi-square are one fused pass over each cache-sized block
  (:mod:`xmulti.xrf.fused`), which the band products then read from cache;
- ``a = b N^-1`` with ``N = G^T W G``. Each column of ``G`` is non-zero only over a band of
  channels (a line family with its escape peaks, a scatter peak, one B-spline of the continuum),
  so the product is taken band by band (:func:`channel_bands`): about half the multiply-adds of
  the dense product, the same result;
- weighted chi-square ``sum_c w_c (y_c - mu_c)^2 = y^2 . w - a . b``, divided by its
  expectation per degree of freedom ``sum_c lambda_c w_c / n_fit`` (``lambda = G a+``, the
  pixel's fitted model), so that it approximates the pixel's own Pearson chi-square, and by the
  degrees of freedom: a reduced chi-square near 1 for a good fit;
- 1-sigma uncertainties ``var(a_k) = sum_c P_ck^2 lambda_c`` for the Poisson variance
  ``lambda`` of the fitted non-negative model: its peaks, plus its continuum counts spread with
  the mean spectrum's continuum shape (the pixel's own B-spline coefficients are noisy and may
  be negative); only small matrices ``(P^2)^T G`` enter;
- the non-negative estimate ``a+`` minimises the same weighted chi-square under
  ``a_k >= 0`` for peak components (elements, scatter, pile-up; the continuum's B-spline
  coefficients stay free), solved in the component space (see :func:`nonnegative`).

All-zero spectra give zero amplitudes with infinite uncertainty and chi-square 0.

Also offered: SNIP background removal per pixel (:mod:`xmulti.xrf.snip`) before a fit without
continuum functions (biased at low counts, for comparison).

The kernels take an ``xp`` array module (numpy or cupy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from . import fused
from .model import SpectralModel

__all__ = ["FitPlan", "prepare_fit", "fit_spectra", "nonnegative", "unpack", "output_names", "channel_bands"]

#: Floor of the mean model spectrum in the weights, relative to its maximum.
_WEIGHT_FLOOR = 1e-6
#: Spectra per block inside a chunk (cache-sized).
_BLOCK_ROWS = 128
#: Spectra per block of the small component-space computations.
_SMALL_BLOCK_ROWS = 512
#: Maximum sweeps of the non-negative coordinate descent.
_NNLS_SWEEPS = 50
#: Stop when no value moves by more than this fraction of the largest value in a sweep (1e-4:
#: the result is within 3e-4 sigma of the converged one, 30 % faster than 1e-6).
_NNLS_TOLERANCE = 1e-4


@dataclass
class FitPlan:
    """Everything the per-pixel kernel needs, computed once and shared by all chunks.

    Attributes
    ----------
    bands : list of (int, int, ndarray)
        Channel ranges ``[lo, hi)`` of the fitted channels and the columns of ``[W G | 1]`` that
        are non-zero there (:func:`channel_bands`); column K (ones) gives the counts in range.
    band_matrices : list of ndarray float32
        ``[W G | 1][lo:hi, columns]`` of each band.
    inverse : ndarray (K, K) float64
        ``N^-1``.
    weights : ndarray (n_fit,) float32
        ``w = 1 / mu_mean``, for the chi-square.
    normal : ndarray (K, K) float64
        ``N = G^T W G``.
    variance : ndarray (K, K) float64
        ``Q = (P^2)^T G``: variance of the amplitudes per unit amplitude of each component.
    continuum_area : ndarray (K,) float64
        Counts in the fitted range per unit amplitude of each continuum function (0 for peaks).
    continuum_variance : ndarray (K,) float64
        ``(P^2)^T s`` for ``s`` the mean spectrum's continuum shape (unit area).
    continuum_weighted_area : float
        ``s . w``.
    constrained : ndarray (K,) bool
        Components forced non-negative in ``a+``.
    channel_slice : slice
        Fitted channels of the full spectrum.
    mean_total : float
        Counts of the mean spectrum in the fitted range.
    weighted_area : ndarray (K,) float64
        ``G^T w``: with it, ``a . G^T w / n_fit`` is the pixel's mean ratio to the mean spectrum.
    n_fit : int
        Fitted channels.
    dof : int
        Degrees of freedom ``n_fit - K``.
    names : list of str
        Component names.
    background : str
        ``"linear"`` or ``"snip"``.
    snip_width_channels : int
    """

    bands: list
    band_matrices: list
    inverse: np.ndarray
    weights: np.ndarray
    normal: np.ndarray
    variance: np.ndarray
    continuum_area: np.ndarray
    continuum_variance: np.ndarray
    continuum_weighted_area: float
    constrained: np.ndarray
    channel_slice: slice
    mean_total: float
    weighted_area: np.ndarray
    n_fit: int
    dof: int
    names: list[str]
    background: str = "linear"
    snip_width_channels: int = 0

    @property
    def n_components(self) -> int:
        """Number of fitted components K."""
        return len(self.names)

    def estimator(self) -> np.ndarray:
        """``P = W G N^-1`` (n_fit, K) float64: the amplitudes are ``a = y P`` (its squares
        give the Poisson variance of the estimate, ``var a = lambda P^2``)."""
        weighted_design = np.zeros((self.n_fit, self.n_components + 1))
        for (lo, hi, cols), matrix in zip(self.bands, self.band_matrices, strict=True):
            weighted_design[lo:hi, cols] = matrix
        return weighted_design[:, : self.n_components] @ self.inverse


def prepare_fit(
    model: SpectralModel,
    mean_spectrum,
    background: str = "linear",
    snip_width_channels: int | None = None,
) -> FitPlan:
    """Precompute the fixed linear estimator of a model.

    Parameters
    ----------
    model : SpectralModel
        Design matrix over the fitted channels (with continuum functions for
        ``background="linear"``; they are dropped for ``"snip"``).
    mean_spectrum : ndarray (n_fit,)
        Expected counts per channel of an average pixel over the fitted range (e.g. the
        calibration fit of the summed spectrum divided by the number of positions): sets the
        weights ``1 / mean_spectrum``.
    background : {"linear", "snip"}
        Continuum inside the linear model, or SNIP subtraction before the fit.
    snip_width_channels : int, optional
        SNIP window (default: twice the FWHM of a peak at the middle of the range, in channels).

    Returns
    -------
    FitPlan
    """
    if background not in ("linear", "snip"):
        raise InvalidInputError(f"background must be 'linear' or 'snip', got {background!r}")
    g = np.asarray(model.matrix, dtype=np.float64)
    names = model.names
    kinds = [c.kind for c in model.components]
    if background == "snip":
        keep = [k for k, kind in enumerate(kinds) if kind != "continuum"]
        g, names, kinds = g[:, keep], [names[k] for k in keep], [kinds[k] for k in keep]
    mu = np.asarray(mean_spectrum, dtype=np.float64)
    if mu.shape != (g.shape[0],):
        raise InvalidInputError(
            f"mean spectrum has {mu.shape} values, the model {g.shape[0]} fitted channels"
        )
    mu = np.maximum(mu, max(float(mu.max()), 1e-30) * _WEIGHT_FLOOR)
    w = 1.0 / mu
    normal = g.T @ (w[:, None] * g)
    try:
        inverse = np.linalg.inv(normal)
    except np.linalg.LinAlgError as exc:
        raise InvalidInputError(
            f"the spectral model is singular (components {names}); remove duplicate or "
            "indistinguishable components"
        ) from exc
    p = (w[:, None] * g) @ inverse
    weighted_design = np.concatenate([w[:, None] * g, np.ones((g.shape[0], 1))], axis=1)
    bands = channel_bands(weighted_design != 0)
    band_matrices = [np.ascontiguousarray(weighted_design[lo:hi, cols], dtype=np.float32) for lo, hi, cols in bands]
    if snip_width_channels is None:
        cal = model.calibration
        e_mid = 0.5 * (model.incident_energy_keV + 1.0)
        from .. import physics

        fwhm = physics.FWHM_PER_SIGMA * physics.detector_sigma_keV(
            e_mid, cal.noise_fwhm_keV, cal.fano
        )
        snip_width_channels = int(round(2.0 * fwhm / cal.gain_keV))
    constrained = np.array([kind != "continuum" for kind in kinds])
    mean_amplitudes = p.T @ np.asarray(mean_spectrum, dtype=np.float64)
    continuum_area = np.where(constrained, 0.0, g.sum(axis=0))
    shape = g[:, ~constrained] @ mean_amplitudes[~constrained]
    if shape.size and shape.sum() > 0:
        shape = np.maximum(shape, 0.0) / np.maximum(shape, 0.0).sum()
    else:
        shape = np.zeros(g.shape[0])
    return FitPlan(
        bands=bands,
        band_matrices=band_matrices,
        inverse=inverse,
        weights=w.astype(np.float32),
        normal=normal,
        variance=(p**2).T @ g,
        continuum_area=continuum_area,
        continuum_variance=(p**2).T @ shape,
        continuum_weighted_area=float(shape @ w),
        constrained=constrained,
        channel_slice=model.channel_slice,
        mean_total=float(np.sum(mean_spectrum)),
        weighted_area=g.T @ w,
        n_fit=int(g.shape[0]),
        dof=max(1, g.shape[0] - g.shape[1]),
        names=list(names),
        background=background,
        snip_width_channels=int(snip_width_channels),
    )


#: Cost of one more band in the band product, in multiply-adds per spectrum (a call's overhead).
_BAND_OVERHEAD = 1000


def channel_bands(support: np.ndarray, overhead: float = _BAND_OVERHEAD) -> list[tuple[int, int, np.ndarray]]:
    """Split the channels into bands so that a product by a banded matrix skips its zeros.

    Dynamic programming over the channels where the set of non-zero columns changes: it
    minimises ``sum over bands (channels x non-zero columns) + overhead x bands``, so the
    bands follow the supports of the peaks and continuum functions without making many
    small products.

    Parameters
    ----------
    support : ndarray (n_channels, n_columns) bool
        True where the matrix is non-zero.
    overhead : float
        Cost of each band, in multiply-adds per row.

    Returns
    -------
    list of (lo, hi, columns)
        Channel ranges ``[lo, hi)`` covering all channels in order, and the columns non-zero
        in each (sorted int arrays; at least one).
    """
    support = np.asarray(support, bool)
    n_channels = support.shape[0]
    change = np.flatnonzero(np.any(support[1:] != support[:-1], axis=1)) + 1
    edges = np.concatenate([[0], change, [n_channels]]).astype(int)
    # union of the supports of every run of elementary segments, by cumulative counts
    counts = np.concatenate([np.zeros((1, support.shape[1]), int), np.cumsum(support, axis=0)])
    best = np.full(len(edges), np.inf)
    best[0] = 0.0
    previous = np.zeros(len(edges), int)
    for j in range(1, len(edges)):
        starts = edges[:j]
        width = (counts[edges[j]] - counts[starts] > 0).sum(axis=1)
        cost = best[:j] + (edges[j] - starts) * np.maximum(width, 1) + overhead
        previous[j] = int(np.argmin(cost))
        best[j] = cost[previous[j]]
    bands = []
    j = len(edges) - 1
    while j > 0:
        i = previous[j]
        cols = np.flatnonzero(support[edges[i] : edges[j]].any(axis=0))
        bands.append((int(edges[i]), int(edges[j]), cols if cols.size else np.array([0])))
        j = i
    return bands[::-1]


def output_names(plan: FitPlan) -> list[str]:
    """Names of the columns of :func:`fit_spectra`'s packed output."""
    names = plan.names
    return (
        [f"{n}" for n in names]
        + [f"{n}_nonneg" for n in names]
        + [f"{n}_sigma" for n in names]
        + ["reduced_chi_square", "total_counts"]
    )


def fit_spectra(spectra, plan: FitPlan, xp=np):
    """Fit a chunk of spectra with a prepared plan.

    Parameters
    ----------
    spectra : ndarray (n, n_channels)
        Counts, full spectra (any real dtype; the fitted channels are cast to float32).
    plan : FitPlan
    xp : module
        Array module (numpy or cupy).

    Returns
    -------
    ndarray (n, 3 K + 2) float32
        Packed ``[a (K), a+ (K), sigma (K), reduced chi-square, counts in range]``, see
        :func:`output_names` and :func:`unpack`. Amplitudes are counts (not normalised).

    Raises
    ------
    InvalidInputError
        NaN, infinite or negative counts.
    """
    spectra = xp.asarray(spectra)
    if spectra.ndim != 2:
        raise InvalidInputError(f"spectra must be (position, channel), got shape {spectra.shape}")
    n = spectra.shape[0]
    k = plan.n_components
    band_matrices = [xp.asarray(m) for m in plan.band_matrices]
    weights = xp.asarray(plan.weights)
    # one output per band for the whole chunk, scattered into b once after the loop
    band_products = [xp.empty((n, len(cols)), dtype=xp.float32) for _, _, cols in plan.bands]
    weighted_square = xp.empty(n, dtype=xp.float32)
    # Row blocks small enough to stay in cache: the cast, the product and the squares then
    # cost one read of the spectra from memory. One reused buffer: no allocation per block
    # (Dask workers set a low malloc trim threshold, which makes every large temporary a
    # fresh mmap with page faults).
    buffer = xp.empty((min(n, _BLOCK_ROWS), plan.n_fit), dtype=xp.float32)
    check_sign = spectra.dtype.kind != "u"  # signed integers (e.g. int16 raw files) and floats
    # the cast, the sign check and the squares in one pass (the squares are of the counts, so
    # not with SNIP, whose squares are of the counts less the background)
    one_pass = fused.usable(xp, spectra) and plan.background == "linear"
    first = plan.channel_slice.start or 0
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(n, start + _BLOCK_ROWS)
        block = buffer[: stop - start]
        if one_pass:
            if not fused.cast_and_weighted_squares(
                spectra[start:stop], first, weights, block, weighted_square[start:stop]
            ):
                raise InvalidInputError("spectra contain NaN or negative counts")
        else:
            block[...] = spectra[start:stop, plan.channel_slice]  # cast to float32
            # checked in the cached copy: a second read of the spectra from memory would cost a
            # quarter of the fit (NaN fails the comparison too)
            if check_sign and block.size and not bool(block.min() >= 0):
                raise InvalidInputError("spectra contain NaN or negative counts")
        if plan.background == "snip":
            from .snip import snip_background

            block -= snip_background(block, plan.snip_width_channels, xp=xp)
        for (lo, hi, _), matrix, band_product in zip(plan.bands, band_matrices, band_products, strict=True):
            xp.matmul(block[:, lo:hi], matrix, out=band_product[start:stop])  # the large product
        if not one_pass:
            xp.multiply(block, block, out=block)
            xp.matmul(block, weights, out=weighted_square[start:stop])
    # b = sum over bands of each band's product placed in its columns: one small product with a
    # 0/1 selection matrix per band (fancy-index scatter-adds cost 6x more). Summed in float32,
    # like the band products themselves, then widened for the component-space steps.
    product = None
    for (_, _, cols), band_product in zip(plan.bands, band_products, strict=True):
        selection = xp.zeros((len(cols), k + 1), dtype=xp.float32)
        selection[xp.arange(len(cols)), xp.asarray(cols)] = 1.0
        if product is None:
            product = band_product @ selection
        else:
            product += band_product @ selection
    del band_products
    product = product.astype(xp.float64)
    b = product[:, :k]
    total = product[:, k]
    if not bool(xp.all(xp.isfinite(total))):
        raise InvalidInputError("spectra contain infinite counts")
    normal = xp.asarray(plan.normal)
    a = b @ xp.asarray(plan.inverse)
    constrained = xp.asarray(plan.constrained)
    a_plus = nonnegative(a, b, normal, constrained, xp=xp)
    out = xp.empty((n, 3 * k + 2), dtype=xp.float32)
    statistics = xp.asarray(_statistics_matrix(plan))
    continuum_variance = xp.asarray(plan.continuum_variance)
    # small row blocks keep the temporaries below the allocator's trim threshold
    for start in range(0, n, _SMALL_BLOCK_ROWS):
        rows = slice(start, min(n, start + _SMALL_BLOCK_ROWS))
        ab, ap = a[rows], a_plus[rows]
        # Variance model lambda: the peaks of a+ plus the pixel's continuum counts spread like
        # the mean spectrum's continuum (its own B-spline coefficients are noisy, can be < 0).
        # One product gives the peaks' variance (K), their expected weighted chi-square term and
        # the continuum counts (see _statistics_matrix).
        stats = ap @ statistics
        continuum = xp.maximum(stats[:, k + 1], 0.0)
        var = stats[:, :k]
        var += continuum[:, None] * continuum_variance
        # E[sum w (y - mu)^2] = sum_c lambda_c / mu_mean_c: dividing by it (times n_fit) turns
        # the shared-weight chi-square into the pixel's own Pearson chi-square in expectation
        expected = stats[:, k] + continuum * plan.continuum_weighted_area
        chi2 = xp.maximum(weighted_square[rows] - xp.einsum("ij,ij->i", ab, b[rows]), 0.0)
        block = out[rows]
        block[:, :k] = ab
        block[:, k : 2 * k] = ap
        xp.sqrt(xp.maximum(var, 0.0), out=block[:, 2 * k : 3 * k])
        block[:, 3 * k] = chi2 / xp.maximum(expected / plan.n_fit, 1e-12) / plan.dof
        block[:, 3 * k + 1] = total[rows]
    empty = xp.flatnonzero(total <= 0)
    if empty.size:  # all-zero pixels: zero with infinite uncertainty
        out[empty, : 2 * k] = 0.0
        out[empty, 2 * k : 3 * k] = xp.inf
        out[empty, 3 * k] = 0.0
    return out


def _statistics_matrix(plan: FitPlan) -> np.ndarray:
    """``(K, K + 2)`` matrix ``M`` such that ``a+ M`` gives, per pixel, the variance of the K
    amplitudes from the peak components of ``a+``, the peaks' part of the expected weighted
    chi-square ``sum_c lambda_c w_c`` and the continuum counts in the fitted range."""
    peaks = plan.constrained.astype(np.float64)[:, None]
    return np.concatenate(
        [plan.variance.T * peaks, plan.weighted_area[:, None] * peaks, plan.continuum_area[:, None]], axis=1
    )


def nonnegative(a, b, normal, constrained, max_sweeps: int = _NNLS_SWEEPS, xp=np):
    """Non-negative least squares in the component space, for many pixels at once.

    Minimises ``a^T N a / 2 - b^T a`` (the weighted chi-square of the linear model up to a
    constant) subject to ``a_k >= 0`` for the constrained components. The free components
    (continuum) are eliminated exactly (Schur complement ``S = N_cc - N_cf N_ff^-1 N_fc``), and
    the small problem in the constrained components is solved by projected coordinate descent
    (Gauss-Seidel with projection; e.g. Franc, Hlavac & Navara, CAIP 2005), vectorised over the
    pixels that need it (those with a negative unconstrained value), starting from the clipped
    unconstrained solution, until no value moves by more than 1e-4 of the largest value.

    Parameters
    ----------
    a : ndarray (n, K)
        Unconstrained solution ``N^-1 b``.
    b : ndarray (n, K)
        ``G^T W y``.
    normal : ndarray (K, K)
    constrained : ndarray (K,) bool
    max_sweeps : int

    Returns
    -------
    ndarray (n, K)
    """
    out = a.copy()
    k = a.shape[1]
    c = xp.flatnonzero(constrained)
    f = xp.flatnonzero(~constrained)
    todo = xp.flatnonzero(xp.any(a[:, c] < 0, axis=1))
    if todo.size == 0 or c.size == 0:
        return out
    # every gather and scatter below is one matrix product with a selection matrix: fancy
    # indexing of the (pixel, component) arrays cost more than the sweeps themselves
    eye = xp.eye(k)
    select_c = eye[:, c]  # (K, C)
    b_todo = b[todo]
    n_cc = normal[xp.ix_(c, c)]
    # the solution's rows are ``x place_x + b place_b``: x in the constrained columns, the free
    # ones eliminated exactly (N_ff^-1 (b_f - N_fc x))
    place_x = select_c.T.copy()  # (C, K)
    place_b = xp.zeros((k, k))
    if f.size:
        n_ff_inv = xp.linalg.inv(normal[xp.ix_(f, f)])
        n_fc = normal[xp.ix_(f, c)]
        schur = n_cc - n_fc.T @ n_ff_inv @ n_fc
        reduce_b = select_c - eye[:, f] @ (n_ff_inv @ n_fc)  # b_red = b_c - b_f N_ff^-1 N_fc
        place_x[:, f] = -(n_fc.T @ n_ff_inv)
        place_b[xp.ix_(f, f)] = n_ff_inv
    else:
        schur, reduce_b = n_cc, select_c
    diag = xp.diagonal(schur).copy()
    # (component, pixel) layout: each coordinate step reads contiguous rows. Each coordinate's
    # gradient is recomputed from x (one matrix-vector product) rather than kept up to date by
    # a rank-one update of every row (half the work)
    x = xp.ascontiguousarray(xp.maximum(select_c.T @ a[todo].T, 0.0))
    rhs = reduce_b.T @ b_todo.T
    tolerance = _NNLS_TOLERANCE * (float(xp.abs(x).max()) + 1e-12)
    step = xp.empty(x.shape[1])
    for _ in range(max_sweeps):
        largest = 0.0
        for j in range(c.size):
            # step = max(x_j - g_j / S_jj, 0) - x_j, g_j = S_j . x - b_j
            xp.matmul(schur[j], x, out=step)
            step -= rhs[j]
            step /= -diag[j]
            xp.maximum(step, -x[j], out=step)
            x[j] += step
            largest = max(largest, float(xp.abs(step).max()))
        if largest <= tolerance:
            break
    out[todo] = x.T @ place_x + b_todo @ place_b
    return out


def _to_numpy(array):
    return array.get() if hasattr(array, "get") else np.asarray(array)


def unpack(packed, plan: FitPlan) -> dict:
    """Split :func:`fit_spectra`'s packed output into named arrays.

    Returns
    -------
    dict
        ``amplitudes``, ``nonneg``, ``sigma`` (each (n, K)), ``reduced_chi_square`` and
        ``total_counts`` (n,).
    """
    k = plan.n_components
    return {
        "amplitudes": packed[:, :k],
        "nonneg": packed[:, k : 2 * k],
        "sigma": packed[:, 2 * k : 3 * k],
        "reduced_chi_square": packed[:, 3 * k],
        "total_counts": packed[:, 3 * k + 1],
    }
