"""Bad files get one specific InvalidScanError naming the file, the path in it and the problem."""

from __future__ import annotations

import hashlib
import shutil

import h5py
import numpy as np
import pytest

from xmulti import InvalidScanError, open_scan, validate_scan


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scan_copy(tiny_scan, tmp_path):
    """A writable copy of the tiny scan."""
    _, path = tiny_scan
    target = tmp_path / "copy.h5"
    shutil.copy(path, target)
    return target


def _edit(path, action):
    with h5py.File(path, "a") as f:
        action(f)


def _replace(name, data, attrs=None):
    def action(f):
        old_attrs = dict(f[name].attrs)
        del f[name]
        f[name] = data
        for key, value in (attrs if attrs is not None else old_attrs).items():
            f[name].attrs[key] = value
    return action


CASES = {
    "missing spectra": (lambda f: f.__delitem__("xrf/spectra"), "/xrf/spectra", "required dataset is missing"),
    "missing incident energy": (lambda f: f.attrs.__delitem__("incident_energy_keV"), "/@incident_energy_keV", "missing"),
    "negative energy attr": (lambda f: f["ptychography"].attrs.__setitem__("energy_keV", -1.0), "/ptychography@energy_keV", "positive"),
    "wrong rank": (_replace("xrf/spectra", np.zeros((120, 4, 8), np.uint32)), "/xrf/spectra", "rank 3"),
    "wrong dtype": (_replace("ptychography/diffraction", np.zeros((120, 32, 32), np.complex64)), "/ptychography/diffraction", "dtype complex64"),
    "position count": (_replace("xrf/i0", np.ones(7)), "/xrf/i0", "has 7 values, expected 120"),
    "frame count": (_replace("ptychography/diffraction", np.zeros((119, 32, 32), np.uint32)), "/ptychography/positions", "120 positions but /ptychography/diffraction has 119"),
    "non-finite positions": (lambda f: f["xrf/positions"].__setitem__((5, 1), np.nan), "/xrf/positions", "non-finite"),
    "unknown units": (lambda f: f["xrf/positions"].attrs.__setitem__("units", "furlong"), "/xrf/positions@units", "unknown units 'furlong'"),
    "positions disagree": (lambda f: f["ptychography/positions"].__setitem__((0, 0), 99.0), "/ptychography/positions", None),
    "missing energy axis": (lambda f: f["xrf"].attrs.__delitem__("energy_gain_keV"), "/xrf/energy", "no energy axis"),
    "scan shape": (lambda f: f.attrs.__setitem__("scan_shape", np.array([7, 7])), "/@scan_shape", "holds 49 positions"),
    "mask shape": (_replace("ptychography/mask", np.zeros((16, 16), np.uint8)), "/ptychography/mask", "shape"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_input_names_file_path_and_problem(scan_copy, case):
    action, where, problem = CASES[case]
    if case == "positions disagree":
        # /ptychography/positions is a hard link to /xrf/positions: break the link first
        def action(f):
            data = f["xrf/positions"][()]
            del f["ptychography/positions"]
            data[0, 0] += 99.0
            f["ptychography/positions"] = data
        problem = "differ from /xrf/positions"
    _edit(scan_copy, action)
    with pytest.raises(InvalidScanError) as info:
        open_scan(scan_copy)
    error = info.value
    assert error.file == str(scan_copy)
    assert error.path == where
    if problem:
        assert problem in error.problem
    assert str(scan_copy) in str(error) and where in str(error)


def test_not_hdf5_and_truncated_and_missing(tmp_path, tiny_scan):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all\n")
    with pytest.raises(InvalidScanError, match="not an HDF5 file"):
        open_scan(text)
    truncated = tmp_path / "truncated.h5"
    data = tiny_scan[1].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidScanError, match="truncated or corrupt"):
        open_scan(truncated)
    with pytest.raises(InvalidScanError, match="no such file"):
        open_scan(tmp_path / "absent.h5")


def test_file_without_either_modality(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(InvalidScanError, match="neither /xrf nor /ptychography"):
        validate_scan(path)


def test_single_modality_scans_are_valid(scan_copy, tmp_path):
    xrf_only = tmp_path / "xrf_only.h5"
    shutil.copy(scan_copy, xrf_only)
    _edit(xrf_only, lambda f: f.__delitem__("ptychography"))
    tree = open_scan(xrf_only)
    assert set(tree.children) >= {"xrf"} and "ptychography" not in tree.children

    ptycho_only = tmp_path / "ptycho_only.h5"
    shutil.copy(scan_copy, ptycho_only)

    def drop_xrf(f):
        positions = f["xrf/positions"][()]
        del f["ptychography/positions"]
        f["ptychography/positions"] = positions * 1e-3
        f["ptychography/positions"].attrs["units"] = "mm"
        del f["xrf"]
        del f.attrs["incident_energy_keV"]

    _edit(ptycho_only, drop_xrf)
    tree = open_scan(ptycho_only)
    assert "xrf" not in tree.children
    # mm are converted to um
    with h5py.File(scan_copy) as f:
        np.testing.assert_allclose(tree["ptychography"].ds["position_y"].values, f["xrf/positions"][:, 0])


def test_opening_never_modifies_the_file(tiny_scan):
    _, path = tiny_scan
    before = _sha(path)
    tree = open_scan(path)
    tree["xrf"].ds["spectra"].sum().compute()
    validate_scan(path)
    assert _sha(path) == before
