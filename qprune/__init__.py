"""qprune: prune neural-network filters by posing the choice as a QUBO.

Typical use::

    import qprune
    problem, model = qprune.problems.load_pretrained("denoise")
    result = qprune.prune(model, problem, sparsity=0.36, method="hybrid-qubo", backend="neal")
    result.pruned_model      # a physically smaller nn.Module
    result.bqm               # the pruning QUBO (dimod.BinaryQuadraticModel) at the found gamma

The top level holds the main job and the extension points; every other piece is reachable
through its subpackage, in the order data flows: :mod:`qprune.model` (filter space, signals,
masking), :mod:`qprune.qubo` (terms, formulation, QUBO files), :mod:`qprune.solve` (exact-k
search, layerwise DP, baselines), :mod:`qprune.refine` (tensor-train refinement, mask scoring),
:mod:`qprune.pipeline` (methods, prune, tune, compare, reports); the leaves
:mod:`qprune.backends` (solver registry) and :mod:`qprune.problems` (workloads), and
:mod:`qprune.instances` (synthetic and OR-Library instances for tests and benchmarks).

Names are imported on first use so that ``import qprune`` does not import torch, dimod,
matplotlib or optuna until they are needed.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from qprune.errors import BackendUnavailable, QpruneError
from qprune.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # the main job
    "prune": "qprune.pipeline.run", "prepare": "qprune.pipeline.run", "run_method": "qprune.pipeline.run",
    "select_mask": "qprune.pipeline.run", "tune_weights": "qprune.pipeline.run",
    "compare_methods": "qprune.pipeline.compare",
    "METHODS": "qprune.pipeline.methods", "MethodOptions": "qprune.pipeline.methods",
    "SpaceOptions": "qprune.pipeline.options",
    # result types
    "PruneResult": "qprune.pipeline.run", "ExactKResult": "qprune.solve.result", "RefineResult": "qprune.refine.result",
    # extension points: QUBO terms and weights, the exact-k constraint (backends: qprune.backends.register)
    "register_term": "qprune.qubo.terms", "Term": "qprune.qubo.types", "Weights": "qprune.qubo.presets",
    "ExactK": "qprune.solve.constraint",
    # QUBO files for external solvers, and pruned models for plain PyTorch
    "export_bqm": "qprune.qubo.fileio", "export_constrained": "qprune.qubo.fileio",
    "export_formulation": "qprune.qubo.fileio", "load_bqm": "qprune.qubo.fileio", "LoadedQubo": "qprune.qubo.fileio",
    "load_sample": "qprune.qubo.io_samples", "save_sample": "qprune.qubo.io_samples",
    # budgets (prune(..., budget=...)) as constrained problems for external solvers, and solved back
    "BudgetRequest": "qprune.pipeline.budgeted", "budget_problem": "qprune.pipeline.budgeted",
    "solve_budget_file": "qprune.solve.budgets.milp",
    "save_pruned": "qprune.model.fileio", "load_pruned": "qprune.model.fileio",
}
_SUBPACKAGES = ("backends", "problems", "model", "qubo", "solve", "refine", "pipeline", "instances")

__all__ = ["BackendUnavailable", "QpruneError", "__version__", *_EXPORTS, *_SUBPACKAGES]

_lazy_getattr, _ = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return import_module(f"qprune.{name}")
    return _lazy_getattr(name)


def __dir__() -> list[str]:
    return sorted(__all__)
