"""Chunked refinement of a large mask: :func:`qprune.refine.tt.refine` on one chunk at a time.

Each chunk (consecutive whole layers, :func:`layer_chunks`) is refined with the other variables
fixed and keeps its number of ones, so the global count stays exactly ``k``; a chunk spanning
several layers lets counts move between those layers. Full masks are cached across the stages.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qprune.errors import QpruneError
from qprune.refine.cache import MaskCache, mask_keys
from qprune.refine.result import Objective, RefineResult, as_mask
from qprune.refine.tt import feasible_seed, fresh_seed, refine
from qprune.solve.constraint import ExactK

__all__ = ["layer_chunks", "refine_chunked"]


def layer_chunks(layer_ids: np.ndarray, size: int = 128) -> list[np.ndarray]:
    """Whole consecutive layers (in first-seen order) cut into ``round(N / size)`` groups of
    about equal unit counts (at least one group). A group that spans several layers lets the
    pruned count move between them, which a one-layer chunk with a fixed count cannot."""
    layer_ids = np.asarray(layer_ids)
    if layer_ids.ndim != 1 or layer_ids.size == 0:
        raise QpruneError("layer_ids must be a non-empty 1-D array")
    if size < 1:
        raise QpruneError(f"group size must be >= 1, got {size}")
    layers = [np.flatnonzero(layer_ids == lid) for lid in dict.fromkeys(layer_ids.tolist())]
    n_groups = max(1, min(len(layers), round(layer_ids.size / size)))
    target = layer_ids.size / n_groups
    groups: list[list[int]] = [[]]
    done = 0
    for idx in layers:
        # start a new group once this one has its share (and groups are left to fill)
        if groups[-1] and done >= target * len(groups) - idx.size / 2 and len(groups) < n_groups:
            groups.append([])
        groups[-1].extend(idx.tolist())
        done += idx.size
    return [np.asarray(g, dtype=np.int64) for g in groups]


class _FullObjective:
    """The objective on full masks behind one cache for every stage (a full mask can come back
    in another chunk's stage); ``used`` counts the distinct masks evaluated."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.cache = MaskCache()
        self.used = 0

    def __call__(self, X: np.ndarray) -> np.ndarray:
        keys = mask_keys(X)
        todo = self.cache.new(keys)
        if todo:
            rows = list(todo.values())
            vals = np.asarray(self.objective(X[rows].copy()), dtype=np.float64).reshape(-1)
            if vals.shape[0] != len(rows):
                raise QpruneError(f"the objective returned {vals.shape[0]} values for {len(rows)} masks")
            self.used += len(rows)
            self.cache.store(todo, (float(v) for v in vals))
        return self.cache.lookup(keys)

    def on_chunk(self, idx: np.ndarray, base: np.ndarray) -> Objective:
        """The objective of the chunk ``idx``'s sub-masks, the other variables as in ``base``."""
        def sub_objective(S: np.ndarray) -> np.ndarray:
            X = np.repeat(base[None, :], S.shape[0], axis=0)
            X[:, idx] = S
            return self(X)

        return sub_objective


def _index_groups(groups: Sequence[Sequence[int] | np.ndarray], n: int) -> list[np.ndarray]:
    idx_groups = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups]
    if not idx_groups or any(g.size == 0 for g in idx_groups):
        raise QpruneError("groups must be a non-empty list of non-empty index lists")
    flat = np.concatenate(idx_groups)
    if flat.min() < 0 or flat.max() >= n or np.unique(flat).size != flat.size:
        raise QpruneError(f"groups must be disjoint indices in 0..{n - 1}")
    return idx_groups


def refine_chunked(
    seed_sample: np.ndarray | Mapping[str, int],
    objective: Objective,
    k: int,
    groups: Sequence[Sequence[int] | np.ndarray],
    *,
    budget: int = 20_000,
    rounds: int = 1,
    constraint: ExactK | None = None,
    labels: Sequence[str] | None = None,
    seed: int | None = 0,
    progress: bool = True,
    **options: Any,
) -> RefineResult:
    """Refine a large mask chunk by chunk with :func:`refine`, the other variables fixed.

    Each chunk (``groups[i]``, indices into the mask) keeps its current number of ones, so the
    global count stays exactly ``k``; chunks spanning several layers (see :func:`layer_chunks`)
    let counts move between those layers. The budget is spread over ``rounds`` passes over the
    chunks in proportion to chunk size (what one stage leaves unused goes to the next). Every
    stage starts from the best mask so far and full masks are cached across stages, so the
    result never scores below the seed. ``options`` go to :func:`refine` (batch, elites, lr,
    rank, exact_k, ...); the ``constraint`` is enforced on the whole mask, each chunk getting its
    restriction (:meth:`ExactK.restrict`).
    """
    t0 = time.perf_counter()
    x = as_mask(seed_sample, labels)
    n = x.size
    if not 0 <= k <= n or int(x.sum()) != k:
        raise QpruneError(f"seed mask has {int(x.sum())} ones, expected exactly k={k}")
    idx_groups = _index_groups(groups, n)
    if rounds < 1 or budget < 1:
        raise QpruneError(f"need rounds >= 1 and budget >= 1, got {rounds}, {budget}")
    full = feasible_seed(x, k, constraint)
    seed = fresh_seed(seed)

    fobj = _FullObjective(objective)
    seed_value = float(fobj(x[None, :])[0])
    best_value = seed_value
    trace: list[tuple[int, float]] = [(fobj.used, seed_value)]
    stages: list[dict[str, Any]] = []
    plan = [(rnd, gi) for rnd in range(rounds) for gi in range(len(idx_groups))]
    iterations, proposals = 0, 1
    for pos, (rnd, gi) in enumerate(plan):
        left = budget - fobj.used
        if left <= 0:
            break
        idx = idx_groups[gi]
        rest = sum(idx_groups[g].size for _, g in plan[pos:])
        sub_budget = int(min(left, max(2, round(left * idx.size / rest))))
        base = x.copy()
        sub_k = int(base[idx].sum())
        before = fobj.used
        res = refine(
            base[idx], fobj.on_chunk(idx, base), sub_k, budget=sub_budget,
            constraint=full.restrict(idx, sub_k, fixed=base), seed=seed + 7919 * pos,
            progress=progress, **options,
        )
        iterations += res.iterations
        proposals += res.proposals
        stages.append({
            "round": rnd, "chunk": gi, "size": int(idx.size), "k": sub_k,
            "budget": sub_budget, "evaluations": fobj.used - before, "seed_value": res.seed_value,
            "value": res.value, "engine": res.info.get("engine"),
        })
        if res.value > best_value:
            # the stage's own trace, in global evaluation counts (its seed came from the cache)
            trace += [(before + m - 1, v) for m, v in res.trace[1:] if v > best_value]
            x = base.copy()
            x[idx] = res.x
            best_value = res.value
    assert int(x.sum()) == k and full.ok(x)
    return RefineResult(
        x=x, value=best_value, seed_value=seed_value, k=k, evaluations=fobj.used,
        proposals=proposals, iterations=iterations, time=time.perf_counter() - t0, trace=trace,
        info={"mode": "chunked", "chunks": len(idx_groups), "rounds": rounds, "seed": seed,
              "stages": stages},
    )
