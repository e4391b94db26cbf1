"""Layer-decomposed exact-k: per-layer "best energy for every count" curves + an exact DP over layers.

The pruning QUBO is block-diagonal by layer, and a count constraint sum(x) = k couples the layers only
through how many units each layer gives up. So:

1. For each block b, find C_b(c) = min { E_b(x_b) : |x_b| = c } for every count c = 0..cap_b.
   Blocks of <= ``brute_force_max`` variables are enumerated (exact). Larger blocks are solved with
   the chosen backend: per-block uniform shifts lambda (the Lagrange multiplier of the block's own
   count: E_b(x) - lambda |x| differs from E_b by a constant at fixed count, so ANY read of the
   shifted problem is a valid count-c candidate) spread the reads over all counts; the best read of
   each count is kept, then improved with count-preserving swap descent and propagated to c +- 1
   (add the cheapest unit / drop the dearest, then swap descent) until no count improves.
   Heuristic blocks are batched into one BQM per lambda step (they are independent), so a backend
   call costs one sampler overhead for many layers.
2. min sum_b C_b(c_b) subject to sum_b c_b = k and c_b <= cap_b is a knapsack-style DP over layers
   (O(B k c_max), milliseconds), exact given the curves; the result has exactly k ones by construction.
3. Focus: the DP only reads each curve near the count it picks, so the heavy blocks are sampled
   again with shifts at which that count is optimal (where the gamma search's reads land too), the
   picked count and its neighbours get a swap tabu search, and the DP runs again — until it keeps
   its counts (at most ``focus_rounds``).

Gamma: ``energy`` is E at a gamma. Given ``gamma=``, that gamma is used (e.g. the gamma search's final
one, to compare both strategies on the same BQM). Otherwise the default is the gamma where the exact
per-layer Lagrangian relaxation first prunes >= k units — what the gamma search looks for, found here
on the curves without any extra sampling: within a layer whose units share a capacity reward, the
gamma term is -gamma * r_b * c at count c, so the curves at gamma = 0 give the curves at any gamma.

Cross-layer couplings (``formulation.cross``) are handled exactly by merging the layers they connect
into one block (its count curve then covers the merged layers; per-layer caps are enforced inside the
block). That is exact but makes the merged block larger, so keep such couplings rare.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dimod
import numpy as np

from qprune.backends.classical import default_beta_range
from qprune.errors import QpruneError

if TYPE_CHECKING:  # pragma: no cover
    from qprune.solve.exact_k import ExactKResult
    from qprune.qubo.formulation import Formulation

__all__ = ["block_count_curve", "solve", "solve_layerwise"]

BRUTE_FORCE_MAX = 20  # meet in the middle: 2 x 2^10 half-states, ~0.05-0.15 s per 20-variable block
_INF = np.inf


# ------------------------------------------------------------------------------------------ blocks


@dataclass
class _Block:
    """One (possibly merged) layer block of the QUBO at a fixed gamma."""

    layers: tuple[int, ...]  # layer ids it covers
    idx: np.ndarray  # global variable indices
    h: np.ndarray  # linear biases at the solve's gamma
    M: np.ndarray  # dense symmetric couplings, zero diagonal: E = h.x + x.M.x / 2
    sub: np.ndarray  # position of each variable's layer in ``layers``
    caps: np.ndarray  # max ones per layer of ``layers``

    @property
    def m(self) -> int:
        return int(self.idx.size)

    @property
    def cap(self) -> int:
        return int(min(self.m, int(self.caps.sum())))

    @property
    def merged(self) -> bool:
        return len(self.layers) > 1


def _energies(X: np.ndarray, h: np.ndarray, M: np.ndarray) -> np.ndarray:
    """E(x) = h.x + x.M.x / 2 for a batch of 0/1 rows."""
    Xf = X.astype(np.float64, copy=False)
    return Xf @ h + 0.5 * np.einsum("bi,bi->b", Xf @ M, Xf)


def _feasible(X: np.ndarray, sub: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Rows whose ones respect every per-layer cap."""
    if caps.size == 1:
        return X.sum(axis=1) <= caps[0]
    counts = np.stack([X[:, sub == s].sum(axis=1) for s in range(caps.size)], axis=1)
    return (counts <= caps[None, :]).all(axis=1)


# ------------------------------------------------------------------------------- exact small blocks


def _all_states(m: int) -> np.ndarray:
    """Every 0/1 vector of length m as int8 rows [2^m, m] (row r = binary digits of r)."""
    return ((np.arange(1 << m, dtype=np.int64)[:, None] >> np.arange(m)) & 1).astype(np.int8)


def _group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct key rows, states sorted by key, start of each key's run in that order)."""
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    order = np.argsort(inv.ravel(), kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inv.ravel()[order])) + 1]
    return uniq, order, starts


def block_count_curve(h: np.ndarray, M: np.ndarray, *, sub: np.ndarray | None = None,
                      caps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``C(c) = min {h.x + x.M.x/2 : |x| = c}`` for c = 0..m by enumerating all 2^m states.

    Meet in the middle: the variables are split into halves A and B, and
    E = E_A(a) + E_B(b) + a.M_AB.b is formed as one BLAS product per chunk of A states, reduced to
    the minimum per (A key, B key) where a key is the state's count per layer; a pair of keys is
    feasible when every per-layer count stays within ``caps``. ~30 ms for m = 20.

    Args:
        h: linear biases [m].
        M: symmetric couplings [m, m] with zero diagonal.
        sub, caps: optional layer of each variable (0..L-1) and max ones per layer.

    Returns:
        (energies [m+1], inf where no feasible state has that count; states int8 [m+1, m]).
    """
    h = np.asarray(h, float)
    M = np.asarray(M, float)
    m = h.size
    if m > 26:
        raise QpruneError(f"refusing to enumerate 2^{m} states; use the heuristic block solver")
    sub = np.zeros(m, np.int64) if sub is None else np.asarray(sub, np.int64)
    caps = np.array([m]) if caps is None else np.asarray(caps, np.int64)
    nb = m // 2
    B, A = np.arange(nb), np.arange(nb, m)  # B: low half (columns), A: high half (rows)
    XB, XA = _all_states(B.size), _all_states(A.size)
    EB, EA = _energies(XB, h[B], M[np.ix_(B, B)]), _energies(XA, h[A], M[np.ix_(A, A)])
    L = caps.size
    kB = np.stack([XB[:, sub[B] == s].sum(axis=1) for s in range(L)], axis=1)
    kA = np.stack([XA[:, sub[A] == s].sum(axis=1) for s in range(L)], axis=1)
    uB, oB, sB = _group(kB)
    uA, oA, sA = _group(kA)
    gA = np.repeat(np.arange(len(sA)), np.diff(np.r_[sA, XA.shape[0]]))  # key of each A row in oA order
    XBo = XB[oB].astype(np.float64)
    EBo = EB[oB]
    CAB = M[np.ix_(A, B)]
    table = np.full((len(uA), len(uB)), _INF)
    rows = max(1, (1 << 20) // max(1, XB.shape[0]))
    for r0 in range(0, XA.shape[0], rows):
        sel = oA[r0:r0 + rows]
        T = EA[sel][:, None] + EBo[None, :] + (XA[sel].astype(np.float64) @ CAB) @ XBo.T
        R = np.minimum.reduceat(T, sB, axis=1)  # [rows, B keys]
        np.minimum.at(table, gA[r0:r0 + rows], R)
    total = uA[:, None, :] + uB[None, :, :]  # per-layer counts of every key pair
    feasible = (total <= caps[None, None, :]).all(axis=2)
    count = total.sum(axis=2)
    best = np.full(m + 1, _INF)
    states = np.zeros((m + 1, m), dtype=np.int8)
    table = np.where(feasible, table, _INF)
    for c in range(m + 1):
        cand = np.where(count == c, table, _INF)
        ia, ib = np.unravel_index(int(np.argmin(cand)), cand.shape)
        if not np.isfinite(cand[ia, ib]):
            continue
        best[c] = cand[ia, ib]
        ra = oA[sA[ia]:(sA[ia + 1] if ia + 1 < len(sA) else None)]
        rb = oB[sB[ib]:(sB[ib + 1] if ib + 1 < len(sB) else None)]
        T = EA[ra][:, None] + EB[rb][None, :] + (XA[ra].astype(np.float64) @ CAB) @ XB[rb].T.astype(np.float64)
        i, j = np.unravel_index(int(np.argmin(T)), T.shape)
        states[c, A] = XA[ra[i]]
        states[c, B] = XB[rb[j]]
    return best, states


# ---------------------------------------------------------------------------- heuristic big blocks


def _swap_deltas(x: np.ndarray, g: np.ndarray, b: _Block) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Energy change of every (remove i, add j) swap at fixed count, [ones, zeros]; None if none exist.

    ``g = h + M @ x``. In a merged block a swap into a layer at its cap is allowed only when it
    leaves that same layer (_INF otherwise).
    """
    ones, zeros = np.flatnonzero(x), np.flatnonzero(~x)
    if ones.size == 0 or zeros.size == 0:
        return None
    D = g[zeros][None, :] - g[ones][:, None] - b.M[np.ix_(ones, zeros)]
    if b.merged:
        counts = np.bincount(b.sub[ones], minlength=b.caps.size)
        full = counts[b.sub[zeros]] >= b.caps[b.sub[zeros]]
        D[(b.sub[ones][:, None] != b.sub[zeros][None, :]) & full[None, :]] = _INF
    return ones, zeros, D


def _polish(x: np.ndarray, b: _Block, max_steps: int | None = None) -> tuple[np.ndarray, float]:
    """Best-improvement swap descent at fixed count (remove one unit, add another), caps respected."""
    x = x.astype(bool).copy()
    h, M = b.h, b.M
    g = h + M @ x  # cost of adding j (x_j = 0) / saving of removing i (x_i = 1); M_ii = 0
    tol = 1e-12 * (1.0 + float(np.abs(h).sum()))
    steps = max_steps if max_steps is not None else 4 * b.m
    for _ in range(steps):
        swaps = _swap_deltas(x, g, b)
        if swaps is None:
            break
        ones, zeros, D = swaps
        flat = int(np.argmin(D))
        if not D.flat[flat] < -tol:
            break
        i, j = ones[flat // zeros.size], zeros[flat % zeros.size]
        x[i], x[j] = False, True
        g += M[:, j] - M[:, i]
    xi = x.astype(np.int8)
    return xi, float(_energies(xi[None, :], h, M)[0])


def _tabu(x: np.ndarray, b: _Block, iters: int) -> tuple[np.ndarray, float]:
    """Swap tabu search at fixed count: always take the best allowed swap, even uphill. A unit just
    removed may not come back, and one just added may not leave, for a while (a third of its side,
    at most m/8 iterations), unless the move beats the best state seen."""
    x = x.astype(bool).copy()
    h, M = b.h, b.M
    c = int(x.sum())
    g = h + M @ x
    e = float(_energies(x[None, :].astype(np.int8), h, M)[0])
    best_x, best_e = x.copy(), e
    tol = 1e-12 * (1.0 + float(np.abs(h).sum()))
    ban_in = max(1, min(b.m // 8, (b.m - c) // 3))  # a removed unit stays out this long
    ban_out = max(1, min(b.m // 8, c // 3))  # an added unit stays in this long
    until = np.zeros(b.m, np.int64)
    for it in range(iters):
        swaps = _swap_deltas(x, g, b)
        if swaps is None:
            break
        ones, zeros, D = swaps
        free = (until[ones][:, None] <= it) & (until[zeros][None, :] <= it)
        allowed = np.where(free | (e + D < best_e - tol), D, _INF)
        flat = int(np.argmin(allowed))
        if not np.isfinite(allowed.flat[flat]):  # everything tabu: take the best move anyway
            flat = int(np.argmin(D))
            if not np.isfinite(D.flat[flat]):
                break
        i, j = ones[flat // zeros.size], zeros[flat % zeros.size]
        x[i], x[j] = False, True
        g += M[:, j] - M[:, i]
        e += float(D.flat[flat])
        until[i], until[j] = it + ban_in, it + ban_out
        if e < best_e - tol:
            best_x, best_e = x.copy(), e
    xi = best_x.astype(np.int8)
    return xi, float(_energies(xi[None, :], h, M)[0])


def _step(x: np.ndarray, b: _Block, up: bool) -> np.ndarray | None:
    """Add the cheapest feasible unit (up) or drop the dearest one; None when impossible."""
    g = b.h + b.M @ x
    if up:
        cand = np.flatnonzero(x == 0)
        if b.merged and cand.size:
            counts = np.bincount(b.sub[x == 1], minlength=b.caps.size)
            cand = cand[counts[b.sub[cand]] < b.caps[b.sub[cand]]]
        if cand.size == 0:
            return None
        j = cand[int(np.argmin(g[cand]))]
    else:
        cand = np.flatnonzero(x == 1)
        if cand.size == 0:
            return None
        j = cand[int(np.argmax(g[cand]))]
    y = x.copy()
    y[j] ^= 1
    return y


def _greedy_marginals(b: _Block) -> np.ndarray:
    """Marginal cost of each greedy addition 1..cap: the lambda at which that count becomes optimal."""
    x = np.zeros(b.m, np.int8)
    out = []
    for _ in range(b.cap):
        y = _step(x, b, up=True)
        if y is None:
            break
        j = int(np.flatnonzero(y != x)[0])
        out.append(float(b.h[j] + b.M[j] @ x))
        x = y
    return np.asarray(out)


def _refine_curve(b: _Block, E: np.ndarray, X: np.ndarray, dirty: np.ndarray | None = None,
                  max_passes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Swap-polish the best state of the ``dirty`` counts (default: all), then propagate
    c -> c +- 1 (add the cheapest unit / drop the dearest, polish) until no count improves."""
    cap = b.cap
    tol = 1e-12 * (1.0 + float(np.abs(b.h).sum()))
    dirty = np.isfinite(E) if dirty is None else (dirty & np.isfinite(E))
    for c in np.flatnonzero(dirty):
        X[c], E[c] = _polish(X[c], b)
    dirty_up = dirty.copy()
    dirty_down = dirty.copy()
    for _ in range(max_passes):
        changed = False
        # upward c -> c + 1 over ascending c, then downward c -> c - 1 over descending c
        for up, counts, flags in ((True, range(cap), dirty_up), (False, range(cap, 0, -1), dirty_down)):
            d = 1 if up else -1
            for c in counts:
                if not flags[c] or not np.isfinite(E[c]):
                    continue
                flags[c] = False
                y = _step(X[c], b, up=up)
                if y is None:
                    continue
                y, e = _polish(y, b)
                if e < E[c + d] - tol:
                    X[c + d], E[c + d] = y, e
                    dirty_up[c + d] = dirty_down[c + d] = changed = True
        if not changed:
            break
    return E, X


def _spread_lambdas(blocks: list[_Block], steps: int) -> np.ndarray:
    """[steps, blocks] shifts: the greedy marginal cost at evenly spread counts, where that count is
    (roughly) the optimum of the shifted block, so the reads cover every count."""
    lam = np.zeros((steps, len(blocks)))
    for i, b in enumerate(blocks):
        mg = _greedy_marginals(b)
        for s in range(steps):
            if mg.size:
                lam[s, i] = mg[min(mg.size - 1, int(round((s + 0.5) / steps * mg.size)))]
    return lam


def _focus_lambdas(E: np.ndarray, c: int, steps: int) -> np.ndarray:
    """Shifts at which count ``c`` is optimal on the curve's hull: strictly between its left slope
    E(c) - E(c-1) and right slope E(c+1) - E(c), so the reads land on c (and its neighbours)."""
    left = E[c] - E[c - 1] if c >= 1 and np.isfinite(E[c - 1]) else None
    right = E[c + 1] - E[c] if c + 1 < E.size and np.isfinite(E[c + 1]) else None
    if left is None and right is None:
        return np.zeros(steps)
    if left is None or right is None:
        one = left if right is None else right
        span = 0.5 * (abs(one) + 1e-12)
        lo, hi = (one, one + span) if right is None else (one - span, one)
    else:
        lo, hi = min(left, right), max(left, right)
    return lo + (np.arange(steps) + 1.0) / (steps + 1.0) * (hi - lo)


def _harvest(blocks: list[_Block], sampler: dimod.Sampler, seed: int, lambdas: np.ndarray, reads: int,
             sampler_params: Mapping[str, Any], init: list[tuple[np.ndarray, np.ndarray]] | None = None,
             ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], int]:
    """Best state per count of every block from one batched backend solve per row of ``lambdas``.

    Block i is shifted by ``-lambdas[s, i]`` per unit at step s: at fixed count that is a constant,
    so every read of every step is a valid candidate for its count. Returns (energies, states,
    improved-count masks, backend calls); ``init`` curves are merged (kept unless beaten).
    """
    sizes = [b.m for b in blocks]
    offs = np.r_[0, np.cumsum(sizes)]
    n = int(offs[-1])
    rows, cols, vals = [], [], []
    for b, o in zip(blocks, offs):
        iu, ju = np.triu_indices(b.m, 1)
        v = b.M[iu, ju]
        nz = v != 0.0
        rows.append(iu[nz] + o)
        cols.append(ju[nz] + o)
        vals.append(v[nz])
    quad = (np.concatenate(rows), np.concatenate(cols), np.concatenate(vals))
    if init is None:
        best_E = [np.full(b.cap + 1, _INF) for b in blocks]
        best_X = [np.zeros((b.cap + 1, b.m), np.int8) for b in blocks]
        for E in best_E:  # the empty state is always available and exact at count 0
            E[0] = 0.0
    else:
        best_E = [E.copy() for E, _ in init]
        best_X = [X.copy() for _, X in init]
    improved = [np.zeros(b.cap + 1, bool) for b in blocks]

    accepted = set(sampler.parameters)
    params = {k: v for k, v in (("num_reads", reads),) if k in accepted}
    params.update(sampler_params)
    rng = np.random.default_rng(seed)
    # a plain dwave-samplers SA computes its default beta range with a Python loop over every coupling;
    # pass the same range, vectorised (qprune's own ``neal`` backend already does this itself)
    fast_sa = type(sampler).__module__.startswith("dwave.samplers.sa") and "beta_range" in accepted
    calls = 0
    for lam in lambdas:
        lin = np.concatenate([b.h - lam[i] for i, b in enumerate(blocks)])
        bqm = dimod.BinaryQuadraticModel.from_numpy_vectors(lin, quad, 0.0, dimod.BINARY)
        call = dict(params)
        if fast_sa and "beta_range" not in call:
            call["beta_range"] = default_beta_range(bqm)
        if "seed" in accepted and "seed" not in sampler_params:
            call["seed"] = int(rng.integers(0, 2**31 - 1))
        ss = sampler.sample(bqm, **call)
        calls += 1
        cols_of = [ss.variables.index(v) for v in range(n)]
        S = np.asarray(ss.record.sample)[:, cols_of]
        if ss.vartype is dimod.SPIN:
            S = (S + 1) // 2
        for bi, (b, o) in enumerate(zip(blocks, offs)):
            Xb = S[:, o:o + b.m].astype(np.int8)
            E = _energies(Xb, b.h, b.M)
            cnt = Xb.sum(axis=1)
            ok = (cnt <= b.cap) & (_feasible(Xb, b.sub, b.caps) if b.merged else True)
            tol = 1e-12 * (1.0 + float(np.abs(b.h).sum()))
            for r in np.flatnonzero(ok):
                c = int(cnt[r])
                if E[r] < best_E[bi][c] - tol:
                    best_E[bi][c], best_X[bi][c] = float(E[r]), Xb[r]
                    improved[bi][c] = True
    return best_E, best_X, improved, calls


def _solve_group(task: dict[str, Any]) -> list[dict[str, Any]]:
    """One group of blocks (runs in a worker; everything in ``task`` is picklable).

    ``task["focus"]`` is None for the first pass (enumerate the small blocks, sample the large ones
    over all counts) or a [steps, blocks] shift matrix for a focus pass, whose curves it improves.
    """
    blocks: list[_Block] = task["blocks"]
    focus = task.get("focus")
    out: list[dict[str, Any]] = [{} for _ in blocks]
    heavy = [i for i, b in enumerate(blocks) if focus is not None or b.m > task["brute_force_max"]]
    for i, b in enumerate(blocks):
        if i in heavy:
            continue
        t0 = time.perf_counter()
        E, X = block_count_curve(b.h, b.M, sub=b.sub, caps=b.caps)
        out[i] = {"E": E[: b.cap + 1], "X": X[: b.cap + 1], "exact": True, "time_s": time.perf_counter() - t0}
    if not heavy:
        return out
    sampler = task["sampler"]
    if isinstance(sampler, str):
        from qprune.backends import get

        sampler = get(sampler)
    hb = [blocks[i] for i in heavy]
    t0 = time.perf_counter()
    if focus is None:
        lambdas, init = _spread_lambdas(hb, task["steps"]), None
    else:
        lambdas, init = focus, [(r["E"], r["X"]) for r in task["curves"]]
    Es, Xs, improved, calls = _harvest(hb, sampler, task["seed"], lambdas, task["reads"],
                                       task["sampler_params"], init)
    share = (time.perf_counter() - t0) / max(1, sum(b.m for b in hb))
    for j, (i, b) in enumerate(zip(heavy, hb)):
        t1 = time.perf_counter()
        E, X, dirty = Es[j], Xs[j], None if focus is None else improved[j]
        if focus is not None and task["tabu_iters"] > 0:
            # the DP's choice and its two alternatives get a tabu search each: a few hundred swaps
            # escape the local minima that sampling + swap descent leave at a given count
            c0 = task["counts"][j]
            for c in (c0 - 1, c0, c0 + 1):
                if 0 < c < E.size and np.isfinite(E[c]):
                    y, e = _tabu(X[c], b, task["tabu_iters"] * b.m)
                    if e < E[c] - 1e-12 * (1.0 + abs(E[c])):
                        X[c], E[c], dirty[c] = y, e, True
        E, X = _refine_curve(b, E, X, dirty)
        out[i] = {"E": E, "X": X, "exact": False, "calls": calls,
                  "time_s": share * b.m + time.perf_counter() - t1}
    return out


# ---------------------------------------------------------------------------------------- the DP


def _dp(curves: Sequence[np.ndarray], k: int) -> tuple[float, list[int]]:
    """min sum_b curves[b][c_b] s.t. sum_b c_b = k; returns (energy, counts)."""
    D = np.full(k + 1, _INF)
    D[0] = 0.0
    choice = np.zeros((len(curves), k + 1), dtype=np.int32)
    for bi, C in enumerate(curves):
        new = np.full(k + 1, _INF)
        pick = np.zeros(k + 1, dtype=np.int32)
        for c in range(min(len(C), k + 1)):
            if not np.isfinite(C[c]):
                continue
            cand = D[: k + 1 - c] + C[c]
            better = cand < new[c:]
            new[c:][better] = cand[better]
            pick[c:][better] = c
        D, choice[bi] = new, pick
    if not np.isfinite(D[k]):
        raise QpruneError(f"no combination of per-layer counts reaches k={k} within the per-layer caps")
    counts, s = [], k
    for bi in range(len(curves) - 1, -1, -1):
        c = int(choice[bi][s])
        counts.append(c)
        s -= c
    return float(D[k]), counts[::-1]


def _lagrangian_gamma(curves0: Sequence[np.ndarray], rbar: np.ndarray, k: int) -> float:
    """Smallest gamma at which sum_b argmin_c (C_b(c) - gamma r_b c) reaches k (bisection).

    For k = 0 every gamma below the first breakpoint qualifies; the breakpoint itself (where pruning
    one unit starts to pay) is returned as the finite representative.
    """
    ar = [np.arange(len(C)) for C in curves0]
    k = max(int(k), 1)

    def count(g: float) -> int:
        return int(sum(int(np.argmin(np.where(np.isfinite(C), C - g * r * a, _INF)))
                       for C, r, a in zip(curves0, rbar, ar)))

    lo, hi = -1.0, 1.0
    for _ in range(200):
        if count(hi) >= k:
            break
        hi *= 2.0
    for _ in range(200):
        if count(lo) < k or lo < -1e300:
            break
        lo *= 2.0
    if count(lo) >= k:  # counts that never go below k (they cannot: the empty state costs 0)
        return lo
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if count(mid) >= k:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            break
    return hi


# ------------------------------------------------------------------------------------ public API


def _caps_by_layer(max_per_layer: Any, layers: np.ndarray, sizes: dict[int, int]) -> dict[int, int]:
    """Normalise ``max_per_layer`` (None, int, array indexed by layer id, or mapping) to a dict."""
    if max_per_layer is None:
        return dict(sizes)
    if isinstance(max_per_layer, Mapping):
        return {int(lay): int(min(sizes[int(lay)], max_per_layer.get(int(lay), sizes[int(lay)]))) for lay in layers}
    arr = np.asarray(max_per_layer)
    if arr.ndim == 0:
        return {int(lay): int(min(sizes[int(lay)], int(arr))) for lay in layers}
    if arr.ndim != 1 or int(layers.max()) >= arr.size or int(layers.min()) < 0:
        raise QpruneError(f"max_per_layer must be an int, a mapping, or an array indexed by layer id "
                          f"(length > {int(layers.max())}); got shape {arr.shape}")
    return {int(lay): int(min(sizes[int(lay)], int(arr[int(lay)]))) for lay in layers}


def _components(formulation: Formulation, layers: np.ndarray) -> list[list[int]]:
    """Groups of layer ids connected by cross-layer couplings (singletons when there are none)."""
    parent = {int(lay): int(lay) for lay in layers}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    C = formulation.cross
    if C is not None and C.nnz:
        lid = np.asarray(formulation.layer_ids)
        for a, b in set(zip(lid[C.row].tolist(), lid[C.col].tolist())):
            ra, rb = find(int(a)), find(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for lay in layers:
        groups.setdefault(find(int(lay)), []).append(int(lay))
    return sorted(groups.values())


def _build_blocks(formulation: Formulation, gamma: float, caps: dict[int, int]) -> list[_Block]:
    """One :class:`_Block` per group of connected layers, at ``gamma``."""
    lid = np.asarray(formulation.layer_ids)
    layers = np.unique(lid)
    h_all = np.asarray(formulation.linear, float) - float(gamma) * np.asarray(formulation.reward, float)
    n = lid.size
    pos_in = np.full(n, -1, np.int64)
    dense: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for idx, Mb in formulation.blocks:
        idx = np.asarray(idx)
        if idx.size:
            dense[int(lid[idx[0]])] = (idx, np.asarray(Mb, float))
    blocks = []
    C = formulation.cross.tocoo() if formulation.cross is not None and formulation.cross.nnz else None
    for group in _components(formulation, layers):
        parts = [dense.get(lay, (np.flatnonzero(lid == lay), None)) for lay in group]
        idx = np.concatenate([p[0] for p in parts])
        m = idx.size
        M = np.zeros((m, m))
        o = 0
        for pidx, Mb in parts:
            if Mb is not None:
                M[o:o + pidx.size, o:o + pidx.size] = Mb
            o += pidx.size
        if len(group) > 1 and C is not None:
            pos_in[idx] = np.arange(m)
            sel = (pos_in[C.row] >= 0) & (pos_in[C.col] >= 0)
            r, c, v = pos_in[C.row[sel]], pos_in[C.col[sel]], C.data[sel]
            np.add.at(M, (r, c), v)
            np.add.at(M, (c, r), v)
            pos_in[idx] = -1
        sub = np.concatenate([np.full(p[0].size, i) for i, p in enumerate(parts)])
        blocks.append(_Block(tuple(group), idx, h_all[idx], M, sub, np.array([caps[lay] for lay in group])))
    return blocks


def _check_blocks_cover(formulation: Formulation) -> None:
    lid = np.asarray(formulation.layer_ids)
    for idx, _ in formulation.blocks:
        idx = np.asarray(idx)
        if idx.size and np.unique(lid[idx]).size != 1:
            raise QpruneError("layerwise needs one block per layer: a formulation block spans several "
                              "layer ids")


def _pack(blocks: list[_Block], order: list[int], batch_variables: int) -> list[list[int]]:
    """Consecutive groups of block positions with at most ``batch_variables`` variables each."""
    groups: list[list[int]] = []
    size = 0
    for i in order:
        if not groups or (size + blocks[i].m > batch_variables and groups[-1]):
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += blocks[i].m
    return groups


def _run(tasks: list[dict[str, Any]], backend: Any, n_jobs: int, desc: str,
         progress: bool) -> list[list[dict[str, Any]]]:
    """Run ``_solve_group`` over tasks, in a pool when ``n_jobs`` > 1, results in task order."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc=desc, unit="group", leave=False)
    results: list[list[dict[str, Any]]] = []
    if n_jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            results.append(_solve_group(t))
            if bar is not None:
                bar.update(1)
    else:
        # processes for a named backend (each worker builds its own sampler); threads for a sampler
        # instance, which may not pickle (a cloud client) and may cache state (an embedding)
        pool: Executor = (ProcessPoolExecutor(n_jobs) if isinstance(backend, str) else ThreadPoolExecutor(n_jobs))
        with pool:
            for fut in [pool.submit(_solve_group, t) for t in tasks]:
                results.append(fut.result())
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return results


def _auto_jobs(n_jobs: int | None, blocks: list[_Block], brute_force_max: int, n_tasks: int) -> int:
    """Workers: as given, else the idle cores (cores minus the load average, this process aside)
    when there are seconds of work to share; measured on a loaded 2-core machine, a second
    process there made the 4,000-unit solve slower, not faster."""
    if n_jobs is None:
        heavy = sum(b.m for b in blocks if b.m > brute_force_max)
        brute = sum(b.m for b in blocks if b.m <= brute_force_max)
        n_jobs = 1
        if heavy >= 1500 or brute >= 200:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            try:
                busy = max(0.0, os.getloadavg()[0] - 1.0)
            except OSError:  # no load average on this platform
                busy = 0.0
            n_jobs = max(1, int(cores - busy + 0.5))
    return max(1, min(int(n_jobs), n_tasks))


def _curves(blocks: list[_Block], backend: Any, seed: int | None, *, brute_force_max: int, steps: int,
            reads: int, sampler_params: Mapping[str, Any], n_jobs: int | None, batch_variables: int,
            progress: bool, **_: Any) -> list[dict[str, Any]]:
    """First pass: every block's curve; the grouping (and so the result) does not depend on n_jobs."""
    order = sorted(range(len(blocks)), key=lambda i: blocks[i].m <= brute_force_max)  # heavy first
    groups = _pack(blocks, order, batch_variables)
    seeds = _child_seeds(seed, "curves", len(groups))
    tasks = [{"blocks": [blocks[i] for i in g], "sampler": backend, "seed": seeds[j], "steps": steps,
              "reads": reads, "sampler_params": dict(sampler_params), "brute_force_max": brute_force_max,
              "focus": None} for j, g in enumerate(groups)]
    results = _run(tasks, backend, _auto_jobs(n_jobs, blocks, brute_force_max, len(tasks)), "layer curves",
                   progress)
    out: list[dict[str, Any]] = [{} for _ in blocks]
    for g, res in zip(groups, results):
        for i, r in zip(g, res):
            out[i] = r
    return out


def _focus(blocks: list[_Block], results: list[dict[str, Any]], counts: list[int], backend: Any,
           seed: int | None, round_: int, *, focus_steps: int, tabu_iters: int, reads: int,
           sampler_params: Mapping[str, Any],
           n_jobs: int | None, batch_variables: int, brute_force_max: int, progress: bool,
           **_: Any) -> list[dict[str, Any]]:
    """Re-sample the heuristic blocks with shifts at which their DP-chosen count is optimal, so the
    reads concentrate where the solution is decided (as the gamma search's do), and re-polish."""
    todo = [i for i, (r, c) in enumerate(zip(results, counts)) if not r.get("exact") and 0 < c]
    if not todo or (focus_steps < 1 and tabu_iters < 1):
        return results
    groups = _pack(blocks, todo, batch_variables)
    seeds = _child_seeds(seed, f"focus{round_}", len(groups))
    tasks = []
    for j, g in enumerate(groups):
        lam = np.stack([_focus_lambdas(results[i]["E"], counts[i], focus_steps) for i in g], axis=1)
        tasks.append({"blocks": [blocks[i] for i in g], "sampler": backend, "seed": seeds[j], "focus": lam,
                      "curves": [results[i] for i in g], "reads": reads, "sampler_params": dict(sampler_params),
                      "brute_force_max": brute_force_max, "counts": [counts[i] for i in g],
                      "tabu_iters": tabu_iters})
    done = _run(tasks, backend, _auto_jobs(n_jobs, [blocks[i] for i in todo], brute_force_max, len(tasks)),
                "layer focus", progress)
    out = list(results)
    for g, res in zip(groups, done):
        for i, r in zip(g, res):
            out[i] = {**r, "time_s": results[i].get("time_s", 0.0) + r["time_s"]}
    return out


def _child_seeds(seed: int | None, tag: str, n: int) -> list[int]:
    """``n`` independent seeds for the ``tag`` phase, derived from ``seed`` only."""
    entropy = [0 if seed is None else int(seed), sum(map(ord, tag))]
    return [int(s.generate_state(1)[0] % (2**31 - 1)) for s in np.random.SeedSequence(entropy).spawn(n)]


def _default_batch(backend: str | dimod.Sampler) -> int:
    """Variables per batched backend call: one block per call on a QPU (each block embeds once and
    its embedding is reused across the lambda steps) and on QAOA (its time grows exponentially and
    its quality falls beyond ~10 qubits), the backend's size limit, or 1,024."""
    from qprune.backends.dwave import CachedEmbeddingSampler
    from qprune.backends.qaoa import QAOASampler

    if backend in ("dwave", "qaoa") or isinstance(backend, (CachedEmbeddingSampler, QAOASampler)):
        return 1
    if isinstance(backend, str):
        from qprune.backends import info as backend_info

        limit = backend_info(backend).max_variables
        if limit is not None:
            return int(limit)
    return 1024


def solve_layerwise(
    formulation: Formulation,
    k: int,
    backend: str | dimod.Sampler = "neal",
    seed: int | None = 0,
    *,
    gamma: float | None = None,
    max_per_layer: int | np.ndarray | Mapping[int, int] | None = None,
    n_jobs: int | None = None,
    sampler_params: Mapping[str, Any] | None = None,
    progress: bool = False,
    brute_force_max: int = BRUTE_FORCE_MAX,
    steps: int = 4,
    reads: int = 5,
    focus_rounds: int = 3,
    focus_steps: int = 2,
    tabu_iters: int = 2,
    batch_variables: int | None = None,
) -> ExactKResult:
    """Exactly-k solve of a block-diagonal :class:`~qprune.qubo.formulation.Formulation`, layer by layer.

    Args:
        formulation: the QUBO; its blocks must be per layer (``Formulation.blocks``). Cross-layer
            couplings are handled exactly by merging the layers they join into one block.
        k: number of units to prune (ones in the result).
        backend: registered backend name or a dimod sampler, used for blocks larger than
            ``brute_force_max`` (smaller ones are enumerated exactly).
        seed: seeds every backend call (the same seed gives the same mask, whatever ``n_jobs``).
        gamma: the capacity weight the energy is minimised at; None: the gamma at which the exact
            per-layer Lagrangian relaxation first prunes k units (see the module docstring).
        max_per_layer: max units pruned per layer: an int, an array indexed by layer id, or a mapping.
        n_jobs: worker count (None: the idle cores when there is enough work, else 1). Named
            backends run in processes, sampler instances in threads.
        sampler_params: extra keyword arguments for every backend call (e.g. ``num_sweeps``).
        progress: show a progress bar over block groups.
        brute_force_max: blocks of at most this many variables are enumerated (2^m states).
        steps: first-pass backend solves per heavy block, their shifts spread over all counts.
        reads: ``num_reads`` per backend solve (when the backend takes it).
        focus_rounds, focus_steps, tabu_iters: then, per round, ``focus_steps`` solves per heavy
            block with shifts at which the count the DP chose for it is optimal, a swap tabu search
            of ``tabu_iters`` x m moves at that count and its two neighbours, and a new DP; rounds
            stop (at most ``focus_rounds``) once the DP keeps its counts.
        batch_variables: heavy blocks are batched into one BQM of at most this many variables
            (None: 1,024, or the backend's ``max_variables`` when it has one).

    Returns:
        :class:`qprune.solve.exact_k.ExactKResult` with exactly k ones, ``bqm = formulation.bqm(gamma)``,
        and ``info`` holding ``strategy="layerwise"``, the per-layer counts, per-layer times, which
        blocks were exact, the gamma and how it was chosen.
    """
    from qprune.solve.exact_k import ExactKResult

    t_start = time.perf_counter()
    for attr in ("blocks", "layer_ids", "linear", "reward", "labels"):
        if not hasattr(formulation, attr):
            raise QpruneError("strategy 'layerwise' needs a qprune Formulation (its per-layer blocks); "
                              f"got {type(formulation).__name__}")
    n = len(formulation.labels)
    k = int(k)
    if not 0 <= k <= n:
        raise QpruneError(f"k={k} must lie in [0, {n}]")
    _check_blocks_cover(formulation)
    lid = np.asarray(formulation.layer_ids)
    layers, sizes_arr = np.unique(lid, return_counts=True)
    sizes = {int(lay): int(s) for lay, s in zip(layers, sizes_arr)}
    caps = _caps_by_layer(max_per_layer, layers, sizes)
    if sum(caps.values()) < k:
        raise QpruneError(f"k={k} exceeds the {sum(caps.values())} units the per-layer caps allow")
    sampler_params = dict(sampler_params or {})
    reads = int(sampler_params.pop("num_reads", reads))
    if batch_variables is None:
        batch_variables = _default_batch(backend)
    if isinstance(backend, str):
        from qprune.backends import get

        get(backend)  # fail now (missing extra, no token) rather than inside a worker
    opts = dict(brute_force_max=int(brute_force_max), steps=int(steps), reads=reads,
                focus_steps=int(focus_steps), tabu_iters=int(tabu_iters), sampler_params=sampler_params,
                n_jobs=n_jobs,
                batch_variables=int(batch_variables), progress=progress)

    reward = np.asarray(formulation.reward, float)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # Each block comes with the shift its curve needs to be at the solve's gamma: 0 when the block
    # was solved at that gamma, gamma * r_b when it was solved at gamma = 0 and all its units share
    # the reward r_b (its gamma term is then -gamma r_b c at count c, for any state).
    if gamma is not None:
        gamma_used, gamma_source = float(gamma), "given"
        blocks = _build_blocks(formulation, gamma_used, caps)
        results = _curves(blocks, backend, seed, **opts)
        shift = np.zeros(len(blocks))
    else:
        blocks = _build_blocks(formulation, 0.0, caps)
        results = _curves(blocks, backend, seed, **opts)
        rbar = np.array([reward[b.idx].mean() for b in blocks])
        gamma_used = _lagrangian_gamma([r["E"] for r in results], rbar, k)
        gamma_source = "lagrangian"
        shift = gamma_used * rbar
        redo = [i for i, b in enumerate(blocks)
                if np.ptp(reward[b.idx]) > 1e-12 * max(1e-300, abs(float(rbar[i])))]
        if redo:  # rewards that differ inside a block: solve those blocks again at gamma*
            again_blocks = _build_blocks(formulation, gamma_used, caps)
            again = _curves([again_blocks[i] for i in redo], backend, seed, **opts)
            for i, r in zip(redo, again):
                blocks[i], results[i], shift[i] = again_blocks[i], r, 0.0
    timings["curves_s"] = time.perf_counter() - t0

    def at_gamma() -> list[np.ndarray]:
        return [r["E"] - s * np.arange(r["E"].size) for r, s in zip(results, shift)]

    t0 = time.perf_counter()
    dp_energy, counts = _dp(at_gamma(), k)
    history = [dp_energy]
    for round_ in range(int(focus_rounds)):
        results = _focus(blocks, results, counts, backend, seed, round_, **opts)
        dp_energy, new_counts = _dp(at_gamma(), k)
        history.append(dp_energy)
        if new_counts == counts:  # every count the DP now uses has had its focus
            break
        counts = new_counts
    timings["focus_s"] = time.perf_counter() - t0

    x = np.zeros(n, np.int8)
    for b, r, c in zip(blocks, results, counts):
        x[b.idx] = r["X"][c]
    if int(x.sum()) != k:  # the DP picks one state of count c per block: cannot happen
        raise RuntimeError(f"layerwise assembled {int(x.sum())} ones, expected {k}")
    bqm = formulation.bqm(gamma_used)
    labels = list(formulation.labels)
    sample = dict(zip(labels, x.tolist()))
    energy = float(formulation.energy(x, gamma_used))
    objective = float(formulation.energy(x, 0.0))
    timings["total_s"] = time.perf_counter() - t_start

    per_layer_counts: dict[int, int] = {}
    per_layer_time: dict[int, float] = {}
    for b, r in zip(blocks, results):
        for j, lay in enumerate(b.layers):
            per_layer_counts[lay] = int(x[b.idx[b.sub == j]].sum())
            per_layer_time[lay] = float(r.get("time_s", 0.0)) / len(b.layers)
    info = {
        "strategy": "layerwise",
        "gamma": gamma_used,
        "gamma_source": gamma_source,
        "per_layer_counts": per_layer_counts,
        "per_layer_time_s": per_layer_time,
        "exact_blocks": int(sum(bool(r.get("exact")) for r in results)),
        "heuristic_blocks": int(sum(not r.get("exact") for r in results)),
        "merged_blocks": [list(b.layers) for b in blocks if b.merged],
        "dp_energy_per_round": history,
        "backend": backend if isinstance(backend, str) else type(backend).__name__,
        "seed": seed,
        "times": timings,
        "repaired": False,
    }
    return ExactKResult(labels=labels, x=x, sample=sample, energy=energy, objective=objective,
                        gamma=gamma_used, bqm=bqm, info=info)


def solve(formulation: Formulation, k: int, backend: str | dimod.Sampler = "neal", *,
          strategy: str = "gamma", seed: int | None = 0, **options: Any) -> ExactKResult:
    """Exact-k with either strategy: ``"gamma"`` (:func:`qprune.solve.exact_k.solve_exact_k`) or
    ``"layerwise"`` (:func:`solve_layerwise`); ``options`` go to the chosen function."""
    if strategy == "layerwise":
        return solve_layerwise(formulation, k, backend, seed, **options)
    if strategy == "gamma":
        from qprune.solve.exact_k import solve_exact_k

        return solve_exact_k(formulation, k, backend, seed, **options)
    raise QpruneError(f"unknown strategy {strategy!r}; choose 'gamma' or 'layerwise'")
