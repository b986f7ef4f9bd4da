"""xmulti: simultaneous X-ray fluorescence + ptychography microscopy.

The public API is imported lazily so ``import xmulti`` stays fast; heavy libraries (dask, xarray,
h5py, xraylib, scipy) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    # scans
    "open_scan": "xmulti.io.scan",
    "validate_scan": "xmulti.io.scan",
    "simulate_scan": "xmulti.simulate",
    "make_scan": "xmulti.simulate",
    # XRF
    "fit_xrf": "xmulti.xrf.maps",
    "calibrate_scan": "xmulti.xrf.maps",
    "fit_standard": "xmulti.xrf.standard",
    "read_standard_info": "xmulti.xrf.standard",
    "calibrate_standard": "xmulti.xrf.quantify",
    "areal_density_maps": "xmulti.xrf.quantify",
    "physical_sensitivity": "xmulti.xrf.quantify",
    # ptychography
    "reconstruct": "xmulti.ptycho.reconstruct",
    # co-registration, correlation, figures
    "maps_to_phase_grid": "xmulti.register",
    "phase_to_scan_grid": "xmulti.register",
    "estimate_shift": "xmulti.register",
    "correct_shift": "xmulti.register",
    "segment_phase": "xmulti.correlate",
    "region_table": "xmulti.correlate",
    "regions_to_dataset": "xmulti.correlate",
    "phase_areal_mass": "xmulti.correlate",
    "pixel_correlations": "xmulti.pixelwise",
    "guided_xrf_segmentation": "xmulti.pixelwise",
    "overlay_figure": "xmulti.viz",
    "correlation_figure": "xmulti.viz",
    "save_figure": "xmulti.viz",
    # joint analysis
    "joint_reconstruct": "xmulti.joint.solve",
    "JointSettings": "xmulti.joint.settings",
    "level_reconstructed_phase": "xmulti.inputs",
    "bridge_resolution": "xmulti.joint.bridge",
    "correct_self_absorption": "xmulti.joint.absorption",
    "areal_mass_from_phase": "xmulti.joint.absorption",
    # beamline formats
    "convert": "xmulti.io.convert",
    "read_mda": "xmulti.io.mda",
    "read_maps": "xmulti.io.maps",
    "read_eiger": "xmulti.io.eiger",
    "read_cxi": "xmulti.io.cxi",
    "export_cxi": "xmulti.io.cxi",
    # pipeline and clusters
    "run_pipeline": "xmulti.pipeline",
    "load_options": "xmulti.options",
    "dask_client": "xmulti.cluster",
    "start_client": "xmulti.cluster",
    "job_script": "xmulti.cluster",
    "list_profiles": "xmulti.cluster",
    "tune_workers": "xmulti.worker_memory",
    "write_figures": "xmulti.figures",
    # errors
    "XmultiError": "xmulti.errors",
    "InvalidScanError": "xmulti.errors",
    "InvalidInputError": "xmulti.errors",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'xmulti' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
