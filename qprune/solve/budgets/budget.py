"""Budgets users think in: a kept fraction of units, params, MACs or latency (:class:`Budget`), and
the exact cost of a pruned model as a function of its per-layer choices (:class:`CostModel`).

A budget ``kind=fraction`` asks that the pruned model keep at most ``fraction`` of the unpruned
model's units / parameters / MACs / latency, and at least ``fraction - tolerance`` of it (1 % by
default: the result lands within 1 % below the target).

Cost of a mask (docs/method.md, "Budgets"): every unit removes
index slices of parameter tensors (:attr:`qprune.model.units.Unit.slices`), and a tensor keeps
``prod_d (size_d - removed_d)`` elements. Parameters are the sum over the tensors (plus the
parameters no unit touches); MACs are the space's ``mac_terms`` (positions x kept elements of one
weight tensor, or MACs per head x kept heads). A conv's cost is therefore a product of its kept
inputs and kept outputs: quadratic across the layers a unit couples. The model is written as
``removed = mask @ U`` (``U`` [units, (tensor, dim) pairs]: how many indices a unit removes there)
and ``cost = const + sum_t coeff_t prod_{j in t} (size_j - removed_j)``, which is exact whenever
the units remove disjoint index sets of a dimension (what :mod:`qprune.model.discovery` builds;
``tests/test_budgets.py`` checks it against :func:`qprune.model.stats.count_params` /
:func:`~qprune.model.stats.count_macs` of the physically pruned model).

``latency`` adds a measured per-layer table (:mod:`qprune.solve.budgets.latency_table`): an additive
model ``t(mask) = t_full - sum_l dt_l(pruned in l)``, one column per layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse

from qprune.errors import QpruneError

if TYPE_CHECKING:  # annotations only: the CLI parses budgets without importing torch
    from qprune.model.units import FilterSpace

__all__ = ["BUDGET_KINDS", "DEFAULT_TOLERANCE", "Budget", "CostModel", "parse_budget"]

BUDGET_KINDS = ("units", "params", "macs", "latency")
DEFAULT_TOLERANCE = 0.01  # land within 1 % below the target
_SPEC = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*(\S+)\s*$")


@dataclass(frozen=True)
class Budget:
    """Keep at most ``fraction`` (and at least ``fraction - tolerance``) of the model's ``kind``."""

    kind: str
    fraction: float
    tolerance: float = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise QpruneError(f"unknown budget kind {self.kind!r}; choose one of {', '.join(BUDGET_KINDS)}")
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0.0 < f <= 1.0:
            raise QpruneError(f"budget {self.kind}={f!r}: the kept fraction must lie in (0, 1]")
        if not 0.0 <= float(self.tolerance) < 1.0:
            raise QpruneError(f"budget tolerance {self.tolerance!r} must lie in [0, 1)")

    @property
    def text(self) -> str:
        """``"macs=0.5"``: the form :func:`parse_budget` reads."""
        return f"{self.kind}={self.fraction:g}"

    def window(self, full: float) -> tuple[float, float]:
        """``(lowest, highest)`` cost a solution may have, for an unpruned cost ``full``."""
        return (self.fraction - self.tolerance) * full, self.fraction * full


def parse_budget(value: Budget | str | Mapping[str, Any], *, tolerance: float = DEFAULT_TOLERANCE) -> Budget:
    """A :class:`Budget` from ``"macs=0.5"``, ``{"macs": 0.5}`` or a Budget (returned as is).

    Raises a one-line QpruneError naming the bad kind or value.
    """
    if isinstance(value, Budget):
        return value
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise QpruneError(f"a budget names exactly one kind, e.g. {{'macs': 0.5}}; got {dict(value)!r}")
        (kind, fraction), = value.items()
        return Budget(str(kind), _fraction(kind, fraction), tolerance)
    if isinstance(value, str):
        m = _SPEC.match(value)
        if not m:
            raise QpruneError(f"budget {value!r} must read KIND=FRACTION, e.g. macs=0.5 "
                              f"(kinds: {', '.join(BUDGET_KINDS)})")
        return Budget(m.group(1), _fraction(m.group(1), m.group(2)), tolerance)
    raise QpruneError(f"a budget is 'kind=fraction' or {{kind: fraction}}, got {type(value).__name__}")


def _fraction(kind: Any, raw: Any) -> float:
    if kind not in BUDGET_KINDS:
        raise QpruneError(f"unknown budget kind {kind!r}; choose one of {', '.join(BUDGET_KINDS)}")
    try:
        if isinstance(raw, bool):
            raise ValueError
        return float(raw)
    except (TypeError, ValueError):
        raise QpruneError(f"budget {kind}={raw!r}: the kept fraction must be a number in (0, 1]") from None


@dataclass
class CostModel:
    """Exact cost of a mask of a space (see the module doc): ``const + sum_t coeff_t prod kept``.

    Attributes:
        kind: the budget kind it measures.
        U: sparse [N, P] indices each unit removes per (tensor, dim) pair.
        size: float [P], the full size of each pair's dimension.
        cols: int [T, D] the pairs each term multiplies (padded with P: a column of ones).
        coeff: float [T] per-term coefficient (positions, MACs per head, 1 for params).
        const: the cost no unit can change.
        additive: optional float [n_layers, max size + 1] cost change per pruned count of a layer
            (latency); added to the product terms.
        layer_ids: int [N] layer of each unit (for ``additive``).
    """

    kind: str
    U: scipy.sparse.csr_matrix
    size: np.ndarray
    cols: np.ndarray
    coeff: np.ndarray
    const: float
    layer_ids: np.ndarray
    additive: np.ndarray | None = None

    @classmethod
    def build(cls, space: FilterSpace, kind: str, latency: Any = None) -> CostModel:
        """The cost model of ``kind`` (``latency``: a :class:`qprune.solve.budgets.latency_table.LatencyTable`)."""
        if kind == "units":
            U = scipy.sparse.csr_matrix(np.ones((space.N, 1)))
            return cls(kind, U, np.array([float(space.N)]), np.zeros((1, 1), np.int64), np.ones(1), 0.0,
                       space.layer_ids)
        if kind == "latency":
            if latency is None:
                raise QpruneError("a latency budget needs a latency table (qprune.solve.budgets.latency_table)")
            table = latency.per_layer(space)
            n_layers = space.n_layers
            U = scipy.sparse.csr_matrix((space.N, 0))
            return cls(kind, U, np.zeros(0), np.zeros((0, 1), np.int64), np.zeros(0), float(latency.full_ms),
                       space.layer_ids, -table[:n_layers])
        if kind not in ("params", "macs"):
            raise QpruneError(f"unknown budget kind {kind!r}; choose one of {', '.join(BUDGET_KINDS)}")
        return _tensor_model(space, kind)

    def given(self, mask: np.ndarray, free: np.ndarray) -> CostModel:
        """The cost model over the units ``free`` alone, with the units of ``mask`` (outside ``free``)
        already removed: its ``full()`` is the cost of the model pruned by ``mask``."""
        m = np.asarray(mask, dtype=np.float64)
        free = np.asarray(free, dtype=np.int64)
        removed, counts = self._state(m)
        additive = None
        if self.additive is not None:  # row l shifted by the units layer l has lost already
            width = self.additive.shape[1]
            cols = np.minimum(np.arange(width)[None, :] + counts[:, None], width - 1)
            additive = np.take_along_axis(self.additive[:counts.size], cols, axis=1)
        return CostModel(self.kind, self.U[free], self.size - removed, self.cols, self.coeff, self.const,
                         self.layer_ids[free], additive)

    # ----- evaluation
    @property
    def n_pairs(self) -> int:
        return int(self.size.size)

    def full(self) -> float:
        """Cost of the unpruned model."""
        return self.cost_removed(np.zeros(self.n_pairs), np.zeros(int(self.layer_ids.max(initial=-1)) + 1, np.int64))

    def of_mask(self, mask: np.ndarray) -> float:
        """Cost of the model pruned by ``mask`` (bool/0-1 [N], 1 = pruned)."""
        removed, counts = self._state(np.asarray(mask, dtype=np.float64))
        return self.cost_removed(removed, counts)

    def costs_after_flips(self, mask: np.ndarray, units: np.ndarray) -> np.ndarray:
        """[len(units)]: the cost after flipping each of ``units`` alone in ``mask``."""
        m = np.asarray(mask, dtype=np.float64)
        units = np.asarray(units, dtype=np.int64)
        sign = np.where(m[units] > 0, -1.0, 1.0)
        removed, counts = self._state(m)
        R = removed[None, :] + sign[:, None] * self.U[units].toarray()
        LC = np.repeat(counts[None, :], units.size, axis=0)
        LC[np.arange(units.size), self.layer_ids[units]] += sign.astype(np.int64)
        return self.cost_rows(R, LC)

    def costs_after_swaps(self, mask: np.ndarray, prune: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """[len(prune), len(keep)]: the cost after pruning ``prune[a]`` (now kept) and keeping
        ``keep[b]`` (now pruned) in ``mask``, for every pair."""
        m = np.asarray(mask, dtype=np.float64)
        I, J = np.asarray(prune, dtype=np.int64), np.asarray(keep, dtype=np.int64)
        removed, counts = self._state(m)
        R = removed[None, None, :] + self.U[I].toarray()[:, None, :] - self.U[J].toarray()[None, :, :]
        LC = np.repeat(counts[None, :], I.size * J.size, axis=0).reshape(I.size, J.size, -1)
        LC[np.arange(I.size)[:, None], np.arange(J.size)[None, :], self.layer_ids[I][:, None]] += 1
        LC[np.arange(I.size)[:, None], np.arange(J.size)[None, :], self.layer_ids[J][None, :]] -= 1
        out = self.cost_rows(R.reshape(I.size * J.size, -1), LC.reshape(I.size * J.size, -1))
        return out.reshape(I.size, J.size)

    def _state(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Removed indices per pair and pruned units per layer of a 0/1 float mask."""
        n_layers = int(self.layer_ids.max(initial=-1)) + 1
        removed = np.asarray(self.U.T @ m).ravel()
        return removed, np.bincount(self.layer_ids, weights=m, minlength=n_layers).astype(np.int64)

    def cost_removed(self, removed: np.ndarray, layer_counts: np.ndarray) -> float:
        """Cost from removed indices per pair [P] and pruned units per layer."""
        return float(self.cost_rows(np.asarray(removed, float)[None, :], np.asarray(layer_counts)[None, :])[0])

    def cost_rows(self, removed: np.ndarray, layer_counts: np.ndarray) -> np.ndarray:
        """:meth:`cost_removed` for many rows: removed [R, P], layer_counts [R, n_layers] -> [R]."""
        R = removed.shape[0]
        kept = np.concatenate([self.size[None, :] - removed, np.ones((R, 1))], axis=1)
        out = np.full(R, self.const)
        if self.coeff.size:
            out += (np.prod(kept[:, self.cols], axis=2) * self.coeff[None, :]).sum(axis=1)
        if self.additive is not None:
            lc = np.asarray(layer_counts, dtype=np.int64)
            out += self.additive[np.arange(lc.shape[1])[None, :], lc].sum(axis=1)
        return out


def _tensor_model(space: FilterSpace, kind: str) -> CostModel:
    """Pairs (tensor, dim) every unit touches; one product term per tensor (params) or MAC term."""
    pair_index: dict[tuple[str, int], int] = {}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for i, u in enumerate(space.units):
        for name, dim, ix in u.slices:
            j = pair_index.setdefault((name, int(dim)), len(pair_index))
            rows.append(i)
            cols.append(j)
            vals.append(float(len(ix)))
    heads = {}
    if kind == "macs":
        for lid, layer in enumerate(space.layers):
            if f"heads:{layer}" in {n for n, _, _ in space.mac_terms}:
                j = pair_index.setdefault((f"heads:{layer}", 0), len(pair_index))
                heads[layer] = j
                for i in space.layer_units(lid):
                    rows.append(int(i))
                    cols.append(j)
                    vals.append(1.0)
    P = len(pair_index)
    U = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(space.N, P))
    U.sum_duplicates()
    size = np.zeros(P)
    for (name, dim), j in pair_index.items():
        size[j] = space.param_shapes[name][dim] if not name.startswith("heads:") else 0.0
    terms: list[tuple[float, list[int]]] = []
    const = 0.0

    def tensor_term(name: str, coeff: float) -> None:
        nonlocal const
        shape = space.param_shapes.get(name)
        if shape is None:
            raise QpruneError(f"cost model: no shape recorded for {name!r}")
        touched = [pair_index[(name, d)] for d in range(len(shape)) if (name, d) in pair_index]
        rest = math.prod(s for d, s in enumerate(shape) if (name, d) not in pair_index)
        if touched:
            terms.append((coeff * rest, touched))
        else:
            const += coeff * rest

    if kind == "params":
        const = float(space.total_params - sum(math.prod(s) for s in space.param_shapes.values()))
        for name in space.param_shapes:
            tensor_term(name, 1.0)
    else:
        if not space.mac_terms:
            raise QpruneError("a MACs budget needs a space built with MAC terms (build_space records them)")
        for name, coeff, numel in space.mac_terms:
            if name.startswith("heads:"):
                layer = name[len("heads:"):]
                if layer in heads:
                    size[heads[layer]] = float(numel)
                    terms.append((float(coeff), [heads[layer]]))
                else:
                    const += float(coeff) * numel
            elif name in space.param_shapes:
                tensor_term(name, float(coeff))
            else:
                const += float(coeff) * numel
    D = max((len(c) for _, c in terms), default=1)
    colmat = np.full((len(terms), D), P, dtype=np.int64)
    for t, (_, c) in enumerate(terms):
        colmat[t, :len(c)] = c
    coeff = np.array([c for c, _ in terms], dtype=np.float64)
    return CostModel(kind, U, size, colmat, coeff, const, space.layer_ids)

