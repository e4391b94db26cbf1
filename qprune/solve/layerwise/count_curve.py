"""Exact count curves of small blocks by enumeration: :func:`block_count_curve`."""

from __future__ import annotations

import numpy as np

from qprune.errors import QpruneError
from qprune.solve.layerwise.blocks import energies

__all__ = ["BRUTE_FORCE_MAX", "all_states", "block_count_curve"]

BRUTE_FORCE_MAX = 20  # meet in the middle: 2 x 2^10 half-states, ~0.05-0.15 s per 20-variable block
_INF = np.inf


def all_states(m: int) -> np.ndarray:
    """Every 0/1 vector of length m as int8 rows [2^m, m] (row r = binary digits of r)."""
    return ((np.arange(1 << m, dtype=np.int64)[:, None] >> np.arange(m)) & 1).astype(np.int8)


def _group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct key rows, states sorted by key, start of each key's run in that order)."""
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    order = np.argsort(inv.ravel(), kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inv.ravel()[order])) + 1]
    return uniq, order, starts


def block_count_curve(h: np.ndarray, M: np.ndarray, *, sub: np.ndarray | None = None,
                      caps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``C(c) = min {h.x + x.M.x/2 : |x| = c}`` for c = 0..m by enumerating all 2^m states.

    Meet in the middle: the variables are split into halves A and B, and
    E = E_A(a) + E_B(b) + a.M_AB.b is formed as one BLAS product per chunk of A states, reduced to
    the minimum per (A key, B key) where a key is the state's count per layer; a pair of keys is
    feasible when every per-layer count stays within ``caps``. ~30 ms for m = 20.

    Args:
        h: linear biases [m].
        M: symmetric couplings [m, m] with zero diagonal.
        sub, caps: optional layer of each variable (0..L-1) and max ones per layer.

    Returns:
        (energies [m+1], inf where no feasible state has that count; states int8 [m+1, m]).
    """
    h = np.asarray(h, float)
    M = np.asarray(M, float)
    m = h.size
    if m > 26:
        raise QpruneError(f"refusing to enumerate 2^{m} states; use the heuristic block solver")
    sub = np.zeros(m, np.int64) if sub is None else np.asarray(sub, np.int64)
    caps = np.array([m]) if caps is None else np.asarray(caps, np.int64)
    nb = m // 2
    B, A = np.arange(nb), np.arange(nb, m)  # B: low half (columns), A: high half (rows)
    XB, XA = all_states(B.size), all_states(A.size)
    EB, EA = energies(XB, h[B], M[np.ix_(B, B)]), energies(XA, h[A], M[np.ix_(A, A)])
    L = caps.size
    kB = np.stack([XB[:, sub[B] == s].sum(axis=1) for s in range(L)], axis=1)
    kA = np.stack([XA[:, sub[A] == s].sum(axis=1) for s in range(L)], axis=1)
    uB, oB, sB = _group(kB)
    uA, oA, sA = _group(kA)
    gA = np.repeat(np.arange(len(sA)), np.diff(np.r_[sA, XA.shape[0]]))  # key of each A row in oA order
    XBo = XB[oB].astype(np.float64)
    EBo = EB[oB]
    CAB = M[np.ix_(A, B)]
    table = np.full((len(uA), len(uB)), _INF)
    rows = max(1, (1 << 20) // max(1, XB.shape[0]))
    for r0 in range(0, XA.shape[0], rows):
        sel = oA[r0:r0 + rows]
        T = EA[sel][:, None] + EBo[None, :] + (XA[sel].astype(np.float64) @ CAB) @ XBo.T
        R = np.minimum.reduceat(T, sB, axis=1)  # [rows, B keys]
        np.minimum.at(table, gA[r0:r0 + rows], R)
    total = uA[:, None, :] + uB[None, :, :]  # per-layer counts of every key pair
    feasible = (total <= caps[None, None, :]).all(axis=2)
    count = total.sum(axis=2)
    best = np.full(m + 1, _INF)
    states = np.zeros((m + 1, m), dtype=np.int8)
    table = np.where(feasible, table, _INF)
    for c in range(m + 1):
        cand = np.where(count == c, table, _INF)
        ia, ib = np.unravel_index(int(np.argmin(cand)), cand.shape)
        if not np.isfinite(cand[ia, ib]):
            continue
        best[c] = cand[ia, ib]
        ra = oA[sA[ia]:(sA[ia + 1] if ia + 1 < len(sA) else None)]
        rb = oB[sB[ib]:(sB[ib + 1] if ib + 1 < len(sB) else None)]
        T = EA[ra][:, None] + EB[rb][None, :] + (XA[ra].astype(np.float64) @ CAB) @ XB[rb].T.astype(np.float64)
        i, j = np.unravel_index(int(np.argmin(T)), T.shape)
        states[c, A] = XA[ra[i]]
        states[c, B] = XB[rb[j]]
    return best, states
