"""k-preserving local search on :class:`~qprune.solve.arrays.QuboArrays`: repair to exactly k ones,
then steepest pair swaps, both within the group caps of an :class:`~qprune.solve.constraint.ExactK`.

A state keeps its local field ``g = h + J x`` (flipping x_i from 0 to 1 changes the energy by g_i)
and its per-group counts, updated in O(degree) per flip, so each step is exact and cheap.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from qprune.errors import QpruneError
from qprune.solve.arrays import QuboArrays
from qprune.solve.constraint import ExactK
from qprune.solve.descent import steepest

__all__ = ["LocalState", "repair_to_k", "swap_polish"]


def _caps_of(constraint: ExactK | None) -> ExactK | None:
    """The constraint when it has group caps, else None (the uncapped paths are the fast ones)."""
    return constraint if constraint is not None and constraint.capped else None


class LocalState:
    """A 0/1 state with its local field and group counts, updated in O(degree) per flip."""

    def __init__(self, arrs: QuboArrays, x: np.ndarray, constraint: ExactK | None) -> None:
        self.arrs = arrs
        self.x = np.asarray(x).astype(bool).copy()
        self.g = arrs.field(self.x)
        self.caps = caps = _caps_of(constraint)
        self.gcount = caps.counts(self.x) if caps is not None else None
        coo = arrs.J.tocoo()
        self.rows, self.cols, self.data = coo.row, coo.col, coo.data
        self.group = caps.group if caps is not None else None

    def flip(self, i: int) -> None:
        J = self.arrs.J
        lo, hi = J.indptr[i], J.indptr[i + 1]
        sign = -1.0 if self.x[i] else 1.0
        self.g[J.indices[lo:hi]] += sign * J.data[lo:hi]
        if self.gcount is not None:
            self.gcount[self.group[i]] += 1 if sign > 0 else -1
        self.x[i] = not self.x[i]

    def swap(self, pair: tuple[int, int]) -> None:
        self.flip(pair[0])
        self.flip(pair[1])

    def room(self) -> np.ndarray:
        """Per variable: may one more unit of its group be pruned?"""
        if self.caps is None:
            return np.ones(len(self.x), dtype=bool)
        return (self.gcount < self.caps.cap)[self.group]

    def best_swap(self) -> tuple[float, tuple[int, int]]:
        """The best (delta, (i out, j in)) over all pairs; delta = g_j - g_i - J_ij. Exact."""
        x, g = self.x, self.g
        room = self.room()
        best = (np.inf, -1, -1)
        # pairs joined by a coupling: read straight off the sparse matrix
        if len(self.rows):
            r, c = self.rows, self.cols
            m = x[r] & ~x[c]
            if self.group is not None:
                m &= room[c] | (self.group[r] == self.group[c])
            if m.any():
                vals = g[c[m]] - g[r[m]] - self.data[m]
                a = int(np.argmin(vals))
                best = (float(vals[a]), int(r[m][a]), int(c[m][a]))
        ones = np.flatnonzero(x)
        zeros = np.flatnonzero(~x & room)
        cand = _best_uncoupled(self.arrs.J, g, ones, zeros)
        if cand[0] < best[0]:
            best = cand
        if self.caps is not None:
            # a full group can still swap inside itself
            full = np.flatnonzero(self.gcount >= self.caps.cap)
            for grp in full:
                members = self.group == grp
                cand = _best_uncoupled(self.arrs.J, g, np.flatnonzero(x & members), np.flatnonzero(~x & members))
                if cand[0] < best[0]:
                    best = cand
        delta, i, j = best
        return delta, (i, j)


def _best_uncoupled(J: sp.csr_matrix, g: np.ndarray, ones: np.ndarray, zeros: np.ndarray) -> tuple[float, int, int]:
    """min over uncoupled pairs (i in ones, j in zeros, J_ij == 0) of g_j - g_i, exactly.

    For each i (largest g_i first) its best partner is the first j in ascending-g order that is not
    its neighbour, found among at most deg(i) + 1 positions. ``g_min(zeros) - g_i`` bounds every pair
    of i, and it only grows along the order, so the scan stops as soon as it cannot win.
    """
    if len(ones) == 0 or len(zeros) == 0:
        return (np.inf, -1, -1)
    oi = ones[np.argsort(-g[ones], kind="stable")]
    zj = zeros[np.argsort(g[zeros], kind="stable")]
    pos = np.full(len(g), -1, dtype=np.int64)
    pos[zj] = np.arange(len(zj))
    best = (np.inf, -1, -1)
    for i in oi:
        if g[zj[0]] - g[i] >= best[0]:
            break
        p = pos[J.indices[J.indptr[i]:J.indptr[i + 1]]]
        p = p[p >= 0]
        m = len(p)
        taken = np.zeros(m + 1, dtype=bool)
        taken[p[p <= m]] = True
        q = int(np.argmin(taken))  # first position that is not a neighbour (pigeonhole: <= len(p))
        if q >= len(zj):
            continue
        v = float(g[zj[q]] - g[i])
        if v < best[0]:
            best = (v, int(i), int(zj[q]))
    return best


def repair_to_k(
    arrs: QuboArrays, x: np.ndarray, k: int, constraint: ExactK | None = None, gamma: float = 0.0
) -> tuple[np.ndarray, int]:
    """Bring ``x`` to exactly ``k`` ones (and within the constraint's group caps) by the cheapest flips.

    Costs are energies on ``BQM(gamma)`` (``gamma=0``: the objective).
    Over-full groups first lose their cheapest members, then surplus ones are removed (the largest
    local field first) or missing ones added (the smallest field first, only where the group has room).
    Returns the new state (int8) and the number of flips.
    """
    st = LocalState(arrs.at(gamma), x, constraint)
    caps = st.caps
    moves = 0
    if caps is not None:
        while True:
            over = st.gcount > caps.cap
            if not over.any():
                break
            cand = np.flatnonzero(st.x & over[caps.group])
            st.flip(int(cand[np.argmax(st.g[cand])]))
            moves += 1
    while st.x.sum() > k:
        cand = np.flatnonzero(st.x)
        st.flip(int(cand[np.argmax(st.g[cand])]))
        moves += 1
    while st.x.sum() < k:
        cand = np.flatnonzero(~st.x & st.room())
        if len(cand) == 0:
            raise QpruneError(f"k={k} cannot be met under the group caps")
        st.flip(int(cand[np.argmin(st.g[cand])]))
        moves += 1
    return st.x.astype(np.int8), moves


def swap_polish(
    arrs: QuboArrays,
    x: np.ndarray,
    constraint: ExactK | None = None,
    gamma: float = 0.0,
    max_moves: int | None = None,
) -> tuple[np.ndarray, int, float]:
    """Steepest-descent pair swaps (one 1 -> 0 and one 0 -> 1) on ``BQM(gamma)`` until none improves.

    Keeps the count and the group caps. Each step finds the best pair exactly (coupled pairs from the
    sparse matrix, uncoupled ones from the sorted local fields). Returns (state, moves, energy gain).
    """
    arrs = arrs.at(gamma)
    st = LocalState(arrs, x, constraint)
    eps = 1e-10 * arrs.scale()
    limit = 50 * max(1, arrs.n) if max_moves is None else max_moves
    moves, gain = steepest(st.best_swap, st.swap, limit, eps)
    return st.x.astype(np.int8), moves, gain
