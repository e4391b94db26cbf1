"""The main job: model + data -> exact-k pruning mask -> gated and physically smaller models + report.

This module and the CLI are the only places that know the whole line (docs/architecture.md, "Data flow"):
FilterSpace -> signals -> terms -> formulation -> exact-k solve -> (refine) -> mask -> apply -> evaluate.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import dimod
import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model.masking import apply_mask
from qprune.model.recipe import make_recipe
from qprune.model.signals import Signals, collect_signals
from qprune.model.space import build_space
from qprune.model.stats import model_stats
from qprune.model.units import FilterSpace
from qprune.pipeline.budgeted import BudgetRequest, select_budget_mask
from qprune.pipeline.options import SpaceOptions
from qprune.pipeline.methods import (
    DEFAULT_METHOD,
    METHODS,
    MethodOptions,
    MethodSpec,
    build_formulation,
    check_signals,
    method_needs,
    method_spec,
    method_steps,
    method_weights,
)
from qprune.pipeline.stepwise import stepwise_k
from qprune.pipeline.tune import DEFAULT_SPACE, SearchResult, search_weights
from qprune.pipeline.workload import Batch, Workload, as_workload, evaluate
from qprune.qubo.formulation import Formulation
from qprune.qubo.presets import Weights
from qprune.refine.on_model import refine_mask
from qprune.solve.baselines import greedy_prune, random_prune
from qprune.solve.constraint import ExactK
from qprune.solve.result import ExactKResult
from qprune.solve.strategies import get_strategy

__all__ = [
    "METHODS", "Batch", "MethodOptions", "MethodSpec", "PruneResult", "Prepared", "Workload", "as_workload",
    "build_formulation", "evaluate", "finish", "method_needs", "method_spec", "prepare", "prune", "resolve_k",
    "run_method", "select_mask", "solve_formulation", "tune_weights", "validation_score", "validation_steps",
]


def resolve_k(n_units: int, sparsity: float | None = None, k: int | None = None) -> int:
    """Number of units to prune from a fraction of the prunable units or an explicit count."""
    if (sparsity is None) == (k is None):
        raise QpruneError("give exactly one of sparsity (a fraction in [0, 1)) or k (a count)")
    if k is not None:
        if isinstance(k, bool) or int(k) != k or not 0 <= k < n_units:
            raise QpruneError(f"k={k} must be an integer in [0, {n_units}) for {n_units} prunable units")
        return int(k)
    assert sparsity is not None
    if not (0.0 <= float(sparsity) < 1.0):
        raise QpruneError(f"sparsity={sparsity} must be a fraction in [0, 1)")
    return int(round(float(sparsity) * n_units))


@dataclass
class PruneResult:
    """Everything a run produced: the mask, both models, metrics, timings and solver details."""

    method: str
    k: int
    space: FilterSpace
    mask: np.ndarray  # bool [N], True = pruned
    gated_model: nn.Module
    pruned_model: nn.Module | None
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    stats_before: dict[str, float]
    stats_after: dict[str, float]
    timings: dict[str, float]
    solved: ExactKResult | None = field(default=None, repr=False)  # the exact-k solve, when one ran
    formulation: Formulation | None = None
    energy: float | None = None  # of the chosen mask on `bqm`
    gamma: float | None = None
    solver_info: dict[str, Any] = field(default_factory=dict)
    seed: int | None = 0
    space_options: dict[str, Any] = field(default_factory=dict)

    def recipe(self, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The mask as a recipe that re-applies to a fresh model (:func:`qprune.model.recipe.apply_recipe`)."""
        return make_recipe(self.space, self.mask, space_options=self.space_options,
                           meta={"method": self.method, "k": self.k, "seed": self.seed, **dict(meta or {})})

    @property
    def bqm(self) -> dimod.BinaryQuadraticModel | None:
        """The QUBO at ``gamma`` (None for a method without one), built on first read: for 11,000
        units it is ~10 million couplings, seconds that a caller reading only the mask need not pay."""
        return None if self.solved is None else self.solved.bqm

    @property
    def sample(self) -> dict[str, int]:
        """The mask as ``{label: 0|1}`` (1 = pruned), the form exported samples use."""
        return {lab: int(v) for lab, v in zip(self.space.labels, self.mask)}

    def per_layer(self) -> list[dict[str, Any]]:
        """Kept/pruned unit counts per layer."""
        ids = self.space.layer_ids
        rows = []
        for lid, layer in enumerate(self.space.layers):
            sel = ids == lid
            pruned = int(self.mask[sel].sum())
            rows.append({"layer": layer, "units": int(sel.sum()), "pruned": pruned, "kept": int(sel.sum()) - pruned})
        return rows


@dataclass
class Prepared:
    """A model's filter space and calibration signals, collected once and shared by many methods."""

    model: nn.Module
    work: Workload
    space: FilterSpace
    signals: Signals
    timings: dict[str, float]
    space_options: dict[str, Any] = field(default_factory=dict)  # the build_space keywords (for recipes)
    before: tuple[dict[str, float], dict[str, float]] | None = None  # the unpruned model's (metrics, stats)
    # the last QUBO solve on this model (what it depended on, its mask, its record): a method's "+tt" variant
    # run right after it starts from that mask instead of solving again (see select_mask); one slot, so a
    # long comparison holds one solve per prepared model, not all of them
    last_qubo: tuple[str, np.ndarray, dict[str, Any]] | None = field(default=None, repr=False)

    def signals_at(self, mask: np.ndarray, needs: frozenset[str]) -> Signals:
        """The signals ``needs`` of the model with ``mask``'s units gated off (one calibration pass)."""
        return collect_signals(self.model, self.space, self.work.calibration, self.work.loss, needs=needs,
                               mask=np.asarray(mask), progress=False)


def prepare(
    model: nn.Module,
    problem_or_batches: Any,
    *,
    methods: Sequence[str] = (DEFAULT_METHOD,),
    layers: Sequence[str] | int | None = None,
    exclude: Sequence[str] = (),
    min_keep: int = 1,
    fisher: str = "channel",
    weights: Weights | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    metric_fn: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float] | float] | None = None,
    progress: bool = True,
    residual_branches: bool | str = False,
    space_options: Mapping[str, Any] | None = None,
) -> Prepared:
    """Discover the filter space and collect, in ONE calibration pass, what ``methods`` need.

    ``residual_branches``: residual-branch units (``"auto"``, ``True``, ``False``; see
    :func:`qprune.model.space.build_space`). ``space_options``: further ``build_space`` keywords,
    recorded with the space like the problem's own."""
    specs = [method_spec(m) for m in methods]
    work = as_workload(model, problem_or_batches, loss_fn=loss_fn, metric_fn=metric_fn)
    model = copy.deepcopy(model).eval()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    space_kwargs = dict(work.space_kwargs)
    if layers is not None:
        space_kwargs["layers"] = layers
    if exclude:
        space_kwargs["exclude"] = tuple(space_kwargs.get("exclude", ())) + tuple(exclude)
    space_kwargs["min_keep"] = min_keep
    space_kwargs["residual_branches"] = residual_branches
    space_kwargs.update(space_options or {})
    space = build_space(model, work.calibration[0][0][:1], **space_kwargs)
    timings["space"] = time.perf_counter() - t0
    needs = frozenset().union(*(method_needs(s, fisher, weights) for s in specs))
    t0 = time.perf_counter()
    signals = collect_signals(model, space, work.calibration, work.loss, needs=needs, progress=progress)
    timings["signals"] = time.perf_counter() - t0
    return Prepared(model, work, space, signals, timings, space_options=space_kwargs)


def prune(
    model: nn.Module,
    problem_or_batches: Any,
    *,
    sparsity: float | None = None,
    k: int | None = None,
    budget: Any = None,
    method: str = DEFAULT_METHOD,
    backend: str | dimod.Sampler = "neal",
    seed: int | None = 0,
    options: MethodOptions | None = None,
    space: SpaceOptions | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    metric_fn: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float] | float] | None = None,
    remove: bool = True,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` to a target with ``method`` on ``backend``.

    Args:
        model: a trained ``nn.Module`` (not modified: the pipeline works on copies).
        problem_or_batches: a :class:`qprune.problems.Problem`, or calibration batches
            ``[(input, target), ...]`` together with ``loss_fn`` (and optionally ``metric_fn``).
        sparsity / k / budget: the target, exactly one: a fraction of the prunable units, their
            count, or a budget (``"macs=0.5"``, ``{"macs": 0.5}``; also units, params, latency) that
            keeps at most that fraction of the unpruned model's cost, landing within 1 % below; a
            :class:`~qprune.pipeline.budgeted.BudgetRequest` adds per-layer limits (``round_to``,
            ``min_keep_frac``, ``max_prune``) and a latency table.
        method: one of :data:`METHODS`; default :data:`~qprune.pipeline.catalog.DEFAULT_METHOD`, the
            loss-model QUBO ``fisher-qubo``.
        backend, seed: the solver and the seed of every random step (they override ``options``').
        options: the rest of how the method runs (:class:`qprune.pipeline.methods.MethodOptions`:
            strategy, refine, weights, steps, sampler parameters, ...).
        space: which units may go (:class:`qprune.pipeline.options.SpaceOptions`: layers, exclude,
            min_keep, residual_branches).
        remove: also build the physically smaller model (``pruned_model``).

    Returns:
        A :class:`PruneResult` with the mask, gated and removed models, metrics before/after on the
        test batches, params/MACs/latency, per-stage timings, the BQM and the solver info.
    """
    spec = method_spec(method)
    options = replace(options or MethodOptions(), backend=backend, seed=seed)
    space = space or SpaceOptions()
    if budget is not None and (sparsity is not None or k is not None):
        raise QpruneError("give a budget or sparsity / k, not both")
    request = None if budget is None else budget if isinstance(budget, BudgetRequest) else BudgetRequest.of(budget)
    prep = prepare(model, problem_or_batches, methods=[method], layers=space.layers, exclude=space.exclude,
                   min_keep=space.min_keep, residual_branches=space.residual_branches, fisher=options.fisher,
                   weights=options.weights, loss_fn=loss_fn, metric_fn=metric_fn, progress=progress)
    return run_method(prep, spec.name, sparsity=sparsity, k=k, options=options, remove=remove, progress=progress,
                      budget=request)


def constraint_of(space: FilterSpace, k: int) -> ExactK:
    """Exactly ``k`` of the space's units, at most ``max_pruned_per_layer`` from each layer."""
    return ExactK.for_space(space, k)


def select_mask(prep: Prepared, method: str, k: int, options: MethodOptions | None = None, *,
                progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """The exactly-k mask (int8 [N], 1 = pruned) a method picks, and what the solve recorded:
    ``timings``; for a QUBO method also ``formulation``, ``gamma``, ``info`` and ``solved`` (the
    :class:`~qprune.solve.result.ExactKResult`, whose ``bqm`` is the QUBO at ``gamma``)."""
    spec = method_spec(method)
    options = options or MethodOptions()
    constraint = constraint_of(prep.space, k)
    check_signals(spec, options, prep.signals)
    method_steps(spec, options)
    do_refine = spec.refine or options.refine == "tt"
    if do_refine and spec.kind != "qubo":
        raise QpruneError(f"--refine tt needs a QUBO method, not {method!r}")
    out: dict[str, Any] = {"timings": {}}
    t0, reused = time.perf_counter(), None
    if spec.kind == "random":
        x = random_prune(prep.space.N, k, seed=options.seed, constraint=constraint)
    elif spec.kind == "greedy":
        x = greedy_prune(prep.signals.vector(spec.score or "l1"), k, constraint=constraint)
    elif do_refine and (reused := _reused_solve(prep, _solve_key(spec, k, options), out)) is not None:
        x = reused
    else:
        x = _qubo_mask(prep, spec, constraint, options, out, progress)
    if reused is None:  # a reused solve keeps the time it took
        out["timings"]["solve"] = time.perf_counter() - t0
    if spec.kind == "qubo" and reused is None:
        # copies: the refinement below adds to this call's timings and info, not to the solve's record
        prep.last_qubo = (_solve_key(spec, k, options), x.copy(),
                          dict(out, timings=dict(out["timings"]), info=dict(out.get("info", {}))))
    if do_refine:
        t0 = time.perf_counter()
        refined = refine_mask(prep.model, prep.space, prep.work, x, k, budget=options.tt_budget, seed=options.seed,
                              progress=progress, precision=options.tt_precision, search_images=options.tt_images,
                              search_crop=options.tt_crop, journal=_journal_path(options, x))
        x = np.asarray(refined.x, dtype=np.int8)
        out.setdefault("info", {})["refine"] = refined.summary()
        out["timings"]["refine"] = time.perf_counter() - t0
    if int(x.sum()) != k:  # every method promises exactly k: this is a bug if it fires
        raise RuntimeError(f"{method} returned {int(x.sum())} pruned units, expected {k}")
    return x, out


def _solve_key(spec: MethodSpec, k: int, options: MethodOptions) -> str:
    """What a QUBO solve depends on: the method less its refinement, k, and every option but the TT's."""
    solve_options = {f.name: getattr(options, f.name) for f in fields(options)
                     if f.name != "refine" and not f.name.startswith("tt_")}
    return repr((replace(spec, name="", description="", refine=False), k, solve_options))


def _reused_solve(prep: Prepared, key: str, out: dict[str, Any]) -> np.ndarray | None:
    """For a refining call: the mask of ``prep``'s last QUBO solve when it was the same solve (its
    record copied into ``out``, marked ``reused``); None otherwise. A method and its "+tt" variant
    on the same seed then share one solve, and the refinement starts from the very mask the
    unrefined row reports. (An unrefined call always solves: a repeat is a repeat.)"""
    if prep.last_qubo is None or prep.last_qubo[0] != key:
        return None
    _, x, record = prep.last_qubo
    out.update(record, timings=dict(record["timings"]), info=dict(record.get("info", {}), reused=True))
    return x.copy()


def _journal_path(options: MethodOptions, x: np.ndarray) -> Path | None:
    """The TT score journal of this seed mask, TT seed and scorer in ``options.tt_journal``."""
    if options.tt_journal is None:
        return None
    tag = f"{options.seed}/{options.tt_precision}/{options.tt_images}".encode()
    if options.tt_crop is not None:  # appended only when set, so journals made before the option still match
        tag += f"/{options.tt_crop}".encode()
    return Path(options.tt_journal) / f"tt-{hashlib.sha1(np.packbits(x).tobytes() + tag).hexdigest()[:16]}.journal"


def _qubo_mask(prep: Prepared, spec: MethodSpec, constraint: ExactK, options: MethodOptions,
               out: dict[str, Any], progress: bool) -> np.ndarray:
    needs = method_needs(spec, options.fisher, options.weights)
    x, rec = stepwise_k(prep.space, prep.signals, partial(prep.signals_at, needs=needs), spec, constraint, options,
                        progress=progress)
    out["timings"].update({k: v for k, v in rec.pop("timings").items() if k != "solve" and (v or k == "formulate")})
    # the result, not its BQM: solved.bqm may be built on first read (see ExactKResult)
    out.update(rec)
    return x


def run_method(prep: Prepared, method: str, *, sparsity: float | None = None, k: int | None = None,
               options: MethodOptions | None = None, remove: bool = True, progress: bool = False,
               budget: BudgetRequest | None = None) -> PruneResult:
    """Select a mask with ``method`` on a prepared model (exactly k, or within ``budget``), apply it,
    evaluate and measure."""
    options = options or MethodOptions()
    if budget is None:
        kk = resolve_k(prep.space.N, sparsity, k)
        x, out = select_mask(prep, method, kk, options, progress=progress)
    else:
        if sparsity is not None or k is not None:
            raise QpruneError("give a budget or sparsity / k, not both")
        x, out = select_budget_mask(prep.space, prep.signals, method, budget, options, progress=progress,
                                    signals_at=partial(prep.signals_at, needs=method_needs(
                                        method_spec(method), options.fisher, options.weights)))
        kk = int(x.sum())
    timings = dict(prep.timings)
    timings.update(out["timings"])
    if prep.before is None:  # measured once per prepared model, not once per method
        prep.before = baseline(prep.model, prep.work)
    result = finish(prep.model, prep.space, x.astype(bool), prep.work, remove=remove, timings=timings,
                    before=prep.before)
    result.method, result.k, result.seed = method, kk, options.seed
    result.space_options = dict(prep.space_options)
    result.solved, result.formulation, result.gamma = out.get("solved"), out.get("formulation"), out.get("gamma")
    if result.formulation is not None:  # of the final mask (refinement may have moved it), on bqm's terms
        result.energy = float(result.formulation.energy(x, result.gamma))
    result.solver_info = out.get("info", {})
    return result


def solve_formulation(formulation: Formulation, k: int, options: MethodOptions | None = None, *,
                      constraint: ExactK | None = None, progress: bool = False) -> ExactKResult:
    """Exact-k solve of a formulation with the options' strategy, backend, seed and sampler parameters."""
    options = options or MethodOptions()
    return get_strategy(options.strategy).solve(
        formulation, k, options.backend, options.seed, constraint=constraint,
        sampler_params=dict(options.sampler_params or {}), progress=progress, options=options.solver_options)


def finish(
    model: nn.Module,
    space: FilterSpace,
    mask: np.ndarray,
    work: Workload,
    *,
    remove: bool = True,
    timings: dict[str, float] | None = None,
    progress: bool = False,
    before: tuple[dict[str, float], dict[str, float]] | None = None,
) -> PruneResult:
    """Apply a mask, evaluate before/after on the test batches, and measure both models.

    ``before``: the unpruned model's ``(metrics, stats)`` when already measured (:func:`baseline`)."""
    timings = dict(timings or {})
    example = work.test[0][0][:1]
    metrics_before, stats_before = before or baseline(model, work)
    t0 = time.perf_counter()
    gated = apply_mask(copy.deepcopy(model), space, mask, mode="gate")
    metrics_after = evaluate(gated, work.test, work.metrics)
    timings["evaluate"] = time.perf_counter() - t0
    pruned = None
    stats_after: dict[str, float] = {}
    if remove:
        t0 = time.perf_counter()
        pruned = apply_mask(model, space, mask, mode="remove", example_inputs=example)
        timings["remove"] = time.perf_counter() - t0
        stats_after = model_stats(pruned, example)
    return PruneResult(
        method="", k=int(mask.sum()), space=space, mask=mask, gated_model=gated, pruned_model=pruned,
        metrics_before=metrics_before, metrics_after=metrics_after, stats_before=stats_before,
        stats_after=stats_after, timings=timings,
    )


def baseline(model: nn.Module, work: Workload) -> tuple[dict[str, float], dict[str, float]]:
    """The unpruned model's test metrics and its params / MACs / latency."""
    return evaluate(model, work.test, work.metrics), model_stats(model, work.test[0][0][:1])


def validation_score(prep: Prepared, mask: np.ndarray) -> float:
    """The headline metric of the gated model on the validation batches (higher is better)."""
    return list(validation_steps(prep, mask, parts=1))[-1]


def validation_steps(prep: Prepared, mask: np.ndarray, parts: int = 2) -> Iterator[float]:
    """The headline metric of the gated model on the first 1/parts of the validation batches, then
    on the first 2/parts, ... and last on all of them (what a pruned weight search reports)."""
    gated = apply_mask(copy.deepcopy(prep.model), prep.space, np.asarray(mask, dtype=bool), mode="gate")
    batches = prep.work.validation
    total, count = 0.0, 0
    for chunk in np.array_split(np.arange(len(batches)), min(parts, max(len(batches), 1))):
        part = [batches[i] for i in chunk]
        values = evaluate(gated, part, prep.work.metrics)
        if not values:
            raise QpruneError("tuning needs a metric: give a problem or metric_fn")
        key = prep.work.primary if prep.work.primary in values else next(iter(values))
        n = sum(int(x.shape[0]) for x, _ in part)
        total, count = total + values[key] * n, count + n
        yield total / count


def tune_weights(
    prep: Prepared,
    method: str,
    k: int | BudgetRequest,
    options: MethodOptions | None = None,
    *,
    n_trials: int | None = 20,
    timeout: float | None = None,
    sampler: str = "tpe",
    storage: str | None = None,
    study_name: str | None = None,
    save_best: str | None = None,
    sampler_seed: int | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search the QUBO weights of ``method`` for the best validation metric at exactly ``k`` (or
    within a :class:`BudgetRequest`).

    gamma is found by the exact-k search inside every trial; only the weights that the method's
    preset reads are searched; ``options.weights`` and ``options.refine`` are ignored (each trial
    sets its weights; refinement would make every trial cost a TT search). ``sampler_seed`` seeds
    Optuna's sampler (default: ``options.seed``); workers sharing a study give each their own. Each
    trial reports the metric on the first half of the validation split before the rest, and stops
    there when it is below the earlier trials' median (:mod:`qprune.pipeline.tune`).
    """
    space = {name: DEFAULT_SPACE[name] for name in method_weights(method_spec(method))}
    if not space:
        raise QpruneError(f"method {method!r} has no QUBO weights to tune")
    base = replace(options or MethodOptions(), weights=None, refine=None)

    def score(weights: Weights) -> Iterator[float]:
        opts = replace(base, weights=weights)
        if isinstance(k, BudgetRequest):
            x, _ = select_budget_mask(prep.space, prep.signals, method, k, opts)
        else:
            x, _ = select_mask(prep, method, k, opts)
        return validation_steps(prep, x)

    return search_weights(
        score, n_trials=n_trials, timeout=timeout, sampler=sampler, space=space, storage=storage,
        study_name=study_name or default_study_name(method, k if isinstance(k, int) else k.budget.text),
        seed=base.seed if sampler_seed is None else sampler_seed, progress=progress, save_best=save_best,
    )


def default_study_name(method: str, k: int | str) -> str:
    """The study a weight search uses unless told otherwise: one per method and k (or budget)."""
    return f"qprune-{method}-k{k}" if isinstance(k, int) else f"qprune-{method}-{k}"

