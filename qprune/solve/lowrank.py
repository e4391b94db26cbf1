"""Local search on the WHOLE energy of a formulation with a factored part, never forming N x N.

A :class:`~qprune.qubo.formulation.Formulation` with a ``factor`` C couples units of different
layers by ``(C^T C)_ij``. The layerwise strategy solves the block-diagonal part exactly per count;
what it cannot see, the couplings between layers, is taken into account here, starting from its
mask: steepest descent by swaps (one unit pruned, one kept; the count holds) for an exact k, and by
swaps and single flips that keep the cost inside the window for a budget (the cost of every
candidate is exact, :class:`~qprune.solve.budgets.budget.CostModel`), both within the per-layer limits.

The state keeps the field ``h = dE/dx`` (flipping x_i from 0 to 1 changes E by h_i) and updates it
in O(S N) per move from ``C^T C_u`` (CHITA's device: the factor, not the matrix); candidate pairs
are the ``window`` best of each side, their couplings ``C_I^T C_J`` (within a layer: the block's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from qprune.solve.budgets.budget import CostModel
from qprune.solve.constraint import ExactK
from qprune.solve.descent import steepest

if TYPE_CHECKING:  # pragma: no cover
    from qprune.qubo.formulation import Formulation

__all__ = ["FactoredState", "polish_budget", "polish_exact_k"]

WINDOW = 48  #: candidates per side of a swap (the best by their own flip gain)


class FactoredState:
    """A mask of a formulation with its field, updated per flip in O(S N)."""

    def __init__(self, formulation: Formulation, x: np.ndarray, gamma: float = 0.0) -> None:
        f = formulation
        n = len(f.labels)
        self.C = np.zeros((0, n)) if f.factor is None else f.factor
        self.layer = np.full(n, -1, dtype=np.int64)
        self.pos = np.zeros(n, dtype=np.int64)
        self.blocks = f.blocks
        for b, (idx, _) in enumerate(f.blocks):
            self.layer[idx] = b
            self.pos[idx] = np.arange(idx.size)
        self.cross = None if f.cross is None or not f.cross.nnz else (f.cross + f.cross.T).tocsc()
        self.x = np.asarray(x, dtype=np.int8).copy()
        xf = self.x.astype(np.float64)
        h = np.asarray(f.linear, dtype=np.float64) - float(gamma) * np.asarray(f.reward, dtype=np.float64)
        for idx, M in f.blocks:
            h[idx] += M @ xf[idx]
        if self.cross is not None:
            h += self.cross @ xf
        r = self.C @ xf
        for idx, _ in f.blocks:  # cross-layer part: C_i . (C x - C_l x_l)
            h[idx] += self.C[:, idx].T @ (r - self.C[:, idx] @ xf[idx])
        self.h = h
        self.energy = float(formulation.energy(self.x, gamma))

    def column(self, u: int) -> np.ndarray:
        """Q[:, u]: the couplings of unit u with every unit."""
        col = self.C.T @ self.C[:, u]
        b = self.layer[u]
        idx, M = self.blocks[b]
        col[idx] = M[:, self.pos[u]]
        if self.cross is not None:
            col += self.cross[:, u].toarray().ravel()
        col[u] = 0.0
        return col

    def pair_couplings(self, I: np.ndarray, J: np.ndarray) -> np.ndarray:
        """Q[I][:, J] (|I| x |J|)."""
        Q = self.C[:, I].T @ self.C[:, J]
        same = self.layer[I][:, None] == self.layer[J][None, :]
        for a, b in zip(*np.nonzero(same)):
            idx, M = self.blocks[self.layer[I[a]]]
            Q[a, b] = M[self.pos[I[a]], self.pos[J[b]]]
        if self.cross is not None:
            Q += self.cross[I][:, J].toarray()
        return Q

    def flip(self, u: int) -> None:
        s = 1.0 if self.x[u] == 0 else -1.0
        self.energy += s * self.h[u]
        self.h += s * self.column(u)
        self.x[u] ^= 1


class _Move(NamedTuple):
    """(energy change, units to flip): what :func:`qprune.solve.descent.steepest` takes."""

    delta: float
    units: tuple[int, ...]


def _swap_candidates(st: FactoredState, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``window`` best units to prune and to keep, and the energy change of every swap of them."""
    zero, one = np.flatnonzero(st.x == 0), np.flatnonzero(st.x == 1)
    I = zero[np.argsort(st.h[zero], kind="stable")[:window]]
    J = one[np.argsort(-st.h[one], kind="stable")[:window]]
    delta = st.h[I][:, None] - st.h[J][None, :] - st.pair_couplings(I, J)
    return I, J, delta


def _tol(st: FactoredState) -> float:
    return -1e-12 * max(1.0, abs(st.energy))


def polish_exact_k(formulation: Formulation, x: np.ndarray, constraint: ExactK, *, gamma: float = 0.0,
                   window: int = WINDOW, max_moves: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Steepest swap descent on the whole energy from ``x`` (exactly k ones, within the caps)."""
    st = FactoredState(formulation, x, gamma)
    start = st.energy
    limit = len(formulation.labels) if max_moves is None else int(max_moves)
    counts = constraint.counts(st.x) if constraint.capped else None

    def best() -> _Move | None:
        if not st.x.any() or st.x.all():
            return None
        I, J, delta = _swap_candidates(st, window)
        for f in np.argsort(delta, axis=None, kind="stable"):
            a, b = divmod(int(f), J.size)
            if delta[a, b] >= _tol(st):
                return None
            i, j = int(I[a]), int(J[b])
            if counts is None or constraint.group[i] == constraint.group[j] \
                    or counts[constraint.group[i]] < constraint.cap[constraint.group[i]]:
                return _Move(float(delta[a, b]), (i, j))
        return None

    def apply(move: tuple[int, ...]) -> None:
        i, j = move
        st.flip(i)
        st.flip(j)
        if counts is not None:
            counts[constraint.group[i]] += 1
            counts[constraint.group[j]] -= 1

    moves, _ = steepest(best, apply, limit)
    return st.x, {"moves": moves, "energy_before": start, "energy_after": st.energy}


def polish_budget(formulation: Formulation, x: np.ndarray, cost: CostModel, window_cost: tuple[float, float],
                  limits: ExactK, *, gamma: float = 0.0, window: int = WINDOW,
                  max_moves: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Steepest descent on the whole energy by swaps and single flips whose cost stays inside
    ``window_cost = (lo, hi)`` and whose per-layer counts stay allowed by ``limits``."""
    lo, hi = window_cost
    st = FactoredState(formulation, x, gamma)
    start = st.energy
    limit = len(formulation.labels) if max_moves is None else int(max_moves)

    def apply(units: tuple[int, ...]) -> None:
        for u in units:
            st.flip(u)

    moves, _ = steepest(lambda: _best_budget_move(st, cost, lo, hi, limits, window), apply, limit)
    return st.x, {"moves": moves, "energy_before": start, "energy_after": st.energy}


def _best_budget_move(st: FactoredState, cost: CostModel, lo: float, hi: float, limits: ExactK,
                      window: int) -> _Move | None:
    """The best energy-lowering flip or swap that stays in the window and the limits (None: none)."""
    tol = _tol(st)
    options: list[_Move] = []
    for want in (0, 1):  # flips: prune one more / keep one more
        cand = np.flatnonzero(st.x == want)
        gain = st.h[cand] if want == 0 else -st.h[cand]
        cand = cand[np.argsort(gain, kind="stable")[:window]]
        gain = st.h[cand] if want == 0 else -st.h[cand]
        good = gain < tol
        if good.any():
            c = cost.costs_after_flips(st.x, cand[good])
            options += [_Move(float(g), (int(u),)) for u, g, cc in zip(cand[good], gain[good], c) if lo <= cc <= hi]
    if st.x.any() and not st.x.all():
        I, J, delta = _swap_candidates(st, window)
        if (delta < tol).any():
            c = cost.costs_after_swaps(st.x, I, J)
            for a, b in zip(*np.nonzero((delta < tol) & (c >= lo) & (c <= hi))):
                options.append(_Move(float(delta[a, b]), (int(I[a]), int(J[b]))))
    for move in sorted(options, key=lambda m: m.delta):
        trial = st.x.copy()
        trial[list(move.units)] ^= 1
        if limits.within_caps(trial)[0]:
            return move
    return None
