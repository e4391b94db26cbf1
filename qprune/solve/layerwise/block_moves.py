"""Count-preserving moves on one block and the curve they improve.

A block's curve C(c) holds the best energy found for every count c (and a state for each).
:func:`greedy_curve` gives a first state for every count without a sampler. Swap descent
(:func:`swap_descent`) and swap tabu search (:func:`tabu`) improve a state at its count, each step the
exact best swap over a window of candidates (:mod:`qprune.solve.layerwise.swap_search`);
:func:`refine_curve` propagates improvements to c +- 1 (add the cheapest unit / drop the dearest,
then polish) until no count improves. :func:`spread_lambdas` and :func:`focus_lambdas` choose the
per-unit shifts at which a sampler's reads land on the counts wanted.
"""

from __future__ import annotations

import numpy as np

from qprune.solve.descent import steepest
from qprune.solve.layerwise.blocks import Block, energies
from qprune.solve.layerwise.swap_search import best_masked_swap

__all__ = ["field", "focus_lambdas", "greedy_curve", "greedy_marginals", "swap_descent", "refine_curve", "spread_lambdas",
           "step", "step_with_field", "swap_deltas", "tabu"]

_INF = np.inf


def swap_deltas(x: np.ndarray, g: np.ndarray, b: Block, ones: np.ndarray | None = None,
                zeros: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Energy change of every (remove i, add j) swap at fixed count, [ones, zeros]; None if none exist.

    ``g = h + M @ x``; ``ones``/``zeros`` restrict the sides (default: all). In a merged block a
    swap into a layer at its cap is allowed only when it leaves that same layer (_INF otherwise).
    """
    ones = np.flatnonzero(x) if ones is None else ones
    zeros = np.flatnonzero(~x) if zeros is None else zeros
    if ones.size == 0 or zeros.size == 0:
        return None
    D = g[zeros][None, :] - g[ones][:, None] - b.M[np.ix_(ones, zeros)]
    if b.merged:
        counts = np.bincount(b.sub[np.asarray(x, bool)], minlength=b.caps.size)  # all ones, not the side
        full = counts[b.sub[zeros]] >= b.caps[b.sub[zeros]]
        D[(b.sub[ones][:, None] != b.sub[zeros][None, :]) & full[None, :]] = _INF
    return ones, zeros, D


def swap_descent(x: np.ndarray, b: Block, max_steps: int | None = None, g: np.ndarray | None = None,
           ) -> tuple[np.ndarray, float]:
    """Best-improvement swap descent at fixed count (remove one unit, add another), caps respected.

    ``g``: the local field ``h + M x`` of ``x`` when the caller has it (saves an m x m product).
    """
    x = x.astype(bool).copy()
    h, M = b.h, b.M
    # cost of adding j (x_j = 0) / saving of removing i (x_i = 1); M_ii = 0
    g = field(x, b) if g is None else np.array(g, dtype=np.float64)
    tol = 1e-12 * (1.0 + float(np.abs(h).sum()))
    steps = max_steps if max_steps is not None else 4 * b.m

    def best() -> tuple[float, tuple[int, int]]:
        d, i, j = _best(x, g, b)
        return d, (i, j)

    def swap(pair: tuple[int, int]) -> None:
        i, j = pair
        x[i], x[j] = False, True
        g[:] += M[j] - M[i]  # M is symmetric: a row is the column, and contiguous

    steepest(best, swap, steps, tol)
    return x.astype(np.int8), _energy(x, h, g)


def field(x: np.ndarray, b: Block) -> np.ndarray:
    """The local field g = h + M x. M @ x with a bool or int8 x misses BLAS (a generic loop, measured
    6 ms instead of 0.5 ms for m = 1,152), so x goes in as float64."""
    return b.h + b.M @ np.asarray(x, dtype=np.float64)


def _energy(x: np.ndarray, h: np.ndarray, g: np.ndarray) -> float:
    """E = h.x + x.M.x / 2 from the field g = h + M x: (h.x + g.x) / 2, O(m) instead of O(m^2)."""
    return 0.5 * float(h[x].sum() + g[x].sum())


def _best(x: np.ndarray, g: np.ndarray, b: Block, out_ok: np.ndarray | None = None,
          in_ok: np.ndarray | None = None) -> tuple[float, int, int]:
    """The best swap (D, i out, j in) over the ones of ``out_ok`` and the zeros of ``in_ok``
    (boolean masks; default: every one, every zero)."""
    out_ok = x if out_ok is None else out_ok
    in_ok = ~x if in_ok is None else in_ok
    if not b.merged:  # no caps inside the block: the windowed search is exact
        return best_masked_swap(out_ok, in_ok, g, b.M, b.row_max)
    swaps = swap_deltas(x, g, b, np.flatnonzero(out_ok), np.flatnonzero(in_ok))
    if swaps is None:
        return _INF, -1, -1
    o, z, D = swaps
    flat = int(np.argmin(D))
    return float(D.flat[flat]), int(o[flat // z.size]), int(z[flat % z.size])


def tabu(x: np.ndarray, b: Block, iters: int, patience: int | None = None) -> tuple[np.ndarray, float]:
    """Swap tabu search at fixed count: always take the best allowed swap, even uphill. A unit just
    removed may not come back for 7 iterations, and one just added may not leave for 5 (at most
    m/8 and a third of its side), unless the move beats the best state seen. Short bans keep the
    walk near the start: with bans of m/8 (50 for 400 units) it drifted 60 swaps away and never
    came back below the start; with 7/5 it found the 4-swap improvements that annealing finds on
    resnet50, regnet_x_400mf and efficientnet_b0 layers. ``patience``: stop after that many moves
    without a new best (None: run all ``iters``)."""
    x = x.astype(bool).copy()
    h, M = b.h, b.M
    c = int(x.sum())
    g = field(x, b)
    e = float(energies(x[None, :].astype(np.int8), h, M)[0])
    best_x, best_e = x.copy(), e
    tol = 1e-12 * (1.0 + float(np.abs(h).sum()))
    ban_in = max(1, min(7, b.m // 8, (b.m - c) // 3))  # a removed unit stays out this long
    ban_out = max(1, min(5, b.m // 8, c // 3))  # an added unit stays in this long
    until = np.zeros(b.m, np.int64)
    last_best = 0
    for it in range(iters):
        if patience is not None and it - last_best > patience:
            break
        free = until <= it
        d, i, j = _best(x, g, b, x & free, ~x & free)
        # a banned move is taken when it beats the best state seen (it is then the best of all
        # moves); none can unless e plus a lower bound on every swap does, which saves the
        # search over all pairs on most steps
        lower = float(np.min(g, where=~x, initial=_INF) - np.max(g, where=x, initial=-_INF)) - b.m_max
        if not np.isfinite(d) or e + lower < best_e - tol:
            d_all, i_all, j_all = _best(x, g, b)
            if not np.isfinite(d_all):
                break
            if not np.isfinite(d) or e + d_all < best_e - tol:  # else: the best allowed move
                d, i, j = d_all, i_all, j_all
        x[i], x[j] = False, True
        g += M[j] - M[i]
        e += d
        until[i], until[j] = it + ban_in, it + ban_out
        if e < best_e - tol:
            best_x, best_e, last_best = x.copy(), e, it
    xi = best_x.astype(np.int8)
    return xi, float(energies(xi[None, :], h, M)[0])  # exact, whatever rounding the steps collected


def step(x: np.ndarray, b: Block, up: bool) -> np.ndarray | None:
    """Add the cheapest feasible unit (up) or drop the dearest one; None when impossible."""
    moved = step_with_field(x, b, up)
    return None if moved is None else moved[0]


def step_with_field(x: np.ndarray, b: Block, up: bool, g: np.ndarray | None = None,
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`step` and the new state's local field (``g``: the field of ``x``, if known)."""
    g = field(x, b) if g is None else g
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
    return y, (g + b.M[j] if up else g - b.M[j])


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


def greedy_curve(b: Block) -> tuple[np.ndarray, np.ndarray]:
    """A state for every count 0..cap from greedy additions (cheapest unit first) and, from the
    last of them, greedy removals (dearest unit first); per count the better of the two.

    2 cap steps of O(m) each, no sampler: for the pruning QUBO, whose couplings are small next to
    its linear terms, this is already close to the best state of every count, and swap descent
    (:func:`refine_curve`) takes it the rest of the way.
    """
    m, cap, M = b.m, b.cap, b.M
    E = np.full(cap + 1, _INF)
    X = np.zeros((cap + 1, m), np.int8)
    E[0] = 0.0
    x = np.zeros(m, bool)
    g = b.h.astype(np.float64).copy()
    counts = np.zeros(b.caps.size, np.int64)
    for c in range(1, cap + 1):
        allowed = ~x if not b.merged else ~x & (counts[b.sub] < b.caps[b.sub])
        cost = np.where(allowed, g, _INF)
        j = int(np.argmin(cost))
        if not np.isfinite(cost[j]):
            break
        E[c] = E[c - 1] + g[j]
        x[j] = True
        counts[b.sub[j]] += 1
        g += M[j]
        X[c] = x
    top = int(np.flatnonzero(np.isfinite(E))[-1])
    e = E[top]
    for c in range(top, 0, -1):  # removals from the fullest state: the other side of each count
        saving = np.where(x, g, -_INF)
        i = int(np.argmax(saving))
        e -= g[i]
        x[i] = False
        g -= M[i]
        if e < E[c - 1] - 1e-12 * (1.0 + abs(e)):
            E[c - 1], X[c - 1] = e, x
    return E, X


def refine_curve(b: Block, E: np.ndarray, X: np.ndarray, dirty: np.ndarray | None = None,
                 max_passes: int = 4, window: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Swap-polish the best state of the ``dirty`` counts (default: all), then propagate
    c -> c +- 1 (add the cheapest unit / drop the dearest, polish) until no count improves.

    ``window = (lo, hi)`` keeps all of it to counts lo..hi: the DP reads a curve only near the count
    it picks, and an improvement running down a 2,000-count curve costs two full polishes a count.
    """
    cap = b.cap
    lo, hi = (0, cap) if window is None else (max(0, int(window[0])), min(cap, int(window[1])))
    tol = 1e-12 * (1.0 + float(np.abs(b.h).sum()))
    dirty = np.isfinite(E) if dirty is None else (dirty & np.isfinite(E))
    dirty[:lo] = False
    dirty[hi + 1:] = False
    for c in np.flatnonzero(dirty):
        X[c], E[c] = swap_descent(X[c], b)
    dirty_up = dirty.copy()
    dirty_down = dirty.copy()
    for _ in range(max_passes):
        changed = False
        # upward c -> c + 1 over ascending c, then downward c -> c - 1 over descending c
        for up, counts, flags in ((True, range(lo, hi), dirty_up), (False, range(hi, lo, -1), dirty_down)):
            d = 1 if up else -1
            for c in counts:
                if not flags[c] or not np.isfinite(E[c]):
                    continue
                flags[c] = False
                moved = step_with_field(X[c], b, up=up)
                if moved is None:
                    continue
                y, e = swap_descent(moved[0], b, g=moved[1])
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
