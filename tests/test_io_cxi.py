"""CXI export/import: our layout -> CXI -> our layout, and bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from xmulti.errors import InvalidScanError
from xmulti.io.convert import convert
from xmulti.io.cxi import export_cxi, read_cxi, write_cxi
from xmulti.io.layout import PtychoData

KEV_J = 1.602176634e-16


def test_export_follows_the_cxi_conventions(tiny_scan, tmp_path):
    scan, path = tiny_scan
    out = export_cxi(path, tmp_path / "scan.cxi")
    with h5py.File(out, "r") as f:
        assert int(f["cxi_version"][()]) == 150
        np.testing.assert_array_equal(f["entry_1/data_1/data"][()], scan.diffraction)
        translation = f["entry_1/data_1/translation"][()]
        assert translation.shape == (len(scan.positions_um), 3)
        # metres, (x, y, z) order
        np.testing.assert_allclose(translation[:, 0], scan.positions_um[:, 1] * 1e-6, rtol=1e-12)
        np.testing.assert_allclose(translation[:, 1], scan.positions_um[:, 0] * 1e-6, rtol=1e-12)
        assert f["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(10.0 * KEV_J)
        det = f["entry_1/instrument_1/detector_1"]
        assert det["distance"][()] == pytest.approx(2.0)
        assert det["x_pixel_size"][()] == pytest.approx(75e-6)


def test_round_trip_layout_cxi_layout(tiny_scan, tmp_path):
    import xmulti

    scan, path = tiny_scan
    cxi = export_cxi(path, tmp_path / "scan.cxi")
    data = read_cxi(cxi)
    np.testing.assert_array_equal(data.diffraction, scan.diffraction)
    np.testing.assert_allclose(data.positions_um, scan.positions_um, rtol=1e-12, atol=1e-12)
    assert data.energy_keV == pytest.approx(10.0, rel=1e-12)
    assert data.wavelength_m == pytest.approx(1.2398419843320025e-10, rel=1e-12)
    back = convert([cxi], tmp_path / "back.h5")
    original, again = xmulti.open_scan(path), xmulti.open_scan(back)
    p0, p1 = original["ptychography"].ds, again["ptychography"].ds
    np.testing.assert_array_equal(p1["diffraction"].values, p0["diffraction"].values)
    np.testing.assert_allclose(p1["position_y"].values, p0["position_y"].values, rtol=1e-12)
    np.testing.assert_allclose(p1["position_x"].values, p0["position_x"].values, rtol=1e-12)
    for name in (
        "energy_keV",
        "detector_distance_m",
        "detector_pixel_size_m",
        "object_pixel_size_m",
    ):
        assert p1.attrs[name] == pytest.approx(p0.attrs[name], rel=1e-12)
    if "mask" in p0:
        np.testing.assert_array_equal(p1["mask"].values, p0["mask"].values)


def test_mask_and_probe_survive(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.poisson(3.0, size=(4, 8, 8)).astype(np.uint16)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2, 3] = True
    probe = (rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))).astype(np.complex64)
    data = PtychoData(frames, rng.uniform(0, 5, (4, 2)), 8.0, 1.5, 55e-6, mask, probe)
    back = read_cxi(write_cxi(tmp_path / "m.cxi", data))
    np.testing.assert_array_equal(back.diffraction, frames)
    np.testing.assert_array_equal(back.mask, mask)
    np.testing.assert_array_equal(back.probe, probe)
    assert back.detector_pixel_size_m == 55e-6 and back.detector_distance_m == 1.5


def test_missing_energy_is_a_clear_error(tmp_path):
    data = PtychoData(np.zeros((2, 4, 4), np.uint16), np.zeros((2, 2)), 8.0, 1.5, 55e-6)
    path = write_cxi(tmp_path / "bad.cxi", data)
    with h5py.File(path, "a") as f:
        del f["entry_1/instrument_1/source_1/energy"]
    with pytest.raises(InvalidScanError, match="/entry_1/instrument_1/source_1/energy: missing"):
        read_cxi(path)


def test_translations_not_matching_frames(tmp_path):
    with h5py.File(tmp_path / "bad.cxi", "w") as f:
        f["entry_1/data_1/data"] = np.zeros((3, 4, 4))
        f["entry_1/data_1/translation"] = np.zeros((2, 3))
    with pytest.raises(InvalidScanError, match="does not match 3 frames"):
        read_cxi(tmp_path / "bad.cxi")


def test_export_needs_ptychography(tmp_path):
    with h5py.File(tmp_path / "xrf_only.h5", "w") as f:
        f.attrs["layout_version"] = 1
        f.create_group("xrf")
    with pytest.raises(InvalidScanError, match="/ptychography: missing group"):
        export_cxi(tmp_path / "xrf_only.h5", tmp_path / "out.cxi")


def test_cli_exports_and_imports_cxi(tiny_scan, tmp_path):
    import xmulti
    from xmulti.cli import main

    scan, path = tiny_scan
    assert main(["convert", str(path), "--out", str(tmp_path / "s.cxi")]) == 0
    assert main(["convert", str(tmp_path / "s.cxi"), "--out", str(tmp_path / "s.h5")]) == 0
    back = xmulti.open_scan(tmp_path / "s.h5")["ptychography"].ds
    np.testing.assert_array_equal(back["diffraction"].values, scan.diffraction)
    assert main(["convert", str(tmp_path / "s.cxi"), "--out", str(tmp_path / "t.cxi")]) == 2
