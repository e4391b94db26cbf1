"""The main job: model + data -> exact-k pruning mask -> gated and physically smaller models + report.

This module and the CLI are the only places that know the whole line (DESIGN.md, "Data flow"):
FilterSpace -> signals -> terms -> formulation -> exact-k solve -> (refine) -> mask -> apply -> evaluate.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import dimod
import numpy as np
import torch
from torch import nn

from qprune.solve.baselines import greedy_prune, random_prune
from qprune.solve.constraint import ExactK
from qprune.solve.strategies import get_strategy
from qprune.errors import QpruneError
from qprune.qubo.formulation import Formulation, Weights, formulate, preset_terms
from qprune.model.signals import Signals, collect_signals
from qprune.model.space import FilterSpace, build_space
from qprune.qubo.terms import compute_terms, term_requirements

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """How one named method picks its k units."""

    name: str
    kind: str  # "random" | "greedy" | "qubo"
    needs: frozenset[str] = frozenset()  # signals to collect
    score: str | None = None  # greedy: the Signals field ranked (lowest pruned first)
    preset: str | None = None  # qubo: formulation preset
    refine: bool = False  # "+tt" variants
    description: str = ""


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("random", "random", description="uniformly random units (a floor)"),
        MethodSpec("l1-greedy", "greedy", score="l1", description="smallest mean |W| first"),
        MethodSpec("taylor-greedy", "greedy", frozenset({"taylor"}), score="taylor",
                   description="Molchanov et al. 2019: smallest Taylor importance first"),
        MethodSpec("fisher-greedy", "greedy", frozenset({"channel_fisher"}), score="channel_fisher",
                   description="smallest channel-Fisher importance first"),
        MethodSpec("l1-qubo", "qubo", preset="l1", description="Wang et al.: L1 redundancy QUBO"),
        MethodSpec("gradient-qubo", "qubo", preset="gradient", description="L1 redundancy + Taylor QUBO"),
        MethodSpec("hybrid-qubo", "qubo", preset="hybrid",
                   description="Taylor + Fisher + activation similarity QUBO (the paper's method)"),
        MethodSpec("hybrid-qubo+tt", "qubo", preset="hybrid", refine=True,
                   description="hybrid QUBO seed refined by tensor-train (PROTES) search on the validation metric"),
    )
}
_SIGNALS = frozenset({"taylor", "weight_fisher", "channel_fisher", "activations"})


def method_needs(spec: MethodSpec, fisher: str = "channel", weights: Weights | None = None) -> frozenset[str]:
    """The calibration signals a method reads (l1 comes from the weights and is always there)."""
    if spec.kind != "qubo":
        return spec.needs
    names = preset_terms(spec.preset or "hybrid", fisher, weights)
    return frozenset(term_requirements(names)) & _SIGNALS


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` for ``name``; unknown names raise with the list of known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise QpruneError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


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
    bqm: dimod.BinaryQuadraticModel | None = None
    formulation: Formulation | None = None
    energy: float | None = None  # of the chosen mask on `bqm`
    gamma: float | None = None
    solver_info: dict[str, Any] = field(default_factory=dict)
    seed: int | None = 0

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


# --------------------------------------------------------------------------- data plumbing


@dataclass
class Workload:
    """What the pipeline needs from a problem or from plain batches + functions."""

    calibration: Sequence[Batch]
    validation: Sequence[Batch]
    test: Sequence[Batch]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]] | None
    primary: str | None  # name of the headline metric
    space_kwargs: dict[str, Any]


def as_workload(
    model: nn.Module,
    problem_or_batches: Any,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    metric_fn: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float] | float] | None = None,
) -> Workload:
    """Adapt a :class:`qprune.problems.Problem` or an iterable of (input, target) batches."""
    if hasattr(problem_or_batches, "calibration_batches"):
        p = problem_or_batches
        return Workload(
            calibration=list(p.calibration_batches()),
            validation=list(p.validation_batches()),
            test=list(p.test_batches()),
            loss=loss_fn or p.loss,
            metrics=p.metrics,
            primary=getattr(p, "primary_metric", None),
            space_kwargs=dict(p.prunable(model)),
        )
    batches = list(problem_or_batches)
    if not batches:
        raise QpruneError("no calibration batches were given")
    if loss_fn is None:
        raise QpruneError("plain batches need a loss_fn(output, target)")
    metrics = None
    if metric_fn is not None:
        def metrics(out: torch.Tensor, target: torch.Tensor) -> Mapping[str, float]:
            value = metric_fn(out, target)
            return value if isinstance(value, Mapping) else {"metric": float(value)}
    return Workload(batches, batches, batches, loss_fn, metrics, None, {})


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    metrics: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]] | None,
) -> dict[str, float]:
    """Mean of each metric over ``batches`` (weighted by batch size), model in eval mode."""
    if metrics is None:
        return {}
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for x, y in batches:
        values = metrics(model(x), y)
        n = int(x.shape[0])
        for name, v in values.items():
            totals[name] = totals.get(name, 0.0) + float(v) * n
        count += n
    model.train(was_training)
    return {name: v / max(count, 1) for name, v in totals.items()}


# --------------------------------------------------------------------------- the main job


@dataclass
class Prepared:
    """A model's filter space and calibration signals, collected once and shared by many methods."""

    model: nn.Module
    work: Workload
    space: FilterSpace
    signals: Signals
    timings: dict[str, float]


def prepare(
    model: nn.Module,
    problem_or_batches: Any,
    *,
    methods: Sequence[str] = ("hybrid-qubo",),
    layers: Sequence[str] | int | None = None,
    exclude: Sequence[str] = (),
    min_keep: int = 1,
    fisher: str = "channel",
    weights: Weights | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    metric_fn: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float] | float] | None = None,
    progress: bool = True,
) -> Prepared:
    """Discover the filter space and collect, in ONE calibration pass, what ``methods`` need."""
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
    space = build_space(model, work.calibration[0][0][:1], **space_kwargs)
    timings["space"] = time.perf_counter() - t0
    needs = frozenset().union(*(method_needs(s, fisher, weights) for s in specs))
    t0 = time.perf_counter()
    signals = collect_signals(model, space, work.calibration, work.loss, needs=needs, progress=progress)
    timings["signals"] = time.perf_counter() - t0
    return Prepared(model, work, space, signals, timings)


def prune(
    model: nn.Module,
    problem_or_batches: Any,
    *,
    sparsity: float | None = None,
    k: int | None = None,
    method: str = "hybrid-qubo",
    backend: str | dimod.Sampler = "neal",
    strategy: str = "gamma",
    refine: str | None = None,
    weights: Weights | None = None,
    fisher: str = "channel",
    layers: Sequence[str] | int | None = None,
    exclude: Sequence[str] = (),
    min_keep: int = 1,
    seed: int | None = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    metric_fn: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float] | float] | None = None,
    remove: bool = True,
    tt_budget: int = 2_000,
    sampler_params: Mapping[str, Any] | None = None,
    solver_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> PruneResult:
    """Prune exactly k filters of ``model`` with ``method`` on ``backend``.

    Args:
        model: a trained ``nn.Module`` (not modified: the pipeline works on copies).
        problem_or_batches: a :class:`qprune.problems.Problem`, or calibration batches
            ``[(input, target), ...]`` together with ``loss_fn`` (and optionally ``metric_fn``).
        sparsity / k: fraction of the prunable units, or their count (exactly one).
        method: one of :data:`METHODS` (random, l1-greedy, taylor-greedy, fisher-greedy, l1-qubo,
            gradient-qubo, hybrid-qubo, hybrid-qubo+tt).
        backend: a registered backend name (``qprune.backends.available()``) or a dimod sampler.
        strategy: ``"gamma"`` (bisection on the capacity reward, the paper's) or ``"layerwise"``.
        refine: ``None`` or ``"tt"`` (PROTES refinement of the QUBO mask on the validation metric).
        weights: QUBO weights (alpha, alpha_f, beta_diag, beta_off, lam); gamma is searched.
        fisher: which Fisher term the hybrid preset uses: taylor|weight|channel|both.
        layers / exclude / min_keep: restrict the filter space (see :func:`qprune.model.space.build_space`).
        seed: seeds every random step; the same seed gives the same mask.
        remove: also build the physically smaller model (``pruned_model``).

    Returns:
        A :class:`PruneResult` with the mask, gated and removed models, metrics before/after on the
        test batches, params/MACs/latency, per-stage timings, the BQM and the solver info.
    """
    spec = method_spec(method)
    _check_choices(refine, strategy)
    prep = prepare(model, problem_or_batches, methods=[method], layers=layers, exclude=exclude,
                   min_keep=min_keep, fisher=fisher, weights=weights, loss_fn=loss_fn, metric_fn=metric_fn, progress=progress)
    return run_method(prep, spec.name, sparsity=sparsity, k=k, backend=backend, strategy=strategy,
                      refine=refine, weights=weights, fisher=fisher, seed=seed, remove=remove,
                      tt_budget=tt_budget, sampler_params=sampler_params, solver_options=solver_options,
                      progress=progress)


def _check_choices(refine: str | None, strategy: str) -> None:
    if refine not in (None, "tt"):
        raise QpruneError(f"unknown refine stage {refine!r}; choose 'tt' or leave it out")
    if strategy not in ("gamma", "layerwise"):
        raise QpruneError(f"unknown strategy {strategy!r}; choose 'gamma' or 'layerwise'")


def select_mask(
    prep: Prepared,
    method: str,
    k: int,
    *,
    backend: str | dimod.Sampler = "neal",
    strategy: str = "gamma",
    refine: str | None = None,
    weights: Weights | None = None,
    fisher: str = "channel",
    seed: int | None = 0,
    tt_budget: int = 2_000,
    sampler_params: Mapping[str, Any] | None = None,
    solver_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The exactly-k mask (int8 [N], 1 = pruned) a method picks, and what the solve recorded."""
    spec = method_spec(method)
    _check_choices(refine, strategy)
    space, signals = prep.space, prep.signals
    caps = space.max_pruned_per_layer
    if k > int(caps.sum()):
        raise QpruneError(f"k={k} exceeds the {int(caps.sum())} units that may go while keeping "
                          f"min_keep={space.min_keep} per layer")
    missing = sorted(n for n in method_needs(spec, fisher, weights) if getattr(signals, n, None) is None)
    if missing:
        raise QpruneError(f"method {method!r} needs signals {missing} that prepare() did not collect")
    do_refine = spec.refine or refine == "tt"
    if do_refine and spec.kind != "qubo":
        raise QpruneError(f"--refine tt needs a QUBO method, not {method!r}")
    out: dict[str, Any] = {"timings": {}}
    t0 = time.perf_counter()
    if spec.kind == "random":
        x = random_prune(space.N, k, seed=seed, layer_ids=space.layer_ids, max_per_layer=caps)
    elif spec.kind == "greedy":
        x = greedy_prune(_signal(signals, spec.score or "l1"), k, layer_ids=space.layer_ids, max_per_layer=caps)
    else:
        formulation = build_formulation(space, signals, spec, weights=weights, fisher=fisher)
        out["timings"]["formulate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        solved = solve_formulation(
            formulation, k, backend=backend, strategy=strategy, seed=seed,
            max_per_group=(space.layer_ids, caps), sampler_params=sampler_params,
            solver_options=solver_options, progress=progress,
        )
        x = np.asarray(solved.x, dtype=np.int8)
        out.update(formulation=formulation, bqm=solved.bqm, gamma=solved.gamma, info=dict(solved.info))
    out["timings"]["solve"] = time.perf_counter() - t0
    if do_refine:
        from qprune.refine.tt import refine_mask

        t0 = time.perf_counter()
        refined = refine_mask(prep.model, space, prep.work, x, k, budget=tt_budget, seed=seed, progress=progress)
        x = np.asarray(refined.x, dtype=np.int8)
        out.setdefault("info", {})["refine"] = refined.summary()
        out["timings"]["refine"] = time.perf_counter() - t0
    if int(x.sum()) != k:  # every method promises exactly k: this is a bug if it fires
        raise RuntimeError(f"{method} returned {int(x.sum())} pruned units, expected {k}")
    return x, out


def run_method(
    prep: Prepared,
    method: str,
    *,
    sparsity: float | None = None,
    k: int | None = None,
    remove: bool = True,
    progress: bool = False,
    **options: Any,
) -> PruneResult:
    """Select a mask with ``method`` on a prepared model, apply it, evaluate and measure."""
    kk = resolve_k(prep.space.N, sparsity, k)
    x, out = select_mask(prep, method, kk, progress=progress, **options)
    timings = dict(prep.timings)
    timings.update(out["timings"])
    result = finish(prep.model, prep.space, x.astype(bool), prep.work, remove=remove, timings=timings)
    result.method, result.k, result.seed = method, kk, options.get("seed", 0)
    bqm = out.get("bqm")
    result.bqm, result.formulation, result.gamma = bqm, out.get("formulation"), out.get("gamma")
    if bqm is not None:
        result.energy = float(bqm.energy(dict(zip(prep.space.labels, x.tolist()))))
    result.solver_info = out.get("info", {})
    return result


def _signal(signals: Signals, name: str) -> np.ndarray:
    value = getattr(signals, name, None)
    if value is None:
        raise RuntimeError(f"signal {name!r} was not collected")
    return np.asarray(value, dtype=np.float64)


def build_formulation(
    space: FilterSpace,
    signals: Signals,
    spec: MethodSpec | str,
    *,
    weights: Weights | None = None,
    fisher: str = "channel",
) -> Formulation:
    """Terms -> normalised QUBO for a QUBO method, from collected signals."""
    spec = method_spec(spec) if isinstance(spec, str) else spec
    inputs = {
        "l1": signals.l1,
        "taylor": signals.taylor,
        "weight_fisher": signals.weight_fisher,
        "channel_fisher": signals.channel_fisher,
        "activations": signals.activations,
        "params": space.params,
        "layer_ids": space.layer_ids,
    }
    preset = spec.preset or "hybrid"
    terms = compute_terms(list(preset_terms(preset, fisher, weights)), inputs)
    return formulate(
        terms, preset=preset, weights=weights or Weights(), fisher=fisher,
        labels=space.labels, layer_ids=space.layer_ids,
    )


def solve_formulation(
    formulation: Formulation,
    k: int,
    *,
    backend: str | dimod.Sampler = "neal",
    strategy: str = "gamma",
    seed: int | None = 0,
    max_per_group: tuple[np.ndarray, np.ndarray] | None = None,
    sampler_params: Mapping[str, Any] | None = None,
    solver_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Any:
    """Exact-k solve of a formulation with one of :data:`qprune.solve.strategies.STRATEGIES`."""
    constraint = None if max_per_group is None else ExactK.build(formulation.num_variables, k, max_per_group)
    return get_strategy(strategy).solve(formulation, k, backend, seed, constraint=constraint,
                                        sampler_params=dict(sampler_params or {}), progress=progress,
                                        options=solver_options)


def finish(
    model: nn.Module,
    space: FilterSpace,
    mask: np.ndarray,
    work: Workload,
    *,
    remove: bool = True,
    timings: dict[str, float] | None = None,
    progress: bool = False,
) -> PruneResult:
    """Apply a mask, evaluate before/after on the test batches, and measure both models."""
    from qprune.model.masking import apply_mask
    from qprune.model.stats import model_stats

    timings = dict(timings or {})
    example = work.test[0][0][:1]
    t0 = time.perf_counter()
    metrics_before = evaluate(model, work.test, work.metrics)
    gated = apply_mask(copy.deepcopy(model), space, mask, mode="gate")
    metrics_after = evaluate(gated, work.test, work.metrics)
    timings["evaluate"] = time.perf_counter() - t0
    pruned = None
    stats_before = model_stats(model, example)
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


def validation_score(prep: Prepared, mask: np.ndarray) -> float:
    """The headline metric of the gated model on the validation batches (higher is better)."""
    from qprune.model.masking import apply_mask

    gated = apply_mask(copy.deepcopy(prep.model), prep.space, np.asarray(mask, dtype=bool), mode="gate")
    values = evaluate(gated, prep.work.validation, prep.work.metrics)
    if not values:
        raise QpruneError("tuning needs a metric: give a problem or metric_fn")
    key = prep.work.primary if prep.work.primary in values else next(iter(values))
    return float(values[key])


def tune_weights(
    prep: Prepared,
    method: str,
    k: int,
    *,
    n_trials: int | None = 20,
    timeout: float | None = None,
    sampler: str = "tpe",
    storage: str | None = None,
    study_name: str | None = None,
    save_best: str | None = None,
    seed: int | None = 0,
    progress: bool = True,
    **options: Any,
) -> Any:
    """Search the QUBO weights of ``method`` for the best validation metric at exactly ``k``.

    gamma is found by the exact-k search inside every trial; only the weights that the method's
    preset reads are searched. Returns :class:`qprune.pipeline.tune.SearchResult`.
    """
    from qprune.pipeline.tune import DEFAULT_SPACE, PRESET_WEIGHTS, search_weights

    spec = method_spec(method)
    if spec.kind != "qubo":
        raise QpruneError(f"method {method!r} has no QUBO weights to tune")
    space = {name: DEFAULT_SPACE[name] for name in PRESET_WEIGHTS[spec.preset or "hybrid"]}
    options.pop("weights", None)

    def score(weights: Weights) -> float:
        x, _ = select_mask(prep, method, k, weights=weights, seed=seed, **options)
        return validation_score(prep, x)

    return search_weights(
        score, n_trials=n_trials, timeout=timeout, sampler=sampler, space=space, storage=storage,
        study_name=study_name or f"qprune-{method}-k{k}", seed=seed, progress=progress, save_best=save_best,
    )
