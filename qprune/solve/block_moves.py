"""Count-preserving moves on one block and the curve they improve.

A block's curve C(c) holds the best energy found for every count c (and a state for each). Swap
descent (:func:`polish`) and swap tabu search (:func:`tabu`) improve a state at its count;
:func:`refine_curve` propagates improvements to c +- 1 (add the cheapest unit / drop the dearest,
then polish) until no count improves. :func:`spread_lambdas` and :func:`focus_lambdas` choose the
per-unit shifts at which a sampler's reads land on the counts wanted.
"""

from __future__ import annotations

import numpy as np

from qprune.solve.blocks import Block, energies

__all__ = ["focus_lambdas", "greedy_marginals", "polish", "refine_curve", "spread_lambdas", "step",
           "swap_deltas", "tabu"]

_INF = np.inf


def swap_deltas(x: np.ndarray, g: np.ndarray, b: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
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


def polish(x: np.ndarray, b: Block, max_steps: int | None = None) -> tuple[np.ndarray, float]:
    """Best-improvement swap descent at fixed count (remove one unit, add another), caps respected."""
    x = x.astype(bool).copy()
    h, M = b.h, b.M
    g = h + M @ x  # cost of adding j (x_j = 0) / saving of removing i (x_i = 1); M_ii = 0
    tol = 1e-12 * (1.0 + float(np.abs(h).sum()))
    steps = max_steps if max_steps is not None else 4 * b.m
    for _ in range(steps):
        swaps = swap_deltas(x, g, b)
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
    return xi, float(energies(xi[None, :], h, M)[0])


def tabu(x: np.ndarray, b: Block, iters: int) -> tuple[np.ndarray, float]:
    """Swap tabu search at fixed count: always take the best allowed swap, even uphill. A unit just
    removed may not come back, and one just added may not leave, for a while (a third of its side,
    at most m/8 iterations), unless the move beats the best state seen."""
    x = x.astype(bool).copy()
    h, M = b.h, b.M
    c = int(x.sum())
    g = h + M @ x
    e = float(energies(x[None, :].astype(np.int8), h, M)[0])
    best_x, best_e = x.copy(), e
    tol = 1e-12 * (1.0 + float(np.abs(h).sum()))
    ban_in = max(1, min(b.m // 8, (b.m - c) // 3))  # a removed unit stays out this long
    ban_out = max(1, min(b.m // 8, c // 3))  # an added unit stays in this long
    until = np.zeros(b.m, np.int64)
    for it in range(iters):
        swaps = swap_deltas(x, g, b)
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
    return xi, float(energies(xi[None, :], h, M)[0])


def step(x: np.ndarray, b: Block, up: bool) -> np.ndarray | None:
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


def greedy_marginals(b: Block) -> np.ndarray:
    """Marginal cost of each greedy addition 1..cap: the lambda at which that count becomes optimal."""
    x = np.zeros(b.m, np.int8)
    out = []
    for _ in range(b.cap):
        y = step(x, b, up=True)
        if y is None:
            break
        j = int(np.flatnonzero(y != x)[0])
        out.append(float(b.h[j] + b.M[j] @ x))
        x = y
    return np.asarray(out)


def refine_curve(b: Block, E: np.ndarray, X: np.ndarray, dirty: np.ndarray | None = None,
                  max_passes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Swap-polish the best state of the ``dirty`` counts (default: all), then propagate
    c -> c +- 1 (add the cheapest unit / drop the dearest, polish) until no count improves."""
    cap = b.cap
    tol = 1e-12 * (1.0 + float(np.abs(b.h).sum()))
    dirty = np.isfinite(E) if dirty is None else (dirty & np.isfinite(E))
    for c in np.flatnonzero(dirty):
        X[c], E[c] = polish(X[c], b)
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
                y = step(X[c], b, up=up)
                if y is None:
                    continue
                y, e = polish(y, b)
                if e < E[c + d] - tol:
                    X[c + d], E[c + d] = y, e
                    dirty_up[c + d] = dirty_down[c + d] = changed = True
        if not changed:
            break
    return E, X


def spread_lambdas(blocks: list[Block], steps: int) -> np.ndarray:
    """[steps, blocks] shifts: the greedy marginal cost at evenly spread counts, where that count is
    (roughly) the optimum of the shifted block, so the reads cover every count."""
    lam = np.zeros((steps, len(blocks)))
    for i, b in enumerate(blocks):
        mg = greedy_marginals(b)
        for s in range(steps):
            if mg.size:
                lam[s, i] = mg[min(mg.size - 1, int(round((s + 0.5) / steps * mg.size)))]
    return lam


def focus_lambdas(E: np.ndarray, c: int, steps: int) -> np.ndarray:
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
