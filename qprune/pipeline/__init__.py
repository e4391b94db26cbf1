"""The pipeline: the only layer that knows the whole line, from a model to a pruned model and a report.

* :mod:`~qprune.pipeline.methods` - :data:`METHODS` (one table) and :class:`MethodOptions`;
* :mod:`~qprune.pipeline.workload` - a problem or plain batches as one :class:`Workload`;
* :mod:`~qprune.pipeline.run` - :func:`prepare` -> :func:`select_mask` -> :func:`finish`, and
  :func:`prune`, the whole job in one call;
* :mod:`~qprune.pipeline.tune` - Optuna search over the QUBO weights;
* :mod:`~qprune.pipeline.compare` - methods side by side at equal k;
* :mod:`~qprune.pipeline.report` - Markdown/JSON reports, tables and figures.
"""

from qprune.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "FinetuneOptions": "qprune.pipeline.compare",
    "METHODS": "qprune.pipeline.methods",
    "MethodOptions": "qprune.pipeline.methods",
    "SpaceOptions": "qprune.pipeline.options",
    "MethodSpec": "qprune.pipeline.methods",
    "Prepared": "qprune.pipeline.run",
    "PruneResult": "qprune.pipeline.run",
    "SearchResult": "qprune.pipeline.tune",
    "Workload": "qprune.pipeline.workload",
    "as_workload": "qprune.pipeline.workload",
    "compare_methods": "qprune.pipeline.compare",
    "compare_rows": "qprune.pipeline.compare",
    "evaluate": "qprune.pipeline.workload",
    "finish": "qprune.pipeline.run",
    "method_spec": "qprune.pipeline.methods",
    "plot_training": "qprune.pipeline.report",
    "prepare": "qprune.pipeline.run",
    "prune": "qprune.pipeline.run",
    "resolve_k": "qprune.pipeline.run",
    "run_method": "qprune.pipeline.run",
    "search_weights": "qprune.pipeline.tune",
    "select_mask": "qprune.pipeline.run",
    "tune_weights": "qprune.pipeline.run",
    "validation_score": "qprune.pipeline.run",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
