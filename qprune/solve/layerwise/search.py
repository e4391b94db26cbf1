"""Layer-decomposed exact-k: per-layer "best energy for every count" curves + an exact DP over layers.

The pruning QUBO is block-diagonal by layer, and a count constraint sum(x) = k couples the layers only
through how many units each layer gives up. So:

1. For each block b, find C_b(c) = min { E_b(x_b) : |x_b| = c } for every count c = 0..cap_b.
   Blocks of <= ``brute_force_max`` variables are enumerated (exact, :mod:`qprune.solve.layerwise.count_curve`).
   Larger blocks get a greedy curve (add the cheapest unit, then drop the dearest: a state per count
   in O(m^2), :func:`qprune.solve.layerwise.block_moves.greedy_curve`). The blocks a backend samples
   (:mod:`qprune.solve.layerwise.harvest`; by default, for the software samplers, only blocks with negative
   couplings, which no built-in term makes) also get per-block uniform shifts lambda (the Lagrange
   multiplier of the block's own count: E_b(x) - lambda |x| differs from E_b by a constant at fixed
   count, so ANY read of the shifted problem is a valid count-c candidate) spreading the reads over
   all counts; the best state of each count is kept. Sampled blocks are batched into one BQM per
   lambda step (they are independent), so a backend call costs one sampler overhead for many
   layers; how many variables go into one call is the backend's to say
   (:func:`qprune.solve.sampling.batch_variables`).
2. min sum_b C_b(c_b) subject to sum_b c_b = k and c_b <= cap_b is a knapsack-style DP over layers
   (:mod:`qprune.solve.dp`, O(B k c_max), milliseconds), exact given the curves; the result has
   exactly k ones by construction.
3. Focus: the DP only reads each curve near the count it picks, so there the heavy blocks get
   count-preserving swap descent and a swap tabu search (:mod:`qprune.solve.layerwise.block_moves`, each
   step exact over a window of candidate pairs, :mod:`qprune.solve.layerwise.swap_search`), improvements
   propagate to nearby counts, the sampled blocks are sampled again with shifts at which that
   count is optimal (where the gamma search's reads land too), and the DP runs again — until it
   keeps its counts (at most ``focus_rounds``). On resnet50 (11,456 units) this reaches the energy
   the all-sampled curves reached, in seconds instead of minutes (``benchmarks/scale.py``).

Gamma: ``energy`` is E at a gamma. Given ``gamma=``, that gamma is used (e.g. the gamma search's final
one, to compare both strategies on the same BQM). Otherwise the default is the gamma where the exact
per-layer Lagrangian relaxation first prunes >= k units — what the gamma search looks for, found here
on the curves without any extra sampling: within a layer whose units share a capacity reward, the
gamma term is -gamma * r_b * c at count c, so the curves at gamma = 0 give the curves at any gamma.

Cross-layer couplings (``formulation.cross``) are handled exactly by merging the layers they connect
into one block (:mod:`qprune.solve.layerwise.blocks`; its count curve then covers the merged layers; per-layer
caps are enforced inside the block). That is exact but makes the merged block larger, so keep such
couplings rare. Couplings in factored form (``formulation.factor``: between every pair of layers)
are not merged: the curves and the DP see the block-diagonal part, and a descent on the whole
energy then starts from their mask (:mod:`qprune.solve.lowrank`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import dimod
import numpy as np

from qprune.errors import QpruneError
from qprune.solve.layerwise.blocks import Block, build_blocks, check_blocks_cover
from qprune.solve.layerwise.block_moves import focus_lambdas
from qprune.solve.budgets.budget import Budget, CostModel
from qprune.solve.budgets.search import block_table, search_counts
from qprune.solve.constraint import ExactK
from qprune.solve.layerwise.count_curve import BRUTE_FORCE_MAX, block_count_curve
from qprune.solve.dp import combine_counts, lagrangian_gamma
from qprune.solve.layerwise.harvest import Curve, GroupTask
from qprune.solve.lowrank import polish_budget, polish_exact_k
from qprune.solve.result import ExactKResult
from qprune.solve.sampling import SamplerCall, backend_name, batch_variables
from qprune.solve.strategies import options_of
from qprune.solve.layerwise.workers import auto_jobs, child_seeds, pack, run_tasks

if TYPE_CHECKING:  # pragma: no cover
    from qprune.qubo.formulation import Formulation

# Software samplers whose reads the greedy curves + swap search matched on the pruning QUBOs at a
# fraction of the time (benchmarks/scale.py): by default they sample only the blocks with negative
# couplings (ferromagnetic clusters that single swaps cannot break up); no built-in term has any.
SEARCH_ONLY = frozenset({"neal", "tabu", "greedy", "exact"})
# The largest block a search-only backend still samples. Annealing the loss-model's dense Fisher
# blocks dominated a fisher-qubo prune of resnet50 (2,048-unit blocks: 1,677 s in all; with those
# left to search, 43 s of a 99 s prune still went to annealing 128-256-unit blocks); the quality
# benchmark measured the method with its 16-64-unit blocks sampled, and they stay sampled.
SAMPLE_MAX = 64
# Tabu moves per count at most: 300 found on efficientnet_b0's 1,152-unit layers the states annealing
# found (100 did on two of three), at about 0.4 s a layer.
TABU_MAX = 300

__all__ = ["BRUTE_FORCE_MAX", "SAMPLE_MAX", "SEARCH_ONLY", "TABU_MAX", "LayerwiseOptions", "block_count_curve",
           "layerwise_budget", "solve_layerwise"]


@dataclass(frozen=True)
class LayerwiseOptions:
    """Knobs of the layerwise strategy (``solve_layerwise``'s keyword arguments of the same names).

    gamma: the capacity weight the energy is minimised at; None: the gamma at which the exact
        per-layer Lagrangian relaxation first prunes k units (see the module docstring).
    n_jobs: worker count (None: the idle cores when there is enough work, else 1). Named
        backends run in processes, sampler instances in threads.
    brute_force_max: blocks of at most this many variables are enumerated (2^m states).
    steps: first-pass backend solves per sampled heavy block (None: 4), their shifts spread over
        all counts, merged with the greedy curve every heavy block gets. Which heavy blocks are
        sampled: all of them when ``steps`` or ``focus_steps`` is given or the backend is not
        one of :data:`SEARCH_ONLY`; with a :data:`SEARCH_ONLY` backend and both left None, only
        those with a negative coupling (the loss-model's Fisher term makes them) and at most
        :data:`SAMPLE_MAX` units. On the pruning QUBOs the
        greedy curves + swap search matched the sampled curves' energy at a fraction of the time
        (``benchmarks/scale.py``).
    reads: ``num_reads`` per backend solve (when the backend takes it).
    focus_rounds, focus_steps, tabu_iters, tabu_max, focus_window: then, per round,
        ``focus_steps`` solves per sampled heavy block (None: 2) with shifts at which the count
        the DP chose for it is optimal, swap descent at every count within ``focus_window`` of
        it, a tabu search of ``min(tabu_iters * m, tabu_max)`` moves at that count (each count
        once per solve), propagation of every improvement to the neighbouring counts (within
        the window), and a new DP; rounds stop (at most ``focus_rounds``) once the DP keeps
        its counts.
    batch_variables: heavy blocks are batched into one BQM of at most this many variables
        (None: what the backend asks for, :func:`qprune.solve.sampling.batch_variables`).
    """

    gamma: float | None = None
    n_jobs: int | None = None
    brute_force_max: int = BRUTE_FORCE_MAX
    steps: int | None = None
    reads: int = 5
    focus_rounds: int = 3
    focus_steps: int | None = None
    tabu_iters: int = 2
    tabu_max: int = TABU_MAX
    focus_window: int = 8
    batch_variables: int | None = None


@dataclass(frozen=True)
class _Plan:
    """What every group of blocks of one solve is run with (options resolved against the backend)."""

    backend: str | dimod.Sampler
    seed: int | None
    sampler_params: dict[str, Any]  # without num_reads (that is ``reads``)
    reads: int
    brute_force_max: int
    steps: int
    focus_steps: int
    tabu_iters: int
    tabu_max: int
    focus_window: int
    sample_all: bool  # False: only the heavy blocks with a negative coupling are sampled
    n_jobs: int | None
    batch_variables: int
    progress: bool


def solve_layerwise(
    formulation: Formulation,
    k: int,
    backend: str | dimod.Sampler = "neal",
    seed: int | None = 0,
    *,
    constraint: ExactK | None = None,
    sampler_params: Mapping[str, Any] | None = None,
    progress: bool = False,
    options: LayerwiseOptions | None = None,
    **knobs: Any,
) -> ExactKResult:
    """Exactly-k solve of a block-diagonal :class:`~qprune.qubo.formulation.Formulation`, layer by layer.

    Args:
        formulation: the QUBO; its blocks must be per layer (``Formulation.blocks``). Cross-layer
            couplings are handled exactly by merging the layers they join into one block.
        k: number of units to prune (ones in the result).
        backend: registered backend name or a dimod sampler, sampled on the blocks larger than
            ``brute_force_max`` (smaller ones are enumerated exactly) when ``steps`` or
            ``focus_steps`` ask for it.
        seed: seeds every backend call (the same seed gives the same mask, whatever ``n_jobs``).
        constraint: an :class:`~qprune.solve.constraint.ExactK` whose groups are the layers (None:
            exactly k, no caps).
        sampler_params: extra keyword arguments for every backend call (e.g. ``num_sweeps``).
        progress: show a progress bar over block groups.
        options, knobs: the solve's settings, a :class:`LayerwiseOptions` and/or its fields by name
            (a knob replaces the same field of ``options``); this is also the ``"layerwise"``
            strategy's runner (:data:`qprune.solve.strategies.STRATEGIES`); the fields are documented
            on :class:`LayerwiseOptions`.

    Returns:
        :class:`qprune.solve.result.ExactKResult` with exactly k ones, ``bqm = formulation.bqm(gamma)``,
        and ``info`` holding ``strategy="layerwise"``, the per-layer counts, per-layer times, which
        blocks were exact, the gamma and how it was chosen.
    """
    options = options_of(LayerwiseOptions, options, knobs, who="solve_layerwise")
    t_start = time.perf_counter()
    _require_formulation(formulation, "strategy 'layerwise'")
    n = len(formulation.labels)
    k = int(k)
    if not 0 <= k <= n:
        raise QpruneError(f"k={k} must lie in [0, {n}]")
    check_blocks_cover(formulation)
    caps = _layer_caps(np.asarray(formulation.layer_ids), k, constraint)
    plan = _plan(backend, seed, sampler_params, progress, options)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    blocks, curves, shift, gamma_used, gamma_source = _first_pass(formulation, k, caps, plan, options.gamma)
    timings["curves_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    curves, counts, history = _focus_rounds(blocks, curves, shift, k, plan, options.focus_rounds)
    timings["focus_s"] = time.perf_counter() - t0
    x = np.zeros(n, np.int8)
    for b, c, count in zip(blocks, curves, counts):
        x[b.idx] = c.X[count]
    if int(x.sum()) != k:  # the DP picks one state of count c per block: cannot happen
        raise RuntimeError(f"layerwise assembled {int(x.sum())} ones, expected {k}")
    polish: dict[str, Any] = {}
    if formulation.factor is not None:
        t0 = time.perf_counter()
        con = ExactK.per_layer(formulation.layer_ids, k, {lay: cap for lay, cap in caps.items()})
        x, polish = polish_exact_k(formulation, x, con, gamma=gamma_used)
        timings["factor_polish_s"] = time.perf_counter() - t0
    info = {"strategy": "layerwise", "gamma": gamma_used, "gamma_source": gamma_source,
            **_per_layer(blocks, curves, x), "sampled_blocks": int(sum(_sampled(b, plan) for b in blocks)),
            "dp_energy_per_round": history,
            "backend": backend_name(backend), "seed": seed, "times": timings, "repaired": False}
    if polish:
        info["factor_polish"] = polish
    result = _result(formulation, x, gamma_used, info)
    timings["total_s"] = time.perf_counter() - t_start
    return result


def _require_formulation(formulation: Any, who: str) -> None:
    """Refuse anything but a qprune Formulation: the per-layer blocks are what layerwise reads."""
    for attr in ("blocks", "layer_ids", "linear", "reward", "labels"):
        if not hasattr(formulation, attr):
            raise QpruneError(f"{who} needs a qprune Formulation (its per-layer blocks); "
                              f"got {type(formulation).__name__}")


def layerwise_budget(
    formulation: Formulation,
    cost: CostModel,
    budget: Budget,
    limits: ExactK,
    backend: str | dimod.Sampler = "neal",
    seed: int | None = 0,
    *,
    sampler_params: Mapping[str, Any] | None = None,
    progress: bool = False,
    options: LayerwiseOptions | None = None,
) -> ExactKResult:
    """The layerwise strategy under a budget instead of an exact count.

    The same block curves as :func:`solve_layerwise`, at gamma = 0 (the budget takes the place of
    the capacity reward; ``options.gamma`` overrides), combined by
    :func:`qprune.solve.budgets.search.search_counts` (Lagrange multiplier on the budget's exact
    cost) instead of the count DP; the focus rounds then improve every block around the count the
    budget search chose, until it keeps its counts. ``limits`` (groups = layer ids, see
    :meth:`ExactK.layer_limits`) gives the caps and ``round_to``; its ``k`` is not used.
    """
    options = LayerwiseOptions() if options is None else options
    t_start = time.perf_counter()
    _require_formulation(formulation, "a budget")
    lid = np.asarray(formulation.layer_ids)
    if limits.group is None or limits.n != lid.size or not np.array_equal(limits.group, lid):
        raise QpruneError("budget limits must be per layer (ExactK.layer_limits over the formulation's layer ids)")
    check_blocks_cover(formulation)
    caps = {int(lay): int(limits.cap[lay]) for lay in np.unique(lid)}
    plan = _plan(backend, seed, sampler_params, progress, options)
    gamma = 0.0 if options.gamma is None else float(options.gamma)
    blocks = build_blocks(formulation, gamma, caps)
    curves = _curves(blocks, plan)
    history: list[float] = []
    counts: list[int] | None = None
    for round_ in range(int(options.focus_rounds) + 1):
        tables = [block_table(cost, b.idx, c.E, c.X, _block_allowed(b, c, limits)) for b, c in zip(blocks, curves)]
        sol = search_counts(cost, budget, tables)
        history.append(sol.energy)
        if sol.counts == counts or round_ == int(options.focus_rounds):
            break
        counts = sol.counts
        curves = _focus(blocks, curves, counts, plan, round_)
    x = np.zeros(lid.size, np.int8)
    for b, c, count in zip(blocks, curves, sol.counts):
        x[b.idx] = c.X[count]
    polish: dict[str, Any] = {}
    if formulation.factor is not None and sol.landed:
        x, polish = polish_budget(formulation, x, cost, budget.window(sol.full), limits, gamma=gamma)
        sol.cost = cost.of_mask(x)
    info = {"strategy": "layerwise", "gamma": gamma, "gamma_source": "budget", **_per_layer(blocks, curves, x),
            "budget": budget.text, "budget_cost": sol.cost, "budget_full": sol.full, "budget_landed": sol.landed,
            "budget_lambda": sol.lam, "budget_energy_per_round": history, **sol.info,
            "backend": backend_name(backend), "seed": seed,
            "times": {"total_s": time.perf_counter() - t_start}, "repaired": False}
    if polish:
        info["factor_polish"] = polish
    return _result(formulation, x, gamma, info)


def _block_allowed(block: Block, curve: Curve, limits: ExactK) -> np.ndarray:
    """Counts of a block whose state keeps every layer within its limits (``round_to`` included)."""
    if len(block.layers) == 1:
        return limits.allowed(int(block.layers[0]))
    ok = []
    for c in range(curve.E.size):
        per = [int(curve.X[c][block.sub == j].sum()) for j in range(len(block.layers))]
        if all(n in set(limits.allowed(int(lay)).tolist()) for n, lay in zip(per, block.layers)):
            ok.append(c)
    return np.asarray(ok, dtype=np.int64)


def _layer_caps(lid: np.ndarray, k: int, constraint: ExactK | None) -> dict[int, int]:
    """Max pruned per layer id, from the constraint (whose groups must be the layers)."""
    con = ExactK.coerce(lid.size, k, constraint)
    layers, sizes = np.unique(lid, return_counts=True)
    if not con.capped:
        return {int(lay): int(s) for lay, s in zip(layers, sizes)}
    caps: dict[int, int] = {}
    owner: dict[int, int] = {}
    for lay in layers:
        groups = np.unique(con.group[lid == lay])
        if groups.size != 1 or int(groups[0]) in owner:
            raise QpruneError("strategy 'layerwise' takes caps per layer: every cap group must be exactly "
                              f"one layer (layer {int(lay)} is not)")
        owner[int(groups[0])] = int(lay)
        caps[int(lay)] = int(con.cap[groups[0]])
    return caps


def _plan(backend: str | dimod.Sampler, seed: int | None, sampler_params: Mapping[str, Any] | None,
          progress: bool, options: LayerwiseOptions) -> _Plan:
    params = dict(sampler_params or {})
    reads = int(params.pop("num_reads", options.reads))
    batch = batch_variables(backend) if options.batch_variables is None else options.batch_variables
    SamplerCall.of(backend, params)  # fail now (missing extra, no token, bad parameter), not in a worker
    # asked for (steps given) or a backend chosen for itself (a QPU, QAOA): sample every heavy block
    sample_all = not (isinstance(backend, str) and backend in SEARCH_ONLY) or options.steps is not None \
        or options.focus_steps is not None
    steps = 4 if options.steps is None else int(options.steps)
    focus_steps = 2 if options.focus_steps is None else int(options.focus_steps)
    for name, value in (("steps", steps), ("focus_steps", focus_steps), ("tabu_iters", options.tabu_iters),
                        ("tabu_max", options.tabu_max), ("focus_window", options.focus_window)):
        if int(value) < 0:
            raise QpruneError(f"{name} must be >= 0, got {value}")
    return _Plan(backend, seed, params, reads, int(options.brute_force_max), steps, focus_steps,
                 int(options.tabu_iters), int(options.tabu_max), int(options.focus_window), sample_all,
                 options.n_jobs, int(batch), progress)


def _first_pass(formulation: Formulation, k: int, caps: dict[int, int], plan: _Plan, gamma: float | None,
                ) -> tuple[list[Block], list[Curve], np.ndarray, float, str]:
    """Every block's curve, with the shift it needs to be at the solve's gamma: 0 when the block was
    solved at that gamma, gamma * r_b when it was solved at gamma = 0 and all its units share the
    reward r_b (its gamma term is then -gamma r_b c at count c, for any state)."""
    if gamma is not None:
        blocks = build_blocks(formulation, float(gamma), caps)
        return blocks, _curves(blocks, plan), np.zeros(len(blocks)), float(gamma), "given"
    reward = np.asarray(formulation.reward, float)
    blocks = build_blocks(formulation, 0.0, caps)
    curves = _curves(blocks, plan)
    rbar = np.array([reward[b.idx].mean() for b in blocks])
    gamma_used = lagrangian_gamma([c.E for c in curves], rbar, k)
    shift = gamma_used * rbar
    redo = [i for i, b in enumerate(blocks)
            if np.ptp(reward[b.idx]) > 1e-12 * max(1e-300, abs(float(rbar[i])))]
    if redo:  # rewards that differ inside a block: solve those blocks again at gamma*
        again_blocks = build_blocks(formulation, gamma_used, caps)
        again = _curves([again_blocks[i] for i in redo], plan)
        for i, c in zip(redo, again):
            blocks[i], curves[i], shift[i] = again_blocks[i], c, 0.0
    return blocks, curves, shift, gamma_used, "lagrangian"


def _sampled(b: Block, plan: _Plan) -> bool:
    """Whether the backend samples this block (else: enumeration or greedy + swap search only)."""
    return b.m > plan.brute_force_max and (plan.sample_all or (not b.nonnegative and b.m <= SAMPLE_MAX))


def _curves(blocks: list[Block], plan: _Plan) -> list[Curve]:
    """First pass: every block's curve; the grouping (and so the result) does not depend on n_jobs."""
    sampled = [i for i, b in enumerate(blocks) if _sampled(b, plan)]
    searched = [i for i, b in enumerate(blocks) if not _sampled(b, plan)]
    # sampled blocks share backend calls, so they go apart from the rest, heavy first
    searched.sort(key=lambda i: blocks[i].m <= plan.brute_force_max)
    groups = pack(blocks, sampled, plan.batch_variables) + pack(blocks, searched, plan.batch_variables)
    seeds = child_seeds(plan.seed, "curves", len(groups))
    tasks = [GroupTask([blocks[i] for i in g], plan.backend, seeds[j], plan.reads, dict(plan.sampler_params),
                       plan.brute_force_max, steps=plan.steps if _sampled(blocks[g[0]], plan) else 0)
             for j, g in enumerate(groups)]
    jobs = auto_jobs(plan.n_jobs, blocks, plan.brute_force_max, len(tasks),
                     sampling=plan.steps > 0 and bool(sampled))
    results = run_tasks(tasks, plan.backend, jobs, "layer curves", plan.progress)
    out: list[Curve] = [None] * len(blocks)  # type: ignore[list-item]
    for g, res in zip(groups, results):
        for i, c in zip(g, res):
            out[i] = c
    return out


def _focus_rounds(blocks: list[Block], curves: list[Curve], shift: np.ndarray, k: int, plan: _Plan,
                  rounds: int) -> tuple[list[Curve], list[int], list[float]]:
    """DP, then up to ``rounds`` focus passes, each followed by a new DP, until the counts hold."""
    def at_gamma() -> list[np.ndarray]:
        return [c.E - s * np.arange(c.E.size) for c, s in zip(curves, shift)]

    dp_energy, counts = combine_counts(at_gamma(), k)
    history = [dp_energy]
    for round_ in range(int(rounds)):
        curves = _focus(blocks, curves, counts, plan, round_)
        dp_energy, new_counts = combine_counts(at_gamma(), k)
        history.append(dp_energy)
        if new_counts == counts:  # every count the DP now uses has had its focus
            break
        counts = new_counts
    return curves, counts, history


def _focus(blocks: list[Block], curves: list[Curve], counts: list[int], plan: _Plan, round_: int) -> list[Curve]:
    """Improve the heuristic blocks where the DP reads them: re-sample with shifts at which their
    DP-chosen count is optimal, so the reads concentrate where the solution is decided (as the gamma
    search's do), then descent + tabu at that count and its neighbours, propagated nearby."""
    def steps(i: int) -> int:
        return plan.focus_steps if _sampled(blocks[i], plan) else 0

    todo = [i for i, (c, count) in enumerate(zip(curves, counts))
            if not c.exact and 0 < count and (steps(i) > 0 or not _settled(c, count, plan))]
    if not todo:
        return curves
    groups = pack(blocks, [i for i in todo if steps(i)], plan.batch_variables) \
        + pack(blocks, [i for i in todo if not steps(i)], plan.batch_variables)
    seeds = child_seeds(plan.seed, f"focus{round_}", len(groups))
    tasks = []
    for j, g in enumerate(groups):
        lam = np.stack([focus_lambdas(curves[i].E, counts[i], steps(i)) for i in g], axis=1)
        tasks.append(GroupTask([blocks[i] for i in g], plan.backend, seeds[j], plan.reads,
                               dict(plan.sampler_params), plan.brute_force_max, focus=lam,
                               curves=[curves[i] for i in g], counts=[counts[i] for i in g],
                               tabu_iters=plan.tabu_iters, tabu_max=plan.tabu_max, window=plan.focus_window))
    jobs = auto_jobs(plan.n_jobs, [blocks[i] for i in todo], plan.brute_force_max, len(tasks),
                     sampling=any(steps(i) for i in todo))
    done = run_tasks(tasks, plan.backend, jobs, "layer focus", plan.progress)
    out = list(curves)
    for g, res in zip(groups, done):
        for i, c in zip(g, res):
            out[i] = replace(c, time_s=curves[i].time_s + c.time_s)
    return out


def _settled(curve: Curve, count: int, plan: _Plan) -> bool:
    """Whether the counts near ``count`` had their descent and ``count`` its tabu search."""
    if curve.settled is None or curve.polished is None:
        return False
    lo, hi = max(0, count - plan.focus_window), min(curve.E.size - 1, count + plan.focus_window)
    no_tabu = min(plan.tabu_iters, plan.tabu_max) < 1 or not np.isfinite(curve.E[count])
    return bool(curve.polished[lo:hi + 1].all() and (no_tabu or curve.settled[count]))


def _per_layer(blocks: list[Block], curves: list[Curve], x: np.ndarray) -> dict[str, Any]:
    per_layer_counts: dict[int, int] = {}
    per_layer_time: dict[int, float] = {}
    for b, c in zip(blocks, curves):
        for j, lay in enumerate(b.layers):
            per_layer_counts[lay] = int(x[b.idx[b.sub == j]].sum())
            per_layer_time[lay] = float(c.time_s) / len(b.layers)
    return {
        "per_layer_counts": per_layer_counts,
        "per_layer_time_s": per_layer_time,
        "exact_blocks": int(sum(c.exact for c in curves)),
        "heuristic_blocks": int(sum(not c.exact for c in curves)),
        "merged_blocks": [list(b.layers) for b in blocks if b.merged],
    }


def _result(formulation: Formulation, x: np.ndarray, gamma: float, info: dict[str, Any]) -> ExactKResult:
    labels = list(formulation.labels)
    return ExactKResult(labels=labels, x=x, sample=dict(zip(labels, x.tolist())),
                        energy=float(formulation.energy(x, gamma)), objective=float(formulation.energy(x, 0.0)),
                        gamma=gamma, bqm=partial(formulation.bqm, gamma), info=info)  # built when read
