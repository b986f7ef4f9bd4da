"""What resolution bridging reads from its inputs: element counts, beam positions, footprints (labelled ops).

Checks of the maps and the reconstruction, the beam centres as fractional pixels of the phase
grid, the footprint of the reconstructed probe (one per position for a variable probe) and each
element's counts (equivalent counts for normalised maps, see :mod:`xmulti.joint.bridge`).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..footprint import probe_intensity

__all__ = ["element_names", "levelled_phase", "footprints"]


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
