"""The objective as arrays: :class:`QuboArrays` (``E(x) = offset + h.x + 1/2 x^T J x``, a reward r)
and :func:`lagrangian`, the ``gamma -> BQM`` family of a plain BQM."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import dimod
import numpy as np
import scipy.sparse as sp

from qprune.errors import QpruneError

__all__ = ["BuildFn", "QuboArrays", "lagrangian"]

BuildFn = Callable[[float], dimod.BinaryQuadraticModel]


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
