"""The ``"structure"`` method of resolution bridging: features, tiles, footprint choice, one element's solve.

Helpers of :func:`xmulti.joint.bridge.bridge_resolution` for the structure model
(:mod:`xmulti.joint.structure`, and on tiles :mod:`xmulti.joint.tiled`): the features of the
levelled phase, the tiles of a scan wider than ``tile_steps`` scan steps, the footprint power
chosen by held-out prediction, and one element's model choice and mix with Richardson-Lucy.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from .bridge_inputs import levelled_phase
from .deconvolve import richardson_lucy
from .footprint_op import footprint_rows, mean_footprint, poisson_deviance
from .guide import structure_features

__all__ = ["footprint_radius_px", "structure_tiles"]

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


def _features(recon, intensity: np.ndarray, compartments: bool) -> dict[str, np.ndarray]:
    """The structure model's features of the levelled phase (compartment disk from the footprint)."""
    radius = _COMPARTMENT_RADII * footprint_radius_px(mean_footprint(intensity)) if compartments else None
    return structure_features(levelled_phase(recon), compartment_radius_px=radius)


def _scan_step(frac: np.ndarray) -> float:
    from .structure import scan_step_px

    return scan_step_px(frac)


def structure_tiles(intensity, frac, shape, spacing_px, tile_steps, search_positions: int = 1000):
    """Tiles of the structure model (:func:`xmulti.joint.bridge_tiles.split_bridge_tiles`): cores of
    ``tile_steps`` scan steps, a halo of 2.5 footprint radii; None (one model of every position)
    when the scan fits in one tile, ``tile_steps`` is None, or there are no more positions than
    ``search_positions``.

    Why the last: the search tiles' members then outnumber the positions (the halos overlap), so
    one model of every position costs no more per REML evaluation, and it is the exact model.
    Tiles also change the restricted likelihood itself: on the ``small`` preset, seed 1 with the
    reconstructed probe and phase, it chose a stiff edge coefficient for Ca (NRMSE 0.574 against
    0.500 with one model; seed 0 0.542 against 0.539).
    """
    from .bridge_tiles import split_bridge_tiles

    if tile_steps is None or len(frac) <= search_positions:
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


def _tiled_model(intensity, frac, keep, tiles, shape, features, spacing_px, tile_steps, search_positions):
    """The tiled structure model of the positions ``keep`` (None when they fit in one tile)."""
    from .tiled import tiled_basis

    if tiles is None:
        return None
    rows = footprint_rows(intensity, keep)
    if not keep.all():  # a map with gaps: tiles of its own positions
        tiles = structure_tiles(rows, frac[keep], shape, spacing_px, tile_steps, search_positions)
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
