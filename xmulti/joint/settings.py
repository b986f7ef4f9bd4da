"""Settings of the joint problem, shared by :func:`~xmulti.joint.setup.build_problem` and
:func:`~xmulti.joint.solve.joint_reconstruct` (one place for their names, defaults and checks)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = ["JointSettings"]


@dataclass(frozen=True)
class JointSettings:
    """How the joint objective is built from a scan and its separate results.

    Attributes
    ----------
    xrf_weight : float
        ``lambda``: weight of the XRF likelihood (1 weighs both likelihoods as the noise says).
    geometry : dict, optional
        ``incident_angle_deg`` (default 90) and ``exit_angle_deg`` (default 15), from the
        sample surface, for self-absorption.
    sensitivity : mapping or StandardCalibration, optional
        Map units per ug/cm2 of each element (``.sensitivity(El)`` of
        :func:`xmulti.xrf.quantify.calibrate_standard`, or a dict). None: the maps must be in ug/cm2.
    matrix : str or xmulti.physics.Matrix
        The matrix that sets the phase ("protein", "ice", "FORMULA:DENSITY").
    ice_thickness_um : float
        Ice layer the matrix displaces (um; 0: dried sample in vacuum).
    noise : {"poisson", "gaussian"}
        Likelihood of the diffraction counts: Poisson (default), or Gaussian on their square
        roots, which is biased below about 10 counts, where most detector pixels of a
        cell's frame are, and pulls the thickness away from the truth (``docs/joint.md``).
    xrf_noise : {"gaussian", "poisson"}
        Likelihood of the fitted XRF values: Gaussian with the fit's uncertainties (default), or
        shifted Poisson (the fit's variance at the data, the signal's share growing with the
        model; unbiased where the per-position signal is a few counts, where the Gaussian term
        with data-derived uncertainties is biased low; ``docs/joint.md``).
    smoothing : float
        Weight of the edge-weighted smoothness of the element maps, relative to the XRF data
        curvature and the footprint area (default 2, chosen on simulated cells); 0 turns it off.
    edge_um : float, optional
        Thickness step (um) at which a pair of pixels counts as an edge; default 5 % of the
        thickest part.
    thickness_smoothing : float
        Weight of the edge-weighted smoothness of the thickness (a Gaussian Markov random field
        prior on neighbour differences, the element maps' edge weights), in units of its
        empirical-Bayes precision ``1 / tau^2``, ``tau^2`` the mean edge-weighted square
        neighbour difference of the starting thickness over the well-lit region (default 1: the
        prior as estimated; 0 turns it off). The data leave pixel-scale thickness noise of about
        ``1 / sqrt(2 k^2 delta^2 sum |P|^2)`` um; the prior removes most of it where the start is
        smooth and lets edges of the start through (H. Rue, L. Held, *Gaussian Markov Random
        Fields*, 2005).
    element_phase : bool
        Include the elements' own (tiny) refractive index in the transmission.
    level : bool
        Level the reconstruction's phase on its background
        (:func:`xmulti.inputs.level_reconstructed_phase`; the probe gets the counter-ramp).
    batch : int
        Positions per batch of the objective.
    max_frame_bytes : float
        Frames up to this size (bytes, as float32) are read once; larger scans batch by batch.
        In process only: on a cluster each tile reads its own frames once, on its worker.
    tiles : None, int or (int, int)
        With a Dask client, the objective is evaluated tile by tile on the workers
        (:func:`xmulti.joint.distributed.distribute`): None gives one tile per worker, an int
        that many tiles, a pair the tile grid ``(ny, nx)``. Without a client it must be None.
    """

    xrf_weight: float = 1.0
    geometry: dict | None = None
    sensitivity: Any = None
    matrix: Any = "protein"
    ice_thickness_um: float = 0.0
    noise: str = "poisson"
    xrf_noise: str = "gaussian"
    smoothing: float = 2.0
    edge_um: float | None = None
    thickness_smoothing: float = 1.0
    element_phase: bool = False
    level: bool = True
    batch: int = 64
    max_frame_bytes: float = 1e9
    tiles: Any = None

    def replace(self, **changes) -> JointSettings:
        """A copy with some settings changed; unknown names raise InvalidInputError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InvalidInputError(f"unknown joint setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes) if changes else self

    def check(self) -> None:
        """Raise InvalidInputError on settings that cannot describe a joint problem."""
        if not float(self.ice_thickness_um) >= 0:
            raise InvalidInputError(f"ice_thickness_um must be >= 0, got {self.ice_thickness_um}")
        for name in ("xrf_weight", "smoothing", "thickness_smoothing"):
            try:
                value = float(getattr(self, name))
            except (TypeError, ValueError):
                value = float("nan")
            if not (np.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{name} must be finite and >= 0, got {value}")
        if self.noise not in ("gaussian", "poisson"):
            raise InvalidInputError(f"noise must be 'gaussian' or 'poisson', not {self.noise!r}")
        if self.xrf_noise not in ("gaussian", "poisson"):
            raise InvalidInputError(f"xrf_noise must be 'gaussian' or 'poisson', not {self.xrf_noise!r}")
        if int(self.batch) < 1:
            raise InvalidInputError(f"batch must be >= 1, got {self.batch}")

    def as_attrs(self) -> dict:
        """The scalar settings as result attributes."""
        return {"xrf_weight": float(self.xrf_weight), "smoothing": float(self.smoothing),
                "thickness_smoothing": float(self.thickness_smoothing), "noise": self.noise,
                "xrf_noise": self.xrf_noise,
                "element_phase": int(bool(self.element_phase))}
