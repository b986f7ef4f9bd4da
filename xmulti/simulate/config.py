"""Simulation settings and the named presets (``tiny``, ``small``, ``large``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import InvalidInputError

__all__ = ["SimulationConfig", "PRESETS", "config_for"]

#: Typical areal densities (ug/cm2) inside a dried eukaryotic cell, used as the peak level of each
#: element's pattern (P, S, K rich; Ca moderate; Fe, Cu, Zn trace).
DEFAULT_ELEMENT_LEVELS_UG_CM2 = {
    "P": 2.0,
    "S": 1.0,
    "K": 1.5,
    "Ca": 0.4,
    "Fe": 0.08,
    "Cu": 0.02,
    "Zn": 0.06,
}


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated combined scan. Lengths in um unless named otherwise.

    Attributes
    ----------
    scan_shape : (ny, nx)
        Raster of scan positions (row by row, y slow, x fast).
    frame_size : int
        Diffraction frame (and probe array) width N in pixels.
    energy_keV : float
        Incident photon energy (keV), shared by both modalities.
    detector_distance_m, detector_pixel_size_m : float
        Far-field geometry; object pixel = wavelength * distance / (N * pixel).
    probe_diameter_px : float
        Diameter of the (defocused) probe footprint in object pixels.
    overlap : float
        Linear overlap ``1 - step / probe_diameter`` of neighbouring positions.
    photons_per_frame : float
        Incident photons per position reaching the detector area (sum of |probe|^2).
    jitter_px : float
        RMS random deviation of the true positions from the ideal raster (object pixels).
    position_error_px : float
        RMS error added to the *recorded* positions (object pixels), for position correction.
    bad_pixel_fraction : float
        Fraction of detector pixels that are dead (read 0) and flagged in the mask.
    n_channels : int
        MCA channels.
    energy_offset_keV, energy_gain_keV, energy_quadratic_keV : float
        True MCA calibration ``E = offset + gain * ch + quadratic * ch^2``.
    nominal_calibration_keV : (offset, gain)
        Calibration written to the file (as an MCA PV would give it, slightly off the truth).
    noise_fwhm_keV, fano : float
        Detector electronic noise (FWHM, keV) and Fano factor.
    flux : float
        Incident photons per position seen by the XRF detector's counting chain, times the
        detector solid-angle fraction and efficiency: counts = flux * cross-section * areal mass.
    solid_angle_fraction : float
        Detector solid angle / 4 pi (only enters through ``flux``; kept for documentation).
    compton_extra_sigma_keV : float
        Extra Gaussian width of the Compton peak (Doppler broadening and angular spread), keV.
    continuum_level : float
        Scale of the smooth continuum relative to the Compton peak area.
    i0_counts : float
        Mean upstream ion-chamber counts per position; the beam flux follows i0.
    i0_fluctuation : float
        Relative RMS fluctuation of the beam flux from position to position.
    dwell_s, dead_time_fraction : float
        Dwell time (s) and the mean fraction of it lost to dead time.
    elements : mapping of symbol to peak areal density (ug/cm2)
    matrix_formula, matrix_density_g_cm3 : str, float
        The cell matrix (default protein).
    cell_thickness_um : float
        Peak thickness of the cell matrix.
    ice_thickness_um : float
        Thickness of the embedding ice layer (0 for a dried cell).
    n_cells : int
        Number of cells in the field of view.
    scan_centre_um : (y, x)
        Stage position of the centre of the raster (um): deliberately not zero.
    support_formula, support_thickness_um, support_density_g_cm3 : str, float, float
        The membrane the cells sit on (scatters everywhere; its fluorescence is not simulated,
        and its uniform phase is a global offset left out of the object).
    be_window_um, detector_si_mm : float
        Detector Be window and Si crystal thickness: they set the detection efficiency.
    self_absorption : bool
        Attenuate each element's fluorescence by the local homogeneous-slab factor of the
        matrix plus ice column (:func:`xmulti.joint.absorption.self_absorption_factor`). Off by
        default, so the presets describe thin samples.
    incident_angle_deg, exit_angle_deg : float
        Beam and detector directions from the sample surface (degrees), used when
        ``self_absorption`` is on.
    """

    scan_shape: tuple[int, int] = (10, 12)
    frame_size: int = 32
    energy_keV: float = 10.0
    detector_distance_m: float = 2.0
    detector_pixel_size_m: float = 75e-6
    probe_diameter_px: float = 12.0
    overlap: float = 0.7
    photons_per_frame: float = 1e6
    jitter_px: float = 0.3
    position_error_px: float = 0.0
    bad_pixel_fraction: float = 0.0
    n_channels: int = 1024
    energy_offset_keV: float = -0.012
    energy_gain_keV: float = 0.0105
    energy_quadratic_keV: float = 0.0
    nominal_calibration_keV: tuple[float, float] = (0.0, 0.0104)
    noise_fwhm_keV: float = 0.11
    fano: float = 0.118
    flux: float = 2e8
    solid_angle_fraction: float = 0.05
    compton_extra_sigma_keV: float = 0.08
    continuum_level: float = 0.25
    i0_counts: float = 5e4
    i0_fluctuation: float = 0.02
    dwell_s: float = 0.05
    dead_time_fraction: float = 0.05
    elements: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ELEMENT_LEVELS_UG_CM2))
    matrix_formula: str = "H50C30N9O10S1"
    matrix_density_g_cm3: float = 1.35
    cell_thickness_um: float = 2.0
    ice_thickness_um: float = 0.0
    n_cells: int = 2
    scan_centre_um: tuple[float, float] = (5.0, 12.0)
    support_formula: str = "Si3N4"
    support_thickness_um: float = 0.1
    support_density_g_cm3: float = 3.1
    be_window_um: float = 8.0
    detector_si_mm: float = 0.35
    self_absorption: bool = False
    incident_angle_deg: float = 90.0
    exit_angle_deg: float = 15.0

    def replace(self, **overrides) -> SimulationConfig:
        """A copy with some fields changed; unknown names raise InvalidInputError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InvalidInputError(
                f"unknown simulation setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **overrides)

    def validate(self) -> None:
        """Raise InvalidInputError on settings that cannot describe a scan."""
        ny, nx = self.scan_shape
        checks = [
            (ny >= 1 and nx >= 1, "scan_shape must be two positive integers"),
            (self.frame_size >= 8 and self.frame_size % 2 == 0, "frame_size must be even and >= 8"),
            (0.0 <= self.overlap < 1.0, "overlap must be in [0, 1)"),
            (0 < self.probe_diameter_px < self.frame_size, "probe_diameter_px must be < frame_size"),
            (self.energy_keV > 0, "energy_keV must be positive"),
            (self.n_channels >= 16, "n_channels must be >= 16"),
            (self.photons_per_frame > 0 and self.flux > 0, "photon numbers must be positive"),
            (0 <= self.bad_pixel_fraction < 0.5, "bad_pixel_fraction must be in [0, 0.5)"),
            (0 < self.incident_angle_deg <= 90 and 0 < self.exit_angle_deg <= 90,
             "incident_angle_deg and exit_angle_deg must be in (0, 90]"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(f"simulation setting: {message}")
        top = self.energy_offset_keV + self.energy_gain_keV * (self.n_channels - 1)
        if top < self.energy_keV + 0.5:
            raise InvalidInputError(
                f"simulation setting: MCA range tops at {top:.2f} keV, below the elastic peak "
                f"({self.energy_keV} keV) + 0.5 keV; raise n_channels or energy_gain_keV"
            )


PRESETS: dict[str, SimulationConfig] = {
    # tests: seconds; ny != nx so transposition errors show
    "tiny": SimulationConfig(),
    # demo: a few seconds to simulate, under a minute to analyse
    "small": SimulationConfig(
        scan_shape=(24, 24),
        frame_size=64,
        probe_diameter_px=24.0,
        n_channels=2048,
        energy_gain_keV=0.0055,
        nominal_calibration_keV=(0.0, 0.00545),
        n_cells=3,
    ),
    # benchmarks: about 100 x 100 positions, 128 x 128 frames, 2048 channels
    "large": SimulationConfig(
        scan_shape=(100, 100),
        frame_size=128,
        probe_diameter_px=40.0,
        n_channels=2048,
        energy_gain_keV=0.0055,
        nominal_calibration_keV=(0.0, 0.00545),
        n_cells=6,
    ),
}


def config_for(preset: str = "tiny", **overrides) -> SimulationConfig:
    """The settings of a named preset with overrides applied and validated."""
    if preset not in PRESETS:
        raise InvalidInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset].replace(**overrides) if overrides else PRESETS[preset]
    config.validate()
    return config
