"""MAPS HDF5 reader on small synthetic v10 and v9 files written after FORMATS.md."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from xmulti.errors import InvalidScanError
from xmulti.io.maps import read_maps

NY, NX, NCH = 4, 7, 64  # NX includes the two junk columns of a fly scan
CHANNELS = ["Ca", "Fe", "Cu", "COHERENT_SCT_AMPLITUDE", "COMPTON_AMPLITUDE", "Fit_Residual"]
SCALERS = ["SR_Current", "US_IC", "DS_IC", "ELT", "ERT"]


def _content(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    counts = rng.uniform(1, 100, size=(len(CHANNELS), NY, NX)).astype(np.float32)
    scalers = rng.uniform(1e4, 2e4, size=(len(SCALERS), NY, NX)).astype(np.float32)
    scalers[:, :, -2:] = 0.0  # fly-scan junk columns: nothing counted
    spectra = rng.poisson(5.0, size=(NCH, NY, NX)).astype(np.float32)
    return {
        "counts": counts,
        "scalers": scalers,
        "spectra": spectra,
        "x_mm": np.linspace(-1.5, -1.2, NX),
        "y_mm": np.linspace(3.25, 3.40, NY),
        "calib": np.array([0.05, 0.0094, 1e-7]),
    }


def _bytes(names):
    return np.array([n.encode() for n in names])


def write_v10(path, c, x_axis=None, drop=()):
    with h5py.File(path, "w") as f:
        f.create_dataset("MAPS/version", data=10.0)
        for fit in ("Fitted", "ROI"):
            g = f.create_group(f"MAPS/XRF_Analyzed/{fit}")
            g.create_dataset("Counts_Per_Sec", data=c["counts"] * (2 if fit == "ROI" else 1))
            g.create_dataset("Channel_Names", data=_bytes(CHANNELS))
            g.create_dataset("Channel_Units", data=_bytes(["cts/s"] * len(CHANNELS)))
        s = f.create_group("MAPS/Scalers")
        s.create_dataset("Names", data=_bytes(SCALERS))
        s.create_dataset("Values", data=c["scalers"])
        scan = f.create_group("MAPS/Scan")
        scan.create_dataset("x_axis", data=c["x_mm"] if x_axis is None else x_axis)
        scan.create_dataset("y_axis", data=c["y_mm"])
        sp = f.create_group("MAPS/Spectra")
        sp.create_dataset("mca_arr", data=c["spectra"])
        sp.create_dataset("Energy_Calibration", data=c["calib"])
        sp.create_dataset("Elapsed_Livetime", data=np.full((NY, NX), 0.45))
        sp.create_dataset("Elapsed_Realtime", data=np.full((NY, NX), 0.5))
        q = f.create_group("MAPS/Quantification/Calibration/Fitted")
        q.create_dataset("Calibration_Curve_Labels", data=_bytes(["Ca", "Fe", "Cu"]))
        q.create_dataset("Calibration_Curve_US_IC", data=np.array([3.0, 2.0, 1.0]))
        for name in drop:
            del f[name]


def write_v9(path, c, swap_axes=False):
    with h5py.File(path, "w") as f:
        g = f.create_group("MAPS")
        g.create_dataset("XRF_fits", data=c["counts"])
        g.create_dataset("channel_names", data=_bytes(CHANNELS))
        g.create_dataset("scalers", data=c["scalers"])
        g.create_dataset("scaler_names", data=_bytes(SCALERS))
        x, y = c["x_mm"][: NX - 2], c["y_mm"]  # v9 files of fly scans: axis without the junk
        g.create_dataset("x_axis", data=y if swap_axes else x)
        g.create_dataset("y_axis", data=x if swap_axes else y)
        g.create_dataset("mca_arr", data=c["spectra"])
        g.create_dataset("energy_calib", data=c["calib"])


def test_v10_fly_scan_drops_junk_columns(tmp_path):
    c = _content()
    write_v10(tmp_path / "v10.h5", c)
    m = read_maps(tmp_path / "v10.h5")
    assert m.version == 10 and m.shape == (NY, NX - 2) and m.junk_columns_dropped == 2
    np.testing.assert_allclose(m.x_um, c["x_mm"][: NX - 2] * 1e3)
    np.testing.assert_allclose(m.y_um, c["y_mm"] * 1e3)
    np.testing.assert_array_equal(m.maps["Fitted"]["Fe"], c["counts"][1, :, : NX - 2])
    np.testing.assert_array_equal(m.maps["ROI"]["Cu"], 2 * c["counts"][2, :, : NX - 2])
    np.testing.assert_array_equal(m.scalers["US_IC"], c["scalers"][1, :, : NX - 2])
    assert m.spectra.shape == (NY, NX - 2, NCH)
    np.testing.assert_array_equal(m.spectra[2, 3], c["spectra"][:, 2, 3])
    ch = np.arange(NCH)
    np.testing.assert_allclose(m.energy_keV, 0.05 + 0.0094 * ch + 1e-7 * ch**2)
    assert m.live_time_s.shape == (NY, NX - 2)
    labels, curve = m.calibration_curves["Fitted"]["US_IC"]
    assert labels == ["Ca", "Fe", "Cu"] and curve.tolist() == [3.0, 2.0, 1.0]


def test_junk_columns_kept_for_step_scans_and_on_request(tmp_path):
    c = _content()
    c["scalers"][:, :, -2:] = 1.0  # a step scan counts in every column
    write_v10(tmp_path / "step.h5", c)
    assert read_maps(tmp_path / "step.h5").shape == (NY, NX)
    c = _content()
    write_v10(tmp_path / "fly.h5", c)
    assert read_maps(tmp_path / "fly.h5", drop_junk_columns=False).shape == (NY, NX)


def test_v9_axis_shorter_than_data_and_swapped_axis_names(tmp_path):
    c = _content(1)
    write_v9(tmp_path / "v9.h5", c)
    m = read_maps(tmp_path / "v9.h5")
    assert m.version == 9 and m.shape == (NY, NX - 2) and m.junk_columns_dropped == 2
    np.testing.assert_array_equal(m.maps["Fitted"]["Ca"], c["counts"][0, :, : NX - 2])
    np.testing.assert_allclose(m.x_um, c["x_mm"][: NX - 2] * 1e3)
    write_v9(tmp_path / "swapped.h5", c, swap_axes=True)
    s = read_maps(tmp_path / "swapped.h5")
    np.testing.assert_allclose(s.y_um, m.y_um)
    np.testing.assert_allclose(s.x_um, m.x_um)


@pytest.mark.parametrize(
    "missing", ["MAPS/Scalers", "MAPS/Scan", "MAPS/XRF_Analyzed", "MAPS/Scan/y_axis"]
)
def test_missing_group_is_a_clear_error(tmp_path, missing):
    write_v10(tmp_path / "bad.h5", _content(), drop=(missing,))
    with pytest.raises(InvalidScanError, match=f"/{missing}: missing") as info:
        read_maps(tmp_path / "bad.h5")
    assert info.value.file.endswith("bad.h5") and info.value.path == "/" + missing


def test_inconsistent_axis_is_a_clear_error(tmp_path):
    write_v10(tmp_path / "bad.h5", _content(), x_axis=np.arange(3.0))
    with pytest.raises(InvalidScanError, match="x axis has 3 points"):
        read_maps(tmp_path / "bad.h5")


def test_not_a_maps_file(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_group("entry")
    with pytest.raises(InvalidScanError, match="/MAPS: missing group"):
        read_maps(tmp_path / "other.h5")
