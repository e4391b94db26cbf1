"""QUBO instances for tests and benchmarks, not for pruning: Half-UNet-shaped synthetic problems
(:mod:`~qprune.instances.synthetic`) and OR-Library's bqp set (:mod:`~qprune.instances.orlib`).

Nothing in the main line (solve, refine, pipeline) imports this package.
"""

from qprune.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "random_formulation": "qprune.instances.synthetic",
    "synthetic_instance": "qprune.instances.synthetic",
    "load_instance": "qprune.instances.orlib",
    "read_bqp": "qprune.instances.orlib",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
