"""The layerwise strategy: per-layer "best energy for every count" curves and the exact DP over them.

* :mod:`~qprune.solve.layerwise.search` — :func:`solve_layerwise` (exact k)
  and :func:`layerwise_budget` (a budget), the strategy's loop (its docstring has the whole method).
* :mod:`~qprune.solve.layerwise.blocks` — the QUBO cut into per-layer blocks.
* :mod:`~qprune.solve.layerwise.count_curve` — a block's curve, enumerated where it is small.
* :mod:`~qprune.solve.layerwise.block_moves`, :mod:`~qprune.solve.layerwise.swap_search` — greedy
  curves, count-preserving swap descent and tabu inside a block.
* :mod:`~qprune.solve.layerwise.harvest`, :mod:`~qprune.solve.layerwise.workers` — blocks sampled by
  a backend under per-block shifts, and the worker processes that build curves in parallel.

The DP and the price search live in the curves core, :mod:`qprune.solve.dp`.
"""

from qprune.solve.layerwise.search import (
    BRUTE_FORCE_MAX, SEARCH_ONLY, TABU_MAX, LayerwiseOptions, block_count_curve, layerwise_budget,
    solve_layerwise,
)

__all__ = ["BRUTE_FORCE_MAX", "SEARCH_ONLY", "TABU_MAX", "LayerwiseOptions", "block_count_curve", "layerwise_budget",
           "solve_layerwise"]
