"""Forward models and gradients of the joint reconstruction (pure array kernels via ``xp``).

One physical object, on the ptychographic object grid, is seen by both modalities:

- thickness ``t (y, x)`` of the matrix (um), optionally displacing an ice layer of thickness
  ``T`` (um);
- areal densities ``c_i (y, x)`` of the fitted elements (ug/cm2).

Ptychography sees the transmission (projection approximation, xmulti's sign convention: matter
gives negative phase)::

    O = exp(-i k [n_m t + n_ice (max(T - t, 0) - T) + sum_i eps_i c_i]),   n = delta - i beta

with ``k = 2 pi / lambda`` (rad/um), ``n`` from xraylib at the incident energy, ``eps_i`` the
optical path per unit areal density of element ``i`` (um per ug/cm2, xraylib index of the pure
element at 1 g/cm3; usually left out: trace elements change the phase by an unmeasurable
amount). The constant ``- n_ice T`` makes pure ice transmit with zero phase, as a reconstruction
normalised on its background does. Far field: ``Psi_j = fft2(P_j * O_j, norm="ortho")`` per
probe mode, ``P_j`` the probe shifted to position ``j`` and ``O_j`` the object window.

XRF sees, per position ``j`` and element ``i`` (map units, e.g. counts per i0)::

    m_ij = s_i sum_n I_j(n) c_i(n) A_i(n),   A_i = (1 - exp(-x_i)) / x_i,
    x_i = 1e-4 [chi_i,m rho_m t + chi_i,ice rho_ice max(T - t, 0)]         (t in um -> cm)

``I_j`` the normalised probe intensity (the excitation footprint), ``A_i`` the homogeneous-slab
self-absorption factor of :mod:`xmulti.joint.absorption` (``chi`` in cm2/g), ``s_i`` the
sensitivity (map units per ug/cm2).

Gradients are taken with Wirtinger calculus: for a real loss ``L`` of a complex ``O``,
``G = dL/dO*`` and ``dL/dt = 2 Re(conj(G) dO/dt)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .absorption import absorption_factor_of_exponent

__all__ = [
    "ObjectModel",
    "AbsorptionModel",
    "transmission",
    "absorption_factors",
    "ptycho_batch",
    "xrf_batch",
    "xrf_count_scale",
    "xrf_shifted_counts",
    "xrf_probe_weight",
    "background_plane",
    "smoothness",
]


@dataclass(frozen=True)
class ObjectModel:
    """Optical constants of the object model.

    Attributes
    ----------
    wavenumber_per_um : float
        ``k = 2 pi / lambda`` in rad/um.
    matrix_index : complex
        ``delta - i beta`` of the matrix at the incident energy.
    ice_index : complex
        ``delta - i beta`` of the ice (0 without ice).
    ice_thickness_um : float
        Thickness ``T`` of the ice layer the matrix displaces (0 for a dried sample).
    element_path_um : ndarray (E,) complex, optional
        ``eps_i``: optical path ``delta - i beta`` times length per unit areal density
        (um per ug/cm2); None leaves the elements out of the phase.
    """

    wavenumber_per_um: float
    matrix_index: complex
    ice_index: complex = 0j
    ice_thickness_um: float = 0.0
    element_path_um: np.ndarray | None = None


@dataclass(frozen=True)
class AbsorptionModel:
    """Self-absorption constants per element (arrays of shape (E,)).

    Attributes
    ----------
    chi_matrix_cm2_g, chi_ice_cm2_g : ndarray (E,)
        ``chi = mu(E0)/sin(psi_in) + mu(E_line)/sin(psi_out)`` of matrix and ice (cm2/g).
    matrix_density_g_cm3, ice_density_g_cm3 : float
    ice_thickness_um : float
    """

    chi_matrix_cm2_g: np.ndarray
    chi_ice_cm2_g: np.ndarray
    matrix_density_g_cm3: float
    ice_density_g_cm3: float = 0.92
    ice_thickness_um: float = 0.0


def transmission(t_um: Any, c_ug_cm2: Any, model: ObjectModel, xp: ModuleType = np) -> tuple[Any, Any]:
    """Object transmission ``O`` and ``dO/dt`` (per um) on the object grid.

    Parameters
    ----------
    t_um : array (H, W)
        Matrix thickness (um).
    c_ug_cm2 : array (E, H, W) or None
        Element areal densities (ug/cm2); used only when ``model.element_path_um`` is set.
    model : ObjectModel
    xp : module

    Returns
    -------
    obj : array (H, W) complex128
    dobj_dt : array (H, W) complex128
    """
    k = model.wavenumber_per_um
    path = model.matrix_index * t_um
    slope = xp.full(t_um.shape, model.matrix_index, dtype=complex)
    if model.ice_thickness_um > 0:
        ice = xp.maximum(model.ice_thickness_um - t_um, 0.0)
        path = path + model.ice_index * (ice - model.ice_thickness_um)
        slope = slope - model.ice_index * (t_um < model.ice_thickness_um)
    if model.element_path_um is not None and c_ug_cm2 is not None:
        path = path + xp.tensordot(xp.asarray(model.element_path_um), c_ug_cm2, axes=1)
    obj = xp.exp(-1j * k * path)
    return obj, obj * (-1j * k) * slope


def absorption_factors(t_um: Any, model: AbsorptionModel, xp: ModuleType = np) -> tuple[Any, Any]:
    """Self-absorption factors ``A_i`` (E, H, W) and their derivatives ``dA_i/dt`` (per um).

    ``A(x) = (1 - exp(-x))/x``; ``A'(x) = (exp(-x)(1 + x) - 1)/x^2`` (-1/2 + x/3 near 0).
    """
    chi_m = xp.asarray(model.chi_matrix_cm2_g, dtype=float)[:, None, None]
    chi_i = xp.asarray(model.chi_ice_cm2_g, dtype=float)[:, None, None]
    mass_m = 1e-4 * model.matrix_density_g_cm3 * t_um  # g/cm2 (t in um)
    x = chi_m * mass_m[None]
    dx_dt = xp.broadcast_to(chi_m * 1e-4 * model.matrix_density_g_cm3, x.shape)
    if model.ice_thickness_um > 0:
        ice_um = xp.maximum(model.ice_thickness_um - t_um, 0.0)
        x = x + chi_i * (1e-4 * model.ice_density_g_cm3 * ice_um)[None]
        dx_dt = dx_dt - chi_i * 1e-4 * model.ice_density_g_cm3 * (t_um < model.ice_thickness_um)[None]
    factor = absorption_factor_of_exponent(x, xp=xp)
    small = xp.abs(x) < 1e-3
    safe = xp.where(small, 1.0, x)
    slope = xp.where(small, -0.5 + x / 3.0, (xp.exp(-safe) * (1.0 + safe) - 1.0) / safe**2)
    return factor, slope * dx_dt


def ptycho_batch(
    windows: Any, probes: Any, amplitude: Any, valid: Any, fft: Any, noise: str = "poisson"
) -> tuple[float, Any, Any]:
    """Negative log-likelihood of a batch of diffraction frames and its gradient on the windows.

    Parameters
    ----------
    windows : array (B, N, N) complex
        Object windows ``O_j``.
    probes : array (B, K, N, N) or (1, K, N, N) complex
        Probe modes at each position (shifted by the subpixel remainder).
    amplitude : array (B, N, N) float
        ``sqrt(measured counts)``, unshifted FFT layout (zero frequency at index 0).
    valid : array (B, N, N) or (N, N) bool
        False for masked detector pixels and unusable frames (they add nothing).
    fft : xmulti.ptycho.fft.FFT2
    noise : {"poisson", "gaussian"}
        Poisson, ``L = sum (lam - I + I log(I / lam))`` with ``lam = sum_k |Psi_k|^2`` (the
        negative log-likelihood less that of the saturated model, ``lam = I``: the same
        gradient, and a value near half the number of bright pixels at the truth instead of a
        large constant), or Gaussian on amplitudes, ``L = 2 sum (|Psi| - sqrt(I))^2`` (the
        amplitude of Poisson counts has variance 1/4 only at high counts; below about 10
        counts ``sqrt(I)`` is biased low, e.g. ``E sqrt(I) = 0.77`` at ``lam = 1``; Godard et
        al., Opt. Express 20, 25914 (2012)). Both are in the units of the XRF chi-square / 2.

    Returns
    -------
    loss : float
    grad_windows : array (B, N, N) complex
        ``dL/dO_j*`` of each window (Wirtinger).
    grad_psi : array (B, K, N, N) complex
        ``dL/dpsi*`` of each exit wave (``conj(O_j) grad_psi`` is the gradient on the probe).
    """
    xp = fft.xp
    psi = probes * windows[:, None]
    spec = fft.forward(psi)
    model_int = (spec.real**2 + spec.imag**2).sum(axis=1)
    if noise == "poisson":
        counts = amplitude**2
        floor = 1e-12
        # I log(I / lam), with 0 log 0 = 0
        log_ratio = xp.where(counts > 0, counts * xp.log(xp.maximum(counts, floor) / (model_int + floor)), 0.0)
        loss_px = model_int - counts + log_ratio
        factor = 1.0 - counts / (model_int + floor)
    else:
        rho = xp.sqrt(model_int)
        loss_px = 2.0 * (rho - amplitude) ** 2
        factor = 2.0 * (1.0 - amplitude / xp.maximum(rho, 1e-12))
    loss_px = xp.where(valid, loss_px, 0.0)
    factor = xp.where(valid, factor, 0.0)
    spec *= factor[:, None]
    grad_psi = fft.inverse(spec)
    grad_windows = (xp.conj(probes) * grad_psi).sum(axis=1)
    return float(loss_px.sum(dtype=np.float64)), grad_windows, grad_psi


def xrf_count_scale(data: Any, sigma: Any, min_values: int = 10) -> np.ndarray:
    """Counts per map unit of each element, ``kappa_i``, from the fitted signal and its uncertainty.

    A value that is all signal has Poisson variance: ``sigma^2 = d / kappa``. The estimate is the
    median of ``d / sigma^2`` over the values at least 3 sigma above zero (the most
    signal-dominated; a background share of the variance lowers it, which the shift of
    :func:`xrf_shifted_counts` then carries). An element with fewer than ``min_values`` such
    values gets 0: its XRF term stays Gaussian (at that signal level the two agree).

    Parameters
    ----------
    data, sigma : ndarray (M, E)
        Fitted per-position signal and 1-sigma (map units; ``sigma = inf`` for a dropped value).

    Returns
    -------
    ndarray (E,) float64
    """
    data = np.asarray(data, float)
    sigma = np.asarray(sigma, float)
    scale = np.zeros(data.shape[1])
    for i in range(data.shape[1]):
        strong = np.isfinite(sigma[:, i]) & (sigma[:, i] > 0) & (data[:, i] > 3 * sigma[:, i])
        if strong.sum() >= min_values:
            scale[i] = float(np.median(data[strong, i] / sigma[strong, i] ** 2))
    return scale


def xrf_shifted_counts(data: Any, sigma: Any, count_scale: Any, xp: ModuleType = np) -> tuple[Any, Any]:
    """Shifted-Poisson form of fitted XRF values: ``D = kappa d + v`` and the shift ``v`` (counts).

    The fitted amplitude of a line is its counts less an estimated background and overlap, so its
    variance ``sigma^2`` exceeds the Poisson variance of the signal. The shifted-Poisson model
    (Yavuz & Fessler, Med. Image Anal. 2, 369 (1998), for pre-corrected counts) treats
    ``kappa d + v`` as Poisson with mean ``kappa m + v``, the shift ``v = max(kappa (kappa sigma^2 -
    d), 0)`` chosen so that the variance at ``m = d`` is the fit's own ``sigma^2``: the signal's share
    grows with the model, the background's stays.
    """
    kappa = xp.asarray(count_scale, dtype=float)[None, :]
    shift = xp.maximum(kappa * (kappa * sigma**2 - data), 0.0)
    shift = xp.where(xp.isfinite(shift), shift, 0.0)
    return kappa * data + shift, shift


def xrf_batch(
    emitted_windows: Any, footprints: Any, data: Any, sigma: Any, sensitivity: Any, xp: ModuleType = np,
    count_scale: Any = None, shifted: Any = None, shift: Any = None,
) -> tuple[float, Any, Any, Any]:
    """XRF misfit of a batch and its gradient: Gaussian, or shifted Poisson per element.

    Gaussian: ``L = 1/2 sum ((m - d)/sigma)^2``. Shifted Poisson (elements with
    ``count_scale > 0``, see :func:`xrf_shifted_counts`): ``L = sum M - D - D log(M / D)`` with
    ``M = kappa m + v``, the negative log-likelihood less that of the saturated model (zero at
    ``M = D``, the same curvature ``1 / sigma^2`` there as the Gaussian term). Unlike the
    Gaussian term with the fit's data-derived ``sigma`` (which weights low values up, a
    Neyman chi-square), it is unbiased at low counts.

    Parameters
    ----------
    emitted_windows : array (E, B, N, N)
        ``c_i A_i`` (ug/cm2) in each position's window.
    footprints : array (B, N, N)
        Normalised probe intensity at each position (each sums to 1).
    data : array (B, E)
        Separately fitted per-position XRF signal (map units).
    sigma : array (B, E)
        Its 1-sigma uncertainty; ``inf`` leaves a value out.
    sensitivity : array (E,)
        Map units per ug/cm2.
    count_scale : array (E,), optional
        ``kappa`` (counts per map unit, :func:`xrf_count_scale`); 0 or None: Gaussian.
    shifted, shift : array (B, E), optional
        ``D`` and ``v`` of :func:`xrf_shifted_counts` (computed here when not given).

    Returns
    -------
    loss : float
    grad_windows : array (E, B, N, N)
        ``dL/d(c_i A_i)`` in each window.
    model : array (B, E)
        Predicted signal.
    resid : array (B, E)
        ``dL/dm``: ``(m - d) / sigma^2`` for the Gaussian elements.
    """
    s = xp.asarray(sensitivity, dtype=float)
    model = xp.einsum("byx,ebyx->be", footprints, emitted_windows) * s[None, :]
    weight = 1.0 / sigma**2
    resid = (model - data) * weight
    losses = 0.5 * (model - data) ** 2 * weight
    if count_scale is not None and bool(xp.any(xp.asarray(count_scale) > 0)):
        kappa = xp.asarray(count_scale, dtype=float)
        if shifted is None or shift is None:
            shifted, shift = xrf_shifted_counts(data, sigma, kappa, xp)
        kept = (kappa[None, :] > 0) & xp.isfinite(sigma)
        # the model is >= 0 (c >= 0); a floor keeps log finite where a value has no shift
        big = kappa[None, :] * model + shift
        big = xp.maximum(big, 1e-9 * xp.maximum(shifted, 1.0))
        ratio = shifted / big
        # D log(M / D), 0 where D = 0 (the Gaussian columns, kappa = 0)
        log_term = shifted * xp.log(big / xp.where(shifted > 0, shifted, 1.0))
        poisson = big - shifted - log_term
        losses = xp.where(kept, poisson, losses)
        resid = xp.where(kept, kappa[None, :] * (1.0 - ratio), resid)
    loss = float(losses.sum())
    grad = (resid * s[None, :]).T[:, :, None, None] * footprints[None]
    return loss, grad, model, resid


def xrf_probe_weight(emitted_windows: Any, model: Any, resid: Any, sensitivity: Any, power: Any, xp: ModuleType = np) -> Any:
    """``q_j (B, N, N)`` with ``dL_xrf/dP_jk* = q_j P_jk`` (the footprint is ``|P_j|^2 / S_j``).

    ``dm_ij/dP_j* = P_j (s_i E_ij - m_ij) / S_j``, so ``q_j = sum_i r_ij (s_i E_ij - m_ij) / S_j``
    with ``r = dL/dm`` (``resid`` of :func:`xrf_batch`), ``E`` the emitted windows (E, B, N, N) and ``S_j = sum |P_j|^2``
    (``power``, (B,)).
    """
    s = xp.asarray(sensitivity, dtype=float)
    weighted = xp.einsum("be,ebyx->byx", resid * s[None, :], emitted_windows)
    return (weighted - (resid * model).sum(axis=1)[:, None, None]) / power[:, None, None]


def background_plane(t_um: Any, background: Any, weight: float, xp: ModuleType = np) -> tuple[float, Any]:
    """``R = 1/2 weight sum_bg (plane fit of t on the background)^2`` and its gradient (H, W).

    Ptychography leaves a global phase and a linear phase ramp free, and a refined probe takes
    them up: ``t + a + g.r`` fits the frames as well as ``t``. Pinning the least-squares plane of
    ``t`` over the background pixels (vacuum or ice, ``t = 0``) to zero removes those three
    directions and nothing else (``R = 1/2 w t_bg^T Pi t_bg``, ``Pi`` the projector on the
    plane's span).
    """
    ii, jj = xp.nonzero(background)
    design = xp.stack([xp.ones(ii.shape), ii.astype(float), jj.astype(float)], axis=1)
    values = t_um[ii, jj]
    coef = xp.linalg.lstsq(design, values, rcond=None)[0]
    fitted = design @ coef
    grad = xp.zeros_like(t_um)
    grad[ii, jj] = weight * fitted
    return 0.5 * weight * float(fitted @ fitted), grad


def smoothness(c: Any, weight_y: Any, weight_x: Any, scale: Any, xp: ModuleType = np) -> tuple[float, Any]:
    """Edge-weighted quadratic smoothness ``R = 1/2 sum_i scale_i sum_edges w (c_i(a) - c_i(b))^2``.

    Parameters
    ----------
    c : array (E, H, W)
    weight_y : array (H-1, W)
        Weights of the vertical neighbour pairs (small across edges of the structure).
    weight_x : array (H, W-1)
    scale : array (E,)

    Returns
    -------
    value : float
    grad : array (E, H, W)
    """
    sc = xp.asarray(scale, dtype=float)[:, None, None]
    dy = c[:, 1:, :] - c[:, :-1, :]
    dx = c[:, :, 1:] - c[:, :, :-1]
    wy = sc * weight_y[None] * dy
    wx = sc * weight_x[None] * dx
    value = 0.5 * float((wy * dy).sum() + (wx * dx).sum())
    grad = xp.zeros_like(c)
    grad[:, 1:, :] += wy
    grad[:, :-1, :] -= wy
    grad[:, :, 1:] += wx
    grad[:, :, :-1] -= wx
    return value, grad
