"""Recombination across reads: per connected component and per count, the best state seen in any
solve; a dynamic program over counts then assembles the best exact-k state.

The BQM is a sum over its connected components (one per layer for every built-in formulation), so a
component's state from one read can be combined with another component's state from another read.
Components of at most :data:`SMALL_COMPONENT` variables are enumerated exactly; single variables are
sorted. With a single component (any unstructured BQM) this is exactly "the best read whose count is k".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from qprune.errors import QpruneError
from qprune.solve.arrays import QuboArrays
from qprune.solve.constraint import ExactK
from qprune.solve.dp import combine_counts

__all__ = ["SMALL_COMPONENT", "ComponentLibrary"]

# Components this small are solved by enumeration (2^10 states); their library is exact.
SMALL_COMPONENT = 10


def _component_ids(arrs: QuboArrays, recombine: bool) -> np.ndarray:
    """Connected component of every variable (all 0 without recombination)."""
    if recombine and arrs.n:
        _, comp = connected_components(arrs.J, directed=False)
    else:
        comp = np.zeros(arrs.n, dtype=np.int64)
    return comp.astype(np.int64)


class ComponentLibrary:
    """Per connected component and per count, the best state seen; a DP over counts combines them.

    An entry is replaced when a new state is better at the gamma of the solve that produced it; the
    DP then scores entries at the final gamma. Within one layer the reward is constant (same P_i), so
    at a fixed count the ranking does not depend on gamma at all.
    """

    def __init__(self, arrs: QuboArrays, constraint: ExactK | None, recombine: bool) -> None:
        self.arrs = arrs
        n = arrs.n
        comp = _component_ids(arrs, recombine)
        sizes = np.bincount(comp, minlength=int(comp.max()) + 1 if n else 0)
        # group caps are enforced inside a component only when every group lies inside one component
        self.caps = caps = constraint if constraint is not None and constraint.capped else None
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
        small_limit = SMALL_COMPONENT if recombine else 0
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
        self._index_matrices()

    def _index_matrices(self) -> None:
        """Sparse maps variable -> large component (P) and, for local caps, variable -> group (G)
        and group -> component, so a batch of reads is folded with a few sparse products."""
        n, caps = self.arrs.n, self.caps
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
        try:
            _, counts = combine_counts([cost for _, _, cost in parts], k)
        except QpruneError:  # no assembly reaches k
            return None
        x = np.zeros(self.arrs.n, dtype=np.int8)
        for (kind, ref, _), nn in zip(parts, counts):
            if kind == "large":
                x[self.large[ref]] = self.states[ref][nn]
            elif kind == "small":
                comp, best = ref
                x[comp["idx"]] = comp["S"][best[nn]]
            else:
                x[ref[:nn]] = 1
        return x
