"""Typed, validated options of the pipeline: one YAML file drives every stage, CLI flags override.

Each section is a frozen dataclass; loading checks unknown keys and value types and names the
offending key. The options serialise to JSON for the provenance of every result group.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

__all__ = ["XRFOptions", "PtychoOptions", "CorrelateOptions", "JointOptions", "ClusterOptions", "PipelineOptions", "load_options", "STAGES"]

#: Pipeline stages in the order they run.
STAGES = ("fit-xrf", "reconstruct", "correlate", "joint")


@dataclass(frozen=True)
class XRFOptions:
    """Options of the XRF fitting stage.

    Attributes
    ----------
    elements : list of str or None
        Element symbols to fit; None suggests them from the summed spectrum.
    background : str
        ``"linear"`` (continuum inside the linear model, unbiased) or ``"snip"``.
    standard : str or None
        Scan (combined layout, with i0) of a thin-film standard measured with the same setup;
        with it the stage also writes ``/xrf/areal_density`` (ug/cm2).
    standard_info : str or None
        MAPS ``maps_standardinfo.txt`` with the standard's certified areal densities.
    standard_densities : dict of str to float or None
        The certified areal densities (ug/cm2) given directly, instead of ``standard_info``.
    standard_calibration : str or None
        A saved standard calibration (JSON, :mod:`xmulti.xrf.standard`): applied as is without
        ``standard``; with ``standard``, the file where its calibration is kept and reused while
        the standard's scan (checksum), densities and fit options are unchanged (``xmulti run``
        sets it to ``RESULTS.zarr.standard-calibration.json`` beside the store).
    """

    elements: list[str] | None = None
    background: str = "linear"
    standard: str | None = None
    standard_info: str | None = None
    standard_densities: dict[str, float] | None = None
    standard_calibration: str | None = None

    def check(self) -> None:
        if self.background not in ("linear", "snip"):
            raise InvalidInputError(f"xrf.background: must be 'linear' or 'snip', got {self.background!r}")
        given = (self.standard_info is not None) + (self.standard_densities is not None)
        if self.standard is None and given:
            raise InvalidInputError("xrf.standard_info and xrf.standard_densities need xrf.standard (its scan)")
        if self.standard is not None and given != 1:
            raise InvalidInputError("xrf.standard needs exactly one of xrf.standard_info or xrf.standard_densities")


@dataclass(frozen=True)
class PtychoOptions:
    """Options of the ptychographic reconstruction stage.

    Attributes
    ----------
    engine : {"lsqml", "rpie"}
    iterations : int
        Epochs (passes over all positions).
    probe_modes : int
        Incoherent probe modes.
    position_correction : bool
    tiles : list of two int or None
        Tile grid (ny, nx) for tile-parallel reconstruction; ``[1, 1]`` = one tile in one process;
        None = chosen by the pipeline from the scan, the workers and ``max_tile_positions``
        (:func:`xmulti.stages.auto_tiles`).
    max_tile_positions : int
        Largest number of positions (halo excluded) of one tile when the pipeline chooses the
        tiles: it bounds a worker's memory by its tile whatever the scan's size.
    halo_um : float or None
        Halo width; None = about two scan steps.
    sync_every : int or None
        Epochs between probe/overlap synchronisation of tiles; None = never (independent tiles).
    seed : int
        Seed of every random choice (batch order, initial modes).
    """

    engine: str = "lsqml"
    iterations: int = 100
    probe_modes: int = 1
    position_correction: bool = False
    tiles: list[int] | None = None
    max_tile_positions: int = 2500
    halo_um: float | None = None
    sync_every: int | None = None
    seed: int = 0

    def check(self) -> None:
        if self.engine not in ("lsqml", "rpie"):
            raise InvalidInputError(f"ptycho.engine: must be 'lsqml' or 'rpie', got {self.engine!r}")
        if self.iterations < 1:
            raise InvalidInputError(f"ptycho.iterations: must be >= 1, got {self.iterations}")
        if self.probe_modes < 1:
            raise InvalidInputError(f"ptycho.probe_modes: must be >= 1, got {self.probe_modes}")
        if self.tiles is not None and (len(self.tiles) != 2 or min(self.tiles) < 1):
            raise InvalidInputError(f"ptycho.tiles: must be two positive integers, got {self.tiles}")
        if self.max_tile_positions < 1:
            raise InvalidInputError(f"ptycho.max_tile_positions: must be >= 1, got {self.max_tile_positions}")


@dataclass(frozen=True)
class CorrelateOptions:
    """Options of the correlation stage (segmentation on the phase, per-region statistics).

    Attributes
    ----------
    elements : list of str or None
        Element maps to tabulate (default all).
    matrix : str
        Matter the phase is converted to mass of: ``protein``, ``ice`` or ``FORMULA:DENSITY``.
    embedding : str
        Medium the matrix displaces: ``none`` (dried cells), ``ice`` or ``FORMULA:DENSITY``.
    method : {"otsu", "multiotsu", "local"}
        Threshold of the segmentation.
    min_area_um2 : float or None
        Drop smaller regions.
    split : bool
        Split touching cells (watershed on the distance transform).
    illumination_threshold : float
        Ignore phase pixels whose illumination is below this fraction of its maximum.
    shift_reference : str or None
        XRF map that grows with matter (e.g. ``compton``) to check the XRF-phase residual shift.
    correct_shift : bool
        Move the maps by the residual shift found.
    max_pixels : int
        Largest image the stage segments and tabulates: a larger phase is block-averaged by the
        smallest integer factor that brings it under this many pixels (read chunk by chunk), so
        the stage's memory does not grow with the scan (:mod:`xmulti.working_grid`).
    """

    elements: list[str] | None = None
    matrix: str = "protein"
    embedding: str = "none"
    method: str = "otsu"
    min_area_um2: float | None = None
    split: bool = True
    illumination_threshold: float = 0.05
    shift_reference: str | None = None
    correct_shift: bool = False
    max_pixels: int = 1 << 20

    def check(self) -> None:
        if self.max_pixels < 1024:
            raise InvalidInputError(f"correlate.max_pixels: must be >= 1024, got {self.max_pixels}")
        if self.method not in ("otsu", "multiotsu", "local"):
            raise InvalidInputError(f"correlate.method: must be otsu, multiotsu or local, got {self.method!r}")
        if self.correct_shift and not self.shift_reference:
            raise InvalidInputError("correlate.correct_shift needs correlate.shift_reference")


@dataclass(frozen=True)
class JointOptions:
    """Options of the joint stage (self-absorption, resolution bridging, joint reconstruction).

    Attributes
    ----------
    elements : list of str or None
        Elements to treat (default all fitted).
    iterations : int
        Iterations of the joint reconstruction (L-BFGS-B).
    xrf_weight : float
        Weight of the XRF likelihood against the ptychographic one (1: as the noise says).
    xrf_noise : str
        Likelihood of the fitted XRF values: ``gaussian`` (the fit's uncertainties) or
        ``poisson`` (shifted Poisson, unbiased at a few counts per position).
    matrix : str
        Matter that sets the phase: ``protein``, ``ice`` or ``FORMULA:DENSITY``.
    ice_thickness_um : float
        Ice layer the sample is embedded in (0: dried sample).
    incident_angle_deg, exit_angle_deg : float
        Beam and XRF detector directions from the sample surface (degrees).
    """

    elements: list[str] | None = None
    iterations: int = 40
    xrf_weight: float = 1.0
    xrf_noise: str = "gaussian"
    matrix: str = "protein"
    ice_thickness_um: float = 0.0
    incident_angle_deg: float = 90.0
    exit_angle_deg: float = 15.0

    def check(self) -> None:
        if self.iterations < 1:
            raise InvalidInputError(f"joint.iterations: must be >= 1, got {self.iterations}")
        if not self.xrf_weight >= 0:
            raise InvalidInputError(f"joint.xrf_weight: must be >= 0, got {self.xrf_weight}")
        if self.xrf_noise not in ("gaussian", "poisson"):
            raise InvalidInputError(f"joint.xrf_noise: must be 'gaussian' or 'poisson', got {self.xrf_noise!r}")
        if self.ice_thickness_um < 0:
            raise InvalidInputError(f"joint.ice_thickness_um: must be >= 0, got {self.ice_thickness_um}")
        for name in ("incident_angle_deg", "exit_angle_deg"):
            if not 0 < getattr(self, name) <= 90:
                raise InvalidInputError(f"joint.{name}: must be in (0, 90] degrees, got {getattr(self, name)}")


@dataclass(frozen=True)
class ClusterOptions:
    """Where the work runs: a scheduler address, a dask-jobqueue profile, or (neither) a local
    process cluster with ``n_workers`` processes (default one per core)."""

    scheduler: str | None = None
    profile: str | None = None
    n_workers: int | None = None

    def check(self) -> None:
        if self.scheduler and self.profile:
            raise InvalidInputError("cluster: give either scheduler or profile, not both")


@dataclass(frozen=True)
class PipelineOptions:
    """All options of ``xmulti run``.

    ``chunk_positions`` is the number of positions per Dask chunk of the spectra and frames
    (default: about 64 MB per chunk): with the tile size it sets the memory of a worker.
    """

    stages: list[str] = field(default_factory=lambda: list(STAGES))
    chunk_positions: int | None = None
    xrf: XRFOptions = field(default_factory=XRFOptions)
    ptycho: PtychoOptions = field(default_factory=PtychoOptions)
    correlate: CorrelateOptions = field(default_factory=CorrelateOptions)
    joint: JointOptions = field(default_factory=JointOptions)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)

    def check(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise InvalidInputError(f"stages: unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
        if self.chunk_positions is not None and self.chunk_positions < 1:
            raise InvalidInputError(f"chunk_positions: must be >= 1, got {self.chunk_positions}")
        for section in (self.xrf, self.ptycho, self.correlate, self.joint, self.cluster):
            section.check()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) of every option."""
        return dataclasses.asdict(self)

    def override(self, section: str | None = None, **values: Any) -> PipelineOptions:
        """A copy with some values replaced (None values are ignored), type-checked."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        if section is None:
            merged = {**self.to_dict(), **values}
        else:
            merged = self.to_dict()
            merged[section] = {**merged[section], **values}
        return _build(PipelineOptions, merged, "")


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (types.UnionType, typing.Union):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        return isinstance(value, dict) and all(
            _type_ok(k, key_type) and _type_ok(v, value_type) for k, v in value.items()
        )
    return isinstance(value, annotation)


def _build(cls, raw: Any, where: str):
    """Instantiate dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where or 'options'}: must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise InvalidInputError(
            f"{where + ': ' if where else ''}unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    values = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, value if value is not None else {}, key)
            continue
        if not _type_ok(value, annotation):
            raise InvalidInputError(f"{key}: expected {_describe(annotation)}, got {value!r}")
        values[name] = value
    return cls(**values)


def _describe(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


def load_options(path: str | os.PathLike | None = None) -> PipelineOptions:
    """Options from a YAML file (or the defaults), validated.

    Raises
    ------
    InvalidInputError
        Unreadable file, invalid YAML, unknown keys or wrong types, naming the file and key.
    """
    import yaml

    if path is None:
        options = PipelineOptions()
    else:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise InvalidInputError(f"{path}: cannot read the options file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"{path}: not valid YAML: {exc}") from None
        try:
            options = _build(PipelineOptions, raw, "")
        except InvalidInputError as exc:
            raise InvalidInputError(f"{path}: {exc}") from None
    options.check()
    return options
