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
    "prune": "qprune.pipeline", "prepare": "qprune.pipeline", "run_method": "qprune.pipeline",
    "select_mask": "qprune.pipeline", "tune_weights": "qprune.pipeline", "PruneResult": "qprune.pipeline",
    "METHODS": "qprune.pipeline", "evaluate": "qprune.pipeline",
    "compare_methods": "qprune.compare", "compare_rows": "qprune.compare",
    "search_weights": "qprune.hpsearch",
    "greedy_prune": "qprune.baselines", "random_prune": "qprune.baselines",
    # QUBO core
    "Term": "qprune.terms", "compute_terms": "qprune.terms", "register_term": "qprune.terms",
    "term_requirements": "qprune.terms", "l1_scores": "qprune.terms",
    "Weights": "qprune.formulation", "Formulation": "qprune.formulation", "formulate": "qprune.formulation",
    "preset_terms": "qprune.formulation", "PRESETS": "qprune.formulation",
    "solve_exact_k": "qprune.cardinality", "ExactKResult": "qprune.cardinality",
    "solve_layerwise": "qprune.layerwise",
    "export_bqm": "qprune.qubo_io", "export_constrained": "qprune.qubo_io",
    "export_formulation": "qprune.qubo_io", "load_bqm": "qprune.qubo_io", "LoadedQubo": "qprune.qubo_io",
    "load_sample": "qprune.qubo_io", "save_sample": "qprune.qubo_io",
    "synthetic_instance": "qprune.synthetic", "random_formulation": "qprune.synthetic",
    # torch side
    "FilterSpace": "qprune.space", "Unit": "qprune.space", "build_space": "qprune.space",
    "Signals": "qprune.signals", "collect_signals": "qprune.signals",
    "apply_mask": "qprune.masking", "Gates": "qprune.masking", "remove_gates": "qprune.masking",
    "save_pruned": "qprune.model_io", "load_pruned": "qprune.model_io",
    "model_stats": "qprune.stats",
    # refinement
    "refine": "qprune.refine", "refine_chunked": "qprune.refine", "refine_mask": "qprune.refine",
    "RefineResult": "qprune.refine", "MaskScorer": "qprune.scoring", "naive_score": "qprune.scoring",
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
