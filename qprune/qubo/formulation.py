"""The block-diagonal QUBO that weighted, normalised terms produce.

:func:`formulate` sums the terms a preset names (:mod:`qprune.qubo.presets`: the formulas and the
:class:`~qprune.qubo.presets.Weights`), each times its weight, into a :class:`Formulation`. Terms
are as returned by :func:`qprune.qubo.terms.compute_terms` (the A term's blocks already hold
2 A_ij, the similarity's blocks max(0, S_ij)); the capacity reward D_i is kept apart so that gamma
can be searched: ``bqm(gamma).linear = linear - gamma * reward``.

Every term of the paper's presets lives within one layer, so the QUBO is block-diagonal by layer: a
:class:`Formulation` keeps one dense block per layer, which the BQM, the energy and solvers that
work layer by layer all read directly; rare cross-layer couplings live in ``cross``. A term in
factored form (the loss model, :mod:`qprune.qubo.fisher`) puts its diagonal into ``linear``, its
within-layer couplings into the blocks and keeps the rest, the couplings between layers, as the
factor ``C`` itself: ``(C^T C)_ij`` for units i, j of different layers, never formed as N x N
except when a BQM is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dimod
import numpy as np
import scipy.sparse

from qprune.errors import QpruneError
from qprune.qubo.presets import (
    CAPACITY,
    COUPLING_SCALE,
    DEFAULT_PRESET,
    FISHER_CHOICES,
    PRESETS,
    Weights,
    contributions,
    preset_terms,
)
from qprune.qubo.scaling import upper_pairs
from qprune.qubo.terms import Block, Term, validate_term
from qprune.qubo.types import layer_index

COUPLING_SCALES = ("layer", "none")  #: ``formulate(coupling_scale=...)`` choices

# Weights, PRESETS, FISHER_CHOICES and preset_terms live in qprune.qubo.presets; they are
# re-exported here because callers have always imported them from this module.
__all__ = ["FISHER_CHOICES", "PRESETS", "Formulation", "Weights", "formulate", "preset_terms"]


@dataclass
class Formulation:
    """A block-diagonal QUBO over named units, with the capacity reward kept apart for gamma.

    ``blocks[b] = (idx, M)``: the units of the b-th layer (layer ids ascending) and their dense
    symmetric coupling matrix with zero diagonal; E contains ``sum_{i<j} M_ij x_i x_j``. ``cross``
    holds couplings between layers, each pair once with row < col. ``bqm(gamma).linear`` equals
    ``linear - gamma * reward``. ``factor`` (``[rows, N]`` or None) adds the couplings ``(C^T C)_ij``
    between units of DIFFERENT layers (within a layer they are in the blocks already): E contains
    ``1/2 |C x|^2 - 1/2 sum_layers |C_l x_l|^2``. Treat instances as immutable.
    """

    labels: list[str]
    layer_ids: np.ndarray
    linear: np.ndarray
    blocks: list[Block]
    cross: scipy.sparse.coo_matrix | None
    reward: np.ndarray
    offset: float = 0.0
    factor: np.ndarray | None = None

    @property
    def num_variables(self) -> int:
        """N, the number of units."""
        return len(self.labels)

    def quadratic_vectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, bias) of every nonzero coupling, row < col: blocks first, then ``cross``."""
        rows, cols, vals = [], [], []
        for idx, M in self.blocks:
            iu, ju = upper_pairs(idx.size)
            v = M[iu, ju]
            nz = v != 0.0
            rows.append(idx[iu[nz]])
            cols.append(idx[ju[nz]])
            vals.append(v[nz])
        if self.cross is not None and self.cross.nnz:
            rows.append(self.cross.row.astype(np.int64))
            cols.append(self.cross.col.astype(np.int64))
            vals.append(self.cross.data)
        if self.factor is not None:
            for r, c, v in _factor_pairs(self.factor, self.blocks):
                rows.append(r)
                cols.append(c)
                vals.append(v)
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)

    def bqm(self, gamma: float) -> dimod.BinaryQuadraticModel:
        """The BINARY BQM at capacity weight ``gamma``, labelled by ``labels`` in that order."""
        return dimod.BinaryQuadraticModel.from_numpy_vectors(
            self.linear - float(gamma) * self.reward,
            self.quadratic_vectors(),
            float(self.offset),
            dimod.BINARY,
            variable_order=self.labels,
        )

    def objective_bqm(self) -> dimod.BinaryQuadraticModel:
        """The objective without the capacity reward, i.e. ``bqm(0.0)`` (minimised subject to sum x = k)."""
        return self.bqm(0.0)

    def energy(self, X: np.ndarray, gamma: float = 0.0) -> np.ndarray:
        """E(x) at ``gamma`` for one sample [N] (a float) or a batch [B, N] (an array [B]) of 0/1."""
        X = np.asarray(X)
        single = X.ndim == 1
        X2 = np.atleast_2d(X)
        n = self.num_variables
        if X2.ndim != 2 or X2.shape[1] != n:
            raise QpruneError(f"samples have shape {X.shape}; expected [{n}] or [B, {n}]")
        if not np.isin(X2, (0, 1)).all():
            raise QpruneError("samples must be 0/1 (1 = pruned)")
        Xf = X2.astype(np.float64)
        E = Xf @ (self.linear - float(gamma) * self.reward) + float(self.offset)
        for idx, M in self.blocks:
            Xb = Xf[:, idx]
            E += 0.5 * np.einsum("bi,bi->b", Xb @ M, Xb)  # M symmetric: x^T M x / 2 = sum_{i<j}
        if self.cross is not None and self.cross.nnz:
            E += np.einsum("bi,bi->b", np.asarray((self.cross.tocsc().T @ Xf.T).T), Xf)
        if self.factor is not None:
            E += 0.5 * np.sum((Xf @ self.factor.T) ** 2, axis=1)
            for idx, _ in self.blocks:  # within a layer the blocks hold them already
                E -= 0.5 * np.sum((Xf[:, idx] @ self.factor[:, idx].T) ** 2, axis=1)
        return E[0] if single else E

    def block_of_layer(self) -> dict[int, int]:
        """layer id -> position of its block in ``blocks``."""
        return {int(self.layer_ids[idx[0]]): b for b, (idx, _) in enumerate(self.blocks) if idx.size}


def formulate(
    terms: Mapping[str, Term],
    preset: str = DEFAULT_PRESET,
    weights: Weights | None = None,
    fisher: str = "taylor",
    *,
    labels: Sequence[str] | None = None,
    layer_ids: Sequence[int] | np.ndarray,
    offset: float = 0.0,
    coupling_scale: str | None = None,
) -> Formulation:
    """Combine normalised terms into a :class:`Formulation` (vectorised; one dense block per layer).

    ``terms`` must contain ``capacity`` and the terms of the preset (see :func:`preset_terms`); a
    term whose weight is 0 may be absent. ``labels`` default to ``"unit:<i>"``.

    ``coupling_scale="layer"`` (default) divides each layer's couplings by (m - 1), m its number of
    units. After unit-variance scaling every coupling is O(1), so a unit's summed coupling to its
    layer grows with m while its linear terms stay O(1): unscaled, with all weights 1, the
    couplings decide alone and the mask is nearly uniform per layer (digits CNN at 30 %: 0.39
    validation accuracy, against 0.94 with the couplings scaled). ``"none"`` is the paper's
    literal form, where the weights beta_off and lambda must absorb the layer size. None: the
    preset's own (:data:`qprune.qubo.presets.COUPLING_SCALE`; ``"none"`` for the loss model, whose
    couplings are on the scale of its diagonal by construction).
    """
    if coupling_scale is None:
        coupling_scale = COUPLING_SCALE.get(preset, "layer")
    if coupling_scale not in COUPLING_SCALES:
        raise QpruneError(f"coupling_scale must be 'layer' or 'none', got {coupling_scale!r}")
    weights = weights or Weights()
    labels, lids = _check_units(labels, layer_ids)
    if CAPACITY not in terms or terms[CAPACITY].linear is None:
        raise QpruneError("terms lack 'capacity' (D_i = P_i / sum P), which gamma multiplies")
    acc = _LayerBlocks(lids)
    for name, w_diag, w_off in contributions(preset, fisher, weights):
        if w_diag == 0.0 and w_off == 0.0:
            continue
        if name not in terms:
            raise QpruneError(
                f"preset {preset!r} needs term {name!r}, which was not computed "
                f"(computed: {', '.join(sorted(terms))})"
            )
        acc.add(validate_term(terms[name], lids.size), w_diag, w_off)
    blocks, cross = acc.finish(scale_by_layer=coupling_scale == "layer")
    reward = validate_term(terms[CAPACITY], lids.size).linear
    factor = np.concatenate(acc.factors) if acc.factors else None
    return Formulation(labels, lids.copy(), acc.linear, blocks, cross, reward.copy(), float(offset), factor)


def _check_units(labels: Sequence[str] | None, layer_ids: Sequence[int] | np.ndarray) -> tuple[list[str], np.ndarray]:
    """Labels as strings (default ``"unit:<i>"``) and layer ids as an int array, both checked."""
    lids = np.asarray(layer_ids)
    if lids.ndim != 1 or lids.size == 0:
        raise QpruneError(f"layer_ids must be a non-empty 1-d array, got shape {lids.shape}")
    if not np.issubdtype(lids.dtype, np.integer):
        raise QpruneError(f"layer_ids must be integers, got dtype {lids.dtype}")
    n = lids.size
    labels = [f"unit:{i}" for i in range(n)] if labels is None else [str(s) for s in labels]
    if len(labels) != n:
        raise QpruneError(f"{len(labels)} labels for {n} units")
    if len(set(labels)) != n:
        dup = next(s for i, s in enumerate(labels) if s in labels[:i])
        raise QpruneError(f"duplicate label {dup!r}")
    return labels, lids


class _LayerBlocks:
    """Weighted terms summed into one linear vector, one dense block per layer and cross couplings."""

    def __init__(self, lids: np.ndarray) -> None:
        n = lids.size
        self.groups = layer_index(lids)
        self.block_of = np.empty(n, dtype=np.int64)
        self.pos = np.empty(n, dtype=np.int64)  # position of each unit inside its block
        for b, idx in enumerate(self.groups):
            self.block_of[idx] = b
            self.pos[idx] = np.arange(idx.size)
        self.dense = [np.zeros((idx.size, idx.size)) for idx in self.groups]
        self.linear = np.zeros(n)
        self.cross_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.factors: list[np.ndarray] = []

    def add(self, term: Term, w_diag: float, w_off: float) -> None:
        """Add ``w_diag`` x the term's linear part and ``w_off`` x its couplings."""
        if term.linear is not None and w_diag:
            self.linear += w_diag * term.linear
        if term.factor is not None:
            self._add_factor(term, w_diag, w_off)
        if not w_off:
            return
        for idx, M in term.blocks or []:
            _add_block(idx, w_off * M, self.block_of, self.pos, self.dense, self.cross_parts)
        if term.cross is not None and term.cross.nnz:
            C = term.cross
            self.cross_parts.append((C.row.astype(np.int64), C.col.astype(np.int64), w_off * C.data))

    def _add_factor(self, term: Term, w_diag: float, w_off: float) -> None:
        """1/2 |C x|^2: its diagonal to ``linear``, its within-layer pairs to the blocks, C kept for the rest."""
        C = term.factor
        if w_diag:
            self.linear += w_diag * 0.5 * np.einsum("si,si->i", C, C)
        if not w_off:
            return
        if w_off < 0:
            raise QpruneError(f"term {term.name!r} is a factored quadratic form; its weight must be >= 0, got {w_off}")
        for idx, dense in zip(self.groups, self.dense):
            G = C[:, idx].T @ C[:, idx]
            np.fill_diagonal(G, 0.0)
            dense += w_off * G
        self.factors.append(np.sqrt(w_off) * C)

    def finish(self, *, scale_by_layer: bool) -> tuple[list[Block], scipy.sparse.coo_matrix | None]:
        """The layer blocks (divided by m - 1 with ``scale_by_layer``) and the canonical cross couplings."""
        # folds within-layer cross pairs into the dense blocks first, so they are scaled alike
        cross = _merge_cross(self.cross_parts, self.linear.size, self.block_of, self.pos, self.dense)
        if scale_by_layer:
            for M in self.dense:
                M /= max(M.shape[0] - 1, 1)
        return list(zip(self.groups, self.dense)), cross


def _add_block(
    idx: np.ndarray,
    M: np.ndarray,
    block_of: np.ndarray,
    pos: np.ndarray,
    dense: list[np.ndarray],
    cross_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    """Scatter a term block into the layer blocks; pairs that span layers go to ``cross``."""
    b = block_of[idx]
    if np.all(b == b[0]):
        p = pos[idx]
        D = dense[b[0]]
        if p.size == D.shape[0] and np.array_equal(p, np.arange(p.size)):
            D += M  # the whole layer in order (every built-in term): no m x m fancy-index scatter
        else:
            D[np.ix_(p, p)] += M
        return
    for layer_block in np.unique(b):
        sel = b == layer_block
        p = pos[idx[sel]]
        dense[layer_block][np.ix_(p, p)] += M[np.ix_(sel, sel)]
    iu, ju = upper_pairs(idx.size)
    span = (b[iu] != b[ju]) & (M[iu, ju] != 0.0)
    cross_parts.append((idx[iu[span]], idx[ju[span]], M[iu[span], ju[span]]))


def _merge_cross(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n: int,
    block_of: np.ndarray,
    pos: np.ndarray,
    dense: list[np.ndarray],
) -> scipy.sparse.coo_matrix | None:
    """Canonical cross couplings (row < col, summed, nonzero); same-layer pairs join their block."""
    if not parts:
        return None
    r = np.concatenate([p[0] for p in parts])
    c = np.concatenate([p[1] for p in parts])
    v = np.concatenate([p[2] for p in parts])
    r, c = np.minimum(r, c), np.maximum(r, c)
    same = block_of[r] == block_of[c]
    if same.any():  # only user-supplied cross entries within one layer land here
        rs, cs, vs = r[same], c[same], v[same]
        for b in np.unique(block_of[rs]):
            sel = block_of[rs] == b
            pr, pc = pos[rs[sel]], pos[cs[sel]]
            np.add.at(dense[b], (pr, pc), vs[sel])
            np.add.at(dense[b], (pc, pr), vs[sel])
        r, c, v = r[~same], c[~same], v[~same]
    C = scipy.sparse.coo_matrix((v, (r, c)), shape=(n, n))
    C.sum_duplicates()
    C.eliminate_zeros()
    return C if C.nnz else None


def _factor_pairs(C: np.ndarray, blocks: Sequence[Block]):  # -> Iterator[tuple[rows, cols, values]]
    """The couplings ``(C^T C)_ij`` between units of different blocks, one pair of blocks at a time."""
    for a, (ia, _) in enumerate(blocks):
        for ib, _ in blocks[a + 1:]:
            G = C[:, ia].T @ C[:, ib]
            r, c = np.meshgrid(ia, ib, indexing="ij")
            lo, hi = np.minimum(r, c).ravel(), np.maximum(r, c).ravel()
            v = G.ravel()
            nz = v != 0.0
            yield lo[nz], hi[nz], v[nz]
