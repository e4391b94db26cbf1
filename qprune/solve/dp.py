"""The exact combination step of the layerwise strategy: a DP over per-block counts, and the gamma
at which the per-layer Lagrangian relaxation first reaches k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qprune.errors import QpruneError

__all__ = ["combine_counts", "lagrangian_gamma"]

_INF = np.inf


def combine_counts(curves: Sequence[np.ndarray], k: int) -> tuple[float, list[int]]:
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
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if count(mid) >= k:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            break
    return hi
