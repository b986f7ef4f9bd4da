"""Self-absorption of fluorescence in a thick sample: kernels and a labelled correction.

A thin homogeneous slab of areal mass ``m = rho t`` (g/cm2) with the element spread uniformly
through its depth, excited at ``E0`` under the angle ``psi_in`` and seen by the detector under
``psi_out`` (both angles measured from the sample surface), emits a fraction

    measured / true = (1 - exp(-chi m)) / (chi m),
    chi = mu(E0) / sin(psi_in) + mu(E_line) / sin(psi_out)            (cm2/g)

of what a thin sample of the same element content would emit (e.g. Jenkins, Gould & Gedcke,
*Quantitative X-Ray Spectrometry*, 2nd ed., Dekker 1995, ch. 4; the same form is used by
Di et al., Opt. Express 25, 13107 (2017) for XRF tomography). ``mu`` is the total mass
attenuation coefficient of the matrix from xraylib (``CS_Total_CP``: photoabsorption plus
coherent and incoherent scattering): a photon scattered out of the beam or out of the
detector's line of sight is lost, so the scattering terms belong in the attenuation. At the
soft lines where it matters (P, S) scattering is under 1 % of ``mu``.

A matrix may be one xraylib formula (``"H2O"``) or a mixture given as a mapping of formula to
areal mass: mass attenuation coefficients of a mixture add by mass, so ``chi m = sum_k chi_k
m_k`` exactly.

Kernels are pure numpy (or cupy via ``xp``); :func:`correct_self_absorption` and
:func:`areal_mass_from_phase` are labelled operations (xarray in, xarray out).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import physics
from ..errors import InvalidInputError

__all__ = [
    "effective_line_energy_keV",
    "attenuation_coefficients_cm2_g",
    "self_absorption_factor",
    "absorption_factor_of_exponent",
    "absorption_exponent",
    "correct_self_absorption",
    "areal_mass_from_phase",
]


def effective_line_energy_keV(element: str, incident_energy_keV: float) -> float:
    """Intensity-weighted mean energy (keV) of the element's dominant line family at ``E0``.

    The dominant family (K, L or M) is the one with the largest summed fluorescence
    cross-section at the incident energy (xraylib ``CS_FluorLine_Kissel`` through
    :func:`xmulti.physics.emission_lines`); its lines are averaged with those cross-sections as
    weights (e.g. Fe at 10 keV: K-alpha and K-beta, 6.47 keV).

    Parameters
    ----------
    element : str
        Element symbol.
    incident_energy_keV : float
        Incident photon energy (keV).

    Raises
    ------
    InvalidInputError
        When no line of the element is excited at that energy.
    """
    lines = physics.emission_lines(str(element), float(incident_energy_keV))
    if not lines:
        raise InvalidInputError(f"{element} has no fluorescence line excited at {incident_energy_keV} keV")
    totals: dict[str, float] = {}
    for line in lines:
        totals[line.family] = totals.get(line.family, 0.0) + line.cross_section_cm2_g
    family = max(totals, key=totals.__getitem__)
    chosen = [line for line in lines if line.family == family]
    weights = np.array([line.cross_section_cm2_g for line in chosen])
    energies = np.array([line.energy_keV for line in chosen])
    return float(np.sum(weights * energies) / np.sum(weights))


def _check_angle(name: str, angle_deg: float) -> float:
    angle = float(angle_deg)
    if not 0.0 < angle <= 90.0:
        raise InvalidInputError(f"{name} must be in (0, 90] degrees from the sample surface, got {angle_deg}")
    return np.sin(np.deg2rad(angle))


def _chi(formula: str, e0_keV: float, line_keV: float, sin_in: float, sin_out: float) -> float:
    try:
        mu_in = physics.mass_attenuation_cm2_g(formula, e0_keV)
        mu_out = physics.mass_attenuation_cm2_g(formula, line_keV)
    except ValueError as exc:  # xraylib: unparsable formula
        raise InvalidInputError(f"cannot compute the attenuation of matrix {formula!r}: {exc}") from exc
    return float(mu_in / sin_in + mu_out / sin_out)


def attenuation_coefficients_cm2_g(
    line_energies_keV: Mapping[str, float],
    matrix_formula: str,
    incident_energy_keV: float,
    incident_angle_deg: float,
    exit_angle_deg: float,
) -> dict[str, float]:
    """Combined attenuation ``chi = mu(E0)/sin(psi_in) + mu(E_line)/sin(psi_out)`` (cm2/g) per element.

    Parameters
    ----------
    line_energies_keV : mapping of str to float
        Element symbol to (effective) line energy in keV, e.g. from
        :func:`effective_line_energy_keV`.
    matrix_formula : str
        The matrix the photons cross, in xraylib syntax (``"H2O"`` for ice, protein
        ``xmulti.physics.PROTEIN.formula``).
    incident_energy_keV : float
        Incident photon energy (keV).
    incident_angle_deg, exit_angle_deg : float
        Angles of the incident beam and of the detector direction measured from the sample
        surface (degrees; 90 is normal incidence).

    Returns
    -------
    dict of str to float
        ``chi`` in cm2/g with ``mu`` the total mass attenuation (xraylib ``CS_Total_CP``,
        coherent and incoherent scattering included).
    """
    sin_in = _check_angle("incident_angle_deg", incident_angle_deg)
    sin_out = _check_angle("exit_angle_deg", exit_angle_deg)
    e0 = float(incident_energy_keV)
    if not e0 > 0:
        raise InvalidInputError(f"incident energy must be positive, got {incident_energy_keV} keV")
    return {el: _chi(str(matrix_formula), e0, float(e), sin_in, sin_out) for el, e in line_energies_keV.items()}


def self_absorption_factor(chi_cm2_g, areal_mass_g_cm2, xp=np):
    """Measured / true fluorescence of a homogeneous slab: ``(1 - exp(-x)) / x``, ``x = chi m``.

    Written as ``-expm1(-x) / x`` so it stays accurate as ``x -> 0`` (factor 1). Arrays
    broadcast. Pure kernel (numpy or cupy via ``xp``).

    Parameters
    ----------
    chi_cm2_g : float or ndarray
        Combined attenuation coefficient (cm2/g), see :func:`attenuation_coefficients_cm2_g`.
    areal_mass_g_cm2 : float or ndarray
        Areal mass of the matrix (g/cm2), non-negative.
    """
    x = xp.asarray(chi_cm2_g, dtype=float) * xp.asarray(areal_mass_g_cm2, dtype=float)
    return absorption_factor_of_exponent(x, xp=xp)


def absorption_factor_of_exponent(x, xp=np):
    """``(1 - exp(-x)) / x`` of a total exponent ``x = sum_k chi_k m_k`` (1 at x = 0)."""
    x = xp.asarray(x, dtype=float)
    small = xp.abs(x) < 1e-8
    safe = xp.where(small, 1.0, x)
    return xp.where(small, 1.0 - 0.5 * x, -xp.expm1(-safe) / safe)


def absorption_exponent(chi_by_material, areal_mass_by_material, xp=np):
    """``x = sum_k chi_k m_k`` for a mixture: mass attenuation adds by mass (pure kernel).

    Parameters
    ----------
    chi_by_material : sequence of float
        ``chi`` (cm2/g) of each material for one element.
    areal_mass_by_material : sequence of ndarray
        Areal mass (g/cm2) of each material, same order.
    """
    total = 0.0
    for chi, mass in zip(chi_by_material, areal_mass_by_material, strict=True):
        total = total + float(chi) * xp.asarray(mass, dtype=float)
    return xp.asarray(total, dtype=float)


# ----------------------------------------------------------------------------- labelled ops


def _on_grid(mass, like):
    """An areal-mass DataArray (or scalar) on ``like``'s (y, x) grid, interpolated when needed."""
    import xarray as xr

    if not isinstance(mass, xr.DataArray):
        value = float(mass)
        if not np.isfinite(value) or value < 0:
            raise InvalidInputError(f"areal mass must be finite and non-negative, got {mass} g/cm2")
        return value
    if tuple(mass.dims) != ("y", "x"):
        raise InvalidInputError(f"an areal-mass map must have dims (y, x) in um, not {tuple(mass.dims)}")
    same = mass.shape == (like.sizes["y"], like.sizes["x"]) and np.allclose(
        mass["y"].values, like["y"].values
    ) and np.allclose(mass["x"].values, like["x"].values)
    if not same:
        from ..register import overlap_extent_um

        overlap_extent_um(mass, like)
        # linear interpolation between pixel centres, nearest value beyond the mass map's edge
        mass = mass.interp(y=like["y"].values, x=like["x"].values, kwargs={"fill_value": None})
        mass = mass.assign_coords(y=like["y"].values, x=like["x"].values)
    values = np.asarray(mass.values, dtype=float)
    if np.any(values[np.isfinite(values)] < -1e-12):
        raise InvalidInputError("an areal-mass map has negative values (g/cm2); clip or fix the phase background")
    return np.clip(values, 0.0, None)


def _materials(areal_mass_g_cm2, matrix_formula) -> list[tuple[str, object]]:
    """[(formula, mass)] from a single mass + formula, or a Dataset/mapping keyed by formula."""
    import xarray as xr

    if isinstance(areal_mass_g_cm2, xr.Dataset):
        out = []
        for name, var in areal_mass_g_cm2.data_vars.items():
            out.append((str(var.attrs.get("formula", name)), var))
        if not out:
            raise InvalidInputError("the areal-mass Dataset has no variable")
        return out
    if isinstance(areal_mass_g_cm2, Mapping):
        return [(str(k), v) for k, v in areal_mass_g_cm2.items()]
    if matrix_formula is None:
        raise InvalidInputError("give matrix_formula for a single areal-mass map")
    return [(str(matrix_formula), areal_mass_g_cm2)]


def correct_self_absorption(
    maps,
    areal_mass_g_cm2,
    matrix_formula: str | None = physics.ICE.formula,
    incident_energy_keV: float | None = None,
    incident_angle_deg: float = 90.0,
    exit_angle_deg: float = 15.0,
    elements=None,
):
    """Element maps divided by their self-absorption factor.

    Parameters
    ----------
    maps : xarray.Dataset
        Element maps on ``(y, x)`` (um), e.g. from :func:`xmulti.fit_xrf` (any linear unit:
        counts, counts per i0, ug/cm2). Variables named after an element (``Fe``) and their
        ``<El>_nonneg`` / ``<El>_sigma`` companions are divided; others are copied.
    areal_mass_g_cm2 : xarray.DataArray, float, xarray.Dataset or mapping
        Areal mass of the matrix (g/cm2): a ``(y, x)`` map on any overlapping grid (it is
        interpolated linearly onto the maps' grid), or a scalar. For a mixture give a Dataset
        (e.g. :func:`areal_mass_from_phase`) whose variables carry a ``formula`` attribute (or
        are named by formula), or a mapping formula -> mass.
    matrix_formula : str
        xraylib formula of a single matrix (default ice, ``H2O``); ignored for a mixture.
    incident_energy_keV : float, optional
        Default: ``maps.attrs["incident_energy_keV"]``.
    incident_angle_deg, exit_angle_deg : float
        Beam and detector directions measured from the sample surface (degrees). Default:
        normal incidence and a detector 15 degrees above the surface.
    elements : list of str, optional
        Elements to correct (default: every element-named variable).

    Returns
    -------
    xarray.Dataset
        The corrected maps; ``attrs`` record the geometry, matrix, and per element the
        effective line energy, ``chi`` and the factor's range (``self_absorption_factor_range``).
    """
    import xarray as xr

    if not isinstance(maps, xr.Dataset):
        raise InvalidInputError(f"correct_self_absorption expects an xarray Dataset of maps, got {type(maps).__name__}")
    if "y" not in maps.dims or "x" not in maps.dims:
        raise InvalidInputError(f"the maps must be on (y, x) in um, not {tuple(maps.dims)}")
    e0 = incident_energy_keV if incident_energy_keV is not None else maps.attrs.get("incident_energy_keV")
    if e0 is None:
        raise InvalidInputError("incident energy unknown: give incident_energy_keV")
    e0 = float(e0)
    if elements is None:
        elements = [name for name in maps.data_vars if _is_element(str(name))]
    elements = [str(el) for el in elements]
    missing = [el for el in elements if el not in maps.data_vars]
    if missing:
        raise InvalidInputError(f"no map for element(s) {', '.join(missing)}; maps have {', '.join(map(str, maps.data_vars))}")
    if not elements:
        raise InvalidInputError("no element map to correct")
    materials = _materials(areal_mass_g_cm2, matrix_formula)
    masses = [_on_grid(mass, maps) for _, mass in materials]
    energies = {el: effective_line_energy_keV(el, e0) for el in elements}
    chis = {
        formula: attenuation_coefficients_cm2_g(energies, formula, e0, incident_angle_deg, exit_angle_deg)
        for formula, _ in materials
    }
    out = maps.copy()
    info = {}
    for el in elements:
        x = absorption_exponent([chis[f][el] for f, _ in materials], masses)
        factor = absorption_factor_of_exponent(x)
        factor_da = xr.DataArray(factor, dims=("y", "x")) if np.ndim(factor) == 2 else float(factor)
        for name in (el, f"{el}_nonneg", f"{el}_sigma"):
            if name in maps.data_vars:
                out[name] = (maps[name] / factor_da).assign_attrs(maps[name].attrs, self_absorption_corrected=True)
        info[el] = {
            "line_energy_keV": energies[el],
            "chi_cm2_g": {f: chis[f][el] for f, _ in materials},
            "self_absorption_factor_range": [float(np.nanmin(factor)), float(np.nanmax(factor))],
        }
    out.attrs = {
        **maps.attrs,
        "self_absorption": {
            "model": "homogeneous slab, (1 - exp(-chi m)) / (chi m); mu = xraylib CS_Total_CP "
            "(coherent and incoherent scattering included)",
            "incident_energy_keV": e0,
            "incident_angle_deg": float(incident_angle_deg),
            "exit_angle_deg": float(exit_angle_deg),
            "matrix": [f for f, _ in materials],
            "elements": info,
        },
    }
    return out


def _is_element(name: str) -> bool:
    try:
        physics.atomic_number(name)
    except InvalidInputError:
        return False
    return True


def areal_mass_from_phase(
    phase,
    energy_keV: float,
    ice_thickness_um: float = 0.0,
    matrix=physics.PROTEIN,
    background_rad: float = 0.0,
):
    """Areal masses (g/cm2) of the matrix and of the surrounding ice, from the phase.

    The phase relative to the ice (or vacuum) background gives the matrix areal mass
    (:func:`xmulti.correlate.phase_areal_mass`, with ice as the displaced medium when
    ``ice_thickness_um > 0``); the ice fills the rest of a layer of the stated thickness:
    ``m_ice = rho_ice * max(T - t_matrix, 0)``.

    Parameters
    ----------
    phase : xarray.DataArray (y, x)
        Unwrapped phase (rad), um coordinates; matter gives negative phase.
    energy_keV : float
        Photon energy of the phase (keV).
    ice_thickness_um : float
        Thickness of the ice layer the cells are embedded in (um); 0 for a dried sample.
    matrix : physics.Matrix or str
        The matrix ("protein", "ice", "FORMULA:DENSITY" or a Matrix).
    background_rad : float
        Phase of the background (ice or vacuum) to subtract.

    Returns
    -------
    xarray.Dataset
        ``matrix`` and (when ice) ``ice``, in g/cm2 on the phase grid, each with a ``formula``
        attribute: ready for :func:`correct_self_absorption`.
    """
    import xarray as xr

    from ..correlate import phase_areal_mass
    from ..inputs import resolve_matrix

    mat = resolve_matrix(matrix)
    if float(ice_thickness_um) < 0:
        raise InvalidInputError(f"ice thickness must be non-negative, got {ice_thickness_um} um")
    embedding = physics.ICE if ice_thickness_um > 0 else None
    matrix_ug = phase_areal_mass(phase, energy_keV, matrix=mat, embedding=embedding, background_rad=background_rad)
    matrix_g = (matrix_ug.clip(min=0.0) * 1e-6).assign_attrs(units="g/cm2", formula=mat.formula, long_name=f"{mat.name} areal mass")
    data = {"matrix": matrix_g}
    if ice_thickness_um > 0:
        t_matrix_um = matrix_g / mat.density_g_cm3 * 1e4
        ice = ((float(ice_thickness_um) - t_matrix_um).clip(min=0.0) * 1e-4 * physics.ICE.density_g_cm3)
        data["ice"] = ice.assign_attrs(units="g/cm2", formula=physics.ICE.formula, long_name="ice areal mass")
    return xr.Dataset(data, attrs={"energy_keV": float(energy_keV), "ice_thickness_um": float(ice_thickness_um)})
