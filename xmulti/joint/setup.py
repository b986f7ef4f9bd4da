"""Setting up the joint problem from the separate results: start, constants, XRF data, output.

:func:`build_problem` turns a scan, its separate ptychographic reconstruction and its fitted XRF
maps into a :class:`~xmulti.joint.problem.JointProblem` with its start (thickness from the
levelled phase, element maps interpolated to the phase grid). The phase offset and ramp that
ptychography leaves free are removed by :func:`xmulti.inputs.level_reconstructed_phase`, the
levelling the rest of xmulti uses. See ``docs/joint.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .model import AbsorptionModel, ObjectModel
from .problem import FrameSource, JointProblem
from .settings import JointSettings

__all__ = ["build_problem", "result_dataset"]


def _per_position(maps, name: str, positions_um: np.ndarray, scan_shape) -> np.ndarray:
    """A map variable at each scan position: the raster pixel of a raster scan (row by row),
    otherwise linear interpolation at the positions (extrapolated linearly just beyond the edge)."""
    import xarray as xr

    var = maps[name]
    m = len(positions_um)
    if scan_shape is not None and var.shape == tuple(scan_shape) and var.size == m:
        return np.asarray(var.values, dtype=float).ravel()
    py = xr.DataArray(positions_um[:, 0], dims="position")
    px = xr.DataArray(positions_um[:, 1], dims="position")
    return np.asarray(var.interp(y=py, x=px, kwargs={"fill_value": None}).values, dtype=float)


def _sensitivity(maps, elements, sensitivity) -> np.ndarray:
    out = []
    for el in elements:
        if sensitivity is None:
            if maps[el].attrs.get("units") != "ug/cm2":
                raise InvalidInputError(
                    f"map {el!r} is in {maps[el].attrs.get('units', 'unknown units')!r}: give sensitivity= (map "
                    "units per ug/cm2, e.g. from xmulti.xrf.quantify.calibrate_standard) or quantified maps in ug/cm2"
                )
            value = 1.0
        elif hasattr(sensitivity, "sensitivity"):
            value = float(sensitivity.sensitivity(el))
        else:
            if el not in sensitivity:
                raise InvalidInputError(f"no sensitivity given for element {el!r}")
            value = float(sensitivity[el])
        if not (np.isfinite(value) and value > 0):
            raise InvalidInputError(f"sensitivity of {el} must be positive and finite, got {value}")
        out.append(value)
    return np.asarray(out)


def _fill_nearest(image: np.ndarray) -> np.ndarray:
    """NaN pixels replaced by the nearest finite value (the maps end half a probe before the grid)."""
    from scipy import ndimage

    bad = ~np.isfinite(image)
    if not bad.any():
        return image
    if bad.all():
        raise InvalidInputError("an XRF map has no finite value on the phase grid")
    idx = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
    return image[tuple(idx)]


def _edge_weights(t_um: np.ndarray, region: np.ndarray, edge_um: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Smoothness weights ``1 / (1 + (dt / edge)^2)`` of neighbour pairs: small across edges."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(t_um, 1.0)
    if edge_um is None:
        edge_um = 0.05 * float(np.percentile(smooth[region], 99)) + 1e-6
    dy = np.diff(smooth, axis=0)
    dx = np.diff(smooth, axis=1)
    return 1.0 / (1.0 + (dy / edge_um) ** 2), 1.0 / (1.0 + (dx / edge_um) ** 2), float(edge_um)

def _difference_variance(t_um: np.ndarray, wy: np.ndarray, wx: np.ndarray, region: np.ndarray) -> float:
    """``tau^2`` (um^2): mean edge-weighted square neighbour difference ``w (t(a) - t(b))^2`` of
    the pairs inside ``region`` (the prior variance of a difference, estimated from the start);
    0 when the start is flat there (no structure: no scale for a prior)."""
    in_y = region[1:] & region[:-1]
    in_x = region[:, 1:] & region[:, :-1]
    total = (wy * np.diff(t_um, axis=0) ** 2)[in_y].sum() + (wx * np.diff(t_um, axis=1) ** 2)[in_x].sum()
    count = int(in_y.sum() + in_x.sum())
    return float(total / count) if count > 0 and total > 0 else 0.0


def build_problem(
    scan_tree: Any,
    recon: Any,
    maps: Any,
    elements: list[str] | None = None,
    client: Any = None,
    *,
    settings: JointSettings | None = None,
    **changes: Any,
):
    """The :class:`JointProblem`, starting thickness (um) and element maps (ug/cm2) of a scan.

    Parameters
    ----------
    scan_tree, recon, maps, elements, client
        As for :func:`xmulti.joint.solve.joint_reconstruct`.
    settings : JointSettings, optional
        How the objective is built (defaults: :class:`JointSettings`).
    **changes
        Settings by name (``sensitivity=``, ``batch=``...), applied on top of ``settings``.

    Returns
    -------
    tuple
        ``(problem, t0_um, c0_ug_cm2, info)``, ``info`` a dict of the grid coordinates,
        elements, sensitivities and constants used.
    """
    import xarray as xr

    from .. import physics
    from ..inputs import resolve_matrix
    from ..register import maps_to_phase_grid
    from .absorption import attenuation_coefficients_cm2_g, effective_line_energy_keV

    if not hasattr(scan_tree, "children") or "ptychography" not in scan_tree.children:
        raise InvalidInputError("scan_tree must be the DataTree of xmulti.open_scan with a /ptychography group")
    for name, ds, needed in (("recon", recon, ("phase", "probe")), ("maps", maps, ())):
        if not isinstance(ds, xr.Dataset):
            raise InvalidInputError(f"{name} must be an xarray Dataset, got {type(ds).__name__}")
        missing = [v for v in needed if v not in ds]
        if missing:
            raise InvalidInputError(f"{name} lacks {', '.join(missing)}")
    pty = scan_tree["ptychography"].to_dataset()
    energy = scan_tree.attrs.get("incident_energy_keV", pty.attrs.get("energy_keV"))
    if energy is None or not float(energy) > 0:
        raise InvalidInputError("the scan has no positive incident energy (incident_energy_keV)")
    energy = float(energy)
    cfg = (settings or JointSettings()).replace(**changes)
    cfg.check()
    xrf_weight, sensitivity, ice_thickness_um, noise = cfg.xrf_weight, cfg.sensitivity, cfg.ice_thickness_um, cfg.noise
    smoothing, edge_um, batch, max_frame_bytes = cfg.smoothing, cfg.edge_um, cfg.batch, cfg.max_frame_bytes
    geo = {"incident_angle_deg": 90.0, "exit_angle_deg": 15.0, **(cfg.geometry or {})}
    mat = resolve_matrix(cfg.matrix)

    if elements is None:
        elements = [str(v) for v in maps.data_vars if f"{v}_sigma" in maps and maps[v].attrs.get("component") == "element"]
    elements = [str(el) for el in elements]
    missing = [el for el in elements if el not in maps or f"{el}_sigma" not in maps]
    if missing or not elements:
        raise InvalidInputError(f"maps lack element map(s) or their _sigma: {', '.join(missing) or 'none given'}")

    # grid, positions and probe of the separate reconstruction
    y = np.asarray(recon["y"].values, float)
    x = np.asarray(recon["x"].values, float)
    dx = float(np.median(np.diff(y)))
    if "corrected_position_y" in recon:
        pos_um = np.stack([recon["corrected_position_y"].values, recon["corrected_position_x"].values], 1).astype(float)
    else:
        pos_um = np.stack([pty["position_y"].values, pty["position_x"].values], 1).astype(float)
    positions_px = (pos_um - np.array([y[0], x[0]])) / dx
    probe = np.asarray(recon["probe"].values)
    probe = probe[None] if probe.ndim == 2 else probe
    phase = np.asarray(recon["phase"].values, float)
    illum = np.asarray(recon["illumination"].values, float) if "illumination" in recon else np.ones(phase.shape)
    region = illum >= 0.1 * illum.max()
    gradient = (0.0, 0.0)
    background = None
    if cfg.level:
        from ..inputs import level_reconstructed_phase

        _, levelled = level_reconstructed_phase(recon)
        background = levelled["background_mask"] & region
        if background.sum() < 10:
            raise InvalidInputError("too few background pixels around the cells to level the phase (level=False skips)")
        phase = phase - levelled["plane_rad"]
        ii, jj = np.indices(probe.shape[-2:], dtype=float)
        gradient = levelled["gradient_rad_per_px"]
        # the object lost exp(i g.r): the probe takes exp(-i g.r') so every exit wave only
        # changes by a constant phase (invisible in the intensities)
        probe = probe * np.exp(1j * (gradient[0] * ii + gradient[1] * jj))[None]

    # optical constants (xraylib, at the incident energy)
    k_um = 2.0 * np.pi / (physics.wavelength_m(energy) * 1e6)
    dm, bm = physics.refractive_index(mat.formula, energy, mat.density_g_cm3)
    di, bi = physics.refractive_index(physics.ICE.formula, energy, physics.ICE.density_g_cm3)
    eps = None
    if cfg.element_phase:
        # pure element at 1 g/cm3: 1 ug/cm2 is 1e-2 um of it
        eps = np.array([complex(*physics.refractive_index(el, energy, 1.0) * np.array([1, -1])) * 1e-2 for el in elements])
    ice = float(ice_thickness_um)
    omodel = ObjectModel(k_um, complex(dm, -bm), complex(di, -bi) if ice > 0 else 0j, ice, eps)
    lines = {el: effective_line_energy_keV(el, energy) for el in elements}
    chi_m = attenuation_coefficients_cm2_g(lines, mat.formula, energy, geo["incident_angle_deg"], geo["exit_angle_deg"])
    chi_i = attenuation_coefficients_cm2_g(lines, physics.ICE.formula, energy, geo["incident_angle_deg"], geo["exit_angle_deg"])
    amodel = AbsorptionModel(
        np.array([chi_m[el] for el in elements]), np.array([chi_i[el] for el in elements]),
        mat.density_g_cm3, physics.ICE.density_g_cm3, ice,
    )

    # XRF data at each position, and the start on the phase grid
    # lazy maps are computed on the active scheduler (a distributed client once one exists);
    # client.compute would hand back an in-memory Dataset unchanged rather than a future
    maps = maps[elements + [f"{el}_sigma" for el in elements]].compute()
    scan_shape = scan_tree.attrs.get("scan_shape")
    s = _sensitivity(maps, elements, sensitivity)
    data = np.stack([_per_position(maps, el, pos_um, scan_shape) for el in elements], 1)
    sigma = np.stack([_per_position(maps, f"{el}_sigma", pos_um, scan_shape) for el in elements], 1)
    good = np.isfinite(data) & np.isfinite(sigma) & (sigma > 0)
    data = np.where(good, data, 0.0)
    sigma = np.where(good, sigma, np.inf)
    like = xr.DataArray(phase, dims=("y", "x"), coords={"y": y, "x": x})
    start = maps_to_phase_grid(maps[elements], like)
    c0 = np.stack([np.clip(_fill_nearest(np.asarray(start[el].values, float)) / s[i], 0, None) for i, el in enumerate(elements)])
    n_eff = (dm - di) if ice > 0 else dm
    t0 = np.clip(-phase / (k_um * n_eff), 0.0, None)

    diffraction = pty["diffraction"].data
    mask = np.asarray(pty["mask"].values) if "mask" in pty else None
    # with a client the tiles read their own frames on the workers (xmulti.joint.distributed):
    # none is loaded here
    frames = FrameSource(diffraction, mask, batch, 0.0 if client is not None else max_frame_bytes)
    wy, wx, edge = _edge_weights(t0, region, edge_um)
    problem = JointProblem(
        phase.shape, probe, positions_px, frames, omodel, amodel, data, sigma, s, float(xrf_weight),
        None, wy, wx, background, 0.0, noise, xrf_noise=cfg.xrf_noise,
    )
    illum_curv, xrf_curv = problem.curvatures()
    if background is not None:
        # as stiff as the data in a typical well-lit pixel: pins the 3 free directions only
        d_t = 2.0 * k_um**2 * abs(omodel.matrix_index) ** 2 * illum_curv
        problem.background_weight = float(np.median(d_t[region]))
    tau2 = 0.0
    if cfg.thickness_smoothing > 0:
        # empirical Bayes: the prior variance of a (weighted) neighbour difference is what the
        # start shows; its own noise is in it, so the estimate errs towards a weaker prior
        tau2 = _difference_variance(t0, wy, wx, region)
        problem.thickness_smooth_scale = float(cfg.thickness_smoothing) / tau2 if tau2 > 0 else 0.0
    if smoothing > 0:
        from ..footprint import footprint_radius_um, probe_intensity

        covered = xrf_curv.reshape(len(elements), -1)
        scale = [float(np.median(row[row > 0.05 * row.max()])) if row.max() > 0 else 0.0 for row in covered]
        # a pixel-scale difference penalty acts on a feature of L pixels as mu / L^2, and the
        # data resolve features of about the footprint radius: scaling mu by radius^2 makes
        # ``smoothing`` mean the same at any sampling (radius in pixels, 95 % of the intensity)
        radius_px = footprint_radius_um(probe_intensity(probe), 1.0)
        problem.smooth_scale = float(smoothing) * np.asarray(scale) * (radius_px / 10.0) ** 2
    info = dict(y=y, x=x, elements=elements, sensitivity=s, matrix=mat, energy=energy, geometry=geo, ice=ice,
                edge=edge, gradient=gradient, thickness_difference_um2=tau2)
    return problem, t0, c0, info

def result_dataset(t, c, t0, probe, history, problem, info, settings: dict):
    """The joint result as a Dataset on the reconstruction's grid (see :func:`joint_reconstruct`)."""
    import xarray as xr

    y, x, elements, s, mat, geo = (info[k] for k in ("y", "x", "elements", "sensitivity", "matrix", "geometry"))

    coords = {"y": ("y", y, {"units": "um"}), "x": ("x", x, {"units": "um"})}
    variables = {
        "thickness": (("y", "x"), t.astype(np.float32), {"units": "um", "long_name": f"{mat.name} thickness"}),
        "thickness_initial": (("y", "x"), t0.astype(np.float32), {"units": "um", "long_name": "thickness from the levelled phase"}),
    }
    variables["probe"] = (("probe_mode", "probe_y", "probe_x"), np.asarray(probe, np.complex64), {"units": "sqrt(photons)"})
    for i, el in enumerate(elements):
        variables[el] = (("y", "x"), c[i].astype(np.float32), {"units": "ug/cm2", "element": el, "sensitivity": float(s[i])})
    for key, name in (("objective", "objective"), ("ptycho", "ptycho_term"), ("xrf", "xrf_term"), ("smoothness", "smoothness_term")):
        variables[name] = (("iteration",), np.array([h[key] for h in history]), {"units": "1"})
    attrs = {
        "incident_energy_keV": info["energy"],
        "incident_angle_deg": float(geo["incident_angle_deg"]),
        "exit_angle_deg": float(geo["exit_angle_deg"]),
        "matrix_formula": mat.formula,
        "matrix_density_g_cm3": float(mat.density_g_cm3),
        "ice_thickness_um": info["ice"],
        **settings,
        "edge_um": info["edge"],
        "thickness_difference_variance_um2": float(info.get("thickness_difference_um2", 0.0)),
        "levelled_phase_gradient_rad_per_px": list(info["gradient"]),
        "elements": elements,
        "evaluations": int(problem.evaluations),
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)
