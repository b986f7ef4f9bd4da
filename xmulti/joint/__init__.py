"""Joint analysis of XRF and ptychography: self-absorption, probe-guided resolution bridging,
joint reconstruction of one object from both modalities.

Names are imported lazily (``xmulti.joint.bridge_resolution`` loads :mod:`xmulti.joint.bridge`
on first use) so importing the package stays cheap and its modules do not import each other.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "effective_line_energy_keV": "absorption",
    "attenuation_coefficients_cm2_g": "absorption",
    "self_absorption_factor": "absorption",
    "absorption_factor_of_exponent": "absorption",
    "absorption_exponent": "absorption",
    "correct_self_absorption": "absorption",
    "areal_mass_from_phase": "absorption",
    "forward_operator": "bridge",
    "interpolate_map": "bridge",
    "richardson_lucy": "bridge",
    "guided_solve": "bridge",
    "bridge_resolution": "bridge",
    "element_names": "bridge",
    "phase_guide": "bridge",
    "joint_reconstruct": "solve",
    "JointSettings": "settings",
    "structure_solve": "structure",
    "structure_basis": "structure",
    "structure_features": "guide",
    "build_problem": "setup",
    "JointProblem": "problem",
    "joint_groups": "stage",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
