"""Checks and conventions shared by the labelled analysis functions (xarray in).

Matrices for mass from phase, element selection in a maps Dataset, units of maps (``counts``
gives Poisson uncertainties, ``ug/cm2`` enables mass fractions; a map without units is taken
as counts), per-pixel uncertainty maps, and the phase background model.
"""

from __future__ import annotations

import re

import numpy as np

from . import physics
from .errors import InvalidInputError
from .register import pixel_size_um

__all__ = ["resolve_matrix", "check_image", "select_elements", "map_units", "unit_slug", "map_variance",
           "flatten_phase", "level_reconstructed_phase"]

COUNT_UNITS = {"counts", "count", "cts", "photons", ""}
AREAL_UNITS = {"ug/cm2", "ug/cm^2", "µg/cm2", "µg/cm²", "ug cm-2"}
_MATRICES = {"protein": physics.PROTEIN, "ice": physics.ICE}


def resolve_matrix(spec: str | physics.Matrix | None) -> physics.Matrix | None:
    """A matrix from a name ("protein", "ice"), ``"FORMULA:DENSITY"`` (g/cm3), or a Matrix."""
    if spec is None or isinstance(spec, physics.Matrix):
        return spec
    key = str(spec).strip()
    if key.lower() in ("none", "vacuum", ""):
        return None
    if key.lower() in _MATRICES:
        return _MATRICES[key.lower()]
    formula, _, density = key.partition(":")
    try:
        rho = float(density)
    except ValueError:
        raise InvalidInputError(
            f"matrix {spec!r}: give 'protein', 'ice' or FORMULA:DENSITY_g_cm3, e.g. 'H2O:0.92'"
        ) from None
    physics.refractive_index(formula, 10.0, rho)  # validates the formula
    return physics.Matrix(formula, formula, rho)


def check_image(image, what: str) -> None:
    """Raise InvalidInputError unless ``image`` is ``(y, x)`` with regular increasing um axes."""
    if tuple(image.dims) != ("y", "x"):
        raise InvalidInputError(f"{what} must have dims (y, x), not {tuple(image.dims)}")
    pixel_size_um(image, "y"), pixel_size_um(image, "x")


def map_units(var) -> str:
    """The ``units`` attribute of a map (counts when absent)."""
    return str(var.attrs.get("units", "counts")).strip()


def unit_slug(units: str) -> str:
    """Units as a name suffix: ``counts``, ``ug_cm2`` or a sanitised form."""
    if units.lower() in COUNT_UNITS:
        return "counts"
    if units in AREAL_UNITS:
        return "ug_cm2"
    return re.sub(r"[^0-9A-Za-z]+", "_", units).strip("_") or "au"


def select_elements(maps, elements=None) -> list[str]:
    """Element variables of a maps Dataset (uncertainty variables ``*_sigma``/``*_err`` left out).

    Raises
    ------
    InvalidInputError
        When a requested element is not among the maps.
    """
    available = [str(v) for v in maps.data_vars if not re.search(r"_(sigma|err|error|uncertainty)$", str(v))
                 and tuple(maps[v].dims) == ("y", "x")]
    if elements is None:
        return available
    wanted = [e.strip() for e in (elements.split(",") if isinstance(elements, str) else elements) if e.strip()]
    missing = [e for e in wanted if e not in available]
    if missing:
        raise InvalidInputError(
            f"element map(s) {', '.join(missing)} not found; available: {', '.join(available) or 'none'}"
        )
    if not wanted:
        raise InvalidInputError("no element given")
    return wanted


def map_variance(maps, name: str, uncertainty=None) -> np.ndarray | None:
    """Per-pixel variance of map ``name``: from ``<name>_sigma`` (or ``_err``...) in
    ``uncertainty`` or ``maps``, else Poisson (the counts) for count maps, else None."""
    for source in (uncertainty, maps):
        if source is None:
            continue
        for suffix in ("_sigma", "_err", "_error", "_uncertainty"):
            if f"{name}{suffix}" in source:
                return np.asarray(source[f"{name}{suffix}"].values, dtype=float) ** 2
        if source is uncertainty and name in source:
            return np.asarray(source[name].values, dtype=float) ** 2
    if unit_slug(map_units(maps[name])) == "counts":
        return np.clip(np.asarray(maps[name].values, dtype=float), 0.0, None)  # Poisson
    return None




def flatten_phase(phase, labels, order: int | None = 1, margin_px: float = 2.0):
    """The phase minus its empty-background model, fitted away from the labelled regions.

    The background is a polynomial of total degree ``order`` (0: the median, 1: a plane: the
    linear ramp a ptychographic reconstruction is free to have, or a tilted ice layer) fitted
    to pixels more than ``margin_px`` from any region; None subtracts nothing.

    Returns
    -------
    flat : xarray.DataArray
        ``phase - background`` (rad).
    info : dict
        ``background_rad`` (mean of the model over the image), ``background_err_rad``
        (uncertainty of the model, ~ noise * sqrt(terms / pixels)), ``noise_rad`` (MAD of the
        background pixels about the model: the per-pixel phase noise), ``background_order``.
    """
    from skimage.segmentation import expand_labels

    from .segment import background_polynomial

    values = np.asarray(phase.values, dtype=float)
    outside = (expand_labels(np.asarray(labels.values), margin_px) == 0) & np.isfinite(values)
    info = {"background_rad": 0.0, "background_err_rad": 0.0, "noise_rad": 0.0,
            "background_order": -1 if order is None else int(order)}
    if order is None or outside.sum() < 8:
        return phase, info
    if order == 0:
        model = np.full(values.shape, float(np.median(values[outside])))
    else:
        model = background_polynomial(values, outside, int(order))
    residual = values[outside] - model[outside]
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    terms = (int(order) + 1) * (int(order) + 2) // 2
    info.update(background_rad=float(model.mean()), noise_rad=noise,
                background_err_rad=noise * float(np.sqrt(np.pi / 2 * terms / outside.sum())))
    flat = phase.copy(data=values - model)
    flat.attrs = {**phase.attrs, "background_removed": f"polynomial of order {order} fitted outside the regions"}
    return flat, info


def level_reconstructed_phase(recon, threshold: float = 0.05, order: int | None = 1):
    """A reconstruction's phase levelled on its empty background, with the plane that was removed.

    Ptychography leaves a constant phase and a linear ramp free (object and probe trade them).
    The pixels the beam hardly saw (smoothed illumination below ``threshold`` of its maximum,
    :func:`xmulti.stages.mask_unilluminated`) are set to NaN, cells are segmented on the phase
    (:func:`xmulti.correlate.segment_phase`; none found: the whole image counts as background)
    and :func:`flatten_phase` fits the background polynomial of ``order`` around them.

    Parameters
    ----------
    recon : xarray.Dataset
        ``phase (y, x)`` in rad on um coordinates, optional ``illumination`` and ``probe``.

    Returns
    -------
    flat : xarray.DataArray
        Levelled phase (rad), NaN where unilluminated.
    info : dict
        That of :func:`flatten_phase`, plus ``plane_rad`` (ndarray (y, x): the removed model,
        ``phase - flat``, on every pixel), ``gradient_rad_per_px`` ((y, x) slope of its
        least-squares plane) and ``background_mask`` (ndarray bool: the pixels the model was
        fitted to, more than 2 pixels from any cell).
    """
    import xarray as xr
    from skimage.segmentation import expand_labels

    from .correlate import segment_phase
    from .stages import mask_unilluminated

    phase = mask_unilluminated(recon["phase"], recon, threshold)
    try:
        labels = segment_phase(phase)
    except InvalidInputError:
        labels = xr.zeros_like(phase, dtype=np.int32)
    flat, info = flatten_phase(phase, labels, order=order)
    values = np.asarray(recon["phase"].values, dtype=float)
    known = np.isfinite(np.asarray(flat.values)) & np.isfinite(values)
    ii, jj = np.indices(values.shape, dtype=float)
    plane = np.zeros(values.shape)
    gradient = (0.0, 0.0)
    if known.sum() >= 3:
        design = np.stack([np.ones(known.sum()), ii[known], jj[known]], axis=1)
        coef = np.linalg.lstsq(design, values[known] - np.asarray(flat.values)[known], rcond=None)[0]
        plane = coef[0] + coef[1] * ii + coef[2] * jj
        gradient = (float(coef[1]), float(coef[2]))
    # the pixels flatten_phase fits (its default margin of 2 pixels around the cells)
    background = (expand_labels(np.asarray(labels.values), 2.0) == 0) & np.isfinite(np.asarray(phase.values))
    info.update(plane_rad=plane, gradient_rad_per_px=gradient, background_mask=background)
    return flat, info

