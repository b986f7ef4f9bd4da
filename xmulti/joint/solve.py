"""Joint reconstruction: one object (thickness, element areal densities) fitted to both modalities.

:class:`JointProblem` evaluates the objective and its gradient in batches of positions
(memory bounded by the batch, not the scan); :func:`solve` minimises it with L-BFGS-B under
``t >= 0``, ``c >= 0``; :func:`joint_reconstruct` is the labelled operation (xarray in, xarray
out) that starts from the separate reconstructions. Model and references in ``docs/joint.md``.

The objective (negative log-likelihoods, both in the same units)::

    L(t, c, P) = L_ptycho(t, c, P) + lambda * 1/2 sum_ij ((m_ij(t, c, P) - d_ij) / sigma_ij)^2
                 + R(c) + R_t(t) + R_background(t)

with ``L_ptycho`` the Poisson (or Gaussian-amplitude) likelihood of the diffraction counts for
the transmission of :func:`xmulti.joint.model.transmission` seen by the probe ``P`` (started from
the reconstructed one and refined, or held fixed) at the reconstructed positions, ``d``,
``sigma`` the separately fitted XRF signal and its uncertainty at each position, ``R`` an
edge-weighted smoothness of the element maps whose edge weights come from the starting thickness
(edges of the structure permit edges in ``c``; the object grid has about ten times more pixels
than there are scan positions), ``R_t`` the same edge-weighted smoothness of the thickness with
its weight estimated from the start (empirical Bayes, ``thickness_smoothing``), and
``R_background`` the pin of the phase offset and ramp
(:func:`xmulti.joint.model.background_plane`). The setup is in :mod:`xmulti.joint.setup`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import optimize

from ..errors import InvalidInputError
from .deconvolve import one_blas_thread
from .problem import JointProblem
from .settings import JointSettings
from .setup import build_problem, result_dataset

__all__ = ["solve", "joint_reconstruct", "JointSettings"]


def solve(
    problem: JointProblem,
    t0_um: np.ndarray,
    c0_ug_cm2: np.ndarray,
    iterations: int = 30,
    callback: Callable[[int, float, dict], None] | None = None,
    refine_probe: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Minimise the joint objective with L-BFGS-B (bounds ``t >= 0``, ``c >= 0``).

    Variables are scaled by the square root of a diagonal Gauss-Newton curvature (illumination
    plus smoothness for ``t``, XRF coverage plus smoothness for ``c``, the number of positions
    for the probe),
    so one step size suits pixels that are seen often and rarely, and every kind of unknown.

    Parameters
    ----------
    problem : JointProblem
        Its probe is the start of the probe (and is left at the solution).
    t0_um, c0_ug_cm2 : ndarray
        Start (e.g. thickness from the separate phase, XRF maps interpolated to the grid).
    iterations : int
        L-BFGS-B iterations (each one or a few objective evaluations).
    callback : callable, optional
        ``callback(iteration, objective, terms)`` after each iteration.
    refine_probe : bool
        Refine the probe modes too (real and imaginary parts, unbounded).

    Returns
    -------
    t_um, c_ug_cm2 : ndarray
    probe : ndarray (K, N, N) complex
    history : list of dict
        Objective and its terms at the start and after each iteration.
    """
    if iterations < 0:
        raise InvalidInputError(f"iterations must be >= 0, got {iterations}")
    illum, xrf = problem.curvatures()
    k = problem.object_model.wavenumber_per_um
    d_t = 2.0 * k**2 * abs(problem.object_model.matrix_index) ** 2 * illum
    # a smoothness of weight mu adds up to 4 mu to a pixel's curvature (four neighbours)
    d_t = d_t + 4.0 * float(problem.thickness_smooth_scale) + 1e-3 * d_t.max() + 1e-30
    d_c = xrf.copy()
    if problem.smooth_scale is not None:
        d_c += 4.0 * np.asarray(problem.smooth_scale)[:, None, None]
    d_c = d_c + 1e-3 * d_c.reshape(len(d_c), -1).max(axis=1)[:, None, None] + 1e-30
    probe0 = np.asarray(problem.probe, complex)
    parts = [d_t.ravel(), d_c.ravel()]
    if refine_probe:
        # |O| ~ 1: each probe pixel is seen by every position
        parts.append(np.full(2 * probe0.size, 4.0 * len(problem.positions_px)))
    scale = np.sqrt(np.concatenate(parts))
    nt, nc = d_t.size, d_c.size
    shape_c = c0_ug_cm2.shape
    last: dict = {}

    def unpack(x: np.ndarray):
        t = x[:nt].reshape(problem.shape)
        c = x[nt : nt + nc].reshape(shape_c)
        if not refine_probe:
            return t, c, None
        re, im = np.split(x[nt + nc :], 2)
        return t, c, (re + 1j * im).reshape(probe0.shape)

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        t, c, probe = unpack(z / scale)
        value, grads, terms = problem.evaluate(t, c, probe)
        last.update(terms, objective=value)
        g = [grads["t"].ravel(), grads["c"].ravel()]
        if refine_probe:
            g += [2.0 * grads["probe"].real.ravel(), 2.0 * grads["probe"].imag.ravel()]
        return value, np.concatenate(g) / scale

    start = [np.clip(t0_um, 0, None).ravel(), np.clip(c0_ug_cm2, 0, None).ravel()]
    bounds = [(0.0, None)] * (nt + nc)
    if refine_probe:
        start += [probe0.real.ravel(), probe0.imag.ravel()]
        bounds += [(None, None)] * (2 * probe0.size)
    x0 = np.concatenate(start)
    fun(x0 * scale)
    history = [dict(last)]

    def _cb(_z: np.ndarray) -> None:
        history.append(dict(last))
        if callback is not None:
            callback(len(history) - 1, last["objective"], dict(last))

    x = x0
    if iterations > 0:
        # L-BFGS-B's vector algebra on ~10^5-10^6 unknowns on one BLAS thread: OpenBLAS threads
        # contending with the workers (or other jobs) on a loaded machine cost several times more
        with one_blas_thread():
            result = optimize.minimize(
                fun, x0 * scale, jac=True, method="L-BFGS-B", bounds=bounds, callback=_cb,
                options={"maxiter": int(iterations), "maxfun": 3 * int(iterations) + 5, "maxcor": 30,
                         "ftol": 1e-12, "gtol": 1e-10},
            )
        x = result.x / scale
    t, c, probe = unpack(x)
    probe = probe0 if probe is None else probe
    problem.set_probe(probe)
    return t, c, probe, history

def joint_reconstruct(
    scan_tree: Any,
    recon: Any,
    maps: Any,
    elements: list[str] | None = None,
    iterations: int = 100,
    client: Any = None,
    *,
    settings: JointSettings | None = None,
    refine_probe: bool = True,
    progress: Callable[[int, float, dict], None] | None = None,
    **changes: Any,
):
    """Thickness and element areal densities of one object fitted to both modalities.

    Parameters
    ----------
    scan_tree : xarray.DataTree
        From :func:`xmulti.open_scan`: ``/ptychography`` (diffraction frames, optional mask;
        read in batches of ``batch`` positions) and the incident energy.
    recon : xarray.Dataset
        From :func:`xmulti.reconstruct`: ``phase``, ``probe`` (held fixed), ``illumination``,
        ``corrected_position_y/x``, on ``(y, x)`` in um (the grid of the result).
    maps : xarray.Dataset
        From :func:`xmulti.fit_xrf` (normalised), with ``<El>`` and ``<El>_sigma`` for each
        element, on the scan grid.
    elements : list of str, optional
        Elements to fit; default every element map that has a ``_sigma``.
    iterations : int
        L-BFGS-B iterations.
    client : dask.distributed.Client, optional
        Evaluate the objective tile by tile on its workers (``tiles`` setting; each tile's
        frames are read once, on its worker; L-BFGS-B runs here). Without it, in this process.
    settings : JointSettings, optional
        How the objective is built: XRF weight, geometry, sensitivity, matrix, ice, noise model,
        smoothing, edges, element phase, levelling, batching (:class:`JointSettings`).
    **changes
        Any of those settings by name (``sensitivity=``, ``geometry=``, ``matrix=``...), applied
        on top of ``settings``; unknown names raise InvalidInputError.
    refine_probe : bool
        Refine the probe as a joint unknown (it sets both the diffraction and the XRF
        footprint); False holds the reconstructed probe fixed.
    progress : callable, optional
        ``progress(iteration, objective, terms)``.

    Returns
    -------
    xarray.Dataset
        ``thickness (y, x)`` um, one ``(y, x)`` variable per element in ug/cm2,
        ``thickness_initial`` (from the levelled phase), ``objective``, ``ptycho_term``,
        ``xrf_term``, ``smoothness_term (iteration)``; attrs: energy, geometry, weights, matrix.
    """
    cfg = (settings or JointSettings()).replace(**changes)
    if client is None and cfg.tiles is not None:
        raise InvalidInputError("tiles need a Dask client (the objective is evaluated tile by tile on its workers)")
    problem, t0, c0, info = build_problem(scan_tree, recon, maps, elements, client, settings=cfg)
    attrs = {**cfg.as_attrs(), "iterations": int(iterations), "refine_probe": int(bool(refine_probe))}
    if client is None:
        t, c, probe, history = solve(problem, t0, c0, iterations, progress, refine_probe)
        return result_dataset(t, c, t0, probe, history, problem, info, attrs)
    from .distributed import distribute

    with distribute(problem, client, cfg.tiles) as tiled:
        t, c, probe, history = solve(tiled, t0, c0, iterations, progress, refine_probe)
        attrs["tiles"] = len(tiled.parts)
        return result_dataset(t, c, t0, probe, history, tiled, info, attrs)
