"""The curves core: per-block count curves combined exactly (a min-plus DP over counts), and the one
price search (bisection for the smallest Lagrange multiplier whose relaxed solution fits) that the
layerwise strategy's gamma and the budget search share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from qprune.errors import QpruneError

__all__ = ["bisect_price", "combine_counts", "lagrangian_gamma"]

_INF = np.inf
_CHUNK = 1 << 16  # table entries per chunk: 512 KiB, fits in cache


def combine_counts(curves: Sequence[np.ndarray], k: int) -> tuple[float, list[int]]:
    """min sum_b curves[b][c_b] s.t. sum_b c_b = k; returns (energy, counts).

    Each block is one min-plus convolution ``new[s] = min_c D[s - c] + C[c]``, formed as a
    [s, c] table of sliding windows over D, in chunks that stay in cache, and only for the sums the
    blocks so far can reach: a loop over c costs numpy calls per count, 11,000 of them for a
    10,000-unit model (measured 0.5 s a DP against 0.2 s). Ties go to the smallest c.
    """
    k = int(k)
    D = np.full(k + 1, _INF)
    D[0] = 0.0
    choice = np.zeros((len(curves), k + 1), dtype=np.int32)
    reach = 0  # the largest sum the blocks so far can make
    for bi, C in enumerate(curves):
        C = np.asarray(C, dtype=np.float64)[: k + 1]
        L = C.size
        top = min(k, reach + L - 1)
        # W[s, t] = D[s + t - (L - 1)] (inf below 0), i.e. t = L - 1 - c
        W = np.lib.stride_tricks.sliding_window_view(np.concatenate([np.full(L - 1, _INF), D[: top + 1]]), L)
        C_rev = C[::-1].copy()
        new = np.full(k + 1, _INF)
        pick = choice[bi]
        rows = max(1, _CHUNK // L)
        for s0 in range(0, top + 1, rows):
            s1 = min(s0 + rows, top + 1)
            T = (W[s0:s1] + C_rev)[:, ::-1]  # T[s, c]: argmin takes the smallest c of a tie
            c = np.argmin(T, axis=1)
            pick[s0:s1] = c
            new[s0:s1] = T[np.arange(s1 - s0), c]
        pick[~np.isfinite(new)] = 0
        reach, D = top, new
    if not np.isfinite(D[k]):
        raise QpruneError(f"no combination of per-layer counts reaches k={k} within the per-layer caps")
    counts, s = [], k
    for bi in range(len(curves) - 1, -1, -1):
        c = int(choice[bi][s])
        counts.append(c)
        s -= c
    return float(D[k]), counts[::-1]


def lagrangian_gamma(curves0: Sequence[np.ndarray], rbar: np.ndarray, k: int) -> float:
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
    return bisect_price(lambda g: count(g) >= k, lo, hi, steps=100, rel_tol=1e-12, floor=1.0)


def bisect_price(fits: Callable[[float], bool], lo: float, hi: float, *, steps: int, rel_tol: float,
                 floor: float = 0.0) -> float:
    """The smallest price in ``(lo, hi]`` at which ``fits`` holds, by bisection: ``fits(hi)`` must
    hold and ``fits(lo)`` not. Stops after ``steps`` halvings or once the bracket is within
    ``rel_tol * max(floor, |hi|)``; ``fits`` may keep what it saw at a fitting price."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if fits(mid):
            hi = mid
        else:
            lo = mid
        if hi - lo <= rel_tol * max(floor, abs(hi)):
            break
    return hi
