"""XRF spectrum fitting: spectral model, calibration, per-pixel fits, quantification.

- :mod:`~xmulti.xrf.model`: the physical spectral model (kernels building design matrices);
- :mod:`~xmulti.xrf.calibrate`: nonlinear calibration on the summed spectrum, element
  suggestions;
- :mod:`~xmulti.xrf.fit`: the per-pixel linear fit kernel (continuum inside the model);
- :mod:`~xmulti.xrf.snip`: vectorised SNIP background (an option);
- :mod:`~xmulti.xrf.quantify`: thin-film standard calibration, areal densities;
- :mod:`~xmulti.xrf.maps`: the labelled operation :func:`fit_xrf` (xarray in, xarray out).

Typical use::

    import xmulti
    from xmulti.xrf import fit_xrf

    scan = xmulti.open_scan("scan.h5")
    maps = fit_xrf(scan, ["P", "S", "K", "Ca", "Fe", "Cu", "Zn"]).compute()
"""

from __future__ import annotations

from .calibrate import CalibrationResult, calibrate
from .fit import FitPlan, fit_spectra, prepare_fit
from .maps import calibrate_scan, calibration_diagnostics, fit_xrf
from .model import Calibration, SpectralModel, build_model
from .quantify import StandardCalibration, areal_density_maps, calibrate_standard
from .snip import snip_background

__all__ = [
    "Calibration",
    "CalibrationResult",
    "FitPlan",
    "SpectralModel",
    "StandardCalibration",
    "areal_density_maps",
    "build_model",
    "calibrate",
    "calibrate_scan",
    "calibrate_standard",
    "calibration_diagnostics",
    "fit_spectra",
    "fit_xrf",
    "prepare_fit",
    "snip_background",
]
