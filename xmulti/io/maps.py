"""APS MAPS / XRF-Maps analysed HDF5 files, layout versions 10 and 9.

v10 (XRF-Maps)::

    /MAPS/XRF_Analyzed/{ROI,Fitted,NNLS}/Counts_Per_Sec   (n_channels, ny, nx), Channel_Names
    /MAPS/Scalers/{Names,Values,Units}                     Values (n_scalers, ny, nx)
    /MAPS/Scan/{x_axis,y_axis}                             mm
    /MAPS/Spectra/{mca_arr (n_energy, ny, nx), Energy, Energy_Calibration,
                   Elapsed_Livetime, Elapsed_Realtime, Input_Counts, Output_Counts}
    /MAPS/Quantification/Calibration/<fit>/{Calibration_Curve_<scaler>, Calibration_Curve_Labels}

v9 (MAPS, IDL)::

    /MAPS/{XRF_fits, XRF_roi, channel_names, scalers, scaler_names, x_axis, y_axis,
           mca_arr, energy, energy_calib}

Fly scans carry two junk columns at the end of each row. Axis names are not trusted: the map
shape is taken from the data and the axes are matched to it by length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidScanError

__all__ = ["MapsFile", "read_maps"]

_V10_FITS = ("Fitted", "NNLS", "ROI")
_V9_FITS = {"XRF_fits": "Fitted", "XRF_roi": "ROI"}


@dataclass
class MapsFile:
    """Contents of a MAPS HDF5 file, junk columns removed.

    Attributes
    ----------
    path : Path
        The file read.
    version : int
        9 or 10.
    maps : dict of str to dict of str to ndarray (ny, nx)
        Per analysis (``"Fitted"``, ``"NNLS"``, ``"ROI"``): channel name to map (counts/s for v10
        ``Counts_Per_Sec``; as stored for v9).
    scalers : dict of str to ndarray (ny, nx)
        Scaler maps by name (``US_IC`` is the upstream ion chamber, i0).
    x_um, y_um : ndarray
        Stage positions of the columns and rows (um).
    spectra : ndarray (ny, nx, n_energy) or None
        Per-pixel spectra when stored.
    energy_keV : ndarray (n_energy,) or None
        Channel energies.
    calibration_keV : tuple or None
        (offset, gain, quadratic) in keV.
    live_time_s, real_time_s, input_counts, output_counts : ndarray (ny, nx) or None
        Detector clocks and counters of the spectra when stored (v10).
    calibration_curves : dict
        v10 quantification: fit name to {scaler name: (labels, curve)}.
    junk_columns_dropped : int
        Columns removed at the end of each row.
    """

    path: Path
    version: int
    maps: dict[str, dict[str, np.ndarray]]
    scalers: dict[str, np.ndarray]
    x_um: np.ndarray
    y_um: np.ndarray
    spectra: np.ndarray | None = None
    energy_keV: np.ndarray | None = None
    calibration_keV: tuple[float, float, float] | None = None
    live_time_s: np.ndarray | None = None
    real_time_s: np.ndarray | None = None
    input_counts: np.ndarray | None = None
    output_counts: np.ndarray | None = None
    calibration_curves: dict[str, dict[str, tuple[list[str], np.ndarray]]] = field(
        default_factory=dict
    )
    junk_columns_dropped: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the maps."""
        return len(self.y_um), len(self.x_um)


def _names(values) -> list[str]:
    return [
        v.decode("utf-8", "replace").strip() if isinstance(v, bytes) else str(v).strip()
        for v in values
    ]


def _require(group, path: Path, name: str, kind: str = "dataset"):
    """``group[name]``, or an InvalidScanError naming the full HDF5 path of what is missing."""
    if name not in group:
        full = f"{group.name.rstrip('/')}/{name}"
        raise InvalidScanError(path, full, f"missing {kind}: not a complete MAPS file")
    return group[name]


def read_maps(
    path: str | os.PathLike, drop_junk_columns: bool | None = None, load_spectra: bool = True
) -> MapsFile:
    """Read a MAPS (v9) or XRF-Maps (v10) analysed HDF5 file.

    Parameters
    ----------
    path : path-like
        The ``.h5`` file (e.g. ``img.dat/2xfm_0011.mda.h5``).
    drop_junk_columns : bool, optional
        Remove the two junk columns at the end of each row of fly scans. Default (None): remove
        them when the data have two columns more than the x axis, or when the last two columns
        of the upstream ion chamber (or of every scaler) are all zero.
    load_spectra : bool
        Also read the per-pixel spectra (``mca_arr``).

    Returns
    -------
    MapsFile

    Raises
    ------
    InvalidScanError
        Unreadable file, missing group or dataset, inconsistent shapes.
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise InvalidScanError(path, "/", f"cannot open MAPS file: {exc}") from None
    with f:
        maps_group = _require(f, path, "MAPS", "group")
        if "version" in maps_group:
            version = int(float(np.asarray(maps_group["version"][()]).ravel()[0]))
        elif "XRF_Analyzed" in maps_group or "Scalers" in maps_group:
            version = 10
        else:
            version = 9
        raw = _read_v10(f, path, load_spectra) if version >= 10 else _read_v9(f, path, load_spectra)
    return _assemble(path, version, raw, drop_junk_columns)


def _read_v10(f, path: Path, load_spectra: bool) -> dict:
    raw: dict = {"maps": {}, "curves": {}}
    analyzed = _require(f, path, "MAPS/XRF_Analyzed", "group")
    for fit in _V10_FITS:
        if fit in analyzed and "Counts_Per_Sec" in analyzed[fit]:
            g = analyzed[fit]
            names = _names(_require(g, path, "Channel_Names")[()])
            raw["maps"][fit] = (names, g["Counts_Per_Sec"][()])
    if not raw["maps"]:
        raise InvalidScanError(path, "/MAPS/XRF_Analyzed", "no analysis with Counts_Per_Sec")
    scalers = _require(f, path, "MAPS/Scalers", "group")
    raw["scalers"] = (
        _names(_require(scalers, path, "Names")[()]),
        _require(scalers, path, "Values")[()],
    )
    scan = _require(f, path, "MAPS/Scan", "group")
    raw["x_mm"] = np.asarray(_require(scan, path, "x_axis")[()], dtype=np.float64)
    raw["y_mm"] = np.asarray(_require(scan, path, "y_axis")[()], dtype=np.float64)
    if "MAPS/Spectra" in f:
        s = f["MAPS/Spectra"]
        if load_spectra and "mca_arr" in s:
            raw["spectra"] = s["mca_arr"][()]
        if "Energy" in s:
            raw["energy"] = np.asarray(s["Energy"][()], dtype=np.float64)
        if "Energy_Calibration" in s:
            raw["calib"] = np.asarray(s["Energy_Calibration"][()], dtype=np.float64).ravel()
        for key, name in (
            ("live", "Elapsed_Livetime"),
            ("real", "Elapsed_Realtime"),
            ("icr", "Input_Counts"),
            ("ocr", "Output_Counts"),
        ):
            if name in s:
                raw[key] = np.asarray(s[name][()], dtype=np.float64)
    calib = f.get("MAPS/Quantification/Calibration")
    if calib is not None:
        for fit in calib:
            g = calib[fit]
            labels = (
                _names(g["Calibration_Curve_Labels"][()]) if "Calibration_Curve_Labels" in g else []
            )
            raw["curves"][fit] = {
                name[len("Calibration_Curve_") :]: (
                    labels,
                    np.asarray(g[name][()], dtype=np.float64),
                )
                for name in g
                if name.startswith("Calibration_Curve_") and name != "Calibration_Curve_Labels"
            }
    return raw


def _read_v9(f, path: Path, load_spectra: bool) -> dict:
    g = _require(f, path, "MAPS", "group")
    raw: dict = {"maps": {}, "curves": {}}
    names = _names(_require(g, path, "channel_names")[()])
    for key, fit in _V9_FITS.items():
        if key in g:
            raw["maps"][fit] = (names, g[key][()])
    if not raw["maps"]:
        raise InvalidScanError(
            path, "/MAPS/XRF_fits", "missing dataset: neither XRF_fits nor XRF_roi"
        )
    raw["scalers"] = (
        _names(_require(g, path, "scaler_names")[()]),
        _require(g, path, "scalers")[()],
    )
    raw["x_mm"] = np.asarray(_require(g, path, "x_axis")[()], dtype=np.float64)
    raw["y_mm"] = np.asarray(_require(g, path, "y_axis")[()], dtype=np.float64)
    if load_spectra and "mca_arr" in g:
        raw["spectra"] = g["mca_arr"][()]
    if "energy" in g:
        raw["energy"] = np.asarray(g["energy"][()], dtype=np.float64)
    if "energy_calib" in g:
        raw["calib"] = np.asarray(g["energy_calib"][()], dtype=np.float64).ravel()
    return raw


def _assemble(path: Path, version: int, raw: dict, drop_junk_columns: bool | None) -> MapsFile:
    first_names, first_maps = next(iter(raw["maps"].values()))
    ny, nx = first_maps.shape[-2:]
    x_mm, y_mm = raw["x_mm"], raw["y_mm"]
    if len(y_mm) != ny and len(x_mm) == ny and len(y_mm) in (nx, nx - 2):
        x_mm, y_mm = y_mm, x_mm  # axes stored under swapped names
    if len(y_mm) != ny:
        raise InvalidScanError(
            path, "/MAPS", f"y axis has {len(y_mm)} points but the maps have {ny} rows"
        )
    scaler_names, scaler_values = raw["scalers"]
    scaler_values = np.asarray(scaler_values)
    if scaler_values.shape[-2:] != (ny, nx) or scaler_values.shape[0] != len(scaler_names):
        raise InvalidScanError(
            path,
            "/MAPS",
            f"scalers of shape {scaler_values.shape} do not match {len(scaler_names)} "
            f"names and maps of shape {(ny, nx)}",
        )
    scalers = dict(zip(scaler_names, scaler_values, strict=True))
    drop = 0
    if drop_junk_columns is None:
        if nx == len(x_mm) + 2:
            drop = 2
        elif nx >= 3:
            reference = [scalers["US_IC"]] if "US_IC" in scalers else list(scalers.values())
            if reference and all(np.all(np.asarray(v)[:, -2:] == 0) for v in reference):
                drop = 2
    elif drop_junk_columns:
        drop = 2
    n_keep = nx - drop
    if len(x_mm) < n_keep:
        raise InvalidScanError(
            path, "/MAPS", f"x axis has {len(x_mm)} points but the maps have {nx} columns"
        )
    x_mm = x_mm[:n_keep]
    cols = slice(0, n_keep)
    maps = {}
    for fit, (names, values) in raw["maps"].items():
        values = np.asarray(values)
        if values.shape[-2:] != (ny, nx) or values.shape[0] != len(names):
            raise InvalidScanError(
                path,
                f"/MAPS ({fit})",
                f"maps of shape {values.shape} do not match {len(names)} channel names",
            )
        maps[fit] = {name: values[i, :, cols] for i, name in enumerate(names)}
    scalers = {k: np.asarray(v)[:, cols] for k, v in scalers.items()}
    spectra = raw.get("spectra")
    if spectra is not None:
        spectra = np.asarray(spectra)
        if spectra.shape[-2:] != (ny, nx):
            raise InvalidScanError(
                path, "/MAPS/mca_arr", f"spectra shape {spectra.shape} does not match {(ny, nx)}"
            )
        spectra = np.moveaxis(spectra[..., cols], 0, -1)
    calib = raw.get("calib")
    calibration = None
    if calib is not None and calib.size >= 2:
        calibration = (float(calib[0]), float(calib[1]), float(calib[2]) if calib.size > 2 else 0.0)
    energy = raw.get("energy")
    if energy is None and calibration is not None and spectra is not None:
        ch = np.arange(spectra.shape[-1])
        energy = calibration[0] + calibration[1] * ch + calibration[2] * ch**2

    def per_pixel(key: str) -> np.ndarray | None:
        value = raw.get(key)
        if value is None or value.shape[-2:] != (ny, nx):
            return None
        return value[..., cols]

    return MapsFile(
        path=path,
        version=version,
        maps=maps,
        scalers=scalers,
        x_um=x_mm * 1e3,
        y_um=y_mm * 1e3,
        spectra=spectra,
        energy_keV=energy,
        calibration_keV=calibration,
        live_time_s=per_pixel("live"),
        real_time_s=per_pixel("real"),
        input_counts=per_pixel("icr"),
        output_counts=per_pixel("ocr"),
        calibration_curves=raw["curves"],
        junk_columns_dropped=drop,
    )
