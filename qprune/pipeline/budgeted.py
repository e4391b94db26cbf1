"""Mask selection under a budget (units / params / MACs / latency) instead of an exact count.

Every method supports a budget: random and the greedy methods through their per-layer sorted scores
(count c of a layer prunes its c lowest-scored units), the QUBO methods through the layerwise
strategy's curves (:func:`qprune.solve.layerwise.layerwise_budget`); both are combined by the
Lagrange-multiplier search of :mod:`qprune.solve.budgets.search`. What cannot take a budget says so:
the ``gamma`` strategy (it searches the capacity weight for an exact count) and TT refinement
(its objective holds the count, not a budget).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import dimod
import numpy as np

from qprune.errors import QpruneError
from qprune.model.signals import Signals
from qprune.model.units import FilterSpace
from qprune.pipeline.methods import MethodOptions, build_formulation, check_signals, method_spec, method_steps
from qprune.pipeline.stepwise import SignalsAt, stepwise_budget
from qprune.solve.budgets.budget import Budget, CostModel, parse_budget
from qprune.solve.budgets.cqm import budget_cqm
from qprune.solve.budgets.latency_table import load_table
from qprune.solve.budgets.search import score_tables, search_counts
from qprune.solve.constraint import ExactK
from qprune.solve.strategies import get_strategy

__all__ = ["BudgetRequest", "budget_limits", "budget_problem", "select_budget_mask"]


@dataclass(frozen=True)
class BudgetRequest:
    """A budget and the per-layer limits it is met under.

    ``min_keep_frac``: every layer keeps at least this fraction of its units; ``max_prune``: at most
    this many (int) or this fraction (float) of a layer's units go; ``round_to``: kept counts are
    multiples of it; ``latency``: the :class:`qprune.solve.budgets.latency_table.LatencyTable` a latency
    budget is measured with.
    """

    budget: Budget
    round_to: int = 1
    min_keep_frac: float | None = None
    max_prune: Any = None
    latency: Any = None

    @classmethod
    def of(cls, budget: Any, *, round_to: int = 1, min_keep_frac: float | None = None, max_prune: Any = None,
           latency: Any = None) -> BudgetRequest:
        """From a budget in any form :func:`qprune.solve.budgets.budget.parse_budget` reads; ``latency``
        a :class:`~qprune.solve.budgets.latency_table.LatencyTable` or its JSON file."""
        b = parse_budget(budget)
        if min_keep_frac is not None and not 0.0 < float(min_keep_frac) < 1.0:
            raise QpruneError(f"min_keep_frac={min_keep_frac!r} must be a fraction in (0, 1)")
        latency = load_table(latency)
        if b.kind == "latency" and latency is None:
            raise QpruneError("a latency budget needs a latency table: give latency= (a file or a "
                              "LatencyTable; qprune.solve.budgets.latency_table.measure_latency_table makes one)")
        return cls(b, int(round_to), min_keep_frac, max_prune, latency)


def budget_limits(space: FilterSpace, request: BudgetRequest) -> ExactK:
    """The space's per-layer limits under a request (``min_keep`` of the space, then the request's)."""
    return ExactK.for_space(space, 0, min_keep_frac=request.min_keep_frac, max_prune=request.max_prune,
                            round_to=request.round_to)


def select_budget_mask(space: FilterSpace, signals: Signals, method: str, request: BudgetRequest,
                       options: MethodOptions | None = None, *, progress: bool = False,
                       signals_at: SignalsAt | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The mask (int8 [N], 1 = pruned) ``method`` picks within ``request``'s budget, and what the
    solve recorded (as :func:`qprune.pipeline.run.select_mask`; ``info`` holds the budget, its cost,
    the unpruned cost and whether it landed within the tolerance). ``signals_at`` gives the signals
    of a partly pruned model, for a method in stages (:mod:`qprune.pipeline.stepwise`)."""
    spec = method_spec(method)
    options = options or MethodOptions()
    if spec.refine or options.refine is not None:
        raise QpruneError(f"method {method!r}: TT refinement keeps an exact count and cannot hold a budget; "
                          "use a method without +tt / --refine")
    check_signals(spec, options, signals)
    method_steps(spec, options)
    limits = budget_limits(space, request)
    cost = CostModel.build(space, request.budget.kind, request.latency)
    out: dict[str, Any] = {"timings": {}}
    t0 = time.perf_counter()
    if spec.kind in ("random", "greedy"):
        scores = np.random.default_rng(options.seed).random(space.N) if spec.kind == "random" \
            else signals.vector(spec.score or "l1")
        tables, orders = score_tables(cost, scores, limits)
        sol = search_counts(cost, request.budget, tables)
        x = np.zeros(space.N, np.int8)
        for order, count in zip(orders, sol.counts):
            x[order[:count]] = 1
        info = {"budget": request.budget.text, "budget_cost": sol.cost, "budget_full": sol.full,
                "budget_landed": sol.landed, "budget_lambda": sol.lam, **sol.info}
    else:
        if get_strategy(options.strategy).name != "layerwise":
            raise QpruneError(f"strategy {options.strategy!r} searches gamma for an exact count and cannot hold a "
                              "budget; use strategy 'layerwise'")
        x, rec = stepwise_budget(space, signals, signals_at, spec, cost, request.budget, limits, options,
                                 progress=progress)
        out["timings"].update({k: v for k, v in rec.pop("timings").items() if k != "solve" and (v or k == "formulate")})
        info = rec.pop("info")
        out.update(rec)
    out["timings"]["solve"] = time.perf_counter() - t0
    if not limits.within_caps(x)[0]:  # every path visits allowed counts only: a bug if it fires
        raise RuntimeError(f"{method} broke the per-layer limits under budget {request.budget.text}")
    info.update(budget_cost=float(cost.of_mask(x)), budget_full=float(cost.full()))
    info["budget_fraction"] = info["budget_cost"] / info["budget_full"]
    if not info.get("budget_landed", True):
        warnings.warn(f"budget {request.budget.text}: the allowed per-layer counts reached "
                      f"{info['budget_fraction']:.4f}, not within {request.budget.tolerance:g} below the target",
                      stacklevel=2)
    info["round_to"] = request.round_to
    out["info"] = info
    return x, out


def budget_problem(space: FilterSpace, signals: Signals, method: str, request: BudgetRequest,
                   options: MethodOptions | None = None) -> dimod.ConstrainedQuadraticModel:
    """The budgeted problem of a QUBO method as a dimod CQM, for external solvers: the method's
    objective (no gamma term), the budget as the quadratic constraints ``budget_max``/``budget_min``
    the per-layer caps and ``round_to`` (:func:`qprune.solve.budgets.cqm.budget_cqm`; a latency
    budget has no such form and is refused)."""
    spec = method_spec(method)
    if spec.kind != "qubo":
        raise QpruneError(f"method {method!r} builds no QUBO; a budgeted export needs a *-qubo method")
    options = options or MethodOptions()
    check_signals(spec, options, signals)
    formulation = build_formulation(space, signals, spec, weights=options.weights, fisher=options.fisher,
                                    capacity=options.capacity)
    cost = CostModel.build(space, request.budget.kind, request.latency)
    return budget_cqm(formulation.objective_bqm(), cost, request.budget, budget_limits(space, request))
