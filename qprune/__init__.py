"""qprune: prune neural-network filters by posing the choice as a QUBO."""

from qprune.errors import BackendUnavailable, QpruneError

__version__ = "0.1.0"

__all__ = ["BackendUnavailable", "QpruneError", "__version__"]
