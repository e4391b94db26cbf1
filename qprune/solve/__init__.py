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
* :mod:`~qprune.solve.library` / :mod:`~qprune.solve.gamma` / :mod:`~qprune.solve.exact_k` — the
  gamma search: per-component recombination, the search loop, :func:`solve_exact_k`.
* :mod:`~qprune.solve.blocks`, :mod:`~qprune.solve.count_curve`, :mod:`~qprune.solve.block_moves`,
  :mod:`~qprune.solve.harvest`, :mod:`~qprune.solve.workers`, :mod:`~qprune.solve.dp`,
  :mod:`~qprune.solve.layerwise` — the layerwise strategy: per-layer count curves + exact DP,
  :func:`solve_layerwise`.
* :mod:`~qprune.solve.cqm` — the exact-k CQM (count as a constraint) and its solve on Leap.
* :mod:`~qprune.solve.strategies` — :data:`STRATEGIES`, the table of exact-k strategies, and
  :func:`solve` over it.
* :mod:`~qprune.solve.baselines` — :func:`greedy_prune`, :func:`random_prune`.

Imports only from the layers below (model, qubo) and from :mod:`qprune.backends`.
"""

from qprune.solve.arrays import QuboArrays, lagrangian
from qprune.solve.baselines import greedy_prune, random_prune
from qprune.solve.constraint import ExactK
from qprune.solve.cqm import build_exact_k_cqm, solve_cqm_exact_k
from qprune.solve.exact_k import GammaOptions, exact_k_search, solve_exact_k
from qprune.solve.layerwise import LayerwiseOptions, block_count_curve, layerwise_search, solve_layerwise
from qprune.solve.local import repair_to_k, swap_polish
from qprune.solve.result import ExactKResult
from qprune.solve.sampling import SamplerCall, Samples, batch_variables, sample
from qprune.solve.strategies import STRATEGIES, Strategy, get_strategy, solve

__all__ = [
    "STRATEGIES", "ExactK", "ExactKResult", "GammaOptions", "LayerwiseOptions", "QuboArrays", "SamplerCall",
    "Samples", "Strategy", "batch_variables", "block_count_curve", "build_exact_k_cqm", "exact_k_search",
    "get_strategy", "greedy_prune", "lagrangian", "layerwise_search", "random_prune", "repair_to_k", "sample",
    "solve", "solve_cqm_exact_k", "solve_exact_k", "solve_layerwise", "swap_polish",
]
