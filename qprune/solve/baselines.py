"""Non-QUBO baselines: pick exactly k units by a per-unit score, or at random.

Greedy ranking is global across layers (Molchanov et al. rank the whole network at once), within the
per-layer caps of an :class:`~qprune.solve.constraint.ExactK` (a layer keeps its ``min_keep`` units):
:meth:`ExactK.first_fit` over the scores in ascending order.
"""

from __future__ import annotations

import numpy as np

from qprune.errors import QpruneError
from qprune.solve.constraint import ExactK

__all__ = ["greedy_prune", "random_prune"]


def greedy_prune(scores: np.ndarray, k: int, *, constraint: ExactK | None = None) -> np.ndarray:
    """Prune the ``k`` units with the LOWEST score (least important), within the caps of
    ``constraint`` (None: none). Ties are broken by unit order (stable sort), so the result is
    deterministic.

    Returns:
        int8 array [N] with exactly ``k`` ones (1 = pruned).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= k <= scores.shape[0]:
        raise QpruneError(f"k={k} is outside [0, {scores.shape[0]}] for {scores.shape[0]} prunable units")
    con = ExactK.coerce(scores.shape[0], k, constraint)
    if not np.all(np.isfinite(scores)):
        raise QpruneError("greedy scores contain NaN or inf; check the calibration signals")
    return con.first_fit(np.argsort(scores, kind="stable"))


def random_prune(n: int, k: int, *, seed: int | None = 0, constraint: ExactK | None = None) -> np.ndarray:
    """A uniformly random set of ``k`` units (within the caps, as for :func:`greedy_prune`); same seed,
    same mask."""
    rng = np.random.default_rng(seed)
    return greedy_prune(rng.random(n), k, constraint=constraint)
