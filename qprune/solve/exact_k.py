"""Exact-k search: find a mask with exactly k ones by searching the capacity weight gamma.

``BQM(gamma) = objective - gamma * sum_i reward_i x_i``: gamma is the Lagrange multiplier of
``sum(x) = k`` (exactly so for a uniform reward), and a larger gamma prunes more. The paper bisects
gamma until the best sample has k ones. This module keeps that outer loop and adds what makes it
reliable and cheap:

* **any read counts**: every read whose count is k is a candidate, not only the lowest-energy one;
* **recombination**: the BQM is a sum over connected components (one per layer for every built-in
  formulation), so a component's state from one read can be combined with another component's state
  from another read. A library keeps, per component and per count, the best state seen in any solve;
  a dynamic program over counts then picks the best exact-k combination. Components of at most
  ``_SMALL_COMPONENT`` variables are enumerated exactly. With a single component (any unstructured
  BQM) this is exactly "the best read whose count is k";
* **interpolation** on count(gamma) (Illinois regula falsi) instead of plain bisection, starting from
  a rigorous bracket (all zeros / all ones provably optimal) and a greedy estimate of gamma;
* **repair and polish**: if no exact-k state was found, k-preserving repair (cheapest removals /
  additions), then a steepest pair-swap local search, exact and vectorised over a sparse matrix.

Candidates are compared on one common score, the energy on ``BQM(gamma*)`` at the final gamma. For a
uniform reward the gamma term is a constant at fixed k, so this is exactly ``min objective s.t.
sum(x) = k``. For the capacity reward of a Formulation (D_i = P_i / sum P, different per layer) it
keeps what the paper's final solve keeps: the preference for pruning parameter-heavy units. Scoring
on the objective alone would throw that away (on the synthetic Half-UNet the pair swaps then move
hundreds of pruned units into the cheapest layers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dimod
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from qprune.errors import QpruneError

BuildFn = Callable[[float], dimod.BinaryQuadraticModel]

# Components this small are solved by enumeration (2^10 states); their library is exact.
_SMALL_COMPONENT = 10

__all__ = ["ExactKResult", "QuboArrays", "lagrangian", "repair_to_k", "solve_exact_k", "swap_polish"]


@dataclass
class ExactKResult:
    """An exact-k solution.

    ``x`` holds exactly k ones, in the order of ``labels``; ``energy`` is measured on ``bqm`` (the BQM
    at the final ``gamma``) and ``objective`` on the objective without the gamma term (``build(0.0)``).
    ``info`` records the search: gamma per iteration, counts, energies, times, repair and polish.
    """

    labels: list[Hashable]
    x: np.ndarray
    sample: dict[Hashable, int]
    energy: float
    objective: float
    gamma: float
    bqm: dimod.BinaryQuadraticModel
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Number of ones (pruned units)."""
        return int(self.x.sum())


# --------------------------------------------------------------------------------------------------
# The objective as arrays


@dataclass
class QuboArrays:
    """``E(x) = offset + h.x + 1/2 x^T J x`` (J symmetric CSR, zero diagonal) and the reward r > 0."""

    labels: list[Hashable]
    h: np.ndarray
    J: sp.csr_matrix
    offset: float
    reward: np.ndarray

    @classmethod
    def from_bqm(
        cls,
        bqm: dimod.BinaryQuadraticModel,
        reward: np.ndarray | Mapping[Hashable, float] | None = None,
        labels: list[Hashable] | None = None,
    ) -> QuboArrays:
        """Arrays of a (binary or spin) BQM in ``labels`` order (default: the BQM's own order)."""
        if bqm.vartype is dimod.SPIN:
            bqm = bqm.change_vartype(dimod.BINARY, inplace=False)
        labels = list(bqm.variables) if labels is None else list(labels)
        n = len(labels)
        if n != bqm.num_variables or any(v not in bqm.variables for v in labels):
            raise QpruneError(
                f"the BQM's {bqm.num_variables} variables do not match the {n} labels given"
            )
        ldata, (irow, icol, qdata), offset = bqm.to_numpy_vectors(variable_order=labels)
        rows = np.concatenate([irow, icol]).astype(np.int64, copy=False)
        cols = np.concatenate([icol, irow]).astype(np.int64, copy=False)
        vals = np.concatenate([qdata, qdata]).astype(np.float64, copy=False)
        J = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
        J.sum_duplicates()
        J.eliminate_zeros()
        return cls(labels, np.asarray(ldata, dtype=np.float64), J, float(offset), _reward(reward, labels))

    @property
    def n(self) -> int:
        """Number of variables."""
        return len(self.labels)

    def objective(self, X: np.ndarray) -> np.ndarray:
        """Objective of each row of ``X`` ([B, N] or [N] 0/1); returns [B] (or a 0-d array)."""
        Xf = np.asarray(X, dtype=np.float64)
        single = Xf.ndim == 1
        Xf = np.atleast_2d(Xf)
        JX = (self.J @ Xf.T).T
        e = self.offset + Xf @ self.h + 0.5 * np.einsum("bn,bn->b", Xf, JX)
        return e[0] if single else e

    def energy(self, X: np.ndarray, gamma: float) -> np.ndarray:
        """Energy on ``BQM(gamma)``: objective minus ``gamma * reward.x``."""
        Xf = np.asarray(X, dtype=np.float64)
        return self.objective(Xf) - gamma * (Xf @ self.reward)

    def at(self, gamma: float) -> QuboArrays:
        """The arrays of ``BQM(gamma)``: linear ``h - gamma * reward`` (J shared, not copied)."""
        if gamma == 0.0:
            return self
        return QuboArrays(self.labels, self.h - gamma * self.reward, self.J, self.offset, self.reward)

    def field(self, x: np.ndarray) -> np.ndarray:
        """Local field ``g = h + J x``: flipping x_i from 0 to 1 changes the objective by g_i."""
        return self.h + self.J @ np.asarray(x, dtype=np.float64)

    def scale(self) -> float:
        """Coefficient magnitude, used for numerical tolerances."""
        jmax = float(np.abs(self.J.data).max()) if self.J.nnz else 0.0
        return float(np.abs(self.h).max(initial=0.0)) + jmax + 1e-300

    def gamma_bracket(self) -> tuple[float, float]:
        """``(g0, g1)``: at gamma <= g0 all zeros is optimal, at gamma >= g1 all ones is optimal.

        E(x) - E(0) >= sum_i x_i (h_i - gamma r_i + 1/2 sum_j min(0, J_ij)) >= 0 below g0; above g1
        turning any variable on never raises the energy, whatever the others are.
        """
        neg = np.asarray(self.J.minimum(0).sum(axis=1)).ravel()
        pos = np.asarray(self.J.maximum(0).sum(axis=1)).ravel()
        if self.n == 0:
            return 0.0, 0.0
        g0 = float(np.min((self.h + 0.5 * neg) / self.reward))
        g1 = float(np.max((self.h + pos) / self.reward))
        return g0, max(g1, g0)


def _reward(reward: Any, labels: list[Hashable]) -> np.ndarray:
    n = len(labels)
    if reward is None:
        r = np.ones(n)
    elif isinstance(reward, Mapping):
        missing = [v for v in labels if v not in reward]
        if missing:
            raise QpruneError(f"reward has no value for {len(missing)} variable(s), e.g. {missing[0]!r}")
        r = np.array([float(reward[v]) for v in labels])
    else:
        r = np.asarray(reward, dtype=np.float64).ravel()
        if r.shape != (n,):
            raise QpruneError(f"reward has {r.size} values for {n} variables")
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise QpruneError("reward must be finite and > 0 for every variable (gamma * reward is a reward)")
    return r


# --------------------------------------------------------------------------------------------------
# Group caps (max pruned per group)


@dataclass
class _Caps:
    group: np.ndarray  # int [N], 0..G-1
    cap: np.ndarray  # int [G]
    size: np.ndarray  # int [G]

    def counts(self, x: np.ndarray) -> np.ndarray:
        return np.bincount(self.group, weights=np.asarray(x, dtype=np.float64), minlength=len(self.cap)).astype(np.int64)

    def ok(self, x: np.ndarray) -> bool:
        return bool(np.all(self.counts(x) <= self.cap))

    def ok_rows(self, X: np.ndarray) -> np.ndarray:
        """Per row of ``X`` [B, N]: within every cap?"""
        onehot = sp.csr_matrix((np.ones(len(self.group)), (np.arange(len(self.group)), self.group)),
                               shape=(len(self.group), len(self.cap)))
        per_group = (onehot.T @ X.T.astype(np.float64)).T
        return np.all(per_group <= self.cap[None, :] + 0.5, axis=1)


def _make_caps(max_per_group: Any, n: int, k: int) -> _Caps | None:
    if max_per_group is None:
        return None
    try:
        group_ids, max_count = max_per_group
    except (TypeError, ValueError):
        raise QpruneError("max_per_group must be a pair (group id per variable, max pruned per group)") from None
    gid = np.asarray(group_ids).ravel()
    if gid.shape != (n,):
        raise QpruneError(f"max_per_group: {gid.size} group ids for {n} variables")
    uniq, group = np.unique(gid, return_inverse=True)
    size = np.bincount(group, minlength=len(uniq))
    if isinstance(max_count, Mapping):
        cap = np.array([int(max_count.get(u.item(), s)) for u, s in zip(uniq, size)])
    elif np.ndim(max_count) == 0:
        cap = np.full(len(uniq), int(max_count))
    else:
        mc = np.asarray(max_count).ravel()
        if not np.issubdtype(uniq.dtype, np.integer) or uniq.min() < 0 or uniq.max() >= mc.size:
            raise QpruneError(
                f"max_per_group: group ids must index the {mc.size} max counts (0..{mc.size - 1})"
            )
        cap = mc[uniq].astype(np.int64)
    if np.any(cap < 0):
        raise QpruneError("max_per_group: a group's max count is negative")
    reachable = int(np.minimum(cap, size).sum())
    if reachable < k:
        raise QpruneError(f"k={k} cannot be met: the group caps allow at most {reachable} pruned units")
    return _Caps(group.astype(np.int64), cap.astype(np.int64), size.astype(np.int64))


# --------------------------------------------------------------------------------------------------
# k-preserving repair and pair-swap polish


class _LocalState:
    """A 0/1 state with its local field and group counts, updated in O(degree) per flip."""

    def __init__(self, arrs: QuboArrays, x: np.ndarray, caps: _Caps | None) -> None:
        self.arrs = arrs
        self.x = np.asarray(x).astype(bool).copy()
        self.g = arrs.field(self.x)
        self.caps = caps
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

    def room(self) -> np.ndarray:
        """Per variable: may one more unit of its group be pruned?"""
        if self.caps is None:
            return np.ones(len(self.x), dtype=bool)
        return (self.gcount < self.caps.cap)[self.group]

    def best_swap(self) -> tuple[float, int, int]:
        """The best (delta, i out, j in) over all pairs; delta = g_j - g_i - J_ij. Exact."""
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
        return best


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
    arrs: QuboArrays, x: np.ndarray, k: int, caps: _Caps | None = None, gamma: float = 0.0
) -> tuple[np.ndarray, int]:
    """Bring ``x`` to exactly ``k`` ones (and within the group caps) by the cheapest single flips.

    Costs are energies on ``BQM(gamma)`` (``gamma=0``: the objective).
    Over-full groups first lose their cheapest members, then surplus ones are removed (the largest
    local field first) or missing ones added (the smallest field first, only where the group has room).
    Returns the new state (int8) and the number of flips.
    """
    st = _LocalState(arrs.at(gamma), x, caps)
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
    caps: _Caps | None = None,
    gamma: float = 0.0,
    max_moves: int | None = None,
) -> tuple[np.ndarray, int, float]:
    """Steepest-descent pair swaps (one 1 -> 0 and one 0 -> 1) on ``BQM(gamma)`` until none improves.

    Keeps the count and the group caps. Each step finds the best pair exactly (coupled pairs from the
    sparse matrix, uncoupled ones from the sorted local fields). Returns (state, moves, energy gain).
    """
    arrs = arrs.at(gamma)
    st = _LocalState(arrs, x, caps)
    eps = 1e-10 * arrs.scale()
    limit = 50 * max(1, arrs.n) if max_moves is None else max_moves
    moves, gain = 0, 0.0
    while moves < limit:
        delta, i, j = st.best_swap()
        if not delta < -eps:
            break
        st.flip(i)
        st.flip(j)
        moves += 1
        gain += delta
    return st.x.astype(np.int8), moves, -gain


def _greedy_gamma(arrs: QuboArrays, k: int) -> float:
    """Gamma at which greedy additions (cheapest objective per reward first) would stop at k."""
    n = arrs.n
    x = np.zeros(n, dtype=bool)
    g = arrs.h.copy()
    J = arrs.J
    ratios = []
    for _ in range(min(k + 1, n)):
        ratio = np.where(x, np.inf, g / arrs.reward)
        j = int(np.argmin(ratio))
        ratios.append(float(ratio[j]))
        x[j] = True
        lo, hi = J.indptr[j], J.indptr[j + 1]
        g[J.indices[lo:hi]] += J.data[lo:hi]
    if k == 0:
        return ratios[0]
    if k >= n:
        return ratios[-1]
    return 0.5 * (ratios[k - 1] + ratios[k])


# --------------------------------------------------------------------------------------------------
# Component library + DP over counts


class _Library:
    """Per connected component and per count, the best state seen; a DP over counts combines them.

    An entry is replaced when a new state is better at the gamma of the solve that produced it; the
    DP then scores entries at the final gamma. Within one layer the reward is constant (same P_i), so
    at a fixed count the ranking does not depend on gamma at all.
    """

    def __init__(self, arrs: QuboArrays, caps: _Caps | None, recombine: bool) -> None:
        self.arrs = arrs
        n = arrs.n
        if recombine and n:
            _, comp = connected_components(arrs.J, directed=False)
        else:
            comp = np.zeros(n, dtype=np.int64)
        comp = comp.astype(np.int64)
        sizes = np.bincount(comp, minlength=int(comp.max()) + 1 if n else 0)
        # group caps are enforced inside a component only when every group lies inside one component
        self.caps = caps
        self.caps_local = False
        if caps is not None and n:
            pairs = np.unique(np.stack([caps.group, comp]), axis=1)
            self.caps_local = bool(np.bincount(pairs[0]).max() <= 1)
        order = np.argsort(comp, kind="stable")
        bounds = np.cumsum(np.concatenate([[0], sizes]))
        members = [order[bounds[c]:bounds[c + 1]] for c in range(len(sizes))]

        self.singles = np.array(sorted(int(m[0]) for m, s in zip(members, sizes) if s == 1), dtype=np.int64)
        if not recombine:
            self.singles = np.zeros(0, dtype=np.int64)
        small_limit = _SMALL_COMPONENT if recombine else 0
        self.small: list[dict[str, Any]] = []
        self.large: list[np.ndarray] = []
        for m, s in zip(members, sizes):
            if recombine and s == 1:
                continue
            if s <= small_limit:
                self.small.append(self._enumerate(np.sort(m)))
            else:
                self.large.append(np.sort(m))
        # library of the large components
        self.cost = [np.full(len(m) + 1, np.inf) for m in self.large]  # objective
        self.rsum = [np.zeros(len(m) + 1) for m in self.large]  # reward . state
        self.states: list[dict[int, np.ndarray]] = [{} for _ in self.large]
        if self.large:
            col = np.concatenate(self.large)
            row_c = np.concatenate([np.full(len(m), c) for c, m in enumerate(self.large)])
            self.P = sp.csr_matrix((np.ones(len(col)), (col, row_c)), shape=(n, len(self.large)))
        else:
            self.P = sp.csr_matrix((n, 0))
        if self.caps_local and caps is not None:
            self.G = sp.csr_matrix((np.ones(n), (np.arange(n), caps.group)), shape=(n, len(caps.cap)))
            gc = np.full(len(caps.cap), -1)
            for c, m in enumerate(self.large):
                gc[np.unique(caps.group[m])] = c
            gl = np.flatnonzero(gc >= 0)
            self.group_to_comp = sp.csr_matrix(
                (np.ones(len(gl)), (gl, gc[gl])), shape=(len(caps.cap), len(self.large))
            )

    def _enumerate(self, idx: np.ndarray) -> dict[str, Any]:
        m = len(idx)
        S = ((np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1).astype(np.int8)
        h = self.arrs.h[idx]
        Jc = self.arrs.J[idx][:, idx].toarray()
        Sf = S.astype(np.float64)
        obj = Sf @ h + 0.5 * np.einsum("bi,ij,bj->b", Sf, Jc, Sf)
        cnt = S.sum(axis=1)
        valid = np.ones(len(S), dtype=bool)
        if self.caps is not None and self.caps_local:
            grp = self.caps.group[idx]
            for gname in np.unique(grp):
                valid &= S[:, grp == gname].sum(axis=1) <= self.caps.cap[gname]
        return {"idx": idx, "S": S, "obj": obj, "rsum": Sf @ self.arrs.reward[idx], "cnt": cnt, "valid": valid}

    def _small_options(self, comp: dict[str, Any], gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """(energy at gamma, state row) of the best valid state per count of an enumerated component."""
        m = comp["S"].shape[1]
        e = comp["obj"] - gamma * comp["rsum"]
        cost = np.full(m + 1, np.inf)
        best = np.full(m + 1, -1)
        v = np.flatnonzero(comp["valid"])
        for b in v[np.lexsort((e[v], comp["cnt"][v]))]:
            if best[comp["cnt"][b]] < 0:
                best[comp["cnt"][b]] = b
                cost[comp["cnt"][b]] = e[b]
        return cost, best

    def update(self, X: np.ndarray, JX: np.ndarray, gamma: float) -> None:
        """Fold reads ``X`` [B, N] (and ``J @ X.T`` transposed, [B, N]) solved at ``gamma``."""
        if not self.large:
            return
        Xf = X.astype(np.float64)
        V = Xf * (self.arrs.h[None, :] + 0.5 * JX)
        costs = (self.P.T @ V.T).T
        rsums = (self.P.T @ (Xf * self.arrs.reward[None, :]).T).T
        counts = np.rint((self.P.T @ Xf.T).T).astype(np.int64)
        valid = np.ones(counts.shape, dtype=bool)
        if self.caps is not None and self.caps_local:
            over = (self.G.T @ Xf.T).T > self.caps.cap[None, :]
            valid = ~((self.group_to_comp.T @ over.T.astype(np.float64)).T > 0)
        for c, idx in enumerate(self.large):
            cnt, ok = counts[:, c], valid[:, c]
            if not ok.any():
                continue
            e = costs[:, c] - gamma * rsums[:, c]
            rows = np.flatnonzero(ok)
            rows = rows[np.lexsort((e[rows], cnt[rows]))]
            first = np.ones(len(rows), dtype=bool)
            first[1:] = cnt[rows][1:] != cnt[rows][:-1]
            for r in rows[first]:
                nn = int(cnt[r])
                old = self.cost[c][nn] - gamma * self.rsum[c][nn]
                if e[r] < old - 1e-12 * (1.0 + abs(e[r])):
                    self.cost[c][nn] = costs[r, c]
                    self.rsum[c][nn] = rsums[r, c]
                    self.states[c][nn] = X[r, idx].astype(np.int8)

    def component_best_rows(self, X: np.ndarray, JX: np.ndarray, gamma: float) -> np.ndarray:
        """Row indices of the reads that hold some large component's lowest energy at ``gamma``."""
        if not self.large:
            return np.zeros(1, dtype=np.int64)
        V = X.astype(np.float64) * (self.arrs.h[None, :] + 0.5 * JX - gamma * self.arrs.reward[None, :])
        e = (self.P.T @ V.T).T
        return np.unique(np.argmin(e, axis=0))

    def recombined_best(self, X: np.ndarray, gamma: float) -> np.ndarray:
        """Per component, the lowest-energy state at ``gamma`` among these reads (exact for small ones)."""
        arrs = self.arrs
        n = arrs.n
        x = np.zeros(n, dtype=np.int8)
        if self.large:
            Xf = X.astype(np.float64)
            JX = (arrs.J @ Xf.T).T
            V = Xf * (arrs.h[None, :] + 0.5 * JX - gamma * arrs.reward[None, :])
            e = (self.P.T @ V.T).T
            best = np.argmin(e, axis=0)
            for c, idx in enumerate(self.large):
                x[idx] = X[best[c], idx]
        for comp in self.small:
            b = int(np.argmin(comp["obj"] - gamma * comp["rsum"]))
            x[comp["idx"]] = comp["S"][b]
        if len(self.singles):
            s = self.singles
            x[s] = (arrs.h[s] - gamma * arrs.reward[s] < 0).astype(np.int8)
        return x

    def best_k(self, k: int, gamma: float) -> np.ndarray | None:
        """The lowest-energy state at ``gamma`` with exactly k ones the library can assemble, or None."""
        parts: list[tuple[str, Any, np.ndarray]] = []
        for c, idx in enumerate(self.large):
            parts.append(("large", c, self.cost[c] - gamma * self.rsum[c]))
        for comp in self.small:
            cost, best = self._small_options(comp, gamma)
            parts.append(("small", (comp, best), cost))
        if len(self.singles):
            hs = self.arrs.h[self.singles] - gamma * self.arrs.reward[self.singles]
            singles_order = self.singles[np.argsort(hs, kind="stable")]
            parts.append(("singles", singles_order, np.concatenate([[0.0], np.cumsum(np.sort(hs))])))
        dp = np.full(k + 1, np.inf)
        dp[0] = 0.0
        choice = []
        for _, _, cost in parts:
            new = np.full(k + 1, np.inf)
            arg = np.full(k + 1, -1, dtype=np.int64)
            for nn in np.flatnonzero(np.isfinite(cost[: k + 1])):
                cand = dp[: k + 1 - nn] + cost[nn]
                tgt = new[nn:]
                better = cand < tgt
                tgt[better] = cand[better]
                arg[nn:][better] = nn
            dp = new
            choice.append(arg)
        if not np.isfinite(dp[k]):
            return None
        x = np.zeros(self.arrs.n, dtype=np.int8)
        t = k
        for (kind, ref, _), arg in zip(reversed(parts), reversed(choice)):
            nn = int(arg[t])
            t -= nn
            if kind == "large":
                x[self.large[ref]] = self.states[ref][nn]
            elif kind == "small":
                comp, best = ref
                x[comp["idx"]] = comp["S"][best[nn]]
            else:
                x[ref[:nn]] = 1
        return x


# --------------------------------------------------------------------------------------------------
# The search


def _sampler_kwargs(sampler: dimod.Sampler, name: str, user: Mapping[str, Any]) -> tuple[set[str], dict[str, Any]]:
    try:
        accepted = set(sampler.parameters)
    except Exception:  # noqa: BLE001 - a duck-typed sampler without .parameters: pass what the user gave
        accepted = set()
    unknown = sorted(k for k in user if accepted and k not in accepted)
    if unknown:
        raise QpruneError(
            f"backend {name!r} does not accept sampler parameter(s) {unknown}; it accepts {sorted(accepted)}"
        )
    return accepted, dict(user)


def solve_exact_k(
    build: Any,
    k: int,
    backend: str | dimod.Sampler = "neal",
    seed: int | None = 0,
    *,
    reward: np.ndarray | Mapping[Hashable, float] | None = None,
    max_iter: int = 20,
    tol: float = 1e-4,
    search_reads: int = 15,
    final_reads: int = 100,
    max_per_group: tuple[np.ndarray, Any] | None = None,
    polish: bool = True,
    progress: bool = False,
    sampler_params: Mapping[str, Any] | None = None,
    recombine: bool = True,
    warm_start: bool = True,
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
        max_iter: gamma iterations at most (paper: 20). tol: stop when the bracket is narrower than
            ``tol * |gamma|``. search_reads / final_reads: reads per search solve / for the final solve.
        max_per_group: ``(group id per variable, max pruned per group)``; max as a scalar, an array
            indexed by group id, or a mapping. Every candidate and the final result respect it.
        polish: run the pair-swap local search on the final state.
        progress: show a tqdm bar. sampler_params: extra keyword arguments for every ``sample`` call.
        recombine: combine per-component states across reads and solves (exact DP over counts).
        warm_start: pass the previous best states as ``initial_states`` where the sampler takes them.

    Returns:
        :class:`ExactKResult` with exactly k ones; ``info`` records the search.
    """
    from qprune import backends

    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    fn, base_reward, labels_hint = _as_build(build)
    if reward is None:
        reward = base_reward
    bqm0 = _binary(fn(0.0))
    arrs = QuboArrays.from_bqm(bqm0, reward, labels_hint)
    n = arrs.n
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise QpruneError(f"k must be an integer, got {k!r}")
    k = int(k)
    if not 0 <= k <= n:
        raise QpruneError(f"k={k} is out of range: the problem has {n} variables (0 <= k <= {n})")
    for nm, v in (("max_iter", max_iter), ("search_reads", search_reads), ("final_reads", final_reads)):
        if int(v) < 0:
            raise QpruneError(f"{nm} must be >= 0, got {v}")
    caps = _make_caps(max_per_group, n, k)
    name = backend if isinstance(backend, str) else type(backend).__name__
    sampler = backends.get(backend)
    accepted, user_kwargs = _sampler_kwargs(sampler, name, dict(sampler_params or {}))

    info: dict[str, Any] = {
        "backend": name, "n": n, "k": k, "seed": seed, "recombine": recombine, "warm_start": warm_start,
        "search_reads": search_reads, "final_reads": final_reads, "iterations": [], "solves": 0,
        "solve_time_s": 0.0,
    }
    g_zero, g_full = arrs.gamma_bracket()
    info["bracket"] = [g_zero, g_full]
    lib = _Library(arrs, caps, recombine)
    bqm_cache: dict[float, dimod.BinaryQuadraticModel] = {0.0: bqm0}
    checked = [False]

    def bqm_at(gamma: float) -> dimod.BinaryQuadraticModel:
        if gamma not in bqm_cache:
            b = _binary(fn(gamma))
            if not checked[0] and gamma != 0.0:
                _check_linear(b, arrs, gamma)
                checked[0] = True
            if len(bqm_cache) > 4:
                bqm_cache.pop(next(k_ for k_ in bqm_cache if k_ != 0.0))
            bqm_cache[gamma] = b
        return bqm_cache[gamma]

    warm: list[np.ndarray] = []

    def solve(gamma: float, reads: int, phase: str) -> tuple[int, int, bool]:
        """One sampler call at ``gamma``; returns (count of the best read, recombined count, any read with k)."""
        bqm = bqm_at(gamma)
        kw: dict[str, Any] = dict(user_kwargs)
        if "num_reads" in accepted:
            kw["num_reads"] = max(1, reads)
        if "seed" in accepted:
            kw["seed"] = int(rng.integers(0, 2**31 - 1))
        else:
            rng.integers(0, 2**31 - 1)  # keep the stream aligned whatever the backend
        if warm_start and warm and "initial_states" in accepted and "num_reads" in accepted:
            # the most promising (appended last) first; the sampler fills the other reads at random
            seen: dict[bytes, np.ndarray] = {}
            for state in reversed(warm):
                seen.setdefault(np.asarray(state, dtype=np.int8).tobytes(), np.asarray(state, dtype=np.int8))
            init = np.array(list(seen.values())[: max(1, reads // 3)], dtype=np.int8)
            kw["initial_states"] = (init, arrs.labels)
        t0 = time.perf_counter()
        ss = sampler.sample(bqm, **kw)
        record = ss.record
        dt = time.perf_counter() - t0
        X_all = _columns(ss, record, arrs.labels)
        info["solves"] += 1
        info["solve_time_s"] += dt
        # chunks bound the memory when a backend returns very many rows (the exact solver: 2^N)
        chunk = max(1, (1 << 22) // max(n, 1))
        best_e, best_x, n_exact = np.inf, X_all[0], 0
        cmin, cmax, cands = n, 0, []
        for s0 in range(0, len(X_all), chunk):
            X = X_all[s0:s0 + chunk]
            Xf = X.astype(np.float64)
            JX = (arrs.J @ Xf.T).T
            lib.update(X, JX, gamma)
            counts = X.sum(axis=1, dtype=np.int64)
            energy = arrs.offset + Xf @ (arrs.h - gamma * arrs.reward) + 0.5 * np.einsum("bn,bn->b", Xf, JX)
            b = int(np.argmin(energy))
            if energy[b] < best_e:
                best_e, best_x = float(energy[b]), X[b]
            exact = counts == k
            if caps is not None and exact.any():
                exact[exact] = caps.ok_rows(X[exact])
            n_exact += int(exact.sum())
            cmin, cmax = min(cmin, int(counts.min())), max(cmax, int(counts.max()))
            cands.append(X[lib.component_best_rows(X, JX, gamma)])
        rec = lib.recombined_best(np.concatenate(cands), gamma)
        row = {
            "phase": phase, "gamma": gamma, "reads": len(X_all), "time_s": dt,
            "count_best": int(best_x.sum()), "count_recombined": int(rec.sum()),
            "count_min": cmin, "count_max": cmax, "reads_with_k": n_exact, "energy_best": best_e,
        }
        info["iterations"].append(row)
        warm[:] = [best_x.copy(), rec]
        return int(best_x.sum()), int(rec.sum()), n_exact > 0

    from tqdm.auto import tqdm

    bar = tqdm(total=max_iter + (1 if final_reads else 0), disable=not progress, desc="gamma search", leave=False)
    hit = False
    gamma_final = g_zero if k == 0 else g_full
    trivial = k in (0, n) and (caps is None or caps.ok(np.full(n, int(k == n))))
    if not trivial and n:
        lo, hi = [g_zero, -float(k)], [g_full, float(n - k)]  # (gamma, count - k)
        gamma = gamma_final = min(max(_greedy_gamma(arrs, k), g_zero), g_full)
        info["gamma_estimate"] = gamma
        last_side = 0
        history: list[tuple[float, int]] = []
        for _ in range(max_iter):
            count_best, count_rec, any_k = solve(gamma, search_reads, "search")
            bar.update(1)
            c = count_rec if recombine else count_best
            history.append((gamma, c))
            if c == k or any_k:
                hit = True
                break
            # Illinois regula falsi on f = count - k: robust to the count curve's shape
            if c < k:
                lo = [gamma, float(c - k)]
                if last_side == -1:
                    hi[1] *= 0.5
                last_side = -1
            else:
                hi = [gamma, float(c - k)]
                if last_side == 1:
                    lo[1] *= 0.5
                last_side = 1
            width = hi[0] - lo[0]
            if width <= tol * max(abs(lo[0]), abs(hi[0]), 1e-300):
                break
            t = -lo[1] / (hi[1] - lo[1]) if hi[1] != lo[1] else 0.5
            gamma = lo[0] + min(max(t, 0.02), 0.98) * width
        if history:
            gamma_final = gamma if hit else min(history, key=lambda p: (abs(p[1] - k), -p[0]))[0]
        if final_reads:
            best_k = lib.best_k(k, gamma_final)
            if best_k is not None:
                warm.append(best_k)  # last = first in line for the initial states
            solve(gamma_final, final_reads, "final")
            bar.update(1)
    bar.close()

    # choose: the library's best exact-k state, else repair the closest state
    info["hit"] = hit
    repaired, repair_moves = False, 0
    if trivial or n == 0:
        x = np.full(n, 1 if k == n else 0, dtype=np.int8)
        source = "trivial"
    else:
        x = lib.best_k(k, gamma_final)
        source = "recombined" if recombine else "read"
        if x is not None and caps is not None and not caps.ok(x):
            x, repair_moves = repair_to_k(arrs, x, k, caps, gamma_final)
            repaired = True
        if x is None:
            start = _closest_state(arrs.at(gamma_final), warm, k)
            x, repair_moves = repair_to_k(arrs, start, k, caps, gamma_final)
            repaired, source = True, "repair"
    polish_moves, polish_gain = 0, 0.0
    if polish and 0 < k < n:
        x, polish_moves, polish_gain = swap_polish(arrs, x, caps, gamma_final)
    if int(x.sum()) != k or (caps is not None and not caps.ok(x)):  # a bug, never the user's fault
        raise RuntimeError(f"exact-k invariant broken: {int(x.sum())} ones for k={k}")

    bqm_final = bqm_at(gamma_final) if n else bqm0
    objective = float(arrs.objective(x))
    energy = objective - gamma_final * float(arrs.reward @ x)
    info.update({
        "gamma": gamma_final, "source": source, "repaired": repaired, "repair_moves": repair_moves,
        "polished": bool(polish and polish_moves > 0), "polish_moves": polish_moves,
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


def _binary(bqm: Any) -> dimod.BinaryQuadraticModel:
    if not isinstance(bqm, dimod.BinaryQuadraticModel):
        raise QpruneError(f"build(gamma) must return a dimod.BinaryQuadraticModel, got {type(bqm).__name__}")
    return bqm if bqm.vartype is dimod.BINARY else bqm.change_vartype(dimod.BINARY, inplace=False)


def _check_linear(bqm: dimod.BinaryQuadraticModel, arrs: QuboArrays, gamma: float) -> None:
    lin = np.array([bqm.get_linear(v) for v in arrs.labels])
    want = arrs.h - gamma * arrs.reward
    if not np.allclose(lin, want, rtol=1e-7, atol=1e-9 * arrs.scale()):
        raise QpruneError(
            "build(gamma) is not build(0) - gamma * reward on the linear biases; pass the right "
            "reward= (a plain callable defaults to 1 per variable)"
        )


def _columns(ss: dimod.SampleSet, record: np.recarray, labels: list[Hashable]) -> np.ndarray:
    pos = {v: i for i, v in enumerate(ss.variables)}
    try:
        cols = np.array([pos[v] for v in labels], dtype=np.int64)
    except KeyError as exc:
        raise QpruneError(f"the sampler returned no value for variable {exc.args[0]!r}") from None
    X = np.asarray(record.sample)[:, cols]
    if ss.vartype is dimod.SPIN:
        X = (X + 1) // 2
    return X.astype(np.int8)


def _closest_state(arrs: QuboArrays, warm: list[np.ndarray], k: int) -> np.ndarray:
    # the last solve's recombined best and best read: start from the one nearest to k
    if not warm:
        return np.zeros(arrs.n, dtype=np.int8)
    return min(warm, key=lambda s: (abs(int(s.sum()) - k), float(arrs.objective(s))))


def lagrangian(
    bqm: dimod.BinaryQuadraticModel, reward: np.ndarray | Mapping[Hashable, float] | None = None
) -> BuildFn:
    """``gamma -> bqm - gamma * sum_i reward_i x_i`` (reward default 1): a ``build`` for a plain BQM.

    ``bqm`` is the objective; the returned BQMs are binary, labelled like ``bqm``, built from numpy
    vectors (cheap) and ``bqm`` itself is never modified.
    """
    arrs = QuboArrays.from_bqm(bqm, reward)
    coo = arrs.J.tocoo()
    upper = coo.row < coo.col
    quad = (coo.row[upper], coo.col[upper], coo.data[upper])

    def build(gamma: float) -> dimod.BinaryQuadraticModel:
        return dimod.BinaryQuadraticModel.from_numpy_vectors(
            arrs.h - float(gamma) * arrs.reward, quad, arrs.offset, dimod.BINARY, variable_order=arrs.labels
        )

    return build
