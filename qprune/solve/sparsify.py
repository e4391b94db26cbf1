"""Sparse couplings: keep each unit's strongest within-layer couplings, drop the rest.

A layer block of the pruning QUBO is dense (the L1 redundancy term s_i s_j couples every pair), so a
sampler pays for m^2 / 2 couplings per layer, 2 million for a 2,048-unit layer, although most of them
are small and nearly uniform: at a fixed count a uniform coupling is a constant. Keeping the
``keep`` largest |M_ij| of every row (a pair stays when it is among the largest of either end) makes
the block sparse for a sampler. What that costs in energy on the dense QUBO and in the pruned
model's outputs is measured by ``benchmarks/scale.py`` (``--sparsify``); the layerwise search
itself does not need it (its moves read dense rows at O(m) each).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from qprune.errors import QpruneError

if TYPE_CHECKING:  # pragma: no cover
    from qprune.qubo.formulation import Formulation

__all__ = ["sparsify", "sparsify_block"]


def sparsify_block(M: np.ndarray, keep: int) -> np.ndarray:
    """``M`` (symmetric, zero diagonal) with all but each row's ``keep`` largest |M_ij| set to 0,
    kept symmetric (a pair stays if either end keeps it)."""
    M = np.asarray(M, dtype=np.float64)
    m = M.shape[0]
    if keep >= m - 1:
        return M.copy()
    A = np.abs(M)
    np.fill_diagonal(A, -1.0)  # never pick the diagonal
    top = np.argpartition(-A, keep - 1, axis=1)[:, :keep] if keep > 0 else np.zeros((m, 0), np.int64)
    mask = np.zeros((m, m), bool)
    mask[np.repeat(np.arange(m), top.shape[1]), top.ravel()] = True
    mask |= mask.T
    np.fill_diagonal(mask, False)
    return np.where(mask, M, 0.0)


def sparsify(formulation: Formulation, keep: int) -> Formulation:
    """A copy of ``formulation`` whose layer blocks keep ``keep`` couplings per unit (see
    :func:`sparsify_block`); linear terms, rewards and cross-layer couplings are unchanged."""
    if isinstance(keep, bool) or int(keep) != keep or keep < 0:
        raise QpruneError(f"keep must be a count >= 0, got {keep!r}")
    blocks = [(idx, sparsify_block(M, int(keep))) for idx, M in formulation.blocks]
    return replace(formulation, blocks=blocks)
