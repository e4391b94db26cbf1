"""The torch side of qprune: which filters a network can lose, what they signal, and pruning them.

Modules, in the order data flows:

* :mod:`~qprune.model.units` - :class:`Unit` and :class:`FilterSpace`, plain data;
* :mod:`~qprune.model.graph` - torch-pruning's dependency graph with qprune's additions;
* :mod:`~qprune.model.discovery` / :mod:`~qprune.model.mixing` - what each output channel drags
  along, and what blocks a layer;
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

from qprune.model.cut import ChannelCut, channels_last
from qprune.model.fileio import load_meta, load_pruned, save_pruned
from qprune.model.graph import build_dependency_graph
from qprune.model.masking import GateHook, Gates, apply_mask, equivalence_error, prune_model, remove_gates
from qprune.model.signals import ALL_SIGNALS, Signals, collect_signals
from qprune.model.space import build_space
from qprune.model.stats import compare_latency, compare_stats, count_macs, count_params, measure_latency, model_stats
from qprune.model.tensors import as_tuple, iter_tensors, map_tensors
from qprune.model.units import FilterSpace, Unit

__all__ = [
    "ALL_SIGNALS", "ChannelCut", "FilterSpace", "GateHook", "Gates", "Signals", "Unit", "apply_mask", "as_tuple",
    "build_dependency_graph", "build_space", "channels_last", "collect_signals", "compare_latency", "compare_stats",
    "count_macs", "count_params", "equivalence_error", "iter_tensors", "load_meta", "load_pruned", "map_tensors",
    "measure_latency", "model_stats", "prune_model", "remove_gates", "save_pruned",
]
