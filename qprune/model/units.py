"""The filter space as plain data: units (decision variables) and the space they form.

A *unit* is one decision variable (``x_i = 1`` means pruned): the set of output channels that must
disappear together for the network to really shrink (found by :mod:`qprune.model.discovery`).
A :class:`FilterSpace` holds module paths and indices only, no module references, so it can be
saved as JSON (:meth:`FilterSpace.to_dict`) and rebuilt without the model.

Parameter counts
    ``Unit.params`` is EVERY parameter that disappears when this unit alone is removed: the member
    filters (weights + biases, depthwise included), coupled BN/affine/per-channel parameters, and
    the consumers' input slices (``C_out x K x K`` per input channel of the next conv, ``H·W·out``
    per channel of a Linear after a flatten). Removing several units is not additive: when unit
    ``i`` removes output row ``o`` of a conv and unit ``j`` removes its input column ``c``, the
    ``K x K`` weights at ``(o, c)`` are counted in both ``P_i`` and ``P_j``. The removal count is
    exactly pairwise, ``removed(x) = Σ P_i x_i − Σ_{i<j} O_ij x_i x_j``;
    :meth:`FilterSpace.predicted_params` computes the exact parameter count of the pruned network
    and :meth:`FilterSpace.param_overlap` returns ``O``. ``Unit.filter_params`` is the paper's
    ``P_i`` (the member filters' own weights + biases), the natural normaliser for Taylor/Fisher
    sums, which run over those same weights.

Unit kinds (``Unit.kind``)
    ``"channel"``: output channels (of convs, linears, whole groups of grouped convs / GroupNorm)
    with everything their torch-pruning group drags along, gated at the consumers' inputs;
    ``"branch"``: one output channel of a conv/linear whose result is added into a residual trunk
    that stays whole, gated at the branch's output (``Unit.outputs``) and removed by keeping the
    conv's other channels and adding them into the trunk at their indices
    (:mod:`qprune.model.residual`); ``"head"``: one attention head (:mod:`qprune.model.attention`),
    gated at the output projection's input columns of the head.

MACs
    :meth:`FilterSpace.predicted_macs` predicts :func:`qprune.model.stats.count_macs` of the pruned
    model: every counted term is ``positions x (kept elements of one weight tensor)`` or ``MACs per
    head x kept heads`` (``FilterSpace.mac_terms``, recorded on the example inputs).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse
import torch

from qprune.errors import QpruneError

__all__ = ["FilterSpace", "MaskLike", "Slice", "Unit", "count_removed"]

#: ``(parameter name, dim, indices)``: part of one parameter tensor that a unit removes
Slice = tuple[str, int, tuple[int, ...]]
#: a mask as ``{label: 0/1}`` or a 0/1 (bool) vector over the units
MaskLike = Mapping[str, int] | np.ndarray | Sequence[int]


@dataclass(frozen=True)
class Unit:
    """One decision variable: channels that fall together.

    Attributes:
        label: ``"<layer>:<channel>"``, stable across runs.
        layer: root module path (the layer this unit belongs to).
        channel: smallest output channel of the root module in this unit.
        members: ``(module path, output channel)`` of every conv/linear filter that disappears.
        params: every parameter that disappears when this unit alone is removed (see module doc).
        filter_params: the member filters' own weights + biases (the paper's ``P_i``).
        inputs: ``(consumer path, input channel)`` where the gate zeroes the unit; the first
            consumer is the one whose input carries the most elements (the activation used for
            similarity).
        slices: ``(parameter name, dim, indices)`` removed with the unit (for exact counts).
        kind: ``"channel"``, ``"branch"`` or ``"head"`` (see the module doc).
        outputs: ``(module path, output channel)`` where the gate zeroes the unit at a module's
            OUTPUT (branch units); ``inputs`` and ``outputs`` together are the gate positions.
        filters: the unit's own weights and biases as slices (Taylor, Fisher and L1 sum over
            them); empty = the ``members``' output rows (spaces saved before this field).
    """

    label: str
    layer: str
    channel: int
    members: tuple[tuple[str, int], ...]
    params: int
    filter_params: int = 0
    inputs: tuple[tuple[str, int], ...] = ()
    slices: tuple[Slice, ...] = ()
    kind: str = "channel"
    outputs: tuple[tuple[str, int], ...] = ()
    filters: tuple[Slice, ...] = ()

    @property
    def sites(self) -> tuple[tuple[str, int], ...]:
        """Every gate position, consumers' inputs first (the first one is the activation site)."""
        return self.inputs + self.outputs


@dataclass
class FilterSpace:
    """The prunable units of a model (plain data: module paths and indices, no module references).

    ``units`` are ordered by layer (module order) then channel; ``layers[layer_ids[i]] ==
    units[i].layer``. ``excluded`` maps a layer that is NOT in the space to the reason.
    ``consumer_channels`` / ``producer_channels`` give the input / output width of every module
    gated at its input / output; ``attention`` maps an attention module with head units to its
    kind (:data:`qprune.model.attention.ADAPTERS`); ``mac_terms`` are ``(parameter name or
    "heads:<layer>", positions or MACs per head, full element count)``.
    """

    units: list[Unit]
    layers: list[str]
    min_keep: int
    excluded: dict[str, str] = field(default_factory=dict)
    total_params: int = 0
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    consumer_channels: dict[str, int] = field(default_factory=dict)
    input_specs: list[tuple[tuple[int, ...], str]] = field(default_factory=list)
    producer_channels: dict[str, int] = field(default_factory=dict)
    attention: dict[str, str] = field(default_factory=dict)
    mac_terms: list[tuple[str, int, int]] = field(default_factory=list)

    # ----- vectors over units
    @property
    def N(self) -> int:
        """Number of units (QUBO variables)."""
        return len(self.units)

    @property
    def labels(self) -> list[str]:
        """Variable labels, ``"<module path>:<channel>"``."""
        return [u.label for u in self.units]

    @property
    def layer_ids(self) -> np.ndarray:
        """int [N]: index into :attr:`layers` of each unit."""
        index = {name: i for i, name in enumerate(self.layers)}
        return np.fromiter((index[u.layer] for u in self.units), dtype=np.int64, count=self.N)

    @property
    def params(self) -> np.ndarray:
        """int [N]: parameters that disappear with each unit alone (``P_i``, consumers included)."""
        return np.fromiter((u.params for u in self.units), dtype=np.int64, count=self.N)

    @property
    def filter_params(self) -> np.ndarray:
        """int [N]: the member filters' own weights + biases (the paper's per-filter ``P_i``)."""
        return np.fromiter((u.filter_params for u in self.units), dtype=np.int64, count=self.N)

    @property
    def n_layers(self) -> int:
        """Number of layers (QUBO blocks)."""
        return len(self.layers)

    @property
    def layer_sizes(self) -> np.ndarray:
        """int [n_layers]: units per layer."""
        return np.bincount(self.layer_ids, minlength=self.n_layers).astype(np.int64)

    @property
    def max_pruned_per_layer(self) -> np.ndarray:
        """int [n_layers]: at most this many units of each layer may be pruned (``size - min_keep``)."""
        return np.maximum(self.layer_sizes - self.min_keep, 0)

    def layer_units(self, layer: int | str) -> np.ndarray:
        """Indices of the units of one layer (by id or root path)."""
        lid = self.layers.index(layer) if isinstance(layer, str) else int(layer)
        return np.flatnonzero(self.layer_ids == lid)

    # ----- masks
    def to_mask(self, sample: MaskLike) -> np.ndarray:
        """bool [N], True = pruned, from ``{label: 0/1}`` (missing labels = kept) or a 0/1 vector."""
        if isinstance(sample, Mapping):
            return _mask_from_labels(self.labels, sample)
        return _mask_from_vector(sample, self.N)

    def check_mask(self, mask: MaskLike) -> np.ndarray:
        """:meth:`to_mask`, then refuse a mask that prunes more than ``size - min_keep`` of a layer."""
        m = self.to_mask(mask)
        counts = np.bincount(self.layer_ids[m], minlength=self.n_layers)
        over = np.flatnonzero(counts > self.max_pruned_per_layer)
        if over.size:
            lid = int(over[0])
            raise QpruneError(
                f"mask prunes {int(counts[lid])} of {int(self.layer_sizes[lid])} units of layer "
                f"{self.layers[lid]!r}; min_keep={self.min_keep} allows at most {int(self.max_pruned_per_layer[lid])}")
        return m

    def random_mask(self, k: float, seed: int = 0) -> np.ndarray:
        """A uniformly random valid mask with ``k`` pruned units (a float in (0, 1) is a fraction of N)."""
        kk = round(k * self.N) if isinstance(k, float) and 0 < k < 1 else int(k)
        cap = self.max_pruned_per_layer
        if not 0 <= kk <= int(cap.sum()):
            raise QpruneError(f"k={kk} outside [0, {int(cap.sum())}] (min_keep={self.min_keep})")
        rng = np.random.default_rng(seed)
        lids = self.layer_ids
        used = np.zeros(self.n_layers, dtype=np.int64)
        mask = np.zeros(self.N, dtype=bool)
        for i in rng.permutation(self.N):
            if mask.sum() == kk:
                break
            if used[lids[i]] < cap[lids[i]]:
                mask[i] = True
                used[lids[i]] += 1
        return mask

    # ----- parameter accounting
    def removed_params(self, mask: MaskLike) -> int:
        """Exact number of parameters that disappear when the units in ``mask`` are removed."""
        m = self.to_mask(mask)
        return count_removed(self.param_shapes, [self.units[i].slices for i in np.flatnonzero(m)])

    def predicted_params(self, mask: MaskLike) -> int:
        """Parameter count of the physically pruned model (exact, overlaps included)."""
        return self.total_params - self.removed_params(mask)

    def predicted_macs(self, mask: MaskLike) -> int:
        """MACs per sample of the physically pruned model, as :func:`qprune.model.stats.count_macs`
        counts them (0 when the space was built without MAC terms)."""
        m = self.to_mask(mask)
        pruned = _pruned_dims([self.units[i].slices for i in np.flatnonzero(m)])
        heads = {lay: int(c) for lay, c in zip(self.layers, np.bincount(self.layer_ids[m], minlength=self.n_layers))}
        total = 0
        for name, coeff, numel in self.mac_terms:
            if name.startswith("heads:"):
                total += coeff * (numel - heads.get(name[len("heads:"):], 0))
            elif name in pruned:
                total += coeff * _kept(self.param_shapes[name], pruned[name])
            else:
                total += coeff * numel
        return int(total)

    def param_overlap(self) -> scipy.sparse.coo_matrix:
        """``scipy.sparse.coo_matrix`` [N, N], upper triangle: ``O_ij`` of the exact pairwise count.

        ``removed(x) = params·x − xᵀ O x`` for a 0/1 vector ``x`` (i < j only). ``O_ij`` is non-zero
        where one unit removes output rows and the other input columns of the same weight tensor.
        """
        return _overlap(self.units, self.param_shapes)

    # ----- misc
    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random tensors shaped like the example inputs the space was built with (for re-tracing)."""
        g = torch.Generator().manual_seed(seed)
        out = []
        for shape, dtype in self.input_specs:
            dt = getattr(torch, dtype)
            if dt.is_floating_point:
                out.append(torch.rand(shape, generator=g, dtype=dt))
            else:
                out.append(torch.zeros(shape, dtype=dt))
        return tuple(out)

    def summary(self) -> str:
        """A few lines: units per layer and why the other layers are out."""
        lines = [(f"FilterSpace: {self.N} units in {self.n_layers} layers, min_keep={self.min_keep}, "
                  f"{self.total_params} parameters")]
        kinds = {u.layer: u.kind for u in self.units}
        for lid, (name, size, cap) in enumerate(zip(self.layers, self.layer_sizes, self.max_pruned_per_layer)):
            kind = "" if kinds.get(name, "channel") == "channel" else f" {kinds[name]}"
            lines.append(f"  [{lid}] {name}: {int(size)}{kind} units (max {int(cap)} pruned)")
        for name, why in self.excluded.items():
            lines.append(f"  excluded {name}: {why}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists instead of tuples); :meth:`from_dict` restores it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FilterSpace:
        """Inverse of :meth:`to_dict`."""
        def t(x: Any) -> Any:
            return tuple(t(v) for v in x) if isinstance(x, list) else x

        units = [Unit(**{k: t(v) for k, v in u.items()}) for u in d["units"]]
        return cls(
            units=units, layers=list(d["layers"]), min_keep=int(d["min_keep"]), excluded=dict(d["excluded"]),
            total_params=int(d["total_params"]),
            param_shapes={k: tuple(v) for k, v in d["param_shapes"].items()},
            consumer_channels=dict(d["consumer_channels"]),
            input_specs=[(tuple(s), str(dt)) for s, dt in d["input_specs"]],
            # fields added later: absent from spaces saved before them
            producer_channels=dict(d.get("producer_channels", {})),
            attention=dict(d.get("attention", {})),
            mac_terms=[(str(n), int(c), int(k)) for n, c, k in d.get("mac_terms", [])],
        )


def count_removed(shapes: Mapping[str, tuple[int, ...]], slice_sets: Sequence[Sequence[Slice]]) -> int:
    """Parameters that disappear when every slice of ``slice_sets`` is removed (overlaps once).

    ``shapes`` maps each parameter name a slice names to its full shape; the count is the full size
    minus the kept sub-tensor's size, per parameter.
    """
    pruned = _pruned_dims(slice_sets)
    return sum(math.prod(shapes[p]) - _kept(shapes[p], dims) for p, dims in pruned.items())


def _pruned_dims(slice_sets: Sequence[Sequence[Slice]]) -> dict[str, dict[int, set[int]]]:
    """Per parameter and dimension: the union of the indices the slices remove."""
    pruned: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for slices in slice_sets:
        for p, d, ix in slices:
            pruned[p][d].update(ix)
    return pruned


def _kept(shape: tuple[int, ...], dims: Mapping[int, set[int]]) -> int:
    """Elements of a tensor of ``shape`` left after removing ``dims[d]`` along each dimension d."""
    kept = 1
    for d, size in enumerate(shape):
        kept *= size - len(dims.get(d, ()))
    return kept


def _mask_from_labels(labels: Sequence[str], sample: Mapping[str, int]) -> np.ndarray:
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = [lab for lab in sample if lab not in index]
    if unknown:
        raise QpruneError(f"sample has labels that are not units of this filter space: {unknown[:5]}"
                          f"{' ...' if len(unknown) > 5 else ''}")
    mask = np.zeros(len(labels), dtype=bool)
    for lab, v in sample.items():
        if v not in (0, 1, True, False):
            raise QpruneError(f"sample value for {lab!r} must be 0 or 1, got {v!r}")
        mask[index[lab]] = bool(v)
    return mask


def _mask_from_vector(sample: np.ndarray | Sequence[int], n: int) -> np.ndarray:
    arr = np.asarray(sample)
    if arr.shape != (n,):
        raise QpruneError(f"mask must have shape ({n},), got {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise QpruneError("mask entries must be 0 or 1")
    return arr.astype(bool)


def _overlap(units: Sequence[Unit], shapes: Mapping[str, tuple[int, ...]]) -> scipy.sparse.coo_matrix:
    """``O_ij``: weights counted in both ``P_i`` and ``P_j`` (rows of one dim, columns of another)."""
    n = len(units)
    per_dim: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for i, u in enumerate(units):
        for name, dim, idxs in u.slices:
            per_dim[(name, dim)].append((i, len(idxs)))
    rows: list[int] = []
    cols: list[int] = []
    vals: list[int] = []
    for name, shape in shapes.items():
        dims = [d for d in range(len(shape)) if (name, d) in per_dim]
        for a_pos, a in enumerate(dims):
            for b in dims[a_pos + 1:]:
                rest = math.prod(shape) // (shape[a] * shape[b])
                for i, na in per_dim[(name, a)]:
                    for j, nb in per_dim[(name, b)]:
                        if i != j:
                            rows.append(min(i, j))
                            cols.append(max(i, j))
                            vals.append(na * nb * rest)
    coo = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.int64)
    coo.sum_duplicates()
    return coo
