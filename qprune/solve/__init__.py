"""The solve layer: exactly k ones out of a pruning QUBO.

Modules, in the order they build on each other:

* :mod:`~qprune.solve.constraint` — :class:`ExactK`, the one feasible set (exactly k ones, per-group
  caps) every solver, baseline and repair works in.
* :mod:`~qprune.solve.result` — :class:`ExactKResult`, what every exact-k solver returns.
* :mod:`~qprune.solve.arrays` — :class:`QuboArrays`, the objective as numpy/scipy arrays, and
  :func:`lagrangian` (``gamma -> BQM`` for a plain BQM).
* :mod:`~qprune.solve.local` — k-preserving :func:`repair_to_k` and pair-swap :func:`swap_polish`.
* :mod:`~qprune.solve.sampling` — :class:`SamplerCall`, the one way solvers call a sampler, and the
  backend traits they read (:func:`batch_variables`).
* :mod:`qprune.solve.gamma` — the gamma search: per-component recombination, the search loop,
  :func:`solve_exact_k`.
* :mod:`~qprune.solve.dp` — the curves core: the exact DP over per-block counts and the one price
  search, shared by the gamma search's recombination, the layerwise strategy and budgets.
* :mod:`qprune.solve.layerwise` — the layerwise strategy: per-layer count curves + the DP,
  :func:`solve_layerwise`.
* :mod:`~qprune.solve.lowrank` — a factored energy (the loss-model QUBO) searched without its dense matrix.
* :mod:`qprune.solve.budgets` — a budget (params, MACs, units, latency) instead of a count.
* :mod:`~qprune.solve.cqm` — the exact-k CQM (count as a constraint) and its solve on Leap.
* :mod:`~qprune.solve.strategies` — :data:`STRATEGIES`, the table of exact-k strategies, and
  :func:`solve` over it.
* :mod:`~qprune.solve.baselines` — :func:`greedy_prune`, :func:`random_prune`.

Imports only from the layers below (model, qubo) and from :mod:`qprune.backends`.
"""

from qprune.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ExactK": "qprune.solve.constraint",
    "ExactKResult": "qprune.solve.result",
    "GammaOptions": "qprune.solve.gamma.exact_k",
    "LayerwiseOptions": "qprune.solve.layerwise",
    "QuboArrays": "qprune.solve.arrays",
    "STRATEGIES": "qprune.solve.strategies",
    "SamplerCall": "qprune.solve.sampling",
    "Samples": "qprune.solve.sampling",
    "Strategy": "qprune.solve.strategies",
    "batch_variables": "qprune.solve.sampling",
    "block_count_curve": "qprune.solve.layerwise",
    "build_exact_k_cqm": "qprune.solve.cqm",
    "get_strategy": "qprune.solve.strategies",
    "greedy_prune": "qprune.solve.baselines",
    "lagrangian": "qprune.solve.arrays",
    "random_prune": "qprune.solve.baselines",
    "repair_to_k": "qprune.solve.local",
    "sample": "qprune.solve.sampling",
    "solve": "qprune.solve.strategies",
    "solve_cqm_exact_k": "qprune.solve.cqm",
    "solve_exact_k": "qprune.solve.gamma.exact_k",
    "solve_layerwise": "qprune.solve.layerwise",
    "swap_polish": "qprune.solve.local",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
