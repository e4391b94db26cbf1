"""Non-QUBO baselines: pick exactly k units by a per-unit score, or at random.

Greedy ranking is global across layers (Molchanov et al. rank the whole network at once), with a
per-layer cap so that no layer loses more than ``max_per_layer`` units (``min_keep``).
"""

from __future__ import annotations

import numpy as np

from qprune.errors import QpruneError


def _check_k(k: int, n: int, caps: np.ndarray | None) -> None:
    if not 0 <= k <= n:
        raise QpruneError(f"k={k} is outside [0, {n}] for {n} prunable units")
    if caps is not None and k > int(caps.sum()):
        raise QpruneError(
            f"k={k} exceeds the {int(caps.sum())} units that may be pruned while keeping min_keep per layer"
        )


def _caps_per_unit(
    layer_ids: np.ndarray | None, max_per_layer: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    if layer_ids is None or max_per_layer is None:
        return None
    return np.asarray(layer_ids, dtype=np.int64), np.asarray(max_per_layer, dtype=np.int64)


def greedy_prune(
    scores: np.ndarray,
    k: int,
    *,
    layer_ids: np.ndarray | None = None,
    max_per_layer: np.ndarray | None = None,
) -> np.ndarray:
    """Prune the ``k`` units with the LOWEST score (least important), honouring per-layer caps.

    Ties are broken by unit order (stable sort), so the result is deterministic.

    Returns:
        int8 array [N] with exactly ``k`` ones (1 = pruned).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    caps = _caps_per_unit(layer_ids, max_per_layer)
    _check_k(k, n, None if caps is None else caps[1])
    if not np.all(np.isfinite(scores)):
        raise QpruneError("greedy scores contain NaN or inf; check the calibration signals")
    x = np.zeros(n, dtype=np.int8)
    order = np.argsort(scores, kind="stable")
    if caps is None:
        x[order[:k]] = 1
        return x
    ids, limit = caps
    used = np.zeros_like(limit)
    taken = 0
    for i in order:
        if taken == k:
            break
        if used[ids[i]] < limit[ids[i]]:
            x[i] = 1
            used[ids[i]] += 1
            taken += 1
    return x


def random_prune(
    n: int,
    k: int,
    *,
    seed: int | None = 0,
    layer_ids: np.ndarray | None = None,
    max_per_layer: np.ndarray | None = None,
) -> np.ndarray:
    """A uniformly random set of ``k`` units (subject to per-layer caps); same seed, same mask."""
    rng = np.random.default_rng(seed)
    return greedy_prune(rng.random(n), k, layer_ids=layer_ids, max_per_layer=max_per_layer)
