"""Per-block counts that meet a budget: a Lagrange-multiplier search over per-block count curves.

Given each block's best energy and state for every count (the layerwise strategy's curves, or a
greedy method's sorted scores), find counts ``c_b`` minimising ``sum_b E_b(c_b)`` subject to
``lo <= cost(c) <= hi`` (:class:`qprune.solve.budgets.budget.CostModel`, evaluated on the states the
curves hold, so it is exact for those states). The cost couples blocks (a conv's MACs are kept
inputs x kept outputs), so the Lagrangian ``sum_b E_b(c_b) + lam * cost(c) / full`` is minimised by
exact coordinate descent (one block at a time, every allowed count tried against the others' current
counts), warm-started along a bisection on ``lam`` to the smallest multiplier whose solution fits
under ``hi``. What the multiplier leaves between the rungs of its ladder (counts come in steps, so
``cost(lam)`` jumps) is closed by moves of one or two blocks by one allowed step each: first to
land inside ``[lo, hi]`` at the least energy, then to lower the energy while staying inside. Where
every such move overshoots (the window is narrower than one block's step, e.g. a first conv whose
unit costs more than 1 % of the model), one block goes a step back and others re-prune step by step
until the cost fits (:func:`_exchange`).
Only allowed counts are ever visited (caps, ``min_keep``, ``round_to``: :meth:`ExactK.allowed`),
so the limits hold exactly, not by clipping afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qprune.errors import QpruneError
from qprune.solve.budgets.budget import Budget, CostModel
from qprune.solve.descent import steepest
from qprune.solve.dp import bisect_price

__all__ = ["BlockTable", "BudgetSolution", "block_table", "search_counts"]

_BISECT = 48
_POLISH_ROUNDS = 200


@dataclass
class BlockTable:
    """One block's allowed counts with their energy and what each does to the cost."""

    counts: np.ndarray  # int [C] allowed counts (ascending), finite energy
    E: np.ndarray  # float [C]
    cols: np.ndarray  # int [p] cost pairs this block touches
    R: np.ndarray  # float [C, p] indices removed at those pairs
    A: np.ndarray  # float [C] separable (per-layer table) cost
    terms: np.ndarray  # int [t] product terms touching ``cols``


@dataclass
class BudgetSolution:
    """The counts chosen (per block, positions into each table's ``counts``) and what they cost."""

    pos: np.ndarray
    counts: list[int]
    energy: float
    cost: float
    full: float
    lam: float
    landed: bool
    info: dict[str, Any]


def block_table(cost: CostModel, idx: np.ndarray, E: np.ndarray, X: np.ndarray, allowed: np.ndarray) -> BlockTable:
    """The table of one block from its curve ``E`` [cap+1], states ``X`` [cap+1, m] over the global
    unit indices ``idx`` and its allowed counts."""
    E = np.asarray(E, dtype=np.float64)
    allowed = np.asarray([c for c in allowed if c < E.size and np.isfinite(E[c])], dtype=np.int64)
    if allowed.size == 0 or allowed[0] != 0:
        allowed = np.unique(np.r_[0, allowed]).astype(np.int64)
    Xc = np.asarray(X, dtype=np.float64)[allowed]
    Ub = cost.U[np.asarray(idx, dtype=np.int64)]
    cols = np.unique(Ub.indices)
    R = np.asarray((Ub[:, cols].T @ Xc.T).T) if cols.size else np.zeros((allowed.size, 0))
    A = np.zeros(allowed.size)
    if cost.additive is not None:
        lids = cost.layer_ids[np.asarray(idx, dtype=np.int64)]
        for lay in np.unique(lids):
            n_l = Xc[:, lids == lay].sum(axis=1).round().astype(np.int64)
            A += cost.additive[int(lay), n_l]
    touched = np.isin(cost.cols, cols).any(axis=1) if cols.size else np.zeros(cost.cols.shape[0], bool)
    e = np.where(np.isfinite(E[allowed]), E[allowed], 0.0)
    return BlockTable(allowed, e, cols, R, A, np.flatnonzero(touched))


class _State:
    """Current counts and the removed indices they add up to; evaluates moves of one block."""

    def __init__(self, cost: CostModel, tables: list[BlockTable]) -> None:
        self.cost, self.tables = cost, tables
        self.pos = np.zeros(len(tables), dtype=np.int64)
        self.removed = np.zeros(cost.n_pairs)

    def set(self, pos: np.ndarray) -> None:
        self.pos = np.asarray(pos, dtype=np.int64).copy()
        self.removed = np.zeros(self.cost.n_pairs)
        for t, p in zip(self.tables, self.pos):
            self.removed[t.cols] += t.R[p]

    def total(self) -> float:
        kept = np.r_[self.cost.size - self.removed, 1.0]
        out = self.cost.const + float((np.prod(kept[self.cost.cols], axis=1) * self.cost.coeff).sum())
        return out + float(sum(t.A[p] for t, p in zip(self.tables, self.pos)))

    def energy(self) -> float:
        return float(sum(t.E[p] for t, p in zip(self.tables, self.pos)))

    def costs_of(self, b: int, cand: np.ndarray) -> np.ndarray:
        """Total cost for every candidate position ``cand`` of block ``b`` (others fixed)."""
        t = self.tables[b]
        base = self.total() - t.A[self.pos[b]]
        if t.terms.size == 0:
            return base + t.A[cand]
        cols = self.cost.cols[t.terms]  # [tt, D]
        coeff = self.cost.coeff[t.terms]
        kept = np.r_[self.cost.size - self.removed, 1.0]
        now = float((np.prod(kept[cols], axis=1) * coeff).sum())
        K = np.repeat(kept[None, :], cand.size, axis=0)
        K[:, t.cols] += t.R[self.pos[b]][None, :] - t.R[cand]
        new = (np.prod(K[:, cols], axis=2) * coeff[None, :]).sum(axis=1)
        return base - now + new + t.A[cand]

    def move(self, b: int, p: int) -> None:
        t = self.tables[b]
        self.removed[t.cols] += t.R[p] - t.R[self.pos[b]]
        self.pos[b] = p


def _descend(state: _State, lam: float, scale: float, max_sweeps: int = 30) -> None:
    """Exact coordinate descent on ``energy + lam * cost / scale``."""
    for _ in range(max_sweeps):
        changed = False
        for b, t in enumerate(state.tables):
            cand = np.arange(t.counts.size)
            f = t.E + lam * state.costs_of(b, cand) / scale
            best = int(np.argmin(f))
            if f[best] < f[state.pos[b]] - 1e-12 * max(1.0, abs(f[best])):
                state.move(b, best)
                changed = True
        if not changed:
            return


def search_counts(cost: CostModel, budget: Budget, tables: list[BlockTable]) -> BudgetSolution:
    """Counts per block within ``budget`` at the least total energy found (see the module doc).

    Raises a QpruneError when even the most pruning the limits allow stays above the budget.
    """
    full = cost.full()
    lo, hi = budget.window(full)
    state = _State(cost, tables)
    most = np.array([t.counts.size - 1 for t in tables], dtype=np.int64)
    state.set(most)
    # the fewest kept any allowed counts reach (a coupled cost is lowest with every block at its most)
    floor = state.total()
    if floor > hi + 1e-9 * full:
        raise QpruneError(f"budget {budget.text} cannot be met: the per-layer limits keep at least "
                          f"{floor / full:.4f} of the {cost.kind}")
    scale = max(full, 1e-300)
    e_span = float(sum(np.ptp(t.E) for t in tables)) or 1.0
    state.set(np.zeros(len(tables), dtype=np.int64))
    best: tuple[np.ndarray, float] | None = None
    if state.total() <= hi:
        best = (state.pos.copy(), 0.0)
    lam_lo, lam_hi = 0.0, e_span
    for _ in range(200):  # grow the multiplier until its solution fits
        _descend(state, lam_hi, scale)
        if state.total() <= hi:
            break
        lam_lo, lam_hi = lam_hi, lam_hi * 4.0
    else:
        state.set(most)
    if best is None:
        seen = [(state.pos.copy(), lam_hi)]

        def fits(lam: float) -> bool:
            _descend(state, lam, scale)
            if state.total() <= hi:
                seen.append((state.pos.copy(), lam))
                return True
            return False

        bisect_price(fits, lam_lo, lam_hi, steps=_BISECT, rel_tol=1e-9)
        best = seen[-1]
    state.set(best[0])
    if state.total() > hi:  # the last descent may not reproduce: fall back to the most pruned
        state.set(most)
    moves = _land(state, lo, hi)
    polish = _polish(state, lo, hi)
    c = state.total()
    counts = [int(t.counts[p]) for t, p in zip(tables, state.pos)]
    return BudgetSolution(state.pos.copy(), counts, state.energy(), c, full, best[1], bool(lo <= c <= hi),
                          {"land_moves": moves, "polish_moves": polish, "window": [lo, hi]})


def _steps(state: _State) -> list[tuple[int, int]]:
    """Every one-step move (block, new position): one allowed count up or down."""
    out = []
    for b, t in enumerate(state.tables):
        p = int(state.pos[b])
        if p > 0:
            out.append((b, p - 1))
        if p + 1 < t.counts.size:
            out.append((b, p + 1))
    return out


def _pair_moves(state: _State) -> list[tuple[tuple[int, int], ...]]:
    singles = _steps(state)
    pairs: list[tuple[tuple[int, int], ...]] = [(m,) for m in singles]
    for i, a in enumerate(singles):
        for b in singles[i + 1:]:
            if a[0] != b[0]:
                pairs.append((a, b))
    return pairs


def _exchange(state: _State, lo: float, hi: float) -> int:
    """From below ``lo``: for every block, one step less pruned (over ``hi``), then single steps of
    more pruning elsewhere, the least energy per cost first, until the cost fits; the lowest-energy
    landing is kept (the state is unchanged when none lands). Returns the steps taken."""
    start = state.pos.copy()
    best: tuple[float, np.ndarray, int] | None = None
    for b in range(len(state.tables)):
        if start[b] == 0:
            continue
        state.set(start)
        state.move(b, int(start[b]) - 1)
        steps = 1
        while state.total() > hi:
            c, e = state.total(), state.energy()
            options = []
            for k, p in _steps(state):
                if k != b and p > state.pos[k]:
                    cost, energy = _try(state, ((k, p),))
                    if cost < c:
                        options.append((cost, energy, ((k, p),)))
            if not options:
                break
            fits = [o for o in options if lo <= o[0] <= hi]
            chosen = min(fits, key=lambda o: o[1]) if fits else \
                min(options, key=lambda o: (o[1] - e) / max(c - o[0], 1e-300))
            for k, p in chosen[2]:
                state.move(k, p)
            steps += 1
        if lo <= state.total() <= hi and (best is None or state.energy() < best[0]):
            best = (state.energy(), state.pos.copy(), steps)
    state.set(start if best is None else best[1])
    return 0 if best is None else best[2]


def _try(state: _State, moves: tuple[tuple[int, int], ...]) -> tuple[float, float]:
    """(cost, energy) after ``moves``; the state is left as it was."""
    old = [(b, int(state.pos[b])) for b, _ in moves]
    for b, p in moves:
        state.move(b, p)
    out = (state.total(), state.energy())
    for b, p in reversed(old):
        state.move(b, p)
    return out


def _land(state: _State, lo: float, hi: float) -> int:
    """From a state under ``hi``, move up to ``lo`` (un-pruning) by one- and two-block steps, then
    by an exchange when those are stuck."""
    n = 0
    for _ in range(10_000):
        c = state.total()
        if c >= lo:
            return n
        single = [((b, p),) for b, p in _steps(state)]
        inside, up = _candidates(state, single, lo, hi, c)
        if not inside:
            inside2, up2 = _candidates(state, _pair_moves(state), lo, hi, c)
            inside, up = inside2, up or up2
        if not inside and not up:  # stuck between rungs: un-prune one block, re-prune others to fit
            return n + _exchange(state, lo, hi)
        if inside:
            chosen = min(inside, key=lambda r: r[1])[2]
        elif up:
            # progress: the least energy per unit of cost gained (un-pruning usually lowers energy)
            chosen = min(up, key=lambda r: (r[1] - state.energy()) / max(r[0] - c, 1e-300))[2]
        else:
            return n
        for b, p in chosen:
            state.move(b, p)
        n += 1
    return n


def _candidates(state: _State, moves: list[tuple[tuple[int, int], ...]], lo: float, hi: float, c: float,
                ) -> tuple[list[tuple[float, float, Any]], list[tuple[float, float, Any]]]:
    inside, up = [], []
    for mv in moves:
        cost, energy = _try(state, mv)
        if lo <= cost <= hi:
            inside.append((cost, energy, mv))
        elif c < cost <= hi:
            up.append((cost, energy, mv))
    return inside, up


def _polish(state: _State, lo: float, hi: float) -> int:
    """Moves of one or two blocks by one step that lower the energy and stay inside ``[lo, hi]``."""
    c = state.total()
    if not lo <= c <= hi:
        return 0

    def best() -> tuple[float, tuple[tuple[int, int], ...]] | None:
        e = state.energy()
        found, best_e = None, e - 1e-12 * max(1.0, abs(e))
        for mv in _pair_moves(state):
            cost, energy = _try(state, mv)
            if lo <= cost <= hi and energy < best_e:
                found, best_e = mv, energy
        return None if found is None else (best_e - e, found)

    def apply(moves: tuple[tuple[int, int], ...]) -> None:
        for b, p in moves:
            state.move(b, p)

    return steepest(best, apply, _POLISH_ROUNDS)[0]


def score_tables(cost: CostModel, scores: np.ndarray, limits: Any) -> tuple[list[BlockTable], list[np.ndarray]]:
    """Greedy curves per layer: count c prunes the layer's c lowest scores, at energy their sum.

    ``limits`` is a per-layer :class:`~qprune.solve.constraint.ExactK`; returns the tables and, per
    layer, its units in the order they go.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise QpruneError("greedy scores contain NaN or inf; check the calibration signals")
    tables, orders = [], []
    for g in range(len(limits.cap)):
        idx = np.flatnonzero(limits.group == g)
        if idx.size == 0:
            continue
        order = idx[np.argsort(scores[idx], kind="stable")]
        m = idx.size
        X = np.tril(np.ones((m + 1, m)), k=-1)  # row c: the first c of ``order``
        E = np.r_[0.0, np.cumsum(scores[order])]
        tables.append(block_table(cost, order, E, X, limits.allowed(g)))
        orders.append(order)
    return tables, orders
