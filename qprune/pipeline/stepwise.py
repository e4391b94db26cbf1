"""A QUBO method's mask in stages, the QUBO rebuilt at each stage's pruned model.

A QUBO built at the unpruned model is a local model: the loss model (:mod:`qprune.qubo.fisher`) is a
second-order expansion around "every unit kept", and far from that point (half the MACs gone) its
ranking of masks fades (measured: Spearman's rho of its energy with the validation PSNR fell from
-0.85 around 70 % of the MACs to about 0 around 50 % on the bundled denoiser). So a method with
``steps = T > 1`` prunes in T stages: stage t goes t/T of the way to the target (k t/T units, or a
cost fraction 1 - (1 - f) t/T), keeps what the earlier stages pruned, and solves a QUBO over the
remaining units built from signals collected on the model with those units already gated off (one
calibration pass per stage after the first). ``steps = 1`` is the single solve of one QUBO.

The first stage's formulation (over every unit, at the unpruned model) is what the result reports
and what an export writes; the energy of the final mask is measured on it.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable

import numpy as np

from qprune.errors import QpruneError
from qprune.model.signals import Signals
from qprune.model.units import FilterSpace
from qprune.pipeline.methods import MethodOptions, MethodSpec, build_formulation, method_steps
from qprune.qubo.formulation import Formulation
from qprune.solve.budgets.budget import Budget, CostModel
from qprune.solve.constraint import ExactK
from qprune.solve.layerwise import layerwise_budget
from qprune.solve.result import ExactKResult
from qprune.solve.strategies import get_strategy

__all__ = ["SignalsAt", "stepwise_budget", "stepwise_k"]

#: the signals of the model with a mask's units gated off (None: the unpruned model's)
SignalsAt = Callable[[np.ndarray], Signals]
#: one stage: (formulation over the free units, free unit indices, mask so far, t) -> (free part, result)
_Stage = Callable[[Formulation, np.ndarray, np.ndarray, int], ExactKResult]


def stepwise_k(space: FilterSpace, signals: Signals, signals_at: SignalsAt | None, spec: MethodSpec,
               constraint: ExactK, options: MethodOptions, *, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Exactly ``constraint.k`` units, in :func:`method_steps` stages (see the module doc)."""
    steps = method_steps(spec, options)
    strategy = get_strategy(options.strategy)

    def stage(form: Formulation, free: np.ndarray, x: np.ndarray, t: int) -> ExactKResult:
        k_t = int(round(constraint.k * t / steps)) - int(x.sum())
        con = constraint.restrict(free, k_t, fixed=x) if free.size < space.N else constraint.with_k(k_t)
        return strategy.solve(form, k_t, options.backend, options.seed, constraint=con,
                              sampler_params=dict(options.sampler_params or {}), progress=progress,
                              options=options.solver_options)

    return _stages(space, signals, signals_at, spec, options, steps, stage)


def stepwise_budget(space: FilterSpace, signals: Signals, signals_at: SignalsAt | None, spec: MethodSpec,
                    cost: CostModel, budget: Budget, limits: ExactK, options: MethodOptions, *,
                    progress: bool = False) -> tuple[np.ndarray, dict]:
    """Within ``budget`` (the layerwise strategy's budget search per stage), in stages."""
    steps = method_steps(spec, options)
    layerwise = get_strategy("layerwise")
    full = cost.full()

    def stage(form: Formulation, free: np.ndarray, x: np.ndarray, t: int) -> ExactKResult:
        if free.size == space.N:
            sub_cost, sub_limits, base = cost, limits, full
        else:
            sub_cost, sub_limits = cost.given(x, free), limits.restrict(free, 0, fixed=x)
            base = sub_cost.full()
        target = (1.0 - (1.0 - budget.fraction) * t / steps) * full
        # the window keeps its width in units of the unpruned model's cost
        sub = Budget(budget.kind, min(1.0, target / base), min(budget.tolerance * full / base, 0.999))
        return layerwise_budget(form, sub_cost, sub, sub_limits, options.backend, options.seed,
                                sampler_params=dict(options.sampler_params or {}), progress=progress,
                                options=layerwise.make_options(options.solver_options))

    return _stages(space, signals, signals_at, spec, options, steps, stage)


def _stages(space: FilterSpace, signals: Signals, signals_at: SignalsAt | None, spec: MethodSpec,
            options: MethodOptions, steps: int, stage: _Stage) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the stages; the mask and the record (``formulation``, ``solved``, ``gamma``, ``info``, ``timings``)."""
    if steps > 1 and signals_at is None:
        raise QpruneError(f"method {spec.name!r} with steps={steps} collects signals on the pruned model at "
                          "every stage: call it through qprune.prune / run_method (or give steps=1)")
    x = np.zeros(space.N, np.int8)
    timings = {"formulate": 0.0, "solve": 0.0, "signals_stages": 0.0}
    first: Formulation | None = None
    solved: ExactKResult | None = None
    per_stage: list[dict[str, Any]] = []
    for t in range(1, steps + 1):
        t0 = time.perf_counter()
        sig = signals if t == 1 else signals_at(x)  # type: ignore[misc]
        timings["signals_stages"] += time.perf_counter() - t0
        free = np.flatnonzero(x == 0)
        t0 = time.perf_counter()
        form = build_formulation(space, sig, spec, weights=options.weights, fisher=options.fisher,
                                 capacity=options.capacity, units=None if t == 1 else free)
        timings["formulate"] += time.perf_counter() - t0
        first = first or form
        t0 = time.perf_counter()
        solved = stage(form, free, x, t)
        timings["solve"] += time.perf_counter() - t0
        x[free] = np.asarray(solved.x, dtype=np.int8)
        per_stage.append({"stage": t, "pruned": int(x.sum()), "energy": float(solved.energy),
                          **{k: v for k, v in solved.info.items() if k.startswith("budget_") or k == "factor_polish"}})
    assert first is not None and solved is not None
    info = dict(solved.info)
    if steps > 1:
        info.update(steps=steps, stages=per_stage)
        solved = _on_first(first, x, info)
    return x, {"formulation": first, "solved": solved, "gamma": solved.gamma, "info": info, "timings": timings}


def _on_first(first: Formulation, x: np.ndarray, info: dict[str, Any]) -> ExactKResult:
    """The final mask as a result on the first stage's QUBO (every unit, gamma 0)."""
    labels = list(first.labels)
    return ExactKResult(labels=labels, x=x, sample=dict(zip(labels, x.tolist())), energy=float(first.energy(x, 0.0)),
                        objective=float(first.energy(x, 0.0)), gamma=0.0, bqm=partial(first.bqm, 0.0), info=info)
