"""Built-in term providers: plain functions over numpy arrays that return a :class:`Term`.

==================================  ==========================  ====================================
function                            inputs                      what
==================================  ==========================  ====================================
:func:`l1_redundancy`               l1 scores, layer_ids        A_ij = s_i s_j within a layer:
                                                                linear A_ii, blocks 2 A_ij (Wang et
                                                                al.; ``network_wide=True`` adds
                                                                cross-layer pairs)
:func:`taylor`                      taylor, params              I_T / P_i
:func:`weight_fisher`               weight_fisher, params       I_WF / P_i
:func:`channel_fisher`              channel_fisher, params      I_CF / P_i
:func:`activation_similarity`       activations, layer_ids      max(0, Pearson S_ij) within a layer
:func:`capacity`                    params                      D_i = P_i / sum P (the reward gamma
                                                                multiplies; ``reward="units"``:
                                                                D_i = 1 / N)
==================================  ==========================  ====================================

They know nothing of the registry (:mod:`qprune.qubo.terms` registers each under its name) nor of
torch: the calibration signals arrive as arrays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse

from qprune.errors import QpruneError
from qprune.qubo.scaling import param_normalise
from qprune.qubo.types import Block, Term, layer_index

#: what the capacity reward D_i counts: parameters (the paper's D_i = P_i / sum P) or units (1 / N)
CAPACITY_REWARDS = ("params", "units")

__all__ = [
    "CAPACITY_REWARDS", "activation_similarity", "capacity", "channel_fisher", "l1_redundancy", "l1_scores", "pearson", "taylor",
    "weight_fisher",
]


def l1_scores(weights: Sequence[np.ndarray]) -> np.ndarray:
    """s_i = mean |W_i| for each unit's weight array (any shape; e.g. C_in/groups x K x K)."""
    scores = np.empty(len(weights), dtype=np.float64)
    for i, w in enumerate(weights):
        a = np.asarray(w, dtype=np.float64)
        if a.size == 0:
            raise QpruneError(f"weights[{i}] is empty; every unit needs at least one weight")
        scores[i] = np.abs(a).mean()
    return scores


def l1_redundancy(scores: np.ndarray, layer_ids: np.ndarray, *, network_wide: bool = False) -> Term:
    """Parameter redundancy A_ij = s_i s_j (rank one per layer; Wang et al.'s sum_l (sum_i s_i x_i)^2).

    ``linear`` holds A_ii = s_i^2 and the blocks hold the QUBO's 2 A_ij. With ``network_wide=True``
    the pairs across layers are added as ``cross`` (N^2/2 entries: only for small networks).
    """
    s = _vector(scores, "l1 scores")
    lids = _layer_ids(layer_ids, len(s))
    blocks = []
    for idx in layer_index(lids):
        M = 2.0 * np.outer(s[idx], s[idx])
        np.fill_diagonal(M, 0.0)
        blocks.append((idx, M))
    cross = None
    if network_wide:
        rows, cols = np.triu_indices(len(s), 1)
        keep = lids[rows] != lids[cols]
        rows, cols = rows[keep], cols[keep]
        cross = scipy.sparse.coo_matrix((2.0 * s[rows] * s[cols], (rows, cols)), shape=(len(s), len(s)))
    return Term("l1_redundancy", linear=s * s, blocks=blocks, cross=cross)


def taylor(values: np.ndarray, params: np.ndarray, *, per_param: bool = True) -> Term:
    """Taylor importance I_T (Molchanov 2019), divided by the unit's parameter count P_i."""
    return Term("taylor", linear=_importance(values, params, "taylor", per_param))


def weight_fisher(values: np.ndarray, params: np.ndarray, *, per_param: bool = True) -> Term:
    """Weight-Fisher importance I_WF = sum_w F_w w^2, divided by P_i."""
    return Term("weight_fisher", linear=_importance(values, params, "weight_fisher", per_param))


def channel_fisher(values: np.ndarray, params: np.ndarray, *, per_param: bool = True) -> Term:
    """Channel-Fisher importance I_CF = EMA (dL/dm_c)^2, divided by P_i."""
    return Term("channel_fisher", linear=_importance(values, params, "channel_fisher", per_param))


def activation_similarity(activations: Mapping[int, np.ndarray], layer_ids: np.ndarray) -> Term:
    """max(0, S_ij) with S the Pearson correlation of unit responses within each layer.

    ``activations[layer_id]`` is ``[units_in_layer, samples]``, rows in the order the layer's units
    appear in ``layer_ids``. Layers without activations get no block. A unit whose response is
    constant has no defined correlation; it gets 0 (no similarity penalty) rather than NaN.
    """
    lids = np.asarray(layer_ids)
    if lids.ndim != 1:
        raise QpruneError(f"layer_ids must be one-dimensional, got shape {lids.shape}")
    blocks = []
    with _small_blas():
        for lid in sorted(activations):
            blocks.append(_layer_similarity(lid, np.flatnonzero(lids == lid), activations[lid]))
    return Term("activation_similarity", blocks=blocks)


def _layer_similarity(lid: Any, idx: np.ndarray, activations: np.ndarray) -> Block:
    act = np.asarray(activations, dtype=np.float64)
    if idx.size == 0:
        raise QpruneError(f"activations given for layer id {lid!r}, which has no units in layer_ids")
    if act.ndim != 2 or act.shape[0] != idx.size:
        raise QpruneError(f"activations[{lid!r}] has shape {act.shape}; expected [{idx.size} units, samples]")
    if act.shape[1] < 2:
        raise QpruneError(f"activations[{lid!r}] has {act.shape[1]} sample(s); Pearson needs >= 2")
    if not np.all(np.isfinite(act)):
        raise QpruneError(f"activations[{lid!r}] contains NaN or inf")
    S = pearson(act)
    np.maximum(S, 0.0, out=S)
    np.fill_diagonal(S, 0.0)
    return idx, S


def _small_blas() -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread for the per-layer products: matrices of ~128 rows gain nothing from threads,
    and on a busy machine spinning BLAS threads made them 3-5x slower (measured on 2 shared cores)."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def pearson(rows: np.ndarray) -> np.ndarray:
    """Pearson correlation between the rows of ``rows`` [m, samples]; constant rows correlate 0."""
    centred = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    # A row that is constant up to rounding has a norm that is noise: treat it as constant.
    scale = np.abs(rows).max(axis=1) * np.sqrt(rows.shape[1])
    dead = norms <= 1e-12 * np.maximum(scale, np.finfo(np.float64).tiny)
    z = np.divide(centred, norms[:, None], out=np.zeros_like(centred), where=~dead[:, None])
    S = z @ z.T
    np.clip(S, -1.0, 1.0, out=S)
    return S


def capacity(params: np.ndarray, reward: str = "params") -> Term:
    """Capacity reward that gamma multiplies (not rescaled by normalisation).

    ``reward="params"`` (the paper's): D_i = P_i / sum_j P_j, so gamma also prefers pruning big units;
    where all units are the same size (the paper's filters) that is a pure count reward. ``"units"``:
    D_i = 1 / N, a pure count reward for any unit sizes, so at exactly k pruned units the gamma term is a
    constant and the solve minimises the other terms alone (with units of unequal size, e.g. residual
    branches beside SimpleGate pairs, ``"params"`` trades the terms for removed parameters instead).
    """
    if reward not in CAPACITY_REWARDS:
        raise QpruneError(f"unknown capacity reward {reward!r}; choose one of {', '.join(CAPACITY_REWARDS)}")
    P = _vector(params, "params")
    if np.any(P <= 0):
        bad = int(np.flatnonzero(P <= 0)[0])
        raise QpruneError(f"params[{bad}] = {float(P[bad])!r}; parameter counts must be positive")
    if reward == "units":
        return Term("capacity", linear=np.full(P.shape, 1.0 / P.size))
    return Term("capacity", linear=P / P.sum())


def _vector(values: Any, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise QpruneError(f"{what} must be a 1-d array, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        bad = int(np.flatnonzero(~np.isfinite(v))[0])
        raise QpruneError(f"{what}[{bad}] = {float(v[bad])!r}; values must be finite")
    return v


def _layer_ids(layer_ids: Any, n: int) -> np.ndarray:
    lids = np.asarray(layer_ids)
    if lids.shape != (n,):
        raise QpruneError(f"layer_ids has shape {lids.shape}, expected ({n},)")
    return lids


def _importance(values: Any, params: Any, what: str, per_param: bool) -> np.ndarray:
    v = _vector(values, what)
    if not per_param:
        return v
    if params is None:
        raise QpruneError(f"{what} is normalised by parameter counts, but no params were given")
    return param_normalise(v, _vector(params, "params"))
