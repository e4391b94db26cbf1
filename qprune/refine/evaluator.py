"""Evaluation bookkeeping of one refinement: cache, budget, best feasible mask, trace, progress."""

from __future__ import annotations

import math

import numpy as np

from qprune.errors import QpruneError
from qprune.refine.cache import MaskCache, mask_keys
from qprune.refine.result import Objective
from qprune.solve.constraint import ExactK

__all__ = ["Evaluator"]


class Evaluator:
    """Wraps the objective: a :class:`~qprune.refine.cache.MaskCache`, the budget (distinct
    masks evaluated), the best feasible mask so far, the trace of improvements, a progress bar."""

    def __init__(
        self, objective: Objective, constraint: ExactK, budget: int, progress: bool, desc: str
    ) -> None:
        self.objective, self.constraint, self.budget = objective, constraint, budget
        self.cache = MaskCache()
        self.evaluations = 0
        self.proposals = 0
        self.best_x: np.ndarray | None = None
        self.best_value = -math.inf
        self.trace: list[tuple[int, float]] = []
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=budget, desc=desc, unit="eval", leave=False)

    @property
    def left(self) -> int:
        return self.budget - self.evaluations

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Values of the rows of ``X``; new patterns are evaluated (as far as the budget allows),
        the rest come from the cache. Rows left unevaluated for lack of budget get NaN."""
        X = np.ascontiguousarray(X, dtype=np.int8)
        keys = mask_keys(X)
        self.proposals += len(keys)
        new = self.cache.new(keys, limit=self.left)
        if new:
            self._evaluate(X, new)
        return self.cache.lookup(keys)

    def _evaluate(self, X: np.ndarray, new: dict[bytes, int]) -> None:
        rows = np.fromiter(new.values(), dtype=np.int64)
        values = self._call(X[rows])
        self.evaluations += len(rows)
        ok = self.constraint.ok_rows(X[rows])
        before = self.best_value
        self.cache.store(new, values)
        for i, v, good in zip(rows, values, ok):
            if good and v > self.best_value:
                self.best_value, self.best_x = float(v), X[i].copy()
        if self.best_value > before:  # one point per objective call: (evaluations, best)
            self.trace.append((self.evaluations, self.best_value))
        if self.bar is not None:
            self.bar.update(len(rows))
            self.bar.set_postfix(best=f"{self.best_value:.6g}", refresh=False)

    def _call(self, X: np.ndarray) -> np.ndarray:
        out = np.asarray(self.objective(X.copy()), dtype=np.float64).reshape(-1)
        if out.shape[0] != X.shape[0]:
            raise QpruneError(
                f"the objective returned {out.shape[0]} values for {X.shape[0]} masks; it must map "
                "masks [B, N] to B floats"
            )
        # a NaN/inf score is a failed candidate, never a winner
        return np.where(np.isfinite(out) | (out == -np.inf), out, -np.inf)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
