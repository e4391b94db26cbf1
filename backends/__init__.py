"""Solver backends (installed as ``qprune.backends``): a registry of :class:`dimod.Sampler` factories."""

from qprune.backends.registry import BackendInfo, SamplerTraits, available, get, info, register, traits

# Built-in backends register themselves on import.
from qprune.backends import classical as _classical  # noqa: F401,E402
from qprune.backends import openjij as _openjij  # noqa: F401,E402
from qprune.backends import dwave as _dwave  # noqa: F401,E402
from qprune.backends import qaoa as _qaoa  # noqa: F401,E402

__all__ = ["BackendInfo", "SamplerTraits", "available", "get", "info", "register", "traits"]
