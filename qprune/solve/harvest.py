"""Heuristic count curves from a sampler: one group of blocks, solved in one worker.

Block i is shifted by ``-lambda_i`` per unit (at fixed count a constant, so every read of every step
is a valid candidate for its count); the blocks of a group are independent and share one BQM per
lambda step, so a backend call costs one sampler overhead for many layers. The best read per count
is kept, then improved by the block moves (:mod:`qprune.solve.block_moves`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import dimod
import numpy as np

from qprune.solve.block_moves import refine_curve, spread_lambdas, tabu
from qprune.solve.blocks import Block, energies, feasible
from qprune.solve.count_curve import block_count_curve
from qprune.solve.sampling import SamplerCall

__all__ = ["Curve", "GroupTask", "harvest", "solve_group"]

_INF = np.inf


@dataclass
class Curve:
    """A block's curve at its solve's gamma: the best energy and a state for every count 0..cap."""

    E: np.ndarray  # float [cap + 1], inf where no state of that count was found
    X: np.ndarray  # int8 [cap + 1, m]
    exact: bool  # enumerated (exact) or sampled (heuristic)
    time_s: float = 0.0
    calls: int = 0  # backend calls of the group it was sampled in


@dataclass
class GroupTask:
    """One group of blocks for a worker (picklable when ``backend`` is a name).

    ``focus`` is None for the first pass (enumerate the small blocks, sample the large ones over
    all counts, ``steps`` solves) or a [steps, blocks] shift matrix for a focus pass, which improves
    ``curves`` and runs a tabu search of ``tabu_iters`` x m moves around the DP's ``counts``.
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
    """The curves of one group of blocks (runs in a worker)."""
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
    """Sample the heavy blocks, then tabu (focus passes) and refine every curve."""
    call = SamplerCall.of(task.backend, task.sampler_params)
    t0 = time.perf_counter()
    if task.focus is None:
        lambdas, init = spread_lambdas(hb, task.steps), None
    else:
        lambdas, init = task.focus, task.curves
    Es, Xs, improved, calls = harvest(hb, call, task.seed, lambdas, task.reads, init)
    share = (time.perf_counter() - t0) / max(1, sum(b.m for b in hb))
    out = []
    for j, b in enumerate(hb):
        t1 = time.perf_counter()
        E, X, dirty = Es[j], Xs[j], None if task.focus is None else improved[j]
        if task.focus is not None and task.tabu_iters > 0:
            _tabu_around(b, E, X, dirty, task.counts[j], task.tabu_iters)
        E, X = refine_curve(b, E, X, dirty)
        out.append(Curve(E, X, False, share * b.m + time.perf_counter() - t1, calls))
    return out


def _tabu_around(b: Block, E: np.ndarray, X: np.ndarray, dirty: np.ndarray, c0: int, iters: int) -> None:
    """The DP's choice and its two alternatives get a tabu search each: a few hundred swaps escape
    the local minima that sampling + swap descent leave at a given count (updates in place)."""
    for c in (c0 - 1, c0, c0 + 1):
        if 0 < c < E.size and np.isfinite(E[c]):
            y, e = tabu(X[c], b, iters * b.m)
            if e < E[c] - 1e-12 * (1.0 + abs(E[c])):
                X[c], E[c], dirty[c] = y, e, True
