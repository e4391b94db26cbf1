"""Exact-k search: find a mask with exactly k ones by searching the capacity weight gamma.

``BQM(gamma) = objective - gamma * sum_i reward_i x_i``: gamma is the Lagrange multiplier of
``sum(x) = k`` (exactly so for a uniform reward), and a larger gamma prunes more. The paper bisects
gamma until the best sample has k ones. This module keeps that outer loop and adds what makes it
reliable and cheap:

* **any read counts**: every read whose count is k is a candidate, not only the lowest-energy one;
* **recombination** (:mod:`qprune.solve.gamma.library`): the BQM is a sum over connected components (one
  per layer for every built-in formulation), so a component's state from one read can be combined
  with another component's state from another read; a dynamic program over counts picks the best
  exact-k combination. With a single component (any unstructured BQM) this is exactly "the best
  read whose count is k";
* **interpolation** on count(gamma) (Illinois regula falsi, :mod:`qprune.solve.gamma.search`) instead of
  plain bisection, starting from a rigorous bracket and a greedy estimate of gamma;
* **repair and polish** (:mod:`qprune.solve.local`): if no exact-k state was found, k-preserving
  repair, then a steepest pair-swap local search, exact and vectorised over a sparse matrix.

Candidates are compared on one common score, the energy on ``BQM(gamma*)`` at the final gamma. For a
uniform reward the gamma term is a constant at fixed k, so this is exactly ``min objective s.t.
sum(x) = k``. For the capacity reward of a Formulation (D_i = P_i / sum P, different per layer) it
keeps what the paper's final solve keeps: the preference for pruning parameter-heavy units. Scoring
on the objective alone would throw that away (on the synthetic Half-UNet the pair swaps then move
hundreds of pruned units into the cheapest layers).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from typing import Any

import dimod
import numpy as np

from qprune.errors import QpruneError
from qprune.solve.arrays import BuildFn, QuboArrays, lagrangian
from qprune.solve.constraint import ExactK
from qprune.solve.gamma.search import BqmCache, GammaOptions, GammaSearch, as_binary
from qprune.solve.local import repair_to_k, swap_polish
from qprune.solve.result import ExactKResult
from qprune.solve.sampling import SamplerCall
from qprune.solve.strategies import options_of

__all__ = ["ExactKResult", "GammaOptions", "QuboArrays", "lagrangian", "repair_to_k",
           "solve_exact_k", "swap_polish"]


def solve_exact_k(
    build: Any,
    k: int,
    backend: str | dimod.Sampler = "neal",
    seed: int | None = 0,
    *,
    reward: np.ndarray | Mapping[Hashable, float] | None = None,
    constraint: ExactK | None = None,
    sampler_params: Mapping[str, Any] | None = None,
    progress: bool = False,
    options: GammaOptions | None = None,
    **knobs: Any,
) -> ExactKResult:
    """Minimise the objective subject to exactly ``k`` ones, by a search on the capacity weight gamma.

    Args:
        build: a :class:`qprune.qubo.formulation.Formulation` (anything with ``bqm(gamma)`` and
            ``reward``), or a callable ``gamma -> dimod.BinaryQuadraticModel`` whose linear biases are
            ``build(0).linear - gamma * reward`` (checked).
        k: number of ones (pruned units) wanted, ``0 <= k <= N``.
        backend: registered backend name or a dimod sampler.
        seed: seed of every random step; each solve gets its own seed derived from it.
        reward: per-variable reward gamma multiplies (array in label order, or a mapping); default the
            Formulation's ``reward``, or 1 per variable for a plain callable.
        constraint: the :class:`~qprune.solve.constraint.ExactK` (n, k and group caps) every
            candidate and the final result respect (None: exactly k, no caps).
        progress: show a tqdm bar. sampler_params: extra keyword arguments for every ``sample`` call.
        options, knobs: the search's settings, a :class:`GammaOptions` and/or its fields by name (a
            knob replaces the same field of ``options``): ``max_iter`` gamma iterations at most
            (paper: 20); ``tol``: stop when the bracket is narrower than ``tol * |gamma|``;
            ``search_reads`` / ``final_reads``: reads per search solve / for the final solve;
            ``polish``: the pair-swap local search on the final state; ``recombine``: combine
            per-component states across reads and solves (exact DP over counts); ``warm_start``: the
            previous best states as ``initial_states`` where the sampler takes them. This is also
            the ``"gamma"`` strategy's runner (:data:`qprune.solve.strategies.STRATEGIES`).

    Returns:
        :class:`ExactKResult` with exactly k ones; ``info`` records the search.
    """
    options = options_of(GammaOptions, options, knobs, who="solve_exact_k")
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    fn, base_reward, labels_hint = _as_build(build)
    bqm0 = as_binary(fn(0.0))
    arrs = QuboArrays.from_bqm(bqm0, base_reward if reward is None else reward, labels_hint)
    k = _check_k(k, arrs.n)
    options.check()
    con = ExactK.coerce(arrs.n, k, constraint)
    call = SamplerCall.of(backend, sampler_params)
    info: dict[str, Any] = {
        "backend": call.name, "n": arrs.n, "k": k, "seed": seed, "recombine": options.recombine,
        "warm_start": options.warm_start, "search_reads": options.search_reads,
        "final_reads": options.final_reads, "iterations": [], "solves": 0, "solve_time_s": 0.0,
    }
    bracket = arrs.gamma_bracket()
    info["bracket"] = list(bracket)
    search = GammaSearch(arrs, BqmCache(fn, arrs, bqm0), k, con, call, rng, options, info)
    trivial = k in (0, arrs.n) and bool(con.within_caps(np.full(arrs.n, int(k == arrs.n)))[0])
    gamma_final, hit = (bracket[0] if k == 0 else bracket[1]), False
    if not trivial and arrs.n:
        gamma_final, hit = _run_with_bar(search, bracket, progress)
    info["hit"] = hit
    return _finish(search, trivial, gamma_final, t_start)


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise QpruneError(f"k must be an integer, got {k!r}")
    k = int(k)
    if not 0 <= k <= n:
        raise QpruneError(f"k={k} is out of range: the problem has {n} variables (0 <= k <= {n})")
    return k


def _run_with_bar(search: GammaSearch, bracket: tuple[float, float], progress: bool) -> tuple[float, bool]:
    from tqdm.auto import tqdm  # third party, imported when a search runs

    opt = search.options
    bar = tqdm(total=opt.max_iter + (1 if opt.final_reads else 0), disable=not progress, desc="gamma search",
               leave=False)
    try:
        return search.run(bracket, lambda: bar.update(1))
    finally:
        bar.close()


def _finish(search: GammaSearch, trivial: bool, gamma_final: float, t_start: float) -> ExactKResult:
    """The library's best exact-k state (else the closest state repaired), polished, as the result."""
    arrs, con, k, info = search.arrs, search.con, search.k, search.info
    n = arrs.n
    repaired, repair_moves = False, 0
    if trivial or n == 0:
        x = np.full(n, 1 if k == n else 0, dtype=np.int8)
        source = "trivial"
    else:
        x = search.lib.best_k(k, gamma_final)
        source = "recombined" if search.options.recombine else "read"
        if x is not None and con.capped and not con.within_caps(x)[0]:
            x, repair_moves = repair_to_k(arrs, x, k, con, gamma_final)
            repaired = True
        if x is None:
            start = _closest_state(arrs.at(gamma_final), search.warm, k)
            x, repair_moves = repair_to_k(arrs, start, k, con, gamma_final)
            repaired, source = True, "repair"
    polish_moves, polish_gain = 0, 0.0
    if search.options.polish and 0 < k < n:
        x, polish_moves, polish_gain = swap_polish(arrs, x, con, gamma_final)
    if not con.ok(x):  # a bug, never the user's fault
        raise RuntimeError(f"exact-k invariant broken: {int(x.sum())} ones for k={k}")

    bqm_final = search.bqms.at(gamma_final) if n else search.bqms.at(0.0)
    objective = float(arrs.objective(x))
    energy = objective - gamma_final * float(arrs.reward @ x)
    info.update({
        "gamma": gamma_final, "source": source, "repaired": repaired, "repair_moves": repair_moves,
        "polished": bool(search.options.polish and polish_moves > 0), "polish_moves": polish_moves,
        "polish_gain": polish_gain, "objective": objective, "energy": energy,
        "total_time_s": time.perf_counter() - t_start,
    })
    sample = {v: int(b) for v, b in zip(arrs.labels, x)}
    return ExactKResult(list(arrs.labels), x, sample, energy, objective, float(gamma_final), bqm_final, info)


def _as_build(build: Any) -> tuple[BuildFn, Any, list[Hashable] | None]:
    if hasattr(build, "bqm") and hasattr(build, "reward"):
        labels = list(build.labels) if hasattr(build, "labels") else None
        return build.bqm, np.asarray(build.reward, dtype=np.float64), labels
    if callable(build):
        return build, None, None
    raise QpruneError(f"build must be a Formulation or a callable gamma -> BQM, got {type(build).__name__}")


def _closest_state(arrs: QuboArrays, warm: list[np.ndarray], k: int) -> np.ndarray:
    # the last solve's recombined best and best read: start from the one nearest to k
    if not warm:
        return np.zeros(arrs.n, dtype=np.int8)
    return min(warm, key=lambda s: (abs(int(s.sum()) - k), float(arrs.objective(s))))
