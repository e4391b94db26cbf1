"""Non-QUBO baselines: pick exactly k units by a per-unit score, or at random.

Greedy ranking is global across layers (Molchanov et al. rank the whole network at once), within the
per-layer caps of an :class:`~qprune.solve.constraint.ExactK` so that no layer loses more than
``max_per_layer`` units (``min_keep``): :meth:`ExactK.first_fit` over the scores in ascending order.
"""

from __future__ import annotations

import numpy as np

from qprune.errors import QpruneError
from qprune.solve.constraint import ExactK

__all__ = ["greedy_prune", "random_prune"]


def _constraint(n: int, k: int, constraint: ExactK | None, layer_ids: np.ndarray | None,
                max_per_layer: np.ndarray | None) -> ExactK:
    """The constraint given, else one from the per-layer caps (an array indexed by layer id)."""
    if not 0 <= k <= n:
        raise QpruneError(f"k={k} is outside [0, {n}] for {n} prunable units")
    if constraint is not None:
        return ExactK.coerce(n, k, constraint)
    if layer_ids is None or max_per_layer is None:
        return ExactK.build(n, k)
    caps = ExactK.build(n, 0, (np.asarray(layer_ids, dtype=np.int64), np.asarray(max_per_layer, dtype=np.int64)),
                        name="max_per_layer")
    if k > caps.reachable:
        raise QpruneError(
            f"k={k} exceeds the {caps.reachable} units that may be pruned while keeping min_keep per layer"
        )
    return caps.with_k(k)


def greedy_prune(
    scores: np.ndarray,
    k: int,
    *,
    constraint: ExactK | None = None,
    layer_ids: np.ndarray | None = None,
    max_per_layer: np.ndarray | None = None,
) -> np.ndarray:
    """Prune the ``k`` units with the LOWEST score (least important), within the caps.

    The caps come from ``constraint`` or, as a convenience, from ``layer_ids`` + ``max_per_layer``
    (max pruned per layer, indexed by layer id). Ties are broken by unit order (stable sort), so the
    result is deterministic.

    Returns:
        int8 array [N] with exactly ``k`` ones (1 = pruned).
    """
    scores = np.asarray(scores, dtype=np.float64)
    con = _constraint(scores.shape[0], k, constraint, layer_ids, max_per_layer)
    if not np.all(np.isfinite(scores)):
        raise QpruneError("greedy scores contain NaN or inf; check the calibration signals")
    return con.first_fit(np.argsort(scores, kind="stable"))


def random_prune(
    n: int,
    k: int,
    *,
    seed: int | None = 0,
    constraint: ExactK | None = None,
    layer_ids: np.ndarray | None = None,
    max_per_layer: np.ndarray | None = None,
) -> np.ndarray:
    """A uniformly random set of ``k`` units (within the caps, as for :func:`greedy_prune`); same seed,
    same mask."""
    rng = np.random.default_rng(seed)
    return greedy_prune(rng.random(n), k, constraint=constraint, layer_ids=layer_ids, max_per_layer=max_per_layer)
