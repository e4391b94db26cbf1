"""The torch side of qprune: which filters a network can lose, what they signal, and pruning them.

Modules, in the order data flows:

* :mod:`~qprune.model.units` - :class:`Unit` and :class:`FilterSpace`, plain data;
* :mod:`~qprune.model.graph` - torch-pruning's dependency graph with qprune's additions;
* :mod:`~qprune.model.discovery` / :mod:`~qprune.model.mixing` - what each output channel drags
  along, and what blocks a layer;
* :mod:`~qprune.model.residual` - residual-branch units (a branch's last conv, the trunk whole);
* :mod:`~qprune.model.attention` - attention heads as units (MultiheadAttention, Swin, timm);
* :mod:`~qprune.model.verification` - gate == removal, checked on the example inputs;
* :mod:`~qprune.model.space` - :func:`build_space`, the entry point tying those together;
* :mod:`~qprune.model.signals` (with :mod:`~qprune.model.probes` and
  :mod:`~qprune.model.accumulate`) - one calibration pass -> :class:`Signals`;
* :mod:`~qprune.model.masking` - gates (one mask or a batch) and physical removal;
* :mod:`~qprune.model.cut` - one mask's layers cut in place, for fast scoring;
* :mod:`~qprune.model.stats` - parameters, MACs, latency;
* :mod:`~qprune.model.fileio` - pruned models saved for plain PyTorch.

Nothing here imports the QUBO, solver or pipeline layers.
"""

from qprune.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ALL_SIGNALS": "qprune.model.signals",
    "ChannelCut": "qprune.model.cut",
    "ChannelScatter": "qprune.model.residual",
    "HeadMultiheadAttention": "qprune.model.attention",
    "HeadWindowAttention": "qprune.model.attention",
    "FilterSpace": "qprune.model.units",
    "GateHook": "qprune.model.masking",
    "Gates": "qprune.model.masking",
    "Signals": "qprune.model.signals",
    "Unit": "qprune.model.units",
    "apply_mask": "qprune.model.masking",
    "as_tuple": "qprune.model.tensors",
    "build_dependency_graph": "qprune.model.graph",
    "build_space": "qprune.model.space",
    "channels_last": "qprune.model.cut",
    "collect_signals": "qprune.model.signals",
    "compare_latency": "qprune.model.stats",
    "compare_stats": "qprune.model.stats",
    "count_macs": "qprune.model.stats",
    "count_ops": "qprune.model.stats",
    "count_params": "qprune.model.stats",
    "equivalence_error": "qprune.model.masking",
    "iter_tensors": "qprune.model.tensors",
    "load_meta": "qprune.model.fileio",
    "load_pruned": "qprune.model.fileio",
    "mac_terms": "qprune.model.stats",
    "map_tensors": "qprune.model.tensors",
    "measure_latency": "qprune.model.stats",
    "model_stats": "qprune.model.stats",
    "prune_model": "qprune.model.masking",
    "remove_gates": "qprune.model.masking",
    "save_pruned": "qprune.model.fileio",
    "time_calls": "qprune.model.stats",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
