"""Term providers: plain functions over numpy arrays that return named QUBO components.

A :class:`Term` is a linear vector and/or a set of symmetric blocks (one per layer for every built-in
term) plus, rarely, explicit couplings between blocks. The matrix entries already hold the paper's
off-diagonal Q_ij: the energy of a term is ``sum_i linear_i x_i + sum_{i<j} M_ij x_i x_j``. The
diagonal of a quadratic quantity (A_ii of the redundancy) goes to ``linear`` because x_i^2 = x_i.

Built-in providers (names in the registry):

========================  ==========================  ==============================================
name                      inputs                      what
========================  ==========================  ==============================================
``l1_redundancy``         l1 (or weights), layer_ids  A_ij = s_i s_j within a layer: linear A_ii,
                                                      blocks 2 A_ij (Wang et al.; option
                                                      ``network_wide=True`` adds cross-layer pairs)
``taylor``                taylor, params              I_T / P_i
``weight_fisher``         weight_fisher, params       I_WF / P_i
``channel_fisher``        channel_fisher, params      I_CF / P_i
``activation_similarity`` activations, layer_ids      max(0, Pearson S_ij) within a layer
``capacity``              params                      D_i = P_i / sum P (the reward gamma multiplies)
========================  ==========================  ==============================================

A term is named after the function that computes it. :func:`compute_terms` runs providers by name
and then normalises (see :mod:`qprune.qubo.scaling`); a user
adds a term with :func:`register_term` and gives it a weight through ``Weights.extra``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse

from qprune.errors import QpruneError
from qprune.qubo.scaling import normalise_terms, param_normalise

Block = tuple[np.ndarray, np.ndarray]


@dataclass
class Term:
    """One named QUBO component over N units.

    ``linear``: float [N]. ``blocks``: ``(idx int[m], M float[m, m])`` symmetric with zero diagonal,
    energy ``sum_{i<j} M_ij x_idx[i] x_idx[j]``. ``cross``: couplings between blocks, each unordered
    pair stored once (either orientation), energy ``sum v x_row x_col``.
    """

    name: str
    linear: np.ndarray | None = None
    blocks: list[Block] | None = None
    cross: scipy.sparse.coo_matrix | None = None


# --------------------------------------------------------------------------------------------------
# Array functions


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
    for idx in _layer_index(lids):
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


def capacity(params: np.ndarray) -> Term:
    """Capacity reward D_i = P_i / sum_j P_j (gamma multiplies it; not rescaled by normalisation)."""
    P = _vector(params, "params")
    if np.any(P <= 0):
        bad = int(np.flatnonzero(P <= 0)[0])
        raise QpruneError(f"params[{bad}] = {float(P[bad])!r}; parameter counts must be positive")
    return Term("capacity", linear=P / P.sum())


# --------------------------------------------------------------------------------------------------
# Registry

Provider = Callable[..., "Term | np.ndarray"]


@dataclass(frozen=True)
class TermProvider:
    """A registered provider: ``fn(inputs, **options) -> Term | linear ndarray``."""

    name: str
    fn: Provider
    requires: tuple[str, ...] = ()
    description: str = ""


_PROVIDERS: dict[str, TermProvider] = {}


def register_term(
    name: str,
    fn: Provider,
    *,
    requires: Sequence[str] = (),
    description: str = "",
    replace: bool = False,
) -> TermProvider:
    """Register ``fn(inputs: Mapping[str, Any], **options) -> Term | np.ndarray`` under ``name``.

    ``requires`` lists the input keys ``fn`` reads, so a missing one is reported before it runs.
    A bare array returned by ``fn`` becomes the term's linear part.
    """
    if not name or not isinstance(name, str):
        raise QpruneError(f"term name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise QpruneError(f"term provider for {name!r} must be callable, got {fn!r}")
    if name in _PROVIDERS and not replace:
        raise QpruneError(f"term {name!r} is already registered (pass replace=True to override)")
    provider = TermProvider(name, fn, tuple(requires), description)
    _PROVIDERS[name] = provider
    return provider


def unregister_term(name: str) -> None:
    """Remove a registered term (tests and plugins that clean up after themselves)."""
    _PROVIDERS.pop(name, None)


def available_terms() -> list[TermProvider]:
    """Every registered provider, sorted by name."""
    return [_PROVIDERS[n] for n in sorted(_PROVIDERS)]


def term_requirements(names: Sequence[str]) -> set[str]:
    """The input keys the named terms need (what a calibration pass must collect)."""
    return {key for name in names for key in _provider(name).requires}


def compute_terms(
    names: Sequence[str],
    inputs: Mapping[str, Any],
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    scale: bool = True,
    spectral_cap: float | None = None,
    eps: float = 1e-12,
) -> dict[str, Term]:
    """Run the named providers on ``inputs`` and normalise the results.

    ``inputs`` keys: ``l1``, ``taylor``, ``weight_fisher``, ``channel_fisher``, ``activations``,
    ``params``, ``layer_ids`` (optionally ``weights`` in place of ``l1``) plus anything a user term
    reads. ``options[name]`` is passed to that provider as keyword arguments. With ``scale`` each
    term is brought to unit variance (:func:`qprune.qubo.scaling.normalise_terms`); ``spectral_cap`` then
    bounds the redundancy matrix's spectral norm.
    """
    n = _num_units(inputs)
    terms: dict[str, Term] = {}
    for name in dict.fromkeys(names):
        provider = _provider(name)
        missing = [k for k in provider.requires if not _has_input(inputs, k)]
        if missing:
            raise QpruneError(
                f"term {name!r} needs input(s) {', '.join(map(repr, missing))}, which were not "
                f"collected (given: {', '.join(sorted(k for k in inputs if inputs[k] is not None))})"
            )
        opts = dict((options or {}).get(name, {}))
        try:
            inspect.signature(provider.fn).bind(inputs, **opts)
        except TypeError as e:
            raise QpruneError(f"term {name!r}: bad options {opts!r} ({e})") from None
        except ValueError:  # builtins without a signature: let the call itself complain
            pass
        out = provider.fn(inputs, **opts)
        term = out if isinstance(out, Term) else Term(name, linear=np.asarray(out, dtype=np.float64))
        if term.name != name:
            term = replace(term, name=name)
        terms[name] = validate_term(term, n)
    if scale:
        terms = normalise_terms(terms, spectral_cap=spectral_cap, eps=eps)
    elif spectral_cap is not None:
        terms = normalise_terms(terms, unit_variance=False, spectral_cap=spectral_cap, eps=eps)
    return terms


def validate_term(term: Term, n: int | None) -> Term:
    """Check shapes and symmetry; return the term with float64 arrays. ``n`` = number of units."""
    linear = term.linear
    if linear is not None:
        linear = np.asarray(linear, dtype=np.float64)
        if linear.ndim != 1 or (n is not None and linear.shape[0] != n):
            raise QpruneError(f"term {term.name!r}: linear has shape {linear.shape}, expected ({n},)")
        if not np.all(np.isfinite(linear)):
            raise QpruneError(f"term {term.name!r}: linear contains NaN or inf")
    blocks = None
    if term.blocks is not None:
        blocks = []
        for b, (idx, M) in enumerate(term.blocks):
            idx = np.asarray(idx, dtype=np.int64)
            M = np.asarray(M, dtype=np.float64)
            where = f"term {term.name!r} block {b}"
            if idx.ndim != 1 or M.shape != (idx.size, idx.size):
                raise QpruneError(f"{where}: matrix shape {M.shape} does not match {idx.size} indices")
            if idx.size and (idx.min() < 0 or (n is not None and idx.max() >= n)):
                raise QpruneError(f"{where}: index out of range [0, {n})")
            if np.unique(idx).size != idx.size:
                raise QpruneError(f"{where}: repeated unit index")
            if not np.all(np.isfinite(M)):
                raise QpruneError(f"{where}: contains NaN or inf")
            if not np.allclose(M, M.T, rtol=1e-10, atol=1e-12 * (np.abs(M).max(initial=0.0) + 1.0)):
                raise QpruneError(f"{where}: matrix is not symmetric")
            if np.any(np.diag(M) != 0.0):
                raise QpruneError(f"{where}: nonzero diagonal; put diagonal values in the linear part")
            blocks.append((idx, M))
    cross = term.cross
    if cross is not None:
        cross = scipy.sparse.coo_matrix(cross, dtype=np.float64)
        if n is not None and cross.shape != (n, n):
            raise QpruneError(f"term {term.name!r}: cross has shape {cross.shape}, expected ({n}, {n})")
        if np.any(cross.row == cross.col):
            raise QpruneError(f"term {term.name!r}: cross has diagonal entries; put them in linear")
    return Term(term.name, linear, blocks, cross)


# --------------------------------------------------------------------------------------------------
# Helpers


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


def _layer_index(lids: np.ndarray) -> list[np.ndarray]:
    """Indices of each layer's units, layers in ascending id order (one stable sort, no N x L scan)."""
    order = np.argsort(lids, kind="stable")
    _, starts = np.unique(lids[order], return_index=True)
    return np.split(order, starts[1:])


def _importance(values: Any, params: Any, what: str, per_param: bool) -> np.ndarray:
    v = _vector(values, what)
    if not per_param:
        return v
    if params is None:
        raise QpruneError(f"{what} is normalised by parameter counts, but no params were given")
    return param_normalise(v, _vector(params, "params"))


def _has_input(inputs: Mapping[str, Any], key: str) -> bool:
    if key == "l1":  # the scores can be computed from the raw weights
        return inputs.get("l1") is not None or inputs.get("weights") is not None
    return inputs.get(key) is not None


def _num_units(inputs: Mapping[str, Any]) -> int | None:
    for key in ("layer_ids", "params", "l1"):
        if inputs.get(key) is not None:
            return len(inputs[key])
    return None


def _provider(name: str) -> TermProvider:
    try:
        return _PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(_PROVIDERS))
        raise QpruneError(f"unknown term {name!r}; known terms: {known}") from None


def _scores(inputs: Mapping[str, Any]) -> np.ndarray:
    if inputs.get("l1") is not None:
        return np.asarray(inputs["l1"], dtype=np.float64)
    return l1_scores(inputs["weights"])


register_term(
    "l1_redundancy",
    lambda inputs, network_wide=False: l1_redundancy(
        _scores(inputs), inputs["layer_ids"], network_wide=network_wide
    ),
    requires=("l1", "layer_ids"),
    description="A_ij = s_i s_j within a layer (L1 parameter redundancy)",
)
register_term(
    "taylor",
    lambda inputs, per_param=True: taylor(inputs["taylor"], inputs.get("params"), per_param=per_param),
    requires=("taylor", "params"),
    description="first-order Taylor importance / P_i",
)
register_term(
    "weight_fisher",
    lambda inputs, per_param=True: weight_fisher(
        inputs["weight_fisher"], inputs.get("params"), per_param=per_param
    ),
    requires=("weight_fisher", "params"),
    description="Weight-Fisher importance / P_i",
)
register_term(
    "channel_fisher",
    lambda inputs, per_param=True: channel_fisher(
        inputs["channel_fisher"], inputs.get("params"), per_param=per_param
    ),
    requires=("channel_fisher", "params"),
    description="Channel-Fisher importance / P_i",
)
register_term(
    "activation_similarity",
    lambda inputs: activation_similarity(inputs["activations"], inputs["layer_ids"]),
    requires=("activations", "layer_ids"),
    description="max(0, Pearson correlation) of activations within a layer",
)
register_term(
    "capacity",
    lambda inputs: capacity(inputs["params"]),
    requires=("params",),
    description="D_i = P_i / sum P, the reward that gamma multiplies",
)
