"""The one exact-k constraint every solver, baseline, repair and refinement works in.

A mask x (1 = pruned) is feasible when ``sum(x) == k`` and, for every group g (a layer, usually),
``sum(x[group == g]) <= cap[g]``: pruning a whole layer would disconnect the network, so the
per-layer ``min_keep`` becomes a cap on how many of its units may go. Built once (from the space's
layer ids, or from a ``(group ids, caps)`` pair) and passed down, so every consumer enforces the
same set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Hashable, Mapping, Sequence

import dimod
import numpy as np

from qprune.errors import QpruneError


@dataclass(frozen=True)
class ExactK:
    """``sum(x) == k`` and at most ``cap[g]`` ones in group ``g`` (``group`` None: no caps).

    ``group`` holds one group index per variable in ``0..G-1``; ``cap`` one limit per group.
    Use :meth:`build` to make one from user input; the constructor trusts its arguments.
    """

    n: int
    k: int
    group: np.ndarray | None = None  # int64 [N], 0..G-1
    cap: np.ndarray | None = None  # int64 [G]
    round_to: int = 1  # kept count of every group a multiple of this (or the whole group kept)

    # ----- construction
    @classmethod
    def build(cls, n: int, k: int, max_per_group: Any = None, *, name: str = "max_per_group") -> ExactK:
        """From ``max_per_group = (group id per variable, max pruned per group)`` or None.

        Group ids may be any hashable values; the max counts an int (the same for every group),
        a mapping id -> count (missing groups: no limit) or an array indexed by integer group id.
        Raises a QpruneError naming the problem (and the argument, ``name``) when the input is
        malformed or k is unreachable.
        """
        n, k = int(n), int(k)
        if not 0 <= k <= n:
            raise QpruneError(f"k={k} is outside [0, {n}] for {n} variables")
        if max_per_group is None:
            return cls(n, k)
        try:
            group_ids, max_count = max_per_group
        except (TypeError, ValueError):
            raise QpruneError(f"{name} must be a pair (group id per variable, max pruned per group)") from None
        gid = np.asarray(group_ids).ravel()
        if gid.shape != (n,):
            raise QpruneError(f"{name}: {gid.size} group ids for {n} variables")
        uniq, group = np.unique(gid, return_inverse=True)
        size = np.bincount(group, minlength=len(uniq))
        cap = _caps(uniq, size, max_count, name)
        out = cls(n, k, group.astype(np.int64), np.minimum(cap, size).astype(np.int64))
        if out.reachable < k:
            raise QpruneError(f"k={k} cannot be met: the group caps allow at most {out.reachable} pruned units")
        return out

    @classmethod
    def per_layer(cls, layer_ids: np.ndarray | None, k: int, max_per_layer: Any = None) -> ExactK:
        """``max_per_layer`` (int, mapping or array indexed by layer id) over ``layer_ids``."""
        if layer_ids is None:
            raise QpruneError("per_layer needs the layer id of every unit")
        ids = np.asarray(layer_ids).ravel()
        return cls.build(ids.size, k, None if max_per_layer is None else (ids, max_per_layer), name="max_per_layer")

    @classmethod
    def layer_limits(cls, layer_ids: np.ndarray, k: int = 0, *, min_keep: int = 1, min_keep_frac: float | None = None,
                     max_prune: Any = None, round_to: int = 1) -> ExactK:
        """Per-layer limits as caps: keep at least ``max(min_keep, ceil(min_keep_frac * size))`` of
        every layer, prune at most ``max_prune`` (an int or a fraction in (0, 1] of the layer; or a
        mapping / array per layer id), and keep a multiple of ``round_to`` (``allowed``).

        ``k`` is the exact count for the exact-k solvers; a budget solve ignores it (use 0).
        """
        ids = np.asarray(layer_ids, dtype=np.int64).ravel()
        size = np.bincount(ids) if ids.size else np.zeros(0, np.int64)
        if isinstance(round_to, bool) or int(round_to) != round_to or int(round_to) < 1:
            raise QpruneError(f"round_to={round_to!r} must be a positive integer")
        keep = np.full(size.size, max(int(min_keep), 1), dtype=np.int64)
        if min_keep_frac is not None:
            if not 0.0 <= float(min_keep_frac) < 1.0:
                raise QpruneError(f"min_keep fraction {min_keep_frac!r} must lie in [0, 1)")
            keep = np.maximum(keep, np.ceil(float(min_keep_frac) * size - 1e-9).astype(np.int64))
        cap = np.maximum(size - keep, 0)
        if max_prune is not None:
            cap = np.minimum(cap, _max_prune(max_prune, size))
        out = cls(ids.size, int(k), ids, cap.astype(np.int64), int(round_to))
        if int(k) > out.reachable:
            raise QpruneError(f"k={k} cannot be met: the per-layer limits allow at most {out.reachable} pruned units")
        return out

    def allowed(self, g: int) -> np.ndarray:
        """The pruned counts group ``g`` may take: 0..cap whose kept count is a multiple of ``round_to``
        (0, the whole group kept, always)."""
        size = self.n if self.group is None else int(self.size[g])
        cap = size if self.cap is None else int(min(self.cap[g], size))
        c = np.arange(cap + 1)
        return c[((size - c) % self.round_to == 0) | (c == 0)]

    @classmethod
    def for_space(cls, space: Any, k: int = 0, *, min_keep_frac: float | None = None, max_prune: Any = None,
                  round_to: int = 1) -> ExactK:
        """The feasible set of a filter space: exactly ``k`` of its units, at most
        ``space.max_pruned_per_layer`` of each layer (its ``min_keep``), and the budget limits
        (:meth:`layer_limits`; a budget solve ignores ``k``). The one place a space's caps are made."""
        caps = np.asarray(space.max_pruned_per_layer)
        if int(k) > int(caps.sum()):
            raise QpruneError(f"k={k} exceeds the {int(caps.sum())} units that may go while keeping "
                              f"min_keep={space.min_keep} per layer")
        return cls.layer_limits(space.layer_ids, k, min_keep=space.min_keep, min_keep_frac=min_keep_frac,
                                max_prune=max_prune, round_to=round_to)

    @classmethod
    def coerce(cls, n: int, k: int, constraint: ExactK | None = None) -> ExactK:
        """``constraint`` checked against ``(n, k)`` (None: exactly k, no caps); what every solver,
        baseline and refiner calls on its ``constraint=`` (the one form the caps take)."""
        if constraint is None:
            return cls.build(n, k)
        if not isinstance(constraint, ExactK):
            raise QpruneError(f"constraint must be an ExactK, got {type(constraint).__name__}")
        if (constraint.n, constraint.k) != (int(n), int(k)):
            raise QpruneError(f"the constraint is for n={constraint.n}, k={constraint.k}; "
                              f"this problem has n={int(n)} and asks for k={int(k)}")
        return constraint

    def with_k(self, k: int) -> ExactK:
        """The same caps with another count."""
        if not 0 <= int(k) <= self.reachable:
            raise QpruneError(f"k={k} is outside [0, {self.reachable}] (what the caps allow)")
        return ExactK(self.n, int(k), self.group, self.cap, self.round_to)

    def restrict(self, idx: Sequence[int] | np.ndarray, k: int, fixed: np.ndarray | None = None) -> ExactK:
        """The constraint on the variables ``idx`` alone, with count ``k``; ``fixed`` (a full mask)
        holds the values of the other variables, whose ones use up their groups' caps."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.group is None or self.cap is None:
            return ExactK(idx.size, int(k))
        cap = self.cap.copy()
        if fixed is not None:
            rest = np.ones(self.n, dtype=bool)
            rest[idx] = False
            cap -= np.bincount(self.group[rest], weights=np.asarray(fixed)[rest], minlength=cap.size).astype(np.int64)
        used, group = np.unique(self.group[idx], return_inverse=True)
        sub = ExactK(idx.size, int(k), group.astype(np.int64), np.maximum(cap[used], 0), self.round_to)
        if sub.reachable < k:
            raise QpruneError(f"k={k} cannot be met on these {idx.size} variables: the caps allow {sub.reachable}")
        return sub

    # ----- facts
    @property
    def capped(self) -> bool:
        return self.group is not None

    @property
    def size(self) -> np.ndarray | None:
        """Variables per group (None without caps)."""
        return None if self.group is None else np.bincount(self.group, minlength=len(self.cap))

    @property
    def reachable(self) -> int:
        """The most ones the caps allow."""
        return self.n if self.group is None else int(np.minimum(self.cap, self.size).sum())

    def as_pair(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(group index per variable, cap per group)``, or None without caps."""
        return None if self.group is None else (self.group, self.cap)

    # ----- checks
    def counts(self, x: np.ndarray) -> np.ndarray:
        """Ones per group of one mask ``[N]``."""
        if self.group is None:
            return np.array([int(np.sum(x))])
        return np.bincount(self.group, weights=np.asarray(x, dtype=np.float64), minlength=len(self.cap)).astype(np.int64)

    def counts_rows(self, X: np.ndarray) -> np.ndarray:
        """Ones per group of every row of ``X [B, N]`` -> ``[B, G]``."""
        X = np.asarray(X)
        if self.group is None:
            return X.sum(axis=1, dtype=np.int64)[:, None]
        onehot = np.zeros((self.n, len(self.cap)))
        onehot[np.arange(self.n), self.group] = 1.0
        return np.rint(X.astype(np.float64) @ onehot).astype(np.int64)

    def within_caps(self, X: np.ndarray) -> np.ndarray:
        """Per row of ``X [B, N]``: no group over its cap (the count is not checked)."""
        X = np.atleast_2d(X)
        if self.group is None:
            return np.ones(X.shape[0], dtype=bool)
        c = self.counts_rows(X)
        ok = np.all(c <= self.cap[None, :], axis=1)
        if self.round_to > 1:
            ok &= np.all(((self.size[None, :] - c) % self.round_to == 0) | (c == 0), axis=1)
        return ok

    def ok_rows(self, X: np.ndarray) -> np.ndarray:
        """Per row of ``X [B, N]``: feasible (exactly k ones, every group within its cap)?"""
        X = np.atleast_2d(X)
        return (X.sum(axis=1, dtype=np.int64) == self.k) & self.within_caps(X)

    def ok(self, x: np.ndarray) -> bool:
        """Is the single mask ``x [N]`` feasible?"""
        return bool(self.ok_rows(np.asarray(x)[None, :])[0])

    def room(self, x: np.ndarray) -> np.ndarray | None:
        """Per variable: may it still be set without passing its group's cap? (None: no caps)"""
        if self.group is None:
            return None
        return (self.cap - self.counts(x))[self.group] > 0

    # ----- making and mending masks
    def first_fit(self, order: np.ndarray) -> np.ndarray:
        """Set variables in ``order`` until k are set, skipping those whose group is full (int8)."""
        x = np.zeros(self.n, dtype=np.int8)
        if self.group is None:
            x[np.asarray(order)[:self.k]] = 1
            return x
        room = self.cap.copy()
        taken = 0
        for i in order:
            if taken == self.k:
                break
            if room[self.group[i]] > 0:
                x[i] = 1
                room[self.group[i]] -= 1
                taken += 1
        return x

    def random(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """``m`` random feasible masks (uniform over k-subsets when uncapped) ``[m, N]`` int8."""
        order = np.argsort(rng.random((m, self.n)), axis=1)
        if self.group is None:
            X = np.zeros((m, self.n), dtype=np.int8)
            np.put_along_axis(X, order[:, :self.k], 1, axis=1)
            return X
        return np.stack([self.first_fit(perm) for perm in order]) if m else np.zeros((0, self.n), np.int8)

    def swaps(self, rng: np.random.Generator, x: np.ndarray, m: int) -> np.ndarray:
        """``m`` neighbours of ``x`` one swap away (a one cleared, a zero set), each within the caps."""
        X = np.repeat(np.asarray(x, dtype=np.int8)[None, :], m, axis=0)
        ones, zeros = np.flatnonzero(x), np.flatnonzero(np.asarray(x) == 0)
        if ones.size == 0 or zeros.size == 0:
            return X
        if self.group is None:
            rows = np.arange(m)
            X[rows, rng.choice(ones, m)] = 0
            X[rows, rng.choice(zeros, m)] = 1
            return X
        counts = self.counts(x)
        for row in X:
            i = rng.choice(ones)
            room = self.cap - counts
            room[self.group[i]] += 1
            allowed = zeros[room[self.group[zeros]] > 0]
            if allowed.size:
                row[i], row[rng.choice(allowed)] = 0, 1
        return X

    def repair(self, X: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Every row of ``X`` made feasible with few flips, led by ``key`` (``[N]`` or ``[B, N]``,
        higher = more wanted as a one): groups over their cap and rows with too many ones clear
        their lowest-key ones; rows with too few set their highest-key zeros that still fit."""
        X = np.array(X, dtype=np.int8, copy=True, ndmin=2)
        key = np.broadcast_to(np.asarray(key, dtype=np.float64), X.shape)
        if self.group is None:
            s = X.sum(axis=1, dtype=np.int64)
            for excess, value, sign in ((s - self.k, 1, 1.0), (self.k - s, 0, -1.0)):
                if np.any(excess > 0):
                    K = np.where(X == value, sign * key, np.inf)
                    rank = np.argsort(np.argsort(K, axis=1, kind="stable"), axis=1, kind="stable")
                    X[(rank < excess[:, None]) & (X == value)] = 1 - value
            return X
        for row, kr in zip(X, key):
            self._repair_row(row, kr)
        return X

    def _repair_row(self, row: np.ndarray, kr: np.ndarray) -> None:
        counts = self.counts(row)
        for g in np.flatnonzero(counts > self.cap):  # groups over their cap shed their least wanted ones
            members = np.flatnonzero((self.group == g) & (row == 1))
            row[members[np.argsort(kr[members], kind="stable")[:counts[g] - self.cap[g]]]] = 0
            counts[g] = self.cap[g]
        s = int(counts.sum())
        if s > self.k:
            ones = np.flatnonzero(row == 1)
            row[ones[np.argsort(kr[ones], kind="stable")[:s - self.k]]] = 0
            return
        zeros = np.flatnonzero(row == 0)
        for i in zeros[np.argsort(-kr[zeros], kind="stable")]:
            if s == self.k:
                break
            if counts[self.group[i]] < self.cap[self.group[i]]:
                row[i] = 1
                counts[self.group[i]] += 1
                s += 1

    def enumerate(self) -> np.ndarray:
        """Every feasible mask ``[M, N]`` (only for small n: C(n, k) rows are built)."""
        X = np.zeros((math.comb(self.n, self.k), self.n), dtype=np.int8)
        for r, ones in enumerate(combinations(range(self.n), self.k)):
            X[r, list(ones)] = 1
        return X[self.ok_rows(X)] if X.size else X

    # ----- as a constrained model
    def add_to_cqm(self, cqm: dimod.ConstrainedQuadraticModel, labels: Sequence[Hashable], *,
                   count_label: str = "k", cap_label: str = "cap_{}") -> None:
        """Add ``sum(x) == k`` (label ``count_label``) and one ``<= cap`` per binding group to ``cqm``
        (label ``cap_label.format(group index)``); a cap at or above its group's size adds nothing."""
        if len(labels) != self.n:
            raise QpruneError(f"{len(labels)} labels for a constraint on {self.n} variables")
        cqm.add_constraint_from_iterable([(v, 1) for v in labels], "==", rhs=self.k, label=count_label)
        if self.group is None:
            return
        size = self.size
        for g in range(len(self.cap)):
            if self.cap[g] < size[g]:
                members = [labels[i] for i in np.flatnonzero(self.group == g)]
                cqm.add_constraint_from_iterable([(v, 1) for v in members], "<=", rhs=int(self.cap[g]),
                                                 label=cap_label.format(g))


def _max_prune(max_prune: Any, size: np.ndarray) -> np.ndarray:
    """``max_prune`` per layer: an int count, a float fraction in [0, 1] of the layer, or a mapping /
    array of those by layer id."""
    if isinstance(max_prune, Mapping):
        raw = [max_prune.get(g, size[g]) for g in range(size.size)]
    elif np.ndim(max_prune) == 0:
        raw = [max_prune] * size.size
    else:
        raw = list(np.asarray(max_prune).ravel())
        if len(raw) != size.size:
            raise QpruneError(f"max_prune: {len(raw)} values for {size.size} layers")
    out = np.zeros(size.size, dtype=np.int64)
    for g, v in enumerate(raw):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) or v < 0:
            raise QpruneError(f"max_prune={v!r} must be a count >= 0 or a fraction in (0, 1]")
        if isinstance(v, (float, np.floating)):  # a fraction of the layer; an int is a count
            if v > 1:
                raise QpruneError(f"max_prune={v!r} must be a count >= 0 or a fraction in (0, 1]")
            out[g] = int(math.floor(float(v) * size[g] + 1e-9))
        else:
            out[g] = int(v)
    return out


def _caps(uniq: np.ndarray, size: np.ndarray, max_count: Any, name: str = "max_per_group") -> np.ndarray:
    """One limit per distinct group id from an int, a mapping or an array indexed by id."""
    if isinstance(max_count, Mapping):
        cap = np.array([int(max_count.get(u.item(), s)) for u, s in zip(uniq, size)])
    elif np.ndim(max_count) == 0:
        cap = np.full(len(uniq), int(max_count))
    else:
        mc = np.asarray(max_count).ravel()
        if not np.issubdtype(uniq.dtype, np.integer) or uniq.min() < 0 or uniq.max() >= mc.size:
            raise QpruneError(f"{name}: group ids must index the {mc.size} max counts (0..{mc.size - 1})")
        cap = mc[uniq].astype(np.int64)
    if np.any(cap < 0):
        raise QpruneError(f"{name}: a group's max count is negative")
    return cap.astype(np.int64)
