"""Layer blocks of a block-diagonal Formulation: :class:`Block` and :func:`build_blocks`.

One block per layer, except that layers joined by cross-layer couplings (``formulation.cross``) are
merged into one block, exactly; per-layer caps are then enforced inside the block (``sub``/``caps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from qprune.errors import QpruneError

if TYPE_CHECKING:  # pragma: no cover
    from qprune.qubo.formulation import Formulation

__all__ = ["Block", "build_blocks", "check_blocks_cover", "energies", "feasible", "layer_groups"]


@dataclass
class Block:
    """One (possibly merged) layer block of the QUBO at a fixed gamma."""

    layers: tuple[int, ...]  # layer ids it covers
    idx: np.ndarray  # global variable indices
    h: np.ndarray  # linear biases at the solve's gamma
    M: np.ndarray  # dense symmetric couplings, zero diagonal: E = h.x + x.M.x / 2
    sub: np.ndarray  # position of each variable's layer in ``layers``
    caps: np.ndarray  # max ones per layer of ``layers``

    @property
    def m(self) -> int:
        return int(self.idx.size)

    @property
    def cap(self) -> int:
        return int(min(self.m, int(self.caps.sum())))

    @property
    def merged(self) -> bool:
        return len(self.layers) > 1

    @cached_property
    def nonnegative(self) -> bool:
        """No coupling below 0: the energy is supermodular (a unit's cost to prune only rises as others
        go), the regime where greedy additions and single swaps do well; the paper's terms are, the
        loss-model's Fisher term is not."""
        return bool(self.M.size == 0 or float(self.M.min()) >= 0.0)

    @cached_property
    def m_max(self) -> float:
        """The largest coupling (or 0): bounds how much one coupling can change a swap's gain."""
        return float(self.M.max()) if self.M.size else 0.0

    @cached_property
    def row_max(self) -> np.ndarray:
        """Each unit's largest coupling (0 counts: the diagonal): the per-unit form of ``m_max``."""
        return self.M.max(axis=1) if self.M.size else np.zeros(self.m)


def energies(X: np.ndarray, h: np.ndarray, M: np.ndarray) -> np.ndarray:
    """E(x) = h.x + x.M.x / 2 for a batch of 0/1 rows."""
    Xf = X.astype(np.float64, copy=False)
    return Xf @ h + 0.5 * np.einsum("bi,bi->b", Xf @ M, Xf)


def feasible(X: np.ndarray, sub: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Rows whose ones respect every per-layer cap."""
    if caps.size == 1:
        return X.sum(axis=1) <= caps[0]
    counts = np.stack([X[:, sub == s].sum(axis=1) for s in range(caps.size)], axis=1)
    return (counts <= caps[None, :]).all(axis=1)


def layer_groups(formulation: Formulation, layers: np.ndarray) -> list[list[int]]:
    """Groups of layer ids connected by cross-layer couplings (singletons when there are none)."""
    parent = {int(lay): int(lay) for lay in layers}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    C = formulation.cross
    if C is not None and C.nnz:
        lid = np.asarray(formulation.layer_ids)
        for a, b in set(zip(lid[C.row].tolist(), lid[C.col].tolist())):
            ra, rb = find(int(a)), find(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for lay in layers:
        groups.setdefault(find(int(lay)), []).append(int(lay))
    return sorted(groups.values())


def build_blocks(formulation: Formulation, gamma: float, caps: dict[int, int]) -> list[Block]:
    """One :class:`Block` per group of connected layers, at ``gamma``."""
    lid = np.asarray(formulation.layer_ids)
    layers = np.unique(lid)
    h_all = np.asarray(formulation.linear, float) - float(gamma) * np.asarray(formulation.reward, float)
    n = lid.size
    pos_in = np.full(n, -1, np.int64)
    dense: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for idx, Mb in formulation.blocks:
        idx = np.asarray(idx)
        if idx.size:
            dense[int(lid[idx[0]])] = (idx, np.asarray(Mb, float))
    blocks = []
    C = formulation.cross.tocoo() if formulation.cross is not None and formulation.cross.nnz else None
    for group in layer_groups(formulation, layers):
        parts = [dense.get(lay, (np.flatnonzero(lid == lay), None)) for lay in group]
        idx = np.concatenate([p[0] for p in parts])
        m = idx.size
        M = np.zeros((m, m))
        o = 0
        for pidx, Mb in parts:
            if Mb is not None:
                M[o:o + pidx.size, o:o + pidx.size] = Mb
            o += pidx.size
        if len(group) > 1 and C is not None:
            pos_in[idx] = np.arange(m)
            sel = (pos_in[C.row] >= 0) & (pos_in[C.col] >= 0)
            r, c, v = pos_in[C.row[sel]], pos_in[C.col[sel]], C.data[sel]
            np.add.at(M, (r, c), v)
            np.add.at(M, (c, r), v)
            pos_in[idx] = -1
        sub = np.concatenate([np.full(p[0].size, i) for i, p in enumerate(parts)])
        blocks.append(Block(tuple(group), idx, h_all[idx], M, sub, np.array([caps[lay] for lay in group])))
    return blocks


def check_blocks_cover(formulation: Formulation) -> None:
    lid = np.asarray(formulation.layer_ids)
    for idx, _ in formulation.blocks:
        idx = np.asarray(idx)
        if idx.size and np.unique(lid[idx]).size != 1:
            raise QpruneError("layerwise needs one block per layer: a formulation block spans several "
                              "layer ids")
