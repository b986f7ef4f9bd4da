"""Probe-guided resolution bridging: XRF element maps at the ptychographic pixel.

Forward model (the probe intensity is the XRF excitation footprint): the signal of an element
at scan position ``j`` is

    b_j = sum_n I(r_n - p_j) c(r_n)

with ``c`` the element's map on the object (phase) grid, ``I`` the probe intensity normalised
to sum 1 (mixed modes add; :func:`xmulti.footprint.probe_intensity`) and ``p_j`` the beam
centre. With that normalisation ``c`` is in the units of the XRF map: a uniform sample of
value ``c`` gives ``b = c``. The operator ``A`` is a zero-padded FFT correlation of ``c`` with
``I`` on the object grid (the footprint-weighted sum at every integer beam position), sampled
bilinearly at the fractional beam positions; its adjoint scatters the data with the same
bilinear weights and convolves with ``I``. Cost: two real FFTs of the padded grid per
application, never a dense (positions x pixels) matrix.

Estimators of ``c`` (all on the object grid):

- :func:`interpolate_map`: the XRF map resampled onto the phase grid (baseline);
- :func:`richardson_lucy`: Richardson-Lucy / MLEM with the probe intensity and the actual
  positions (Richardson, JOSA 62, 55 (1972); Lucy, AJ 79, 745 (1974); Shepp & Vardi, IEEE TMI
  1, 113 (1982)), stopped by the discrepancy principle;
- :func:`guided_solve`: Poisson likelihood, non-negativity and a quadratic *directional*
  smoothness guided by the phase, ``R(c) = 1/2 sum |grad c|^2 - gamma (xi . grad c)^2`` with
  ``xi = grad phi / sqrt(|grad phi|^2 + eta^2)``: ``c`` is smooth where the phase is, and free
  to change across phase edges (the quadratic form of directional total variation,
  Ehrhardt & Betcke, SIAM J. Imaging Sci. 9, 1084 (2016)). Minimised by L-BFGS-B with
  bounds (Byrd, Lu, Nocedal & Zhu, SIAM J. Sci. Comput. 16, 1190 (1995)); the weight of ``R``
  is chosen by a discrepancy principle corrected for the effective degrees of freedom: the
  Poisson deviance of the fit equals its expected value ``P - dof(w)`` (``P`` measurements,
  ``dof`` the trace of the fit's influence matrix, estimated by one randomised re-solve,
  Girard, Numer. Math. 56, 1 (1989)). Plain Morozov (deviance = ``P``) is available and
  over-smooths here, where the unknowns outnumber the data (on the tiny simulated preset its
  weight is 3-5x above the error-minimising one; the corrected rule lands within a factor ~2).

Frame: the solution is on the reconstruction's grid and in its frame. A reconstructed probe
carries the probe/object translation ambiguity of ptychography; the estimate follows the
phase it is meant to be overlaid on.

Threads: L-BFGS-B does its vector algebra through BLAS; on a loaded machine a multi-threaded
BLAS makes each step ~10x slower than one thread (``OPENBLAS_NUM_THREADS=1``).

Data scale: the Poisson likelihood needs counts. Maps in other units (counts per i0, ug/cm2)
are turned into *equivalent counts* ``b / s`` with ``s = median(sigma^2 / b)`` over positions
with signal, ``sigma`` the 1-sigma map (``<El>_sigma`` of :func:`xmulti.fit_xrf`); without
one the map is taken as counts (``s = 1``). Negative values (unconstrained fits) are set to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from ..footprint import probe_intensity

__all__ = [
    "FootprintOperator",
    "forward_operator",
    "phase_guide",
    "poisson_deviance",
    "richardson_lucy",
    "guided_solve",
    "interpolate_map",
    "element_names",
    "bridge_resolution",
]


class FootprintOperator:
    """``A c = sum_n I(r_n - p_j) c(r_n)`` and its adjoint on an object grid (pure numpy/cupy).

    Parameters
    ----------
    intensity : ndarray (N, M)
        Probe intensity normalised to sum 1, beam centre at pixel ``(N//2, M//2)``.
    positions_px : ndarray (P, 2)
        Beam centres as fractional object-pixel indices (y, x): ``(p - origin) / dx``.
    shape : (ny, nx)
        Object grid shape.
    xp : module
        numpy or cupy.
    """

    def __init__(self, intensity, positions_px, shape: tuple[int, int], xp=np):
        from scipy import fft as sfft

        self.xp = xp
        self.shape = (int(shape[0]), int(shape[1]))
        ny, nx = self.shape
        kernel = xp.asarray(intensity, dtype=float)
        n, m = kernel.shape
        self.padded = (sfft.next_fast_len(ny + n - 1, real=True), sfft.next_fast_len(nx + m - 1, real=True))
        # correlation with I = convolution with I flipped; output q sits at q + (N - 1 - N//2)
        self._khat = xp.fft.rfft2(kernel[::-1, ::-1], s=self.padded)
        self._offset = (n - 1 - n // 2, m - 1 - m // 2)
        pos = xp.asarray(positions_px, dtype=float)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise InvalidInputError(f"positions must be (P, 2) fractional (y, x) indices, not shape {tuple(pos.shape)}")
        if bool(xp.any((pos < 0) | (pos[:, :1] > ny - 1) | (pos[:, 1:] > nx - 1))):
            raise InvalidInputError(
                f"beam positions fall outside the object grid ({ny} x {nx} pixels): check positions and grid"
            )
        # bilinear sampling weights of the four neighbours of each beam centre
        i0 = xp.clip(xp.floor(pos).astype(int), 0, xp.asarray([ny - 2, nx - 2]))
        w = pos - i0
        self._index = xp.stack(
            [i0[:, 0] * nx + i0[:, 1], i0[:, 0] * nx + i0[:, 1] + 1,
             (i0[:, 0] + 1) * nx + i0[:, 1], (i0[:, 0] + 1) * nx + i0[:, 1] + 1], axis=1
        )
        self._weight = xp.stack(
            [(1 - w[:, 0]) * (1 - w[:, 1]), (1 - w[:, 0]) * w[:, 1], w[:, 0] * (1 - w[:, 1]), w[:, 0] * w[:, 1]], axis=1
        )
        self.n_positions = pos.shape[0]
        self.n_ffts = 0  # FFTs done so far (2 per application): the floor of benchmarks

    def blur(self, c):
        """Footprint-weighted sum at every integer beam position of the grid: ``(ny, nx)``."""
        xp = self.xp
        ny, nx = self.shape
        oy, ox = self._offset
        out = xp.fft.irfft2(xp.fft.rfft2(c, s=self.padded) * self._khat, s=self.padded)
        self.n_ffts += 2
        return out[oy : oy + ny, ox : ox + nx]

    def blur_adjoint(self, h):
        """Adjoint of :meth:`blur`."""
        xp = self.xp
        ny, nx = self.shape
        oy, ox = self._offset
        pad = xp.zeros(self.padded)
        pad[oy : oy + ny, ox : ox + nx] = h
        out = xp.fft.irfft2(xp.fft.rfft2(pad) * xp.conj(self._khat), s=self.padded)
        self.n_ffts += 2
        return out[:ny, :nx]

    def forward(self, c):
        """``A c``: (ny, nx) -> (P,)."""
        g = self.blur(c).ravel()
        return (g[self._index] * self._weight).sum(axis=1)

    def adjoint(self, b):
        """``A^T b``: (P,) -> (ny, nx)."""
        xp = self.xp
        ny, nx = self.shape
        flat = xp.bincount(self._index.ravel(), weights=(self._weight * xp.asarray(b, dtype=float)[:, None]).ravel(),
                           minlength=ny * nx)
        return self.blur_adjoint(flat.reshape(ny, nx))


def forward_operator(intensity, positions_px, shape, xp=np) -> FootprintOperator:
    """The footprint operator ``A`` of a probe intensity at fractional positions (see
    :class:`FootprintOperator`)."""
    return FootprintOperator(intensity, positions_px, shape, xp=xp)


def poisson_deviance(b, m, xp=np) -> float:
    """Poisson deviance ``2 sum [b log(b/m) - (b - m)]`` (``b log b = 0`` at ``b = 0``)."""
    b = xp.asarray(b, dtype=float)
    m = xp.asarray(m, dtype=float)
    ratio = xp.where(b > 0, b / m, 1.0)
    return float(2.0 * xp.sum(xp.where(b > 0, b * xp.log(ratio), 0.0) - (b - m)))


# ----------------------------------------------------------------------------- guide


@dataclass(frozen=True)
class Guide:
    """Unit-bounded edge directions ``xi`` (y, x components) of the phase, and the edge scale."""

    xi_y: np.ndarray
    xi_x: np.ndarray
    eta: float


def _grad(u, xp=np):
    """Forward differences (Neumann: zero on the last row / column)."""
    gy = xp.zeros_like(u)
    gx = xp.zeros_like(u)
    gy[:-1] = u[1:] - u[:-1]
    gx[:, :-1] = u[:, 1:] - u[:, :-1]
    return gy, gx


def _grad_adjoint(py, px, xp=np):
    """Adjoint of :func:`_grad` (minus the divergence)."""
    out = xp.zeros_like(py)
    out[:-1] -= py[:-1]
    out[1:] += py[:-1]
    out[:, :-1] -= px[:, :-1]
    out[:, 1:] += px[:, :-1]
    return out


def phase_guide(phase, smooth_px: float = 1.0, eta_factor: float = 3.0) -> Guide:
    """Edge directions of the phase for the directional regulariser.

    The phase is smoothed by a Gaussian of ``smooth_px`` pixels (reconstruction noise makes
    false edges); ``eta = eta_factor * 1.4826 * median|d phi|`` over both difference
    components, a robust scale of the phase's small variations (noise, fine texture), so
    only gradients well above it count as edges. Offsets and ramps of a reconstructed phase
    do not matter (a ramp adds a constant gradient, small against cell edges).

    Parameters
    ----------
    phase : ndarray (ny, nx)
        Phase (rad) on the object grid; NaN allowed (treated as flat).
    """
    from scipy import ndimage

    phi = np.asarray(phase, dtype=float)
    phi = np.where(np.isfinite(phi), phi, np.nanmedian(phi))
    if smooth_px > 0:
        phi = ndimage.gaussian_filter(phi, smooth_px, mode="nearest")
    gy, gx = _grad(phi)
    scale = 1.4826 * np.median(np.abs(np.concatenate([gy[:-1].ravel(), gx[:, :-1].ravel()])))
    eta = float(eta_factor * scale) if scale > 0 else 1e-12
    norm = np.sqrt(gy**2 + gx**2 + eta**2)
    return Guide(gy / norm, gx / norm, eta)


def _regulariser(c, guide: Guide | None, gamma: float, xp=np):
    """Value and gradient of ``1/2 sum |grad c|^2 - gamma (xi . grad c)^2``."""
    gy, gx = _grad(c, xp)
    if guide is None:
        return 0.5 * float(xp.sum(gy * gy + gx * gx)), _grad_adjoint(gy, gx, xp)
    s = guide.xi_y * gy + guide.xi_x * gx
    value = 0.5 * float(xp.sum(gy * gy + gx * gx - gamma * s * s))
    return value, _grad_adjoint(gy - gamma * guide.xi_y * s, gx - gamma * guide.xi_x * s, xp)


# ----------------------------------------------------------------------------- solvers


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


def _one_blas_thread():
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
    with _one_blas_thread():
        return _lbfgsb_run(op, b, c0, weight, guide, gamma, max_iter, tiny)


def _lbfgsb_run(op, b, c0, weight, guide, gamma, max_iter, tiny):
    from scipy.optimize import Bounds, minimize

    shape = op.shape

    def fun(v):
        c = v.reshape(shape)
        m = op.forward(c) + tiny
        r_val, r_grad = _regulariser(c, guide, gamma)
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


# ----------------------------------------------------------------------------- labelled ops

_METHODS = ("guided", "richardson_lucy", "interpolate")


def interpolate_map(maps, phase, elements=None):
    """Baseline: XRF maps resampled (bilinear) onto the phase grid.

    Parameters
    ----------
    maps : xarray.Dataset
        Element maps on ``(y, x)`` (um), e.g. from :func:`xmulti.fit_xrf`.
    phase : xarray.DataArray (y, x)
        The target grid (um coordinates).
    elements : list of str, optional
        Default: every element map (:func:`element_names`).

    Returns
    -------
    xarray.Dataset on the phase grid, NaN outside the maps' extent
    (:func:`xmulti.register.maps_to_phase_grid`).
    """
    from ..register import maps_to_phase_grid

    names = _elements(maps, elements)
    out = maps_to_phase_grid(maps[names], phase, method="linear")
    out.attrs = {"method": "interpolate", "resampling": "linear"}
    return out


def element_names(maps) -> list[str]:
    """Names of the element maps of a Dataset: variables whose ``element`` attribute is their
    name (fit_xrf), else variables named by an element symbol."""
    from ..physics import atomic_number

    # fit_xrf marks <El>, <El>_nonneg and <El>_sigma with component "element"; only <El> is named by it
    names = [str(k) for k, v in maps.data_vars.items() if v.attrs.get("element") == str(k)]
    if names:
        return names
    out = []
    for name in maps.data_vars:
        try:
            atomic_number(str(name))
        except InvalidInputError:
            continue
        out.append(str(name))
    return out


def _elements(maps, elements) -> list[str]:
    import xarray as xr

    if not isinstance(maps, xr.Dataset):
        raise InvalidInputError(f"maps must be an xarray Dataset of element maps, got {type(maps).__name__}")
    if "y" not in maps.dims or "x" not in maps.dims:
        raise InvalidInputError(f"the maps must be on (y, x) in um, not {tuple(maps.dims)}")
    names = element_names(maps) if elements is None else [str(e) for e in elements]
    missing = [e for e in names if e not in maps.data_vars]
    if missing:
        raise InvalidInputError(f"no map for element(s) {', '.join(missing)}; maps have {', '.join(map(str, maps.data_vars))}")
    if not names:
        raise InvalidInputError("no element map found (give elements=[...])")
    return names


def _positions(maps, recon, positions_um) -> np.ndarray:
    """Beam centres (P, 2) um in the raster order of the maps' pixels (y slow, x fast)."""
    n = maps.sizes["y"] * maps.sizes["x"]
    if positions_um is not None:
        pos = np.asarray(positions_um, dtype=float)
        source = "positions_um"
    elif "corrected_position_y" in recon and recon["corrected_position_y"].size == n:
        pos = np.stack([recon["corrected_position_y"].values, recon["corrected_position_x"].values], axis=1)
        source = "the reconstruction's corrected positions"
    else:
        # irregular scans gridded by fit_xrf: each map pixel is a beam centre at its coordinates
        yy, xx = np.meshgrid(maps["y"].values, maps["x"].values, indexing="ij")
        pos = np.stack([yy.ravel(), xx.ravel()], axis=1)
        source = "the map pixel centres"
    if pos.shape != (n, 2):
        raise InvalidInputError(
            f"{source}: expected ({n}, 2) beam positions (y, x) in um for the {maps.sizes['y']} x "
            f"{maps.sizes['x']} maps, got shape {pos.shape}"
        )
    if not np.all(np.isfinite(pos)):
        raise InvalidInputError(f"{source} contain NaN or inf")
    return pos


def _counts_scale(values: np.ndarray, sigma: np.ndarray | None) -> float:
    """Map units per equivalent count: ``median(sigma^2 / b)`` where the signal is above its median."""
    if sigma is None:
        return 1.0
    good = np.isfinite(values) & np.isfinite(sigma) & (sigma > 0) & (values > 0)
    if not good.any():
        return 1.0
    strong = good & (values >= np.median(values[good]))
    return float(np.median(sigma[strong] ** 2 / values[strong]))


def bridge_resolution(
    maps,
    recon,
    positions_um=None,
    elements=None,
    method: str = "guided",
    *,
    gamma: float = 0.95,
    weight: float | None = None,
    max_iter: int = 500,
    max_rl_iter: int = 500,
    rule: str = "edf",
):
    """Element maps at the ptychographic pixel, from XRF maps and a reconstruction.

    Parameters
    ----------
    maps : xarray.Dataset
        Element maps on ``(y, x)`` (um), one pixel per beam position in raster order, e.g.
        :func:`xmulti.fit_xrf` output (units kept: counts, or counts per unit i0; the
        ``<El>_sigma`` maps, when present, set the equivalent counts of the Poisson
        likelihood, see the module doc). Computed (not lazy) inside.
    recon : xarray.Dataset
        ``phase (y, x)`` (rad, um coordinates of pixel centres) and ``probe`` (``(probe_y,
        probe_x)`` or ``(probe_mode, probe_y, probe_x)``, on the phase's pixel), as
        :func:`xmulti.reconstruct` returns and ``/reconstructed`` stores.
    positions_um : ndarray (P, 2), optional
        Beam centres (y, x) in um, in the maps' raster order. Default: the reconstruction's
        ``corrected_position_y/x`` when their number matches the maps, else the maps' pixel
        centres.
    elements : list of str, optional
        Default: every element map.
    method : {"guided", "richardson_lucy", "interpolate"}
        Phase-guided Poisson MAP (:func:`guided_solve`), Richardson-Lucy with the probe
        intensity, or plain interpolation (:func:`interpolate_map`).
    gamma, weight, max_iter, rule : see :func:`guided_solve`.
    max_rl_iter : int
        Iteration cap of Richardson-Lucy.

    Returns
    -------
    xarray.Dataset
        One ``(y, x)`` variable per element on the phase grid, in the maps' units (attrs per
        variable: weight, iterations, objective, deviance, counts scale), and ``coverage``
        (``A^T 1`` relative to its maximum: how much of the data sees each pixel; values where
        it is near 0 are set by the regulariser alone). Dataset attrs: method, regularisation,
        probe and positions used.
    """
    import xarray as xr

    if method not in _METHODS:
        raise InvalidInputError(f"method must be one of {', '.join(_METHODS)}, not {method!r}")
    names = _elements(maps, elements)
    if not isinstance(recon, xr.Dataset) or "phase" not in recon or "probe" not in recon:
        raise InvalidInputError("recon must be a reconstruction Dataset with 'phase' (y, x) and 'probe'")
    phase = recon["phase"]
    from ..inputs import check_image
    from ..register import overlap_extent_um, pixel_size_um

    check_image(phase, "the reconstructed phase")
    overlap_extent_um(maps, phase)
    if method == "interpolate":
        return interpolate_map(maps, phase, names)
    dy, dx = pixel_size_um(phase, "y"), pixel_size_um(phase, "x")
    intensity = probe_intensity(np.asarray(recon["probe"].values))
    if intensity.shape[0] >= phase.shape[0] or intensity.shape[1] >= phase.shape[1]:
        raise InvalidInputError(
            f"the probe ({intensity.shape[0]} x {intensity.shape[1]}) is not smaller than the phase "
            f"{tuple(phase.shape)}: give the probe on the object grid"
        )
    pos_um = _positions(maps, recon, positions_um)
    origin = np.array([float(phase["y"][0]), float(phase["x"][0])])
    frac = (pos_um - origin) / np.array([dy, dx])
    guide = phase_guide(np.asarray(phase.values, dtype=float)) if method == "guided" else None
    data = {}
    op_all = None
    for el in names:
        values = np.asarray(maps[el].values, dtype=float).ravel()
        sigma_name = f"{el}_sigma"
        sigma = np.asarray(maps[sigma_name].values, dtype=float).ravel() if sigma_name in maps else None
        keep = np.isfinite(values)
        if keep.sum() < 4:
            raise InvalidInputError(f"the {el} map has fewer than 4 finite pixels")
        op = forward_operator(intensity, frac[keep], phase.shape)
        if op_all is None:
            op_all = forward_operator(intensity, frac, phase.shape)
        scale = _counts_scale(values[keep], None if sigma is None else sigma[keep])
        counts = np.clip(values[keep] / scale, 0.0, None)
        if method == "guided":
            res = guided_solve(op, counts, gamma=gamma, weight=weight, max_iter=max_iter, guide=guide, rule=rule)
        else:
            res = richardson_lucy(op, counts, max_iter=max_rl_iter)
        attrs = {
            **maps[el].attrs,
            "method": method,
            "regularisation_weight": res.weight,
            "iterations": res.iterations,
            "objective": res.objective,
            "poisson_deviance": res.deviance,
            "degrees_of_freedom": res.dof,
            "n_measurements": int(counts.size),
            "counts_scale": scale,
        }
        data[el] = (("y", "x"), (res.c * scale).astype(np.float32), attrs)
    coverage = op_all.adjoint(np.ones(op_all.n_positions))
    data["coverage"] = (("y", "x"), (coverage / coverage.max()).astype(np.float32),
                        {"units": "1", "long_name": "relative sum of the footprints over the positions"})
    if method == "guided":
        regularisation = (
            f"Poisson likelihood + w * directional smoothness guided by the phase (gamma {gamma}, eta "
            f"{guide.eta:.3g} rad/pixel), w " + ("given" if weight is not None else (
                "by the discrepancy principle with effective degrees of freedom (deviance = P - dof)"
                if rule == "edf" else "by Morozov's discrepancy principle (deviance = P)"))
        )
    else:
        regularisation = "none; iterations stopped by the discrepancy principle"
    probe = np.asarray(recon["probe"].values)
    return xr.Dataset(
        data,
        coords={"y": phase["y"].values, "x": phase["x"].values},
        attrs={
            "method": method,
            "regularisation": regularisation,
            "elements": names,
            "probe_modes": int(probe.shape[0]) if probe.ndim == 3 else 1,
            "pixel_size_nm": dy * 1e3,
        },
    )
