"""Normalisation of QUBO components (paper section 3.7).

Raw components differ by orders of magnitude, so before they are weighted:

1. importance scores are divided by the unit's parameter count (:func:`param_normalise`, applied by
   the Taylor/Fisher providers);
2. every component is divided by (std of its magnitudes + eps), its diagonal (``linear``) and
   its off-diagonal part (block entries i<j plus ``cross``) separately (:func:`unit_variance`);
3. every term is divided by the spread of its energy between random masks (:func:`energy_spread`),
   so that the terms enter the weighted sum on one scale whatever their form: after step 2 a term of
   N linear values moves the energy by ~sqrt(N) and a term of blocks by ~(block size) sqrt(N), so
   equal weights meant unequal say, and a weight found on one model did not carry to another;
4. optionally the redundancy matrix is rescaled so that its spectral norm is at most ``c``
   (:func:`cap_spectral_norm`, power iteration, blockwise since the matrix is block-diagonal).

The matrix of a term is the symmetric A with ``x^T A x`` equal to the term's energy:
A = diag(linear) + M / 2 (M holds the QUBO's off-diagonal Q_ij = 2 A_ij).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import lru_cache

import numpy as np
import scipy.sparse

from qprune.errors import QpruneError
from qprune.qubo.types import Term

__all__ = [
    "DEFAULT_CAP_TERMS", "DEFAULT_SKIP", "cap_spectral_norm", "magnitude_scale", "normalise_terms", "param_normalise",
    "spectral_norm", "unit_variance", "upper_pairs",
]

# gamma is searched, so rescaling the reward would only move gamma; the loss model's scale IS its
# meaning (an estimate of the loss increase), and unit variance would break its diagonal/off-diagonal ratio
DEFAULT_SKIP = ("capacity", "gate_fisher")
DEFAULT_CAP_TERMS = ("l1_redundancy",)


@lru_cache(maxsize=64)
def upper_pairs(m: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(m, 1)``, cached: every block of the same size asks for the same pairs."""
    iu, ju = np.triu_indices(m, 1)
    iu.flags.writeable = False
    ju.flags.writeable = False
    return iu, ju


def param_normalise(values: np.ndarray, params: np.ndarray) -> np.ndarray:
    """values_i / P_i, so that large filters do not look important only for being large."""
    v = np.asarray(values, dtype=np.float64)
    P = np.asarray(params, dtype=np.float64)
    if P.shape != v.shape:
        raise QpruneError(f"{v.size} importance values but {P.size} parameter counts")
    if np.any(~(P > 0)):
        bad = int(np.flatnonzero(~(P > 0))[0])
        raise QpruneError(f"params[{bad}] = {float(P[bad])!r}; parameter counts must be positive")
    return v / P


def magnitude_scale(values: np.ndarray, eps: float = 1e-12) -> float:
    """std(|values|) + eps * max|values|, the divisor that brings a component to unit variance.

    eps is relative: raw Taylor scores can be ~1e-10, which an absolute eps would distort. A
    constant component has std 0; dividing by eps alone would blow it up to 1/eps, so it is divided
    by its mean magnitude instead (values become +-1). An all-zero component stays as is.
    """
    mag = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    if mag.size == 0:
        return 1.0
    top = float(mag.max())
    if top == 0.0:
        return 1.0
    std = float(mag.std())
    if std > 1e-12 * top:
        return std + eps * top
    return float(mag.mean())


def unit_variance(term: Term, eps: float = 1e-12) -> Term:
    """Divide the linear part and the off-diagonal part by their own magnitude std (+ eps).

    The off-diagonal statistics are over entries inside blocks (i<j) plus the stored ``cross``
    entries; the structural zeros between layers are not entries of the component and are left out,
    so the scale does not depend on how many layers the network has.
    """
    linear = None if term.linear is None else term.linear / magnitude_scale(term.linear, eps)
    blocks, cross = term.blocks, term.cross
    parts = [M[upper_pairs(M.shape[0])] for _, M in (blocks or [])]
    if cross is not None:
        parts.append(np.asarray(cross.data, dtype=np.float64))
    if parts:
        s = magnitude_scale(np.concatenate(parts), eps)
        blocks = None if blocks is None else [(idx, M / s) for idx, M in blocks]
        cross = None if cross is None else scipy.sparse.coo_matrix(cross / s)
    return replace(term, linear=linear, blocks=blocks, cross=cross)


def spectral_norm(term: Term, *, max_iter: int = 1000, tol: float = 1e-12, seed: int = 0) -> float:
    """Power-iteration estimate of ||A||_2 for the term's symmetric matrix A = diag(linear) + M/2.

    Block-diagonal terms iterate all blocks at once (padded into one [blocks, m, m] array), so each
    block converges at its own rate; a term with ``cross`` couplings or overlapping blocks iterates
    the whole sparse matrix.
    """
    n = _size(term)
    if n == 0:
        return 0.0
    linear = np.zeros(n) if term.linear is None else np.asarray(term.linear, dtype=np.float64)
    blocks = term.blocks or []
    covered = np.concatenate([idx for idx, _ in blocks]) if blocks else np.zeros(0, dtype=np.int64)
    if (term.cross is not None and term.cross.nnz) or np.unique(covered).size != covered.size:
        return _power_iteration_sparse(_sparse_matrix(term, n, linear), max_iter, tol, seed)
    outside = np.ones(n, dtype=bool)
    outside[covered] = False
    norm = float(np.abs(linear[outside]).max(initial=0.0))  # 1x1 blocks: |A_ii|
    if not blocks:
        return norm
    m = max(idx.size for idx, _ in blocks)
    stack = np.zeros((len(blocks), m, m))
    for b, (idx, M) in enumerate(blocks):
        k = idx.size
        stack[b, :k, :k] = M / 2.0
        stack[b, np.arange(k), np.arange(k)] = linear[idx]
    return max(norm, float(_power_iteration_batched(stack, max_iter, tol, seed).max()))


def cap_spectral_norm(term: Term, cap: float, **kwargs: float) -> Term:
    """Rescale the whole term (linear and off-diagonal alike) so that ||A||_2 <= cap."""
    if not cap > 0:
        raise QpruneError(f"spectral cap must be positive, got {cap!r}")
    norm = spectral_norm(term, **kwargs)
    if norm <= cap:
        return term
    return scale_term(term, cap / norm)


def normalise_terms(
    terms: Mapping[str, Term],
    *,
    unit_variance: bool = True,
    spectral_cap: float | None = None,
    cap_terms: Sequence[str] = DEFAULT_CAP_TERMS,
    skip: Sequence[str] = DEFAULT_SKIP,
    eps: float = 1e-12,
    energy: bool = True,
) -> dict[str, Term]:
    """Unit-variance scaling of every term except ``skip``; with ``energy``, each of them then divided by
    its :func:`energy_spread`; last the spectral cap on ``cap_terms``."""
    out: dict[str, Term] = {}
    for name, term in terms.items():
        if unit_variance and name not in skip:
            term = _unit_variance(term, eps)
        if energy and name not in skip:
            n = _size(term)
            spread = energy_spread(term, n) if n else 0.0
            if spread > 0.0:
                term = scale_term(term, 1.0 / spread)
        if spectral_cap is not None and name in cap_terms:
            term = cap_spectral_norm(term, spectral_cap)
        out[name] = term
    return out


_unit_variance = unit_variance  # normalise_terms has a parameter of the same name


def energy_spread(term: Term, n: int) -> float:
    """Std of the term's energy over random masks that prune each unit with probability 1/2.

    How much the term moves the energy between masks, whatever its form (a vector, blocks of any
    size, cross couplings): dividing by it puts every term on the same footing, independent of the
    number of units and layers. 0 for a term that is constant. Exact, in O(entries): with
    x_i = 1/2 + z_i (z_i = +-1/2, independent), E = const + sum_i g_i z_i + sum_{i<j} Q_ij z_i z_j with
    g_i = a_i + 1/2 sum_j Q_ij, and the two sums are uncorrelated, so
    Var E = 1/4 sum_i g_i^2 + 1/16 sum_{i<j} Q_ij^2.
    """
    g = np.zeros(n) if term.linear is None else np.asarray(term.linear, dtype=np.float64).copy()
    pairs = 0.0
    for idx, M in term.blocks or []:
        g[idx] += 0.5 * M.sum(axis=1)
        pairs += 0.5 * float(np.sum(M * M))
    if term.cross is not None and term.cross.nnz:
        C = scipy.sparse.coo_matrix(term.cross)
        np.add.at(g, C.row, 0.5 * C.data)
        np.add.at(g, C.col, 0.5 * C.data)
        pairs += float(np.sum(C.data ** 2))
    return float(np.sqrt(0.25 * float(g @ g) + pairs / 16.0))


def scale_term(term: Term, f: float) -> Term:
    """The whole term (linear, blocks, cross) times ``f``."""
    return replace(
        term,
        linear=None if term.linear is None else term.linear * f,
        blocks=None if term.blocks is None else [(idx, M * f) for idx, M in term.blocks],
        cross=None if term.cross is None else scipy.sparse.coo_matrix(term.cross * f),
    )


def _size(term: Term) -> int:
    if term.linear is not None:
        return int(np.asarray(term.linear).shape[0])
    if term.cross is not None:
        return int(term.cross.shape[0])
    return int(max((idx.max() + 1 for idx, _ in term.blocks or [] if idx.size), default=0))


def _power_iteration_batched(stack: np.ndarray, max_iter: int, tol: float, seed: int) -> np.ndarray:
    """Largest singular value of each symmetric matrix in ``stack`` [B, m, m]."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(stack.shape[:2])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    est = np.zeros(stack.shape[0])
    for _ in range(max_iter):
        w = np.einsum("bij,bj->bi", stack, v)
        new = np.linalg.norm(w, axis=1)
        v = np.divide(w, new[:, None], out=np.zeros_like(w), where=new[:, None] > 0)
        done = np.all(np.abs(new - est) <= tol * np.maximum(new, 1e-300))
        est = new
        if done:
            break
    return est


def _power_iteration_sparse(A: scipy.sparse.csr_matrix, max_iter: int, tol: float, seed: int) -> float:
    v = np.random.default_rng(seed).standard_normal(A.shape[0])
    v /= np.linalg.norm(v)
    est = 0.0
    for _ in range(max_iter):
        w = A @ v
        new = float(np.linalg.norm(w))
        if new == 0.0:
            return 0.0
        v = w / new
        if abs(new - est) <= tol * new:
            return new
        est = new
    return est


def _sparse_matrix(term: Term, n: int, linear: np.ndarray) -> scipy.sparse.csr_matrix:
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [linear]
    for idx, M in term.blocks or []:
        r, c = np.nonzero(M)
        rows.append(idx[r])
        cols.append(idx[c])
        vals.append(M[r, c] / 2.0)
    if term.cross is not None:
        C = scipy.sparse.coo_matrix(term.cross)
        rows += [C.row, C.col]
        cols += [C.col, C.row]
        vals += [C.data / 2.0, C.data / 2.0]
    return scipy.sparse.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    ).tocsr()
