"""qprune: prune neural-network filters by posing the choice as a QUBO.

Typical use::

    import qprune
    problem, model = qprune.problems.load_pretrained("denoise")
    result = qprune.prune(model, problem, sparsity=0.36, method="hybrid-qubo", backend="neal")
    result.pruned_model      # a physically smaller nn.Module
    result.bqm               # the pruning QUBO (dimod.BinaryQuadraticModel) at the found gamma

Names are imported on first use so that ``import qprune`` does not import torch-pruning,
matplotlib or optuna until they are needed.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from qprune.errors import BackendUnavailable, QpruneError

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # the main job
    "prune": "qprune.pipeline.run", "prepare": "qprune.pipeline.run", "run_method": "qprune.pipeline.run",
    "select_mask": "qprune.pipeline.run", "tune_weights": "qprune.pipeline.run", "PruneResult": "qprune.pipeline.run",
    "METHODS": "qprune.pipeline.run", "evaluate": "qprune.pipeline.run",
    "compare_methods": "qprune.pipeline.compare", "compare_rows": "qprune.pipeline.compare",
    "search_weights": "qprune.pipeline.tune",
    "greedy_prune": "qprune.solve.baselines", "random_prune": "qprune.solve.baselines",
    # QUBO core
    "Term": "qprune.qubo.types", "compute_terms": "qprune.qubo.terms", "register_term": "qprune.qubo.terms",
    "term_requirements": "qprune.qubo.terms", "l1_scores": "qprune.qubo.providers",
    "Weights": "qprune.qubo.presets", "Formulation": "qprune.qubo.formulation", "formulate": "qprune.qubo.formulation",
    "preset_terms": "qprune.qubo.presets", "PRESETS": "qprune.qubo.presets",
    "solve_exact_k": "qprune.solve.exact_k", "ExactKResult": "qprune.solve.result", "ExactK": "qprune.solve.constraint",
    "solve_layerwise": "qprune.solve.layerwise",
    "export_bqm": "qprune.qubo.fileio", "export_constrained": "qprune.qubo.fileio",
    "export_formulation": "qprune.qubo.fileio", "load_bqm": "qprune.qubo.fileio", "LoadedQubo": "qprune.qubo.fileio",
    "load_sample": "qprune.qubo.io_samples", "save_sample": "qprune.qubo.io_samples",
    "synthetic_instance": "qprune.instances.synthetic", "random_formulation": "qprune.instances.synthetic",
    # torch side
    "FilterSpace": "qprune.model.units", "Unit": "qprune.model.units", "build_space": "qprune.model.space",
    "Signals": "qprune.model.signals", "collect_signals": "qprune.model.signals",
    "apply_mask": "qprune.model.masking", "Gates": "qprune.model.masking", "remove_gates": "qprune.model.masking",
    "save_pruned": "qprune.model.fileio", "load_pruned": "qprune.model.fileio",
    "model_stats": "qprune.model.stats",
    # refinement
    "refine": "qprune.refine.tt", "refine_chunked": "qprune.refine.tt", "refine_mask": "qprune.refine.tt",
    "RefineResult": "qprune.refine.tt", "MaskScorer": "qprune.refine.scoring", "naive_score": "qprune.refine.scoring",
}
_SUBMODULES = ("backends", "problems")

__all__ = ["BackendUnavailable", "QpruneError", "__version__", *_EXPORTS, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return import_module(f"qprune.{name}")
    raise AttributeError(f"module 'qprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
