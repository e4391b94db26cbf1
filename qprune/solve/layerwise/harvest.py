"""Heuristic count curves from a sampler: one group of blocks, solved in one worker.

Block i is shifted by ``-lambda_i`` per unit (at fixed count a constant, so every read of every step
is a valid candidate for its count); the blocks of a group are independent and share one BQM per
lambda step, so a backend call costs one sampler overhead for many layers. The best read per count
is kept, then improved by the block moves (:mod:`qprune.solve.layerwise.block_moves`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import dimod
import numpy as np

from qprune.solve.layerwise.block_moves import greedy_curve, refine_curve, spread_lambdas, tabu
from qprune.solve.layerwise.blocks import Block, energies, feasible
from qprune.solve.layerwise.count_curve import block_count_curve
from qprune.solve.sampling import SamplerCall

__all__ = ["RESETTLE", "Curve", "GroupTask", "harvest", "solve_group"]

_INF = np.inf
RESETTLE = 3  # tabu searches at most per count and focus pass, each from a new state


@dataclass
class Curve:
    """A block's curve at its solve's gamma: the best energy and a state for every count 0..cap."""

    E: np.ndarray  # float [cap + 1], inf where no state of that count was found
    X: np.ndarray  # int8 [cap + 1, m]
    exact: bool  # enumerated (exact) or searched (heuristic)
    time_s: float = 0.0
    calls: int = 0  # backend calls of the group it was sampled in
    polished: np.ndarray | None = None  # heuristic: counts whose state had a swap descent
    settled: np.ndarray | None = None  # heuristic: counts that had their tabu search


@dataclass
class GroupTask:
    """One group of blocks for a worker (picklable when ``backend`` is a name).

    ``focus`` is None for the first pass (enumerate the small blocks; greedy curves for the large
    ones, merged with ``steps`` sampler solves spread over all counts when ``steps`` > 0) or a
    [steps, blocks] shift matrix (zero rows: no sampler call) for a focus pass, which improves
    ``curves`` around the DP's ``counts``: swap descent at the counts within ``window`` of it
    (once each), a tabu search of ``min(tabu_iters * m, tabu_max)`` moves at the count itself, and
    propagation of every improvement to its neighbours.
    """

    blocks: list[Block]
    backend: str | dimod.Sampler
    seed: int
    reads: int
    sampler_params: dict[str, Any]
    brute_force_max: int
    steps: int = 0
    focus: np.ndarray | None = None
    curves: list[Curve] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    tabu_iters: int = 0
    tabu_max: int = 0
    window: int = 8


def _batched_quadratic(blocks: list[Block]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Offsets of the blocks in the packed BQM and its (row, col, value) couplings."""
    offs = np.r_[0, np.cumsum([b.m for b in blocks])]
    rows, cols, vals = [], [], []
    for b, o in zip(blocks, offs):
        iu, ju = np.triu_indices(b.m, 1)
        v = b.M[iu, ju]
        nz = v != 0.0
        rows.append(iu[nz] + o)
        cols.append(ju[nz] + o)
        vals.append(v[nz])
    return offs, (np.concatenate(rows), np.concatenate(cols), np.concatenate(vals))


def harvest(blocks: list[Block], call: SamplerCall, seed: int, lambdas: np.ndarray, reads: int,
            init: list[Curve] | None = None) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], int]:
    """Best state per count of every block from one batched backend solve per row of ``lambdas``.

    Returns (energies, states, improved-count masks, backend calls); ``init`` curves are merged
    (kept unless beaten).
    """
    offs, quad = _batched_quadratic(blocks)
    n = int(offs[-1])
    if init is None:
        best_E = [np.full(b.cap + 1, _INF) for b in blocks]
        best_X = [np.zeros((b.cap + 1, b.m), np.int8) for b in blocks]
        for E in best_E:  # the empty state is always available and exact at count 0
            E[0] = 0.0
    else:
        best_E = [c.E.copy() for c in init]
        best_X = [c.X.copy() for c in init]
    improved = [np.zeros(b.cap + 1, bool) for b in blocks]
    rng = np.random.default_rng(seed)
    user_seed = "seed" in call.params  # the user's seed then holds for every call
    calls = 0
    for lam in lambdas:
        lin = np.concatenate([b.h - lam[i] for i, b in enumerate(blocks)])
        S = call((lin, quad, 0.0), range(n), reads=reads,
                 seed=None if user_seed else int(rng.integers(0, 2**31 - 1))).X
        calls += 1
        for bi, (b, o) in enumerate(zip(blocks, offs)):
            Xb = S[:, o:o + b.m]
            E = energies(Xb, b.h, b.M)
            cnt = Xb.sum(axis=1)
            ok = (cnt <= b.cap) & (feasible(Xb, b.sub, b.caps) if b.merged else True)
            tol = 1e-12 * (1.0 + float(np.abs(b.h).sum()))
            for r in np.flatnonzero(ok):
                c = int(cnt[r])
                if E[r] < best_E[bi][c] - tol:
                    best_E[bi][c], best_X[bi][c] = float(E[r]), Xb[r]
                    improved[bi][c] = True
    return best_E, best_X, improved, calls


def solve_group(task: GroupTask) -> list[Curve]:
    """The curves of one group of blocks (runs in a worker), with one BLAS thread: its products are
    small matrix-vector ones, which a second thread does not speed up and, on a loaded machine,
    slows down 15-fold (m = 1,152: 0.8 ms with one OpenBLAS thread, 12 ms with two, measured)."""
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency, always there

    with threadpool_limits(limits=1, user_api="blas"):
        return _solve_group(task)


def _solve_group(task: GroupTask) -> list[Curve]:
    out: list[Curve | None] = [None] * len(task.blocks)
    heavy = [i for i, b in enumerate(task.blocks) if task.focus is not None or b.m > task.brute_force_max]
    for i, b in enumerate(task.blocks):
        if i in heavy:
            continue
        t0 = time.perf_counter()
        E, X = block_count_curve(b.h, b.M, sub=b.sub, caps=b.caps)
        out[i] = Curve(E[: b.cap + 1], X[: b.cap + 1], True, time.perf_counter() - t0)
    if heavy:
        for i, curve in zip(heavy, _solve_heavy(task, [task.blocks[i] for i in heavy])):
            out[i] = curve
    return [c for c in out if c is not None]


def _solve_heavy(task: GroupTask, hb: list[Block]) -> list[Curve]:
    """First pass: greedy curves (+ sampled ones); focus pass: (sampling +) descent and tabu around
    the DP's counts."""
    if task.focus is None:
        return _first_heavy(task, hb)
    t0 = time.perf_counter()
    calls = 0
    Es, Xs = [c.E.copy() for c in task.curves], [c.X.copy() for c in task.curves]
    improved = [np.zeros(c.E.size, bool) for c in task.curves]
    if task.focus.shape[0]:
        call = SamplerCall.of(task.backend, task.sampler_params)
        Es, Xs, improved, calls = harvest(hb, call, task.seed, task.focus, task.reads, task.curves)
    share = (time.perf_counter() - t0) / max(1, sum(b.m for b in hb))
    out = []
    for j, b in enumerate(hb):
        t1 = time.perf_counter()
        E, X, dirty, c0, prev = Es[j], Xs[j], improved[j], task.counts[j], task.curves[j]
        lo, hi = max(0, c0 - task.window), min(E.size - 1, c0 + task.window)
        polished = np.zeros(E.size, bool) if prev.polished is None else prev.polished.copy()
        settled = np.zeros(E.size, bool) if prev.settled is None else prev.settled.copy()
        # every count near the DP's choice gets a descent once: a better state at c - 3 carried up to c
        # by the propagation can beat what descent from c's own state reaches
        dirty[lo:hi + 1] |= ~polished[lo:hi + 1]
        polished[lo:hi + 1] = True
        before = E.copy()
        E, X = refine_curve(b, E, X, dirty, window=(lo, hi))
        settled &= ~_improved(before, E)  # a state the descent replaced has not had its tabu search
        E, X = _settle_window(b, E, X, settled, c0, min(task.tabu_iters * b.m, task.tabu_max), (lo, hi))
        out.append(Curve(E, X, False, share * b.m + time.perf_counter() - t1, calls, polished, settled))
    return out


def _first_heavy(task: GroupTask, hb: list[Block]) -> list[Curve]:
    """Greedy curves, merged with the sampled ones (then polished at every count) when steps > 0."""
    t0 = time.perf_counter()
    greedy = [Curve(*greedy_curve(b), False) for b in hb]
    if task.steps <= 0:
        share = (time.perf_counter() - t0) / max(1, sum(b.m for b in hb))
        return [replace(c, time_s=share * b.m) for c, b in zip(greedy, hb)]
    call = SamplerCall.of(task.backend, task.sampler_params)
    Es, Xs, _, calls = harvest(hb, call, task.seed, spread_lambdas(hb, task.steps), task.reads, greedy)
    share = (time.perf_counter() - t0) / max(1, sum(b.m for b in hb))
    out = []
    for j, b in enumerate(hb):
        t1 = time.perf_counter()
        E, X = refine_curve(b, Es[j], Xs[j])
        out.append(Curve(E, X, False, share * b.m + time.perf_counter() - t1, calls))
    return out


def _improved(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Counts whose best energy went down (beyond rounding) from ``before`` to ``after``."""
    with np.errstate(invalid="ignore"):
        return after < before - 1e-12 * (1.0 + np.abs(np.where(np.isfinite(before), before, 0.0)))


def _settle_window(b: Block, E: np.ndarray, X: np.ndarray, settled: np.ndarray, c0: int, iters: int,
                   window: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Tabu search at the DP's count ``c0``, then propagation of what it found within ``window``;
    while a tabu search improves c0, another starts from its best state, up to :data:`RESETTLE`
    searches (a walk from a new start goes elsewhere: on efficientnet_b0 a second search from the
    first one's best found a 1,152-unit layer's state 4.9e-5 lower, the whole gap to the gamma
    search's energy there, ``benchmarks/scale.py``). A settled count whose state the propagation
    replaces loses its flag: the new state has not had its search."""
    for attempt in range(RESETTLE):
        better = np.zeros(E.size, bool)
        _settle(b, E, X, better, settled, c0, iters)
        if not better.any():
            break
        after_tabu = E.copy()
        E, X = refine_curve(b, E, X, better, window=window)
        settled &= ~_improved(after_tabu, E)
        if attempt + 1 < RESETTLE:
            settled[c0] = False
    return E, X


def _settle(b: Block, E: np.ndarray, X: np.ndarray, better: np.ndarray, settled: np.ndarray, c0: int,
            iters: int) -> None:
    """The DP's choice gets a tabu search, once per state (``settled``; :func:`_settle_window` clears
    it for a new state): a few hundred swaps escape some of the local minima that swap descent leaves
    (updates E, X, ``better`` and ``settled`` in place). Its neighbours too (every count within 8)
    was measured no better on resnet50 at three times the cost; on efficientnet_b0 at the gamma
    search's gamma it reached 7.3e-5 lower, but in 35 s (one core, load 6) against 4 s."""
    if iters <= 0 or not (0 < c0 < E.size and np.isfinite(E[c0])) or settled[c0]:
        return
    settled[c0] = True
    y, e = tabu(X[c0], b, iters)
    if e < E[c0] - 1e-12 * (1.0 + abs(E[c0])):
        X[c0], E[c0], better[c0] = y, e, True
