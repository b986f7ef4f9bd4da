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
from ..footprint import probe_intensity
from .deconvolve import SolveResult, guided_solve, richardson_lucy
from .footprint_op import (
    FootprintOperator,
    footprint_rows,
    forward_operator,
    mean_footprint,
    poisson_deviance,
)
from .guide import phase_guide, structure_features

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
# features an element may or may not follow, kept per element (structure.select_features)
_OPTIONAL = ("compartment",)
# disk radius of the compartment top-hat, in footprint radii (90 % of the energy): the disk must
# hold a compartment whole (nuclei about as wide as the footprint) but not a cell's interior.
# Calibrated on the simulator: on the small preset (seeds 0-3) 1.5-2.25 all improve P and Cu
# (1.75 the most evenly); on the tiny preset, whose cells are barely wider than the footprint,
# 1.5-1.75 give a disk that holds a cell's interior, kept for P and worse (0.58 against 0.46 of
# interpolation), while at 2 the feature is the whole cell, brings no gain and is dropped
_COMPARTMENT_RADII = 2.0
# tiles of the structure model (xmulti.joint.bridge_tiles): the halo and the stitching ramps'
# half-width in footprint radii (90 % of the energy); a tile's map is then used up to 0.5 radius
# beyond its core, where its positions still reach 2 radii further
_HALO_RADII = 2.5
_BLEND_RADII = 0.5


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


def levelled_phase(recon) -> np.ndarray:
    """The reconstruction's phase levelled on its background (rad, NaN where unilluminated), as
    the structure model reads it (:func:`xmulti.inputs.level_reconstructed_phase`)."""
    from ..inputs import level_reconstructed_phase

    flat, _ = level_reconstructed_phase(recon)
    return np.asarray(flat.values, dtype=float)


def _element_counts(maps, el: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Finite positions of an element map, its (equivalent) counts there and the counts scale."""
    values = np.asarray(maps[el].values, dtype=float).ravel()
    sigma_name = f"{el}_sigma"
    sigma = np.asarray(maps[sigma_name].values, dtype=float).ravel() if sigma_name in maps else None
    keep = np.isfinite(values)
    if keep.sum() < 4:
        raise InvalidInputError(f"the {el} map has fewer than 4 finite pixels")
    scale = _counts_scale(values[keep], None if sigma is None else sigma[keep])
    return keep, np.clip(values[keep] / scale, 0.0, None), scale


def _check_recon(maps, recon):
    """The reconstruction's phase, checked, and overlapping the maps."""
    import xarray as xr

    from ..inputs import check_image
    from ..register import overlap_extent_um

    if not isinstance(recon, xr.Dataset) or "phase" not in recon or "probe" not in recon:
        raise InvalidInputError("recon must be a reconstruction Dataset with 'phase' (y, x) and 'probe'")
    phase = recon["phase"]
    check_image(phase, "the reconstructed phase")
    overlap_extent_um(maps, phase)
    return phase


def footprints(probe, n_positions: int) -> np.ndarray:
    """The XRF footprint of a reconstruction's probe: ``(N, M)``, or ``(P, N, M)`` per position.

    Parameters
    ----------
    probe : xarray.DataArray
        ``(probe_y, probe_x)`` or ``(probe_mode, probe_y, probe_x)`` (modes add incoherently);
        with a ``position`` dimension (a variable-probe reconstruction), one probe per beam
        position in the maps' raster order.
    n_positions : int
        Number of beam positions of the maps.

    Returns
    -------
    ndarray
        Intensity normalised to sum 1 (per position: each probe's flux is the i0 normalisation's
        business; the footprint is its shape).
    """
    if "position" not in probe.dims:
        return probe_intensity(np.asarray(probe.values))
    if probe.sizes["position"] != n_positions:
        raise InvalidInputError(f"the probe has {probe.sizes['position']} positions; the maps have {n_positions} "
                                "beam positions")
    order = ["position", *(["probe_mode"] if "probe_mode" in probe.dims else []),
             *[d for d in probe.dims if d not in ("position", "probe_mode")]]
    values = np.asarray(probe.transpose(*order).values)
    if values.ndim not in (3, 4):
        raise InvalidInputError(f"a per-position probe must be (position, [probe_mode,] probe_y, probe_x), not "
                                f"{tuple(probe.dims)}")
    return np.stack([probe_intensity(v) for v in values])


def _footprint_and_positions(maps, recon, positions_um) -> tuple[np.ndarray, np.ndarray]:
    """Probe intensity (sum 1; per position when the probe has a ``position`` dimension) and beam
    centres as fractional pixel indices of the phase grid."""
    from ..register import pixel_size_um

    phase = recon["phase"]
    dy, dx = pixel_size_um(phase, "y"), pixel_size_um(phase, "x")
    intensity = footprints(recon["probe"], maps.sizes["y"] * maps.sizes["x"])
    if intensity.shape[-2] >= phase.shape[0] or intensity.shape[-1] >= phase.shape[1]:
        raise InvalidInputError(
            f"the probe ({intensity.shape[-2]} x {intensity.shape[-1]}) is not smaller than the phase "
            f"{tuple(phase.shape)}: give the probe on the object grid"
        )
    pos_um = _positions(maps, recon, positions_um)
    origin = np.array([float(phase["y"][0]), float(phase["x"][0])])
    return intensity, (pos_um - origin) / np.array([dy, dx])


def _features(recon, intensity: np.ndarray, compartments: bool) -> dict[str, np.ndarray]:
    """The structure model's features of the levelled phase (compartment disk from the footprint)."""
    radius = _COMPARTMENT_RADII * footprint_radius_px(mean_footprint(intensity)) if compartments else None
    return structure_features(levelled_phase(recon), compartment_radius_px=radius)


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
    tiles = structure_tiles(intensity, frac, recon["phase"].shape, spacing_px, tile_steps)
    power, _, info = _choose_footprint(intensity, frac, _features(recon, intensity, False), counts_of, spacing_px,
                                       tiles, search_positions)
    return power, info


def _scan_step(frac: np.ndarray) -> float:
    from .structure import scan_step_px

    return scan_step_px(frac)


def structure_tiles(intensity, frac, shape, spacing_px, tile_steps):
    """Tiles of the structure model (:func:`xmulti.joint.bridge_tiles.split_bridge_tiles`): cores of
    ``tile_steps`` scan steps, a halo of 2.5 footprint radii; None when the scan fits in one tile
    (or ``tile_steps`` is None)."""
    from .bridge_tiles import split_bridge_tiles

    if tile_steps is None:
        return None
    radius = footprint_radius_px(mean_footprint(intensity))
    step = spacing_px if spacing_px is not None else _scan_step(frac)
    halo = max(_HALO_RADII * radius, step)
    tiles = split_bridge_tiles(frac, shape, np.shape(intensity)[-2:], step, halo,
                               min(max(_BLEND_RADII * radius, 1.0), halo), tile_steps)
    return tiles if len(tiles) > 1 else None


def _choose_footprint(intensity, frac, features, counts_of: dict, spacing_px, tiles=None, search_positions=1000):
    """Footprint power by held-out prediction over the elements measured at every position.

    Returns the power and the elements' fits when power 1 is chosen (their base-model fits,
    without the optional compartment feature), and the selection's attributes. With ``tiles``
    (more than one), on the search tiles of the tiled model.
    """
    from .footprint_fit import select_footprint_power, select_footprint_power_tiled

    full = [el for el, (keep, _, _) in counts_of.items() if keep.all()]
    if not full:  # every map has gaps: no common positions to compare footprints on
        return 1.0, {}, {}
    base = {k: v for k, v in features.items() if k not in _OPTIONAL}
    b = [counts_of[el][1] for el in full]
    if tiles is not None and len(tiles) > 1:
        spacing = spacing_px if spacing_px is not None else _scan_step(frac)
        power, fits, info = select_footprint_power_tiled(intensity, frac, base, b, tiles, spacing, search_positions)
    else:
        power, _, fits, info = select_footprint_power(intensity, frac, base, b, spacing_px)
    info["footprint_elements"] = list(full)  # the order of footprint_dispersion
    return power, (dict(zip(full, fits, strict=True)) if power == 1.0 else {}), info


def footprint_radius_px(intensity: np.ndarray, fraction: float = 0.9) -> float:
    """Radius (pixels) about the beam centre ``(N//2, M//2)`` of the disk holding ``fraction`` of
    the footprint's energy."""
    i = np.clip(np.asarray(intensity, dtype=float), 0.0, None)
    n, m = i.shape
    yy, xx = np.mgrid[0:n, 0:m]
    r = np.hypot(yy - n // 2, xx - m // 2).ravel()
    order = np.argsort(r)
    energy = np.cumsum(i.ravel()[order])
    if not energy[-1] > 0:
        raise InvalidInputError("the probe intensity is zero everywhere")
    return float(r[order][min(int(np.searchsorted(energy, fraction * energy[-1])), r.size - 1)])


def _solve_structure(basis, counts, op, max_rl_iter: int, blend: bool, fit=None) -> tuple[np.ndarray, dict]:
    """Structure model (and its mix with Richardson-Lucy) for one element: map and attributes.

    ``fit``: the base model's fit (without the optional features), if already made."""
    from .heldout import blend_with_richardson_lucy
    from .structure import select_features

    basis, fit, chosen = select_features(basis, counts, _OPTIONAL, fit)
    attrs = {"regularisation_weights_log": [float(v) for v in fit.log_weights], "features": list(basis.names),
             "restricted_log_likelihood": fit.reml, "poisson_deviance": fit.deviance, "structure_weight": 1.0,
             **chosen}
    c = fit.c
    if blend:
        rl = richardson_lucy(op, counts, max_iter=max_rl_iter)
        c, w, info = blend_with_richardson_lucy(basis, counts, fit, rl.c, max_rl_iter)
        attrs.update(info, structure_weight=w, poisson_deviance=poisson_deviance(counts, op.forward(c) + 1e-12))
    return c, attrs


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
        Method ``"structure"``: a scan wider than this many scan steps is solved in overlapping
        tiles whose cores are at most that wide (a halo of 2.5 footprint radii, stitched with
        smooth weights; :mod:`xmulti.joint.tiled`), so the cost grows linearly with the
        positions instead of as their cube. None: one model of every position (memory and
        time grow as ``P^2`` and ``P^3``).
    search_positions : int
        Tiled model: about how many tile members choose the shared smoothness weights of each
        element (the tiles holding the most matter).
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
    tiles = structure_tiles(intensity, frac, phase.shape, spacing_px, tile_steps) if method == "structure" else None
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
                from .tiled import solve_structure_tiled

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


def _tiled_model(intensity, frac, keep, tiles, shape, features, spacing_px, tile_steps, search_positions):
    """The tiled structure model of the positions ``keep`` (None when they fit in one tile)."""
    from .tiled import tiled_basis

    if tiles is None:
        return None
    rows = footprint_rows(intensity, keep)
    if not keep.all():  # a map with gaps: tiles of its own positions
        tiles = structure_tiles(rows, frac[keep], shape, spacing_px, tile_steps)
        if tiles is None:
            return None
    spacing = spacing_px if spacing_px is not None else _scan_step(frac[keep])
    return tiled_basis(rows, frac[keep], features, tiles, spacing, _OPTIONAL, search_positions)


def _tile_progress(progress, el: str):
    """``progress(done, total)`` of the tile solves, as a line every quarter of the tiles."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        if done == total or done % max(1, -(-total // 4)) == 0:
            progress(f"  {el}: {done}/{total} tiles solved")

    return report


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
