"""Budgets: prune to a fraction of the params, MACs, units or measured latency instead of a count.

* :mod:`~qprune.solve.budgets.budget` — :class:`Budget` (what is kept, and the 1 % landing window)
  and :class:`CostModel` (a mask's exact cost: a conv's MACs are kept-in x kept-out).
* :mod:`~qprune.solve.budgets.search` — :func:`search_counts`: a price on the budget over the
  per-layer count curves (the curves core's DP and price search), then landing and polish moves.
* :mod:`~qprune.solve.budgets.cqm`, :mod:`~qprune.solve.budgets.milp` — the budgeted problem as a
  dimod CQM or a linearised LP, and such a file solved back with HiGHS.
* :mod:`~qprune.solve.budgets.latency_table` — per-layer latency savings measured on this device.
"""

from qprune.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Budget": "qprune.solve.budgets.budget",
    "CostModel": "qprune.solve.budgets.budget",
    "LatencyTable": "qprune.solve.budgets.latency_table",
    "budget_cqm": "qprune.solve.budgets.cqm",
    "parse_budget": "qprune.solve.budgets.budget",
    "search_counts": "qprune.solve.budgets.search",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
