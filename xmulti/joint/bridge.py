"""Probe-guided resolution bridging: XRF element maps at the ptychographic pixel (labelled operations).

Forward model (the probe intensity is the XRF excitation footprint): the signal of an element
at scan position ``j`` is ``b_j = sum_n I(r_n - p_j) c(r_n)`` with ``c`` the element's map on the
object (phase) grid, ``I`` the probe intensity normalised to sum 1 and ``p_j`` the beam centre
(:mod:`xmulti.joint.footprint_op`); ``c`` is in the units of the XRF map.

Estimators of ``c`` (``method=``):

- ``"structure"`` (default): ``c = a_m m + a_e e + a_1`` with ``m`` the matter seen by the phase,
  ``e`` its edges and slowly varying coefficient fields whose smoothness the data choose
  (restricted marginal likelihood), plus ``a_c k`` with ``k`` the phase's dense compartments
  for the elements enriched in them (a likelihood-ratio test of the restricted likelihood and
  the sign of ``a_c``), mixed with Richardson-Lucy by held-out prediction
  (:mod:`xmulti.joint.structure`);
- ``"guided"``: pixel-level Poisson MAP with a directional smoothness guided by the phase
  (:func:`xmulti.joint.deconvolve.guided_solve`);
- ``"richardson_lucy"``: Richardson-Lucy with the probe intensity
  (:func:`xmulti.joint.deconvolve.richardson_lucy`);
- ``"interpolate"``: the XRF map resampled onto the phase grid (:func:`interpolate_map`).

Frame: the solution is on the reconstruction's grid and in its frame. A reconstructed probe
carries the probe/object translation ambiguity of ptychography; the estimate follows the
phase it is meant to be overlaid on. The footprint is only as good as the probe: an
unconverged reconstruction (a smeared probe) limits every estimator here.

Data scale: the Poisson likelihood needs counts. Maps in other units (counts per i0, ug/cm2)
are turned into *equivalent counts* ``b / s`` with ``s = median(sigma^2 / b)`` over positions
with signal, ``sigma`` the 1-sigma map (``<El>_sigma`` of :func:`xmulti.fit_xrf`); without
one the map is taken as counts (``s = 1``). Negative values (unconstrained fits) are set to 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..errors import InvalidInputError
from .bridge_inputs import (
    _check_recon,
    _element_counts,
    _elements,
    _footprint_and_positions,
    element_names,
    footprints,
    levelled_phase,
)
from .bridge_structure import (
    _OPTIONAL,
    _choose_footprint,
    _features,
    _solve_structure,
    _tile_progress,
    _tiled_model,
    footprint_radius_px,
    structure_tiles,
)
from .deconvolve import SolveResult, guided_solve, richardson_lucy
from .footprint_op import (
    FootprintOperator,
    footprint_rows,
    forward_operator,
    poisson_deviance,
)
from .guide import phase_guide

__all__ = [
    "FootprintOperator",
    "SolveResult",
    "forward_operator",
    "phase_guide",
    "poisson_deviance",
    "richardson_lucy",
    "guided_solve",
    "interpolate_map",
    "element_names",
    "bridge_resolution",
    "levelled_phase",
    "footprint_radius_px",
    "choose_footprint_power",
    "footprints",
    "structure_tiles",
]


# ----------------------------------------------------------------------------- labelled ops

_METHODS = ("structure", "guided", "richardson_lucy", "interpolate")


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


def choose_footprint_power(maps, recon, positions_um=None, elements=None,
                           spacing_px: float | None = None, tile_steps: float | None = 12.0,
                           search_positions: int = 1000) -> tuple[float, dict]:
    """The footprint power of resolution bridging, chosen by held-out prediction of the XRF counts.

    What ``bridge_resolution(..., footprint_power="auto")`` does first, on its own: for a
    caller that bridges the elements in separate calls (one task per worker) and needs one
    footprint for all of them (they share one probe). See :mod:`xmulti.joint.footprint_fit`.

    Parameters
    ----------
    maps, recon, positions_um, elements, spacing_px, tile_steps, search_positions : as
        :func:`bridge_resolution`.

    Returns
    -------
    power : float
        Pass it as ``footprint_power`` (1.0: the probe intensity as reconstructed).
    info : dict
        ``footprint_powers_tried`` and ``footprint_heldout_deviance`` (empty when no element
        map is finite at every position).
    """
    names = _elements(maps, elements)
    _check_recon(maps, recon)
    intensity, frac = _footprint_and_positions(maps, recon, positions_um)
    counts_of = {el: _element_counts(maps, el) for el in names}
    tiles = structure_tiles(intensity, frac, recon["phase"].shape, spacing_px, tile_steps, search_positions)
    power, _, info = _choose_footprint(intensity, frac, _features(recon, intensity, False), counts_of, spacing_px,
                                       tiles, search_positions)
    return power, info


def bridge_resolution(
    maps,
    recon,
    positions_um=None,
    elements=None,
    method: str = "structure",
    *,
    gamma: float = 0.95,
    weight: float | None = None,
    max_iter: int = 500,
    max_rl_iter: int = 500,
    rule: str = "edf",
    spacing_px: float | None = None,
    blend: bool = True,
    footprint_power: float | str | None = None,
    compartments: bool = True,
    tile_steps: float | None = 12.0,
    search_positions: int = 1000,
    progress: Callable[[str], None] | None = None,
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
        probe_x)`` or ``(probe_mode, probe_y, probe_x)``, on the phase's pixel), optional
        ``illumination``, as :func:`xmulti.reconstruct` returns and ``/reconstructed`` stores.
        A probe with a leading ``position`` dimension (one per beam position, in the maps'
        raster order: a variable-probe reconstruction) gives each position its own footprint
        (:func:`footprints`).
    positions_um : ndarray (P, 2), optional
        Beam centres (y, x) in um, in the maps' raster order. Default: the reconstruction's
        ``corrected_position_y/x`` when their number matches the maps, else the maps' pixel
        centres.
    elements : list of str, optional
        Default: every element map.
    method : {"structure", "guided", "richardson_lucy", "interpolate"}
        Structure model of the phase mixed with Richardson-Lucy by held-out prediction
        (:mod:`xmulti.joint.structure`), phase-guided pixel Poisson MAP (:func:`guided_solve`),
        Richardson-Lucy with the probe intensity, or plain interpolation (:func:`interpolate_map`).
    gamma, weight, max_iter, rule : see :func:`guided_solve` (method ``"guided"``).
    max_rl_iter : int
        Iteration cap of Richardson-Lucy.
    spacing_px : float, optional
        Method ``"structure"``: spacing (object pixels) of the coefficient fields; default the
        scan step.
    blend : bool
        Method ``"structure"``: mix with Richardson-Lucy by held-out prediction (False: the
        structure model alone).
    footprint_power : float or "auto", optional
        Footprint ``I^g / sum I^g`` instead of the probe intensity ``I = I^1``
        (:mod:`xmulti.joint.footprint_fit`: an unconverged reconstruction smears the probe).
        ``"auto"`` (method ``"structure"`` only): ``g`` chosen by held-out prediction of the
        counts of all the elements measured at every position
        (:func:`choose_footprint_power`). Default: ``"auto"`` for method ``"structure"`` (with
        a true or well-converged probe it keeps ``g = 1``), else 1.
    compartments : bool
        Method ``"structure"``: also offer each element the compartment feature (white
        top-hat of the smoothed matter with a disk of twice the footprint's 90 %-energy
        radius, :func:`xmulti.joint.guide.compartment_feature`), kept for the elements enriched
        in it whose restricted likelihood it raises significantly
        (:func:`xmulti.joint.structure.select_features`).
    tile_steps : float or None
        Method ``"structure"``: a scan wider than this many scan steps and with more than
        ``search_positions`` positions is solved in overlapping tiles whose cores are about
        that wide (a halo of 2.5 footprint radii, stitched with smooth weights;
        :mod:`xmulti.joint.tiled`), so the cost grows linearly with the positions instead of
        as their cube. None: one model of every position (memory and time grow as ``P^2``
        and ``P^3``).
    search_positions : int
        Tiled model: about how many tile members choose the shared smoothness weights of each
        element (the tiles holding the most matter); scans with no more positions than this
        are not tiled (:func:`xmulti.joint.bridge_structure.structure_tiles`).
    progress : callable, optional
        Called with a line of text per element (and per few tiles of a tiled model).

    Returns
    -------
    xarray.Dataset
        One ``(y, x)`` variable per element on the phase grid, in the maps' units (attrs per
        variable: the method's weights and fit quality, counts scale), and ``coverage``
        (``A^T 1`` relative to its maximum: how much of the data sees each pixel; values where
        it is near 0 are set by the prior alone). Dataset attrs: method, regularisation, probe
        modes, pixel size.
    """
    import xarray as xr

    if method not in _METHODS:
        raise InvalidInputError(f"method must be one of {', '.join(_METHODS)}, not {method!r}")
    names = _elements(maps, elements)
    if footprint_power is None:
        footprint_power = "auto" if method == "structure" else 1.0
    if isinstance(footprint_power, str):
        if footprint_power != "auto" or method != "structure":
            raise InvalidInputError(f"footprint_power must be a positive number or 'auto' (method 'structure'), "
                                    f"not {footprint_power!r} with method {method!r}")
    elif not (isinstance(footprint_power, (int, float)) and np.isfinite(footprint_power) and footprint_power > 0):
        raise InvalidInputError(f"footprint_power must be a positive number or 'auto', not {footprint_power!r}")
    phase = _check_recon(maps, recon)
    if method == "interpolate":
        return interpolate_map(maps, phase, names)
    from ..register import pixel_size_um

    dy = pixel_size_um(phase, "y")
    intensity, frac = _footprint_and_positions(maps, recon, positions_um)
    op_all = forward_operator(intensity, frac, phase.shape)
    guide = phase_guide(np.asarray(phase.values, dtype=float)) if method == "guided" else None
    features = _features(recon, intensity, compartments) if method == "structure" else None
    counts_of = {el: _element_counts(maps, el) for el in names}
    bases: dict[bytes, object] = {}  # one structure basis per set of finite positions
    fits: dict[str, object] = {}  # base-model fits made while choosing the footprint
    footprint_info: dict = {}
    tiles = (structure_tiles(intensity, frac, phase.shape, spacing_px, tile_steps, search_positions)
             if method == "structure" else None)
    if isinstance(footprint_power, str) and footprint_power == "auto":
        if progress is not None:
            progress("choosing the footprint power by held-out prediction"
                     + (f" ({len(tiles)} tiles)" if tiles is not None else ""))
        footprint_power, fits, footprint_info = _choose_footprint(intensity, frac, features, counts_of, spacing_px,
                                                                  tiles, search_positions)
    power = float(footprint_power)
    if power != 1.0:
        from .footprint_fit import powered_intensity

        intensity = powered_intensity(intensity, power)
    data = {}
    tiled: dict[bytes, object] = {}  # one tiled model per set of finite positions
    for i, el in enumerate(names):
        started = time.perf_counter()
        keep, counts, scale = counts_of[el]
        op = forward_operator(footprint_rows(intensity, keep), frac[keep], phase.shape)
        attrs = {**maps[el].attrs, "method": method, "n_measurements": int(counts.size), "counts_scale": scale,
                 "footprint_power": power, **footprint_info}
        if method == "structure":
            from .structure import structure_basis

            key = keep.tobytes()
            if key not in tiled:
                tiled[key] = _tiled_model(intensity, frac, keep, tiles, phase.shape, features, spacing_px,
                                          tile_steps, search_positions)
            if tiled[key] is not None:
                from .tiled_select import solve_structure_tiled

                c, extra = solve_structure_tiled(tiled[key], counts, op, _OPTIONAL, max_rl_iter, blend,
                                                 fits.get(el), _tile_progress(progress, el))
            else:
                if key not in bases:
                    bases[key] = structure_basis(footprint_rows(intensity, keep), frac[keep], features, spacing_px,
                                                 zero_mean=_OPTIONAL)
                c, extra = _solve_structure(bases[key], counts, op, max_rl_iter, blend, fits.get(el))
            attrs.update(extra)
        else:
            if method == "guided":
                res = guided_solve(op, counts, gamma=gamma, weight=weight, max_iter=max_iter, guide=guide, rule=rule)
            else:
                res = richardson_lucy(op, counts, max_iter=max_rl_iter)
            c = res.c
            attrs.update(regularisation_weight=res.weight, iterations=res.iterations, objective=res.objective,
                         poisson_deviance=res.deviance, degrees_of_freedom=res.dof)
        data[el] = (("y", "x"), (c * scale).astype(np.float32), attrs)
        if progress is not None:
            progress(f"bridged {el} ({i + 1}/{len(names)}) in {time.perf_counter() - started:.1f} s")
    coverage = op_all.adjoint(np.ones(op_all.n_positions))
    data["coverage"] = (("y", "x"), (coverage / coverage.max()).astype(np.float32),
                        {"units": "1", "long_name": "relative sum of the footprints over the positions"})
    return xr.Dataset(
        data,
        coords={"y": phase["y"].values, "x": phase["x"].values},
        attrs={
            "method": method,
            "regularisation": _regularisation_text(method, gamma, guide, weight, rule, blend),
            "elements": names,
            "probe_modes": int(recon["probe"].sizes.get("probe_mode", 1)) if "position" in recon["probe"].dims
            else (int(recon["probe"].shape[0]) if recon["probe"].ndim == 3 else 1),
            "per_position_footprint": int(intensity.ndim == 3),
            "footprint_power": power,
            "pixel_size_nm": dy * 1e3,
        },
    )


def _regularisation_text(method: str, gamma: float, guide, weight, rule: str, blend: bool) -> str:
    if method == "structure":
        return ("c = a_m * matter + a_e * edges + a_1 (+ a_c * compartments for the elements enriched in them) from "
                "the levelled phase, coefficient fields with thin-plate "
                "smoothness weighted by restricted marginal likelihood (Gaussian approximation of the Poisson "
                "counts)" + ("; mixed with Richardson-Lucy by held-out prediction (4 interleaved folds)" if blend else ""))
    if method == "guided":
        return (
            f"Poisson likelihood + w * directional smoothness guided by the phase (gamma {gamma}, eta "
            f"{guide.eta:.3g} rad/pixel), w " + ("given" if weight is not None else (
                "by the discrepancy principle with effective degrees of freedom (deviance = P - dof)"
                if rule == "edf" else "by Morozov's discrepancy principle (deviance = P)"))
        )
    return "none; iterations stopped by the discrepancy principle"
