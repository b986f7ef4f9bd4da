"""xmulti run: stages into the results store, resume, interruption, scheduler address, bad input."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from xmulti.errors import InvalidInputError
from xmulti.options import load_options

pytestmark = pytest.mark.cluster

ELEMENTS = "P,S,K,Ca,Fe,Cu,Zn"


def xmulti(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "xmulti.cli", *map(str, args)], capture_output=True,
                          text=True, **kwargs)


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    from xmulti.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("pipeline") / "scan.h5", "tiny", seed=7)


@pytest.fixture(scope="module")
def reference_store(scan_file, tmp_path_factory):
    """One uninterrupted run."""
    store = tmp_path_factory.mktemp("ref") / "results.zarr"
    result = xmulti("run", scan_file, "--out", store, "--elements", ELEMENTS, "--iterations", 60, "--workers", 1)
    assert result.returncode == 0, result.stderr
    return store, result


def _tree(store):
    return xr.open_datatree(store, engine="zarr")


def test_run_writes_every_group_with_units_and_provenance(reference_store, scan_file):
    store, result = reference_store
    tree = _tree(store)
    maps = tree["xrf/elemental_maps"].to_dataset()
    assert set(ELEMENTS.split(",")) <= set(maps.data_vars)
    assert maps["y"].attrs["units"] == "um" and maps["x"].attrs["units"] == "um"
    rec = tree["reconstructed"].to_dataset()
    assert {"phase", "amplitude", "probe", "pixel_size"} <= set(rec.data_vars)
    for group in ("xrf/elemental_maps", "xrf/fit", "reconstructed"):
        attrs = tree[group].attrs
        assert attrs["input_path"] == str(Path(scan_file).resolve())
        assert attrs["input_checksum"].startswith("sha256:") and attrs["xmulti_version"]
    assert "fit-xrf" in result.stdout and "reconstruct" in result.stdout and "total" in result.stdout


def test_rerun_skips_finished_stages_and_force_redoes(reference_store, scan_file, tmp_path):
    store, _ = reference_store
    figures = tmp_path / "figures"
    again = xmulti("run", scan_file, "--out", store, "--elements", ELEMENTS, "--iterations", 60, "--workers", 1,
                   "--figures", figures)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped (up to date)") == 4  # fit-xrf, reconstruct, correlate, joint
    # figures from the finished store: both default overlays and the per-cell table, nothing half-written
    names = sorted(p.name for p in figures.iterdir())
    assert names == ["overlay_Fe_Zn.png", "overlay_P_S_K.png", "regions.csv"]
    assert (figures / "overlay_Fe_Zn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (figures / "regions.csv").read_text().splitlines()
    assert "label" in table[0] and len(table) >= 2
    changed = xmulti("run", scan_file, "--out", store, "--elements", ELEMENTS, "--iterations", 60,
                     "--workers", 1, "--stages", "fit-xrf", "--force")
    assert "skipped" not in changed.stdout and changed.returncode == 0


def test_interrupted_run_resumes_to_identical_results(reference_store, scan_file, tmp_path):
    ref_store, _ = reference_store
    store = tmp_path / "interrupted.zarr"
    args = [sys.executable, "-m", "xmulti.cli", "run", str(scan_file), "--out", str(store), "--elements",
            ELEMENTS, "--iterations", "200", "--workers", "1"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (store / "xrf" / "elemental_maps" / "zarr.json").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for line in process.stderr:  # wait until the reconstruction is under way, then kill
            if "reconstruct: epoch" in line:
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    tree = _tree(store)
    assert "elemental_maps" in tree["xrf"].children
    assert "reconstructed" not in tree.children  # no half-written group
    resumed = xmulti("run", scan_file, "--out", store, "--elements", ELEMENTS, "--iterations", 60, "--workers", 1)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("skipped (up to date)") == 1
    ref, new = _tree(ref_store), _tree(store)
    for group in ("xrf/elemental_maps", "reconstructed"):
        a, b = ref[group].to_dataset().load(), new[group].to_dataset().load()
        xr.testing.assert_allclose(a.drop_attrs(), b.drop_attrs(), rtol=1e-5, atol=1e-6)


def test_run_on_a_scheduler_with_two_worker_processes_over_tcp(scan_file, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    workers = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        workers = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
             "--nworkers", "2", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        import json

        address = json.loads(scheduler_file.read_text())["address"]
        from dask.distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        store = tmp_path / "remote.zarr"
        # tiles of at most 60 positions: the 120-position scan is reconstructed as 2 tiles on the workers
        config = tmp_path / "tiles.yaml"
        config.write_text("ptycho:\n  max_tile_positions: 60\n")
        result = xmulti("run", scan_file, "--out", store, "--elements", ELEMENTS, "--iterations", 20,
                        "--scheduler", address, "--stages", "fit-xrf,reconstruct", "--config", config)
        assert result.returncode == 0, result.stderr
        assert "2 worker(s)" in result.stderr
        assert "1x2 tiles (at most 60 positions each)" in result.stderr
        tree = _tree(store)
        assert np.isfinite(tree["xrf/elemental_maps"].to_dataset()["K"].values).all()
        phase = tree["reconstructed"].to_dataset()["phase"].values
        assert np.isfinite(phase).mean() > 0.5
    finally:
        for proc in (workers, scheduler):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


def test_fit_xrf_stage_quantifies_against_a_standard(scan_file, tmp_path):
    """With xrf.standard the stage writes /xrf/areal_density: the standard's own scan, quantified
    against itself, returns the densities it was given (the wiring; the physics of the
    sensitivities is tested on the real AXO standard in test_quantify_axo.py)."""
    from xmulti.io.results import read_group
    from xmulti.pipeline import run_pipeline

    config = tmp_path / "standard.yaml"
    config.write_text(f"stages: [fit-xrf]\nxrf:\n  elements: [P, S, K, Ca, Fe, Cu, Zn]\n"
                      f"  standard: {scan_file}\n  standard_densities: {{K: 1.5, Fe: 0.08}}\n")
    run_pipeline(scan_file, tmp_path / "r.zarr", load_options(config), log=None)
    density = read_group(tmp_path / "r.zarr", "/xrf/areal_density").load()
    # the standard is fitted with its own elements (K, Fe), the sample with seven: the same
    # scan's K and Fe differ by about 1.5 % between the two fits
    assert float(density["K"].mean()) == pytest.approx(1.5, rel=0.05)
    assert float(density["Fe"].mean()) == pytest.approx(0.08, rel=0.05)
    assert density["Zn"].attrs["units"] == "ug/cm2" and np.isfinite(density["Zn"].values).all()
    with pytest.raises(InvalidInputError, match="exactly one of"):
        config.write_text(f"xrf:\n  standard: {scan_file}\n")
        load_options(config)


def test_auto_tiles_bound_the_positions_per_tile(scan_file, process_cluster):
    import xmulti
    from xmulti.stages import auto_tiles

    tree = xmulti.open_scan(scan_file)  # 10 x 12 positions
    assert auto_tiles(tree, process_cluster) == (1, 1)  # 60 positions per worker: too few to split
    for limit in (60, 30, 13):
        ty, tx = auto_tiles(tree, process_cluster, max_tile_positions=limit)
        assert ty * tx >= 120 / limit and ty * tx <= 2 * 120 / limit + 1
        assert ty <= tx  # the scan is wider than tall


def test_unreachable_scheduler_is_one_clear_error(scan_file, tmp_path):
    result = xmulti("run", scan_file, "--out", tmp_path / "r.zarr", "--scheduler", "tcp://127.0.0.1:9",
                    "--stages", "fit-xrf")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot connect to the Dask scheduler at tcp://127.0.0.1:9" in result.stderr


def test_bad_output_and_config(scan_file, tmp_path):
    not_store = tmp_path / "data"
    not_store.mkdir()
    (not_store / "keep.txt").write_text("x")
    result = xmulti("run", scan_file, "--out", not_store)
    assert result.returncode == 2 and "not an xmulti results store" in result.stderr
    assert (not_store / "keep.txt").read_text() == "x" and len(list(not_store.iterdir())) == 1

    config = tmp_path / "bad.yaml"
    config.write_text("ptycho:\n  iterations: many\n")
    result = xmulti("run", scan_file, "--out", tmp_path / "r.zarr", "--config", config)
    assert result.returncode == 2 and "ptycho.iterations: expected int" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r.zarr").exists()
    config.write_text("xrf:\n  elemnts: [Fe]\n")
    with pytest.raises(InvalidInputError, match="xrf: unknown key"):
        load_options(config)
    # values of the right type that bound memory, out of range: one error naming the key
    config.write_text("chunk_positions: 0\n")
    result = xmulti("run", scan_file, "--out", tmp_path / "r.zarr", "--config", config)
    assert result.returncode == 2 and "chunk_positions: must be >= 1, got 0" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r.zarr").exists()
    for text, message in (("chunk_positions: -5\n", "chunk_positions: must be >= 1, got -5"),
                          ("ptycho:\n  max_tile_positions: 0\n", "ptycho.max_tile_positions: must be >= 1, got 0"),
                          ("correlate:\n  max_pixels: 100\n", "correlate.max_pixels: must be >= 1024, got 100")):
        config.write_text(text)
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            load_options(config)


def test_unwritable_output_location(scan_file, tmp_path):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        # root may write anywhere: then use a location no one can create directories in
        target = readonly / "r.zarr" if not os.access(readonly, os.W_OK) else Path("/proc/xmulti-r.zarr")
        result = xmulti("run", scan_file, "--out", target, "--stages", "fit-xrf")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "not writable" in result.stderr or "cannot create the results store" in result.stderr
    finally:
        readonly.chmod(0o700)


def test_options_file_round_trip(tmp_path):
    config = tmp_path / "ok.yaml"
    config.write_text("stages: [fit-xrf]\nxrf:\n  elements: [Fe, Zn]\nptycho:\n  engine: rpie\n  halo_um: 1\n")
    options = load_options(config)
    assert options.stages == ["fit-xrf"] and options.xrf.elements == ["Fe", "Zn"]
    assert options.ptycho.engine == "rpie" and options.ptycho.halo_um == 1
    assert options.override("ptycho", iterations=5).ptycho.iterations == 5
    with pytest.raises(InvalidInputError, match="ptycho.engine"):
        options.override("ptycho", engine="magic").check()


@pytest.mark.parametrize("profile", ["slurm-generic", "pbs-leadership"])
def test_job_script_for_each_shipped_profile(profile):
    pytest.importorskip("dask_jobqueue")
    result = xmulti("cluster", "script", profile)
    assert result.returncode == 0, result.stderr
    directive = "#SBATCH" if profile.startswith("slurm") else "#PBS"
    assert directive in result.stdout and "dask_worker" in result.stdout
    assert "--nworkers" in result.stdout


def test_bad_profile(tmp_path):
    pytest.importorskip("dask_jobqueue")
    profile = tmp_path / "site.yaml"
    profile.write_text("kind: slurm\njob:\n  cores: 4\n  qeue: x\n")
    result = xmulti("cluster", "script", profile)
    assert result.returncode == 2 and "unknown dask-jobqueue option(s) qeue" in result.stderr


def test_write_hdf5_adds_results_and_keeps_raw_data(reference_store, scan_file, tmp_path):
    import shutil

    import h5py

    from xmulti import open_scan
    from xmulti.io.scan_results import write_results_to_scan

    store, _ = reference_store
    copy = tmp_path / "scan.h5"
    shutil.copy(scan_file, copy)
    with h5py.File(copy) as f:
        spectra, frames = f["xrf/spectra"][()], f["ptychography/diffraction"][()]
    written = write_results_to_scan(copy, store)
    assert set(written) == {"/xrf/elemental_maps", "/reconstructed"}
    tree = open_scan(copy)
    np.testing.assert_array_equal(tree["xrf"].ds["spectra"].values, spectra)
    np.testing.assert_array_equal(tree["ptychography"].ds["diffraction"].values, frames)
    rec = _tree(store)["reconstructed"].to_dataset()
    phase = tree["reconstructed"].ds["phase"]
    np.testing.assert_allclose(phase.values, rec["phase"].values, rtol=1e-6)
    np.testing.assert_allclose(phase["y"].values, rec["y"].values)  # origin kept: same stage frame
    assert "K" in tree["xrf/elemental_maps"].ds
