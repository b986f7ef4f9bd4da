"""Synthetic combined XRF + ptychography scans with ground truth.

:func:`make_scan` builds a scan in memory; :func:`simulate_scan` writes it in the combined
layout with a ``/truth`` group. Both are seeded and deterministic.

The physics: a cell phantom (matrix thickness and element areal densities) gives the object
transmission through xraylib refractive indices; a defocused zone-plate probe scans it on a
jittered raster; far-field patterns get Poisson noise (and optionally dead pixels). The same
probe intensity is the XRF excitation footprint: each element's detected counts are
``flux * live_fraction * sum(footprint * areal_density) * sum_lines(cross_section * efficiency)``,
spread over the spectrum by the detector response with escape peaks; elastic and Compton
scatter come from the matrix mass and xraylib's polarised cross-sections, plus a continuum.
The cells sit on a support membrane (Si3N4) that scatters everywhere.
Self-absorption of the element lines (homogeneous slab of matrix + ice at each object pixel)
is optional (``self_absorption=True``); not simulated: self-absorption of scatter, pile-up,
fluorescence of the support membrane.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import physics
from .config import PRESETS, SimulationConfig, config_for
from .optics import (
    far_field_intensity,
    gather_windows,
    object_transmission,
    raster_positions_px,
    shifted_probes,
    window_indices,
    zone_plate_probe,
)
from .phantom import Phantom, cell_phantom
from .spectra import (
    DetectorModel,
    channel_energies_keV,
    element_components,
    scatter_components,
    scatter_cross_sections_cm2_g,
)

__all__ = ["SimulatedScan", "SimulationConfig", "PRESETS", "config_for", "make_scan", "simulate_scan"]

_BATCH = 128  # positions per vectorised batch: bounds memory for the large preset


@dataclass
class SimulatedScan:
    """A simulated scan and its ground truth (all numpy, units in names).

    Attributes
    ----------
    config : SimulationConfig
    seed : int
    positions_um : ndarray (P, 2)
        Recorded beam-centre positions (y, x) in um (true positions + ``position_error_px``).
    true_positions_um : ndarray (P, 2)
    pixel_size_um : float
        Object pixel size.
    origin_um : (y, x)
        Stage position of the centre of object pixel (0, 0).
    phantom : Phantom
        Thickness, composition (ug/cm2), cell labels on the object grid.
    object : ndarray (ny, nx) complex128
        Object transmission.
    probe : ndarray (N, N) complex128
        Probe, ``sum |P|^2`` = incident photons per frame at nominal flux.
    diffraction : ndarray (P, N, N) uint32
        Measured patterns (Poisson), zero frequency at the centre; dead pixels read 0.
    mask : ndarray (N, N) bool
        True for dead pixels.
    spectra : ndarray (P, C) uint32
        Measured fluorescence spectra (Poisson).
    expected_spectra : ndarray (P, C) float32
        Noise-free spectra.
    channel_energy_keV : ndarray (C,)
        True channel energies (the file carries the nominal calibration).
    line_counts : ndarray (P, n_elements)
        Expected detected counts of all lines (with escape peaks) of each element.
    scatter_counts : ndarray (P, 3)
        Expected elastic, Compton and continuum counts.
    beam_factor : ndarray (P,)
        Relative beam flux at each position (i0 follows it).
    i0, live_time_s, real_time_s : ndarray (P,)
    """

    config: SimulationConfig
    seed: int
    positions_um: np.ndarray
    true_positions_um: np.ndarray
    pixel_size_um: float
    origin_um: tuple[float, float]
    phantom: Phantom
    object: np.ndarray
    probe: np.ndarray
    diffraction: np.ndarray
    mask: np.ndarray
    spectra: np.ndarray
    expected_spectra: np.ndarray
    channel_energy_keV: np.ndarray
    line_counts: np.ndarray
    scatter_counts: np.ndarray
    beam_factor: np.ndarray
    i0: np.ndarray
    live_time_s: np.ndarray
    real_time_s: np.ndarray

    @property
    def elements(self) -> tuple[str, ...]:
        """Element symbols, in the order of ``line_counts`` and the composition."""
        return self.phantom.elements

    @property
    def detector(self) -> DetectorModel:
        """The true detector model."""
        return _detector(self.config)

    def fractional_positions(self, positions_um: np.ndarray | None = None) -> np.ndarray:
        """Positions as fractional object indices ``(p - origin) / dx`` (default: true ones)."""
        p = self.true_positions_um if positions_um is None else positions_um
        return (p - np.asarray(self.origin_um)) / self.pixel_size_um

    def beams_over_cells(self) -> np.ndarray:
        """(P,) bool: whether the probe disc (``probe_diameter_px``) at each true position covers a
        cell pixel; only those windows carry position information on the cell phantom."""
        yy, xx = np.nonzero(self.phantom.cell_labels > 0)
        r2 = (self.config.probe_diameter_px / 2) ** 2
        return np.array([np.any((yy - p[0]) ** 2 + (xx - p[1]) ** 2 < r2) for p in self.fractional_positions()])

    def write(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the scan in the combined layout with a ``/truth`` group."""
        from ..io.layout import PtychoData, XRFData, write_scan

        cfg = self.config
        offset, gain = cfg.nominal_calibration_keV
        xrf = XRFData(
            spectra=self.spectra,
            positions_um=self.positions_um,
            calibration_keV=(offset, gain),
            i0=self.i0,
            live_time_s=self.live_time_s,
            real_time_s=self.real_time_s,
        )
        ptycho = PtychoData(
            diffraction=self.diffraction,
            positions_um=self.positions_um,
            energy_keV=cfg.energy_keV,
            detector_distance_m=cfg.detector_distance_m,
            detector_pixel_size_m=cfg.detector_pixel_size_m,
            mask=self.mask if cfg.bad_pixel_fraction > 0 else None,
        )
        truth = {
            "@attrs": {
                "seed": self.seed,
                "pixel_size_nm": self.pixel_size_um * 1e3,
                "origin_um": np.asarray(self.origin_um),
                "energy_offset_keV": cfg.energy_offset_keV,
                "energy_gain_keV": cfg.energy_gain_keV,
                "energy_quadratic_keV": cfg.energy_quadratic_keV,
                "noise_fwhm_keV": cfg.noise_fwhm_keV,
                "fano": cfg.fano,
                "flux": cfg.flux,
                "matrix_formula": cfg.matrix_formula,
                "matrix_density_g_cm3": cfg.matrix_density_g_cm3,
                "description": "ground truth of xmulti.simulate; composition in ug/cm2, "
                "thickness in um, positions in um, line_counts = expected detected counts "
                "of all lines of each element",
            },
            "elements": (("element",), np.array(self.elements, dtype="S")),
            "composition": (("element", "y", "x"), self.phantom.composition_ug_cm2.astype(np.float32)),
            "thickness": (("y", "x"), self.phantom.thickness_um.astype(np.float32)),
            "cell_labels": (("y", "x"), self.phantom.cell_labels),
            "object": (("y", "x"), self.object.astype(np.complex64)),
            "probe": (("probe_y", "probe_x"), self.probe.astype(np.complex64)),
            "positions": (("position", "yx"), self.true_positions_um),
            "line_counts": (("position", "element"), self.line_counts),
            "scatter_counts": (("position", "scatter"), self.scatter_counts),
            "channel_energy": (("channel",), self.channel_energy_keV),
        }
        if cfg.self_absorption:
            truth["@attrs"].update(
                self_absorption="homogeneous slab of matrix + ice per object pixel",
                incident_angle_deg=cfg.incident_angle_deg,
                exit_angle_deg=cfg.exit_angle_deg,
                ice_thickness_um=cfg.ice_thickness_um,
            )
        return write_scan(
            path,
            incident_energy_keV=cfg.energy_keV,
            scan_shape=cfg.scan_shape,
            xrf=xrf,
            ptychography=ptycho,
            extra_groups={"truth": truth},
            attrs={"source": "xmulti.simulate", "simulation_seed": self.seed},
            overwrite=overwrite,
        )


def _self_absorption(cfg: SimulationConfig, matrix_mass: np.ndarray, ice_mass: np.ndarray) -> np.ndarray:
    """Per-element self-absorption factor (n_elements, ny, nx) of the matrix + ice column (g/cm2)."""
    from ..joint.absorption import (
        absorption_exponent,
        absorption_factor_of_exponent,
        attenuation_coefficients_cm2_g,
        effective_line_energy_keV,
    )

    energies = {el: effective_line_energy_keV(el, cfg.energy_keV) for el in cfg.elements}
    angles = (cfg.energy_keV, cfg.incident_angle_deg, cfg.exit_angle_deg)
    chi_m = attenuation_coefficients_cm2_g(energies, cfg.matrix_formula, *angles)
    chi_i = attenuation_coefficients_cm2_g(energies, physics.ICE.formula, *angles)
    return np.stack([
        absorption_factor_of_exponent(absorption_exponent([chi_m[el], chi_i[el]], [matrix_mass, ice_mass]))
        for el in cfg.elements
    ])


def _detector(cfg: SimulationConfig) -> DetectorModel:
    return DetectorModel(
        n_channels=cfg.n_channels,
        offset_keV=cfg.energy_offset_keV,
        gain_keV=cfg.energy_gain_keV,
        quadratic_keV=cfg.energy_quadratic_keV,
        noise_fwhm_keV=cfg.noise_fwhm_keV,
        fano=cfg.fano,
        be_window_um=cfg.be_window_um,
        si_thickness_mm=cfg.detector_si_mm,
    )


def make_scan(preset: str = "tiny", seed: int = 0, **overrides) -> SimulatedScan:
    """Simulate a combined scan in memory.

    Parameters
    ----------
    preset : {"tiny", "small", "large"}
        Named settings (:data:`PRESETS`): tiny for tests, small for the demo, large for
        benchmarks (100 x 100 positions, 128 x 128 frames, 2048 channels).
    seed : int
        Seed of every random draw; the same seed gives the same scan.
    **overrides
        Any :class:`SimulationConfig` field, e.g. ``scan_shape=(20, 20)``, ``frame_size=64``,
        ``photons_per_frame=1e6``, ``flux=1e9``, ``position_error_px=3``.

    Returns
    -------
    SimulatedScan
    """
    cfg = config_for(preset, **overrides)
    rng = np.random.default_rng(seed)
    n = cfg.frame_size
    wavelength = physics.wavelength_m(cfg.energy_keV)
    dx_um = physics.object_pixel_size_m(
        cfg.energy_keV, cfg.detector_distance_m, n, cfg.detector_pixel_size_m
    ) * 1e6

    # scan geometry: raster around the scan centre, object grid covering every window
    step_px = (1.0 - cfg.overlap) * cfg.probe_diameter_px
    rel_px = raster_positions_px(cfg.scan_shape, step_px, cfg.jitter_px, rng)
    margin = 2
    low = rel_px.min(axis=0)
    fractional = rel_px - low + n // 2 + margin
    shape = tuple(int(v) for v in np.ceil(fractional.max(axis=0) + n // 2 + margin + 1))
    true_um = np.asarray(cfg.scan_centre_um) + rel_px * dx_um
    origin = true_um[0] - fractional[0] * dx_um
    recorded_um = true_um + rng.normal(0.0, cfg.position_error_px * dx_um, true_um.shape) * (
        cfg.position_error_px > 0
    )

    phantom = cell_phantom(shape, dx_um, cfg.elements, cfg.cell_thickness_um, cfg.n_cells, rng)
    delta, beta = physics.refractive_index(cfg.matrix_formula, cfg.energy_keV, cfg.matrix_density_g_cm3)
    ice_delta, ice_beta = physics.refractive_index(physics.ICE.formula, cfg.energy_keV, physics.ICE.density_g_cm3)
    obj = object_transmission(
        phantom.thickness_um, delta, beta, wavelength, cfg.ice_thickness_um, ice_delta, ice_beta
    )
    probe = zone_plate_probe(n, cfg.probe_diameter_px, cfg.photons_per_frame)

    n_pos = rel_px.shape[0]
    beam = np.clip(1.0 + cfg.i0_fluctuation * rng.standard_normal(n_pos), 0.5, None)
    i0 = rng.poisson(cfg.i0_counts * beam).astype(np.float64)
    mask = rng.random((n, n)) < cfg.bad_pixel_fraction

    # matrix areal mass (g/cm2): cell matrix plus the ice it sits in
    ice_um = np.clip(cfg.ice_thickness_um - phantom.thickness_um, 0.0, None)
    matrix_mass = phantom.thickness_um * 1e-4 * cfg.matrix_density_g_cm3
    ice_mass = ice_um * 1e-4 * physics.ICE.density_g_cm3

    # what each element emits towards the detector per unit areal density: 1, or the local
    # self-absorption factor of the matrix + ice column (homogeneous slab) when enabled
    emitting = phantom.composition_ug_cm2
    if cfg.self_absorption:
        emitting = emitting * _self_absorption(cfg, matrix_mass, ice_mass)

    corner, fraction = window_indices(fractional, n)
    diffraction = np.empty((n_pos, n, n), dtype=np.uint32)
    areal_density = np.empty((n_pos, len(cfg.elements)))  # footprint-weighted, ug/cm2
    scatter_mass = np.empty((n_pos, 2))  # footprint-weighted matrix and ice mass, g/cm2
    for start in range(0, n_pos, _BATCH):
        sl = slice(start, min(start + _BATCH, n_pos))
        probes = shifted_probes(probe, fraction[sl])
        exit_waves = probes * gather_windows(obj, corner[sl], n)
        expected = far_field_intensity(exit_waves) * beam[sl, None, None]
        frames = rng.poisson(expected)
        frames[:, mask] = 0
        diffraction[sl] = frames
        footprint = np.abs(probes) ** 2
        footprint /= footprint.sum(axis=(1, 2), keepdims=True)
        windows = gather_windows(emitting, corner[sl], n)
        areal_density[sl] = np.einsum("pyx,epyx->pe", footprint, windows)
        for k, mass in enumerate((matrix_mass, ice_mass)):
            scatter_mass[sl, k] = np.einsum("pyx,pyx->p", footprint, gather_windows(mass, corner[sl], n))

    # XRF: detected counts per element (all lines, efficiency included), scatter, continuum
    detector = _detector(cfg)
    sensitivity = np.empty(len(cfg.elements))  # detected counts per (ug/cm2) per unit flux
    for i, symbol in enumerate(cfg.elements):
        lines = physics.emission_lines(symbol, cfg.energy_keV)
        if not lines:
            raise physics.InvalidInputError(f"{symbol} has no line excited at {cfg.energy_keV} keV")
        energies = np.array([line.energy_keV for line in lines])
        cs = np.array([line.cross_section_cm2_g for line in lines])
        efficiency = physics.detector_efficiency(energies, cfg.be_window_um, cfg.detector_si_mm)
        sensitivity[i] = 1e-6 * float(np.sum(cs * efficiency))
    rayl_m, compt_m = scatter_cross_sections_cm2_g(cfg.matrix_formula, cfg.energy_keV)
    rayl_i, compt_i = scatter_cross_sections_cm2_g(physics.ICE.formula, cfg.energy_keV)
    rayl_s, compt_s = scatter_cross_sections_cm2_g(cfg.support_formula, cfg.energy_keV)
    support_mass = cfg.support_thickness_um * 1e-4 * cfg.support_density_g_cm3  # g/cm2
    full_dwell = cfg.flux * beam
    lines_full = full_dwell[:, None] * areal_density * sensitivity[None, :]
    elastic_full = full_dwell * (scatter_mass[:, 0] * rayl_m + scatter_mass[:, 1] * rayl_i + support_mass * rayl_s)
    compton_full = full_dwell * (scatter_mass[:, 0] * compt_m + scatter_mass[:, 1] * compt_i + support_mass * compt_s)
    continuum_full = cfg.continuum_level * compton_full
    rate = lines_full.sum(axis=1) + elastic_full + compton_full + continuum_full
    dead = cfg.dead_time_fraction * rate / rate.mean()
    live_fraction = np.clip(1.0 - dead, 0.05, 1.0)
    line_counts = lines_full * live_fraction[:, None]
    scatter_counts = np.stack([elastic_full, compton_full, continuum_full], axis=1) * live_fraction[:, None]

    components = element_components(tuple(cfg.elements), cfg.energy_keV, detector)
    scatter_shapes = scatter_components(cfg.energy_keV, detector, cfg.compton_extra_sigma_keV)
    expected_spectra = (line_counts @ components + scatter_counts @ scatter_shapes).astype(np.float32)
    spectra = rng.poisson(expected_spectra).astype(np.uint32)

    return SimulatedScan(
        config=cfg,
        seed=seed,
        positions_um=recorded_um,
        true_positions_um=true_um,
        pixel_size_um=dx_um,
        origin_um=(float(origin[0]), float(origin[1])),
        phantom=phantom,
        object=obj,
        probe=probe,
        diffraction=diffraction,
        mask=mask,
        spectra=spectra,
        expected_spectra=expected_spectra,
        channel_energy_keV=channel_energies_keV(detector),
        line_counts=line_counts,
        scatter_counts=scatter_counts,
        beam_factor=beam,
        i0=i0,
        live_time_s=cfg.dwell_s * live_fraction,
        real_time_s=np.full(n_pos, cfg.dwell_s),
    )


def simulate_scan(
    path: str | os.PathLike, preset: str = "tiny", seed: int = 0, overwrite: bool = False, **overrides
) -> Path:
    """Simulate a combined scan and write it (layout plus ``/truth``) to ``path``.

    Parameters are those of :func:`make_scan`; ``overwrite`` replaces an existing file.

    Returns
    -------
    Path
        The written file.
    """
    return make_scan(preset, seed, **overrides).write(path, overwrite=overwrite)
