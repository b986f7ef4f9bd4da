"""Eiger NeXus master + data files (Bitshuffle/LZ4) written here, read back bit-exact."""

from __future__ import annotations

import pickle

import h5py
import hdf5plugin
import numpy as np
import pytest

from xmulti.errors import InvalidInputError, InvalidScanError
from xmulti.io.eiger import crop_slices, find_beam_center, read_eiger

H, W = 40, 48
BEAM_YX = (17.3, 26.6)
FRAMES_PER_FILE = (7, 5)


def _frames(n: int, seed: int = 0, dtype=np.uint32) -> np.ndarray:
    """Poisson far-field-like frames: a bright lobe at BEAM_YX on a weak background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((H, W))
    lobe = 5e3 * np.exp(-((yy - BEAM_YX[0]) ** 2 + (xx - BEAM_YX[1]) ** 2) / (2 * 1.5**2))
    return rng.poisson(lobe + 2.0, size=(n, H, W)).astype(dtype)


def write_eiger(
    folder, prefix="scan", frames=None, dtype=np.uint32, frames_per_file=FRAMES_PER_FILE
):
    """Master + data files as a Dectris Eiger writes them; returns (master path, frames, mask)."""
    total = sum(frames_per_file)
    frames = _frames(total, dtype=dtype) if frames is None else frames
    mask = np.zeros((H, W), dtype=np.uint32)
    mask[:, 20] = 1  # a dead column
    mask[5, 7] = 8
    start = 0
    with h5py.File(folder / f"{prefix}_master.h5", "w") as master:
        data = master.create_group("entry/data")
        for k, n in enumerate(frames_per_file, start=1):
            name = f"{prefix}_data_{k:06d}.h5"
            with h5py.File(folder / name, "w") as f:
                f.create_dataset(
                    "entry/data/data",
                    data=frames[start : start + n],
                    chunks=(1, H, W),
                    **hdf5plugin.Bitshuffle(cname="lz4"),
                )
            data[f"data_{k:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
            start += n
        det = master.create_group("entry/instrument/detector")
        det["x_pixel_size"] = 75e-6
        det["y_pixel_size"] = 75e-6
        det["detector_distance"] = 1.95
        det["beam_center_x"] = BEAM_YX[1]
        det["beam_center_y"] = BEAM_YX[0]
        det["count_time"] = 0.01
        det["frame_time"] = 0.0102
        spec = det.create_group("detectorSpecific")
        spec["pixel_mask"] = mask
        spec["photon_energy"] = 10_000.0
        spec["saturation_value"] = 1_000_000
        master["entry/instrument/beam/incident_wavelength"] = 1.2398
    return folder / f"{prefix}_master.h5", frames, mask != 0


def test_master_and_data_files_read_back_bit_exact(tmp_path):
    master, frames, mask = write_eiger(tmp_path)
    with h5py.File(tmp_path / "scan_data_000001.h5", "r") as f:
        plist = f["entry/data/data"].id.get_create_plist()
        assert plist.get_filter(0)[0] == 32008  # really Bitshuffle-compressed
    scan = read_eiger(master)
    assert scan.frames.shape == frames.shape and scan.frames.dtype == np.uint32
    np.testing.assert_array_equal(scan.frames.read(), frames)
    np.testing.assert_array_equal(scan.frames[5:9], frames[5:9])  # spans both data files
    np.testing.assert_array_equal(scan.frames[-1], frames[-1])
    np.testing.assert_array_equal(scan.mask, mask)
    g = scan.geometry
    assert g.x_pixel_size_m == 75e-6 and g.detector_distance_m == 1.95
    assert g.energy_keV == pytest.approx(10.0)
    assert (g.beam_center_y_px, g.beam_center_x_px) == BEAM_YX
    # path-based: pickles to a few hundred bytes, with no h5py object inside
    assert len(pickle.dumps(scan.frames)) < 1000


def test_data_file_without_master(tmp_path):
    _, frames, _ = write_eiger(tmp_path, dtype=np.uint16, frames=_frames(12, dtype=np.uint16))
    scan = read_eiger(tmp_path / "scan_data_000002.h5")
    assert scan.geometry is None and scan.mask is None
    np.testing.assert_array_equal(scan.frames.read(), frames[7:])
    assert scan.frames.dtype == np.uint16


def test_crop_centres_the_direct_beam(tmp_path):
    master, frames, mask = write_eiger(tmp_path)
    scan = read_eiger(master)
    cy, cx = find_beam_center(scan.frames.read(), scan.mask)
    assert abs(cy - BEAM_YX[0]) < 0.1 and abs(cx - BEAM_YX[1]) < 0.1
    n = 16
    cropped = scan.frames.cropped((cy, cx), n)
    block = cropped.read()
    assert block.shape == (len(frames), n, n)
    sy, sx = crop_slices((cy, cx), n, (H, W))
    np.testing.assert_array_equal(block, frames[:, sy, sx])
    # the brightest pixel of the summed crop is the centre pixel (n//2, n//2), where fftshift
    # puts zero frequency
    peak = np.unravel_index(np.argmax(block.sum(axis=0)), (n, n))
    assert peak == (n // 2, n // 2)
    with pytest.raises(InvalidInputError, match="does not fit"):
        scan.frames.cropped((2.0, 2.0), n)


def test_missing_data_file_is_a_clear_error(tmp_path):
    master, _, _ = write_eiger(tmp_path)
    (tmp_path / "scan_data_000002.h5").unlink()
    with pytest.raises(InvalidScanError, match="scan_data_000002.h5 is missing") as info:
        read_eiger(master)
    assert info.value.path == "/entry/data/data_000002"
    assert info.value.file.endswith("scan_master.h5")


def test_not_an_eiger_file(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_group("MAPS")
    with pytest.raises(InvalidScanError, match="/entry/data: missing group"):
        read_eiger(tmp_path / "x.h5")


def test_lazy_frames_on_a_process_cluster(tmp_path, process_cluster):
    """Path-based frames wrapped by dask are read in worker processes, bit-exact."""
    import dask.array as da

    master, frames, _ = write_eiger(tmp_path)
    lazy = da.from_array(read_eiger(master).frames, chunks=(3, H, W))
    np.testing.assert_array_equal(process_cluster.compute(lazy).result(), frames)
