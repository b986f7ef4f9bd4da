"""open_scan: the DataTree data model, laziness, the xarray backend."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr

from xmulti import open_scan
from xmulti.io import hdf5 as lazy_hdf5


def test_tree_mirrors_the_file_with_units_and_coordinates(tiny_scan):
    scan, path = tiny_scan
    tree = open_scan(path)
    assert tree.attrs["incident_energy_keV"] == 10.0
    assert tree.attrs["scan_shape"] == [10, 12]
    xrf = tree["xrf"].ds
    assert xrf["spectra"].dims == ("position", "channel")
    assert xrf["energy"].attrs["units"] == "keV"
    assert xrf["position_y"].attrs["units"] == "um"
    np.testing.assert_allclose(xrf["position_y"].values, scan.positions_um[:, 0])
    np.testing.assert_allclose(xrf["position_x"].values, scan.positions_um[:, 1])
    # nominal calibration from the attrs: E = offset + gain * channel
    offset, gain = scan.config.nominal_calibration_keV
    np.testing.assert_allclose(xrf["energy"].values, offset + gain * np.arange(scan.config.n_channels))
    np.testing.assert_array_equal(xrf["spectra"].values, scan.spectra)

    ptycho = tree["ptychography"].ds
    assert ptycho["diffraction"].dims == ("position", "det_y", "det_x")
    np.testing.assert_array_equal(ptycho["diffraction"].values, scan.diffraction)
    np.testing.assert_array_equal(ptycho["mask"].values, scan.mask)
    assert ptycho.attrs["object_pixel_size_m"] == pytest.approx(scan.pixel_size_um * 1e-6, rel=1e-12)
    assert ptycho.attrs["wavelength_m"] == pytest.approx(12.398419843e-10 / 10.0, rel=1e-9)

    truth = tree["truth"].ds
    assert truth["composition"].dims == ("element", "y", "x")
    # image coordinates are pixel centres in um: pixel (0, 0) at the origin
    assert truth["y"].values[0] == pytest.approx(scan.origin_um[0])
    assert np.diff(truth["x"].values) == pytest.approx(scan.pixel_size_um)


def test_arrays_are_lazy_and_chunked_along_positions(tiny_scan):
    _, path = tiny_scan
    tree = open_scan(path, chunks=25)
    spectra = tree["xrf"].ds["spectra"].data
    frames = tree["ptychography"].ds["diffraction"].data
    assert spectra.chunks[1] == (spectra.shape[1],)  # whole spectra per chunk
    assert frames.chunks[1:] == ((32,), (32,))  # whole frames per chunk
    assert spectra.chunks[0][:4] == (25, 25, 25, 25)


def test_opening_a_large_file_reads_no_array_data(tmp_path, monkeypatch):
    """A file shaped like the `large` preset (1e4 positions, 128^2 frames, 2048 channels): opening
    must not read spectra or frames, only metadata and positions."""
    path = tmp_path / "large_layout.h5"
    n = 100 * 100
    yy, xx = np.meshgrid(np.arange(100.0), np.arange(100.0), indexing="ij")
    with h5py.File(path, "w") as f:
        f.attrs["incident_energy_keV"] = 10.0
        f.attrs["scan_shape"] = np.array([100, 100])
        f.create_dataset("xrf/spectra", shape=(n, 2048), dtype=np.uint32, chunks=(256, 2048))
        f["xrf/positions"] = np.stack([yy.ravel(), xx.ravel()], axis=1) * 0.05
        f["xrf"].attrs["energy_gain_keV"] = 0.01
        f.create_dataset("ptychography/diffraction", shape=(n, 128, 128), dtype=np.uint32, chunks=(64, 128, 128))
        f["ptychography/positions"] = f["xrf/positions"]
        for key, value in {"energy_keV": 10.0, "detector_distance_m": 2.0, "detector_pixel_size_m": 75e-6}.items():
            f["ptychography"].attrs[key] = value

    read = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        read.append((self.name, self.size))
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    monkeypatch.setattr(lazy_hdf5.LazyHDF5Array, "__getitem__", lambda self, key: pytest.fail("read data"))
    tree = open_scan(path)
    names = {name for name, _ in read}
    assert "/xrf/spectra" not in names and "/ptychography/diffraction" not in names
    assert sum(size for _, size in read) <= 4 * n  # positions only
    assert tree["ptychography"].ds["diffraction"].shape == (n, 128, 128)
    # dask chunks are whole multiples of the HDF5 chunk
    assert tree["ptychography"].ds["diffraction"].data.chunks[0][0] % 64 == 0
    assert tree["xrf"].ds["spectra"].data.chunks[0][0] % 256 == 0


def test_xarray_backend_engine(tiny_scan):
    _, path = tiny_scan
    tree = xr.open_datatree(path, engine="xmulti")
    assert set(tree.children) == {"xrf", "ptychography", "truth"}
    ds = xr.open_dataset(path, engine="xmulti", group="xrf")
    assert ds["spectra"].shape == (120, 1024)


def test_elemental_maps_and_reconstruction_get_um_coordinates(tmp_path):
    from xmulti.io.layout import ReconstructedData, XRFData, write_scan

    ny, nx = 3, 4
    yy, xx = np.meshgrid(np.arange(ny) * 0.5 + 10.0, np.arange(nx) * 0.25 - 2.0, indexing="ij")
    positions = np.stack([yy.ravel(), xx.ravel()], axis=1)
    path = write_scan(
        tmp_path / "maps.h5",
        incident_energy_keV=10.0,
        scan_shape=(ny, nx),
        xrf=XRFData(
            spectra=np.ones((ny * nx, 16), np.uint16),
            positions_um=positions,
            energy_keV=np.linspace(1, 10, 16),
            elemental_maps={"Fe": np.arange(12.0).reshape(ny, nx)},
        ),
        reconstructed=ReconstructedData(np.zeros((40, 50)), np.ones((40, 50)), pixel_size_nm=20.0),
    )
    tree = open_scan(path)
    fe = tree["xrf/elemental_maps"].ds["Fe"]
    np.testing.assert_allclose(fe["y"].values, [10.0, 10.5, 11.0])
    np.testing.assert_allclose(fe["x"].values, [-2.0, -1.75, -1.5, -1.25])
    phase = tree["reconstructed"].ds["phase"]
    # without an origin the image is centred on the scan
    assert float(phase["y"].mean()) == pytest.approx(positions[:, 0].mean())
    assert float(phase["x"][1] - phase["x"][0]) == pytest.approx(0.020)
