"""The filter space: which output channels of a network can be pruned, and what falls with each.

A *unit* is one decision variable (``x_i = 1`` means pruned). It is the set of output channels that
must disappear together for the network to really shrink, found with torch-pruning's
``DependencyGraph``: for every output channel ``r`` of a root layer we ask
``DG.get_pruning_group(root, prune_out_channels, [r])`` and take everything in that group.

Coupling (what one unit holds)
    * a conv's output channel plus every channel-wise thing that consumes it: BatchNorm / affine
      norms, PReLU, the depthwise conv that follows (``groups == in == out``: its output channel is
      tied to its input channel), per-channel parameters such as NAFNet's ``beta``/``gamma``;
    * both halves that a SimpleGate multiplies (``a, b = x.chunk(2, 1); a * b``): channel ``j`` and
      ``j + C/2`` of the producer fall together;
    * all convs whose outputs meet in a residual add (a ResNet stage's trunk is ONE unit per channel,
      spanning several convs: cross-layer couplings stay inside the unit, so the QUBO stays
      block-diagonal by layer);
    * a block of ``r²`` conv channels feeding ``nn.PixelShuffle(r)`` (a custom torch-pruning pruner
      registered here maps indices through the shuffle; ``nn.PixelUnshuffle`` likewise);
    * the consumers' input slices (next conv's / linear's input channels, through concat, split,
      flatten).

``Unit.layer`` is the *root*: the first module, in ``model.named_modules()`` order, whose output
channel is in the unit; ``Unit.channel`` its smallest such channel; ``label = "<layer>:<channel>"``.
The units of one root form one layer (one block of the QUBO). ``Unit.members`` lists every
``(conv/linear path, output channel)`` that disappears (BatchNorm etc. are not listed: they are not
filters, but their parameters are counted).

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

Exactness: gate == removal
    The gate of a unit (see :mod:`qprune.model.masking`) zeroes its channels at the *consumers' inputs*
    (``Unit.inputs``), i.e. after BatchNorm, activation, pooling, residual adds — exactly where
    physical removal takes the channel away. That makes the gated network equal to the physically
    pruned one whenever every path of the channel ends in a consumer and nothing on the way mixes
    channels. Units for which this does not hold are EXCLUDED by default (``FilterSpace.excluded``
    says why, per layer):

    * the channel reaches the model output (the final conv; a denoiser's last layer);
    * the channel is normalised together with other channels: LayerNorm / LayerNorm2d / GroupNorm
      (``groups < channels``) / RMSNorm / ``F.normalize``, or any reduction (mean, sum, softmax,
      max, …) over the channel dimension — removing a channel changes the statistics of the others,
      so zeroing is not removal. In NAFNet / the Half-UNet this excludes the residual trunk (the
      block inputs, normalised by ``norm1``/``norm2``), leaving the channels inside each NAF block;
    * grouped (non-depthwise) convolutions, layout changes (permute/transpose), matrix products
      outside ``nn.Linear``, functional pixel/channel shuffles, unknown autograd ops, and modules
      torch-pruning cannot shrink channel-wise (MultiheadAttention, LSTM, Embedding);
    * layers whose gated and removed networks differ on the example inputs when one unit of each
      layer is pruned (``verify=True``, the default: a safety net for architectures nobody here
      has seen; it catches e.g. a residual add with the raw model input).

Restricting the space
    ``layers=None`` keeps every prunable layer; ``layers=n`` (int) keeps the first ``n`` prunable
    layers in module order (the paper's 4/8/16-layer sub-problems); ``layers=[names]`` keeps the
    layers named — a root path, any member conv's path, or an ``fnmatch`` pattern (``"enc1.*"``).
    ``exclude=[names]`` drops every layer one of whose member modules (whose OUTPUT channels would
    change) matches a name or pattern. ``min_keep`` channels (units) of every layer are never
    pruned: ``FilterSpace.max_pruned_per_layer`` gives the cap per layer for solvers; a layer with
    ``<= min_keep`` units is dropped.
"""

from __future__ import annotations

import fnmatch
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError

__all__ = ["FilterSpace", "Unit", "build_dependency_graph", "build_space"]


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
    """

    label: str
    layer: str
    channel: int
    members: tuple[tuple[str, int], ...]
    params: int
    filter_params: int = 0
    inputs: tuple[tuple[str, int], ...] = ()
    slices: tuple[tuple[str, int, tuple[int, ...]], ...] = ()


@dataclass
class FilterSpace:
    """The prunable units of a model (plain data: module paths and indices, no module references).

    ``units`` are ordered by layer (module order) then channel; ``layers[layer_ids[i]] ==
    units[i].layer``. ``excluded`` maps a layer that is NOT in the space to the reason.
    """

    units: list[Unit]
    layers: list[str]
    min_keep: int
    excluded: dict[str, str] = field(default_factory=dict)
    total_params: int = 0
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    consumer_channels: dict[str, int] = field(default_factory=dict)
    input_specs: list[tuple[tuple[int, ...], str]] = field(default_factory=list)

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

    def max_per_group(self) -> tuple[np.ndarray, np.ndarray]:
        """``(group id per unit, max pruned per group)`` for :func:`qprune.solve.exact_k.solve_exact_k`."""
        return self.layer_ids, self.max_pruned_per_layer

    def layer_units(self, layer: int | str) -> np.ndarray:
        """Indices of the units of one layer (by id or root path)."""
        lid = self.layers.index(layer) if isinstance(layer, str) else int(layer)
        return np.flatnonzero(self.layer_ids == lid)

    # ----- masks
    def to_mask(self, sample: Mapping[str, int] | np.ndarray | Sequence[int]) -> np.ndarray:
        """bool [N], True = pruned, from ``{label: 0/1}`` (missing labels = kept) or a 0/1 vector."""
        if isinstance(sample, Mapping):
            index = {lab: i for i, lab in enumerate(self.labels)}
            unknown = [lab for lab in sample if lab not in index]
            if unknown:
                raise QpruneError(f"sample has labels that are not units of this filter space: {unknown[:5]}"
                                  f"{' ...' if len(unknown) > 5 else ''}")
            mask = np.zeros(self.N, dtype=bool)
            for lab, v in sample.items():
                if v not in (0, 1, True, False):
                    raise QpruneError(f"sample value for {lab!r} must be 0 or 1, got {v!r}")
                mask[index[lab]] = bool(v)
            return mask
        arr = np.asarray(sample)
        if arr.shape != (self.N,):
            raise QpruneError(f"mask must have shape ({self.N},), got {arr.shape}")
        if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
            raise QpruneError("mask entries must be 0 or 1")
        return arr.astype(bool)

    def check_mask(self, mask: Mapping[str, int] | np.ndarray | Sequence[int]) -> np.ndarray:
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
    def removed_params(self, mask: Mapping[str, int] | np.ndarray | Sequence[int]) -> int:
        """Exact number of parameters that disappear when the units in ``mask`` are removed."""
        m = self.to_mask(mask)
        return _removed(self.param_shapes, [self.units[i].slices for i in np.flatnonzero(m)])

    def predicted_params(self, mask: Mapping[str, int] | np.ndarray | Sequence[int]) -> int:
        """Parameter count of the physically pruned model (exact, overlaps included)."""
        return self.total_params - self.removed_params(mask)

    def param_overlap(self) -> Any:
        """``scipy.sparse.coo_matrix`` [N, N], upper triangle: ``O_ij`` of the exact pairwise count.

        ``removed(x) = params·x − xᵀ O x`` for a 0/1 vector ``x`` (i < j only). ``O_ij`` is non-zero
        where one unit removes output rows and the other input columns of the same weight tensor.
        """
        import scipy.sparse

        per_dim: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
        for i, u in enumerate(self.units):
            for name, dim, idxs in u.slices:
                per_dim[(name, dim)].append((i, len(idxs)))
        rows: list[int] = []
        cols: list[int] = []
        vals: list[int] = []
        for name, shape in self.param_shapes.items():
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
        coo = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(self.N, self.N), dtype=np.int64)
        coo.sum_duplicates()
        return coo

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
        for lid, (name, size, cap) in enumerate(zip(self.layers, self.layer_sizes, self.max_pruned_per_layer)):
            lines.append(f"  [{lid}] {name}: {int(size)} units (max {int(cap)} pruned)")
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
        )


# ---------------------------------------------------------------------------------------------
# torch-pruning glue
# ---------------------------------------------------------------------------------------------

def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    # torch-pruning calls model(*inputs) first: a bare [1, C, H, W] tensor would be unpacked into an
    # unbatched [C, H, W] call that convs accept silently, so always hand it a tuple.
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise QpruneError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def _shuffle_pruner_class() -> type:
    import torch_pruning as tp

    class ShufflePruner(tp.pruner.BasePruningFunc):
        """torch-pruning pruner for ``nn.PixelShuffle`` / ``nn.PixelUnshuffle`` (no parameters).

        torch-pruning treats the shuffle as element-wise and mis-maps indices. This pruner only
        tracks channel counts; the index mapping (a block of ``r²`` input channels <-> one output
        channel) is installed on the graph edges by :func:`build_dependency_graph`. Indices AT the
        shuffle node are in its output coordinates, as torch-pruning does for flatten.
        """

        TARGET_MODULES = (nn.PixelShuffle, nn.PixelUnshuffle)

        def __init__(self) -> None:
            super().__init__()
            self.channels: dict[int, list[int]] = {}  # id(module) -> [in, out]

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            ch = self.channels.get(id(layer))
            if ch is not None:
                r2 = _shuffle_factor(layer) ** 2
                ch[1] -= len(idxs)
                ch[0] = ch[1] * r2 if isinstance(layer, nn.PixelShuffle) else ch[1] // r2
            return layer

        prune_in_channels = prune_out_channels  # channel-wise: lets the group pass through

        def get_out_channels(self, layer: nn.Module) -> int | None:
            ch = self.channels.get(id(layer))
            return None if ch is None else ch[1]

        def get_in_channels(self, layer: nn.Module) -> int | None:
            ch = self.channels.get(id(layer))
            return None if ch is None else ch[0]

    return ShufflePruner


def _shuffle_factor(m: nn.Module) -> int:
    return int(m.upscale_factor if isinstance(m, nn.PixelShuffle) else m.downscale_factor)


def build_dependency_graph(model: nn.Module, example_inputs: Any) -> Any:
    """torch-pruning ``DependencyGraph`` of ``model`` with qprune's custom pruners installed.

    Used by :func:`build_space` and by physical removal, so both see the same groups. The model is
    traced in eval mode; its training flag is restored afterwards.
    """
    import torch_pruning as tp
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    inputs = _as_tuple(example_inputs)
    pruner = _shuffle_pruner_class()()
    hooks = []

    def record(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        pruner.channels[id(m)] = [int(args[0].shape[1]), int(out.shape[1])]

    for m in model.modules():
        if isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)):
            hooks.append(m.register_forward_hook(record))
    outputs: set[Any] = set()

    def forward(mod: nn.Module, xs: tuple) -> Any:
        out = mod(*xs)
        # torch-pruning adds an output node only where no module produced the output tensor; keep
        # the grad_fns of all outputs so a conv whose output IS the model output is recognised too
        stack = [out]
        while stack:
            o = stack.pop()
            if isinstance(o, torch.Tensor):
                outputs.add(o.grad_fn)
            elif isinstance(o, (list, tuple)):
                stack.extend(o)
            elif isinstance(o, Mapping):
                stack.extend(o.values())
        return out

    was_training = model.training
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, verbose=False, forward_fn=forward,
                customized_pruners={nn.PixelShuffle: pruner, nn.PixelUnshuffle: pruner},
            )
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for m, node in dg.module2node.items():
        if not isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)):
            continue
        stride = _shuffle_factor(m) ** 2
        down = isinstance(m, nn.PixelShuffle)  # input block of r² -> one output channel
        for in_node in node.inputs:
            for dep in in_node.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _FlattenIndexMapping(stride=stride, reverse=down)
            for dep in node.dependencies:
                if dep.target is in_node:
                    dep.index_mapping[0] = _FlattenIndexMapping(stride=stride, reverse=not down)
    outputs.discard(None)
    dg._qprune_outputs = outputs
    return dg


# ---------------------------------------------------------------------------------------------
# group analysis
# ---------------------------------------------------------------------------------------------

_REDUCTIONS = {
    "mean", "sum", "nansum", "var", "std", "varmean", "stdmean", "amax", "amin", "max", "min", "prod",
    "logsumexp", "softmax", "logsoftmax", "norm", "linalgvectornorm", "cumsum", "cumprod", "median",
    "nanmedian", "sort", "topk", "kthvalue", "mode", "cummax", "cummin", "select", "index", "indexselect",
    "gather", "take", "unbind",
}
_NORM_WORDS = ("layernorm", "groupnorm", "rmsnorm")
_LAYOUT = ("permute", "transpose", "channelshuffle", "pixelshuffle", "pixelunshuffle")
_MATMUL = ("mm", "bmm", "addmm", "addbmm", "baddbmm", "matmul", "einsum", "addmv", "mv", "dot")


def _op_base(name: str) -> str:
    return re.sub(r"backward\d*$", "", name.lower())


def _signed(d: int) -> int:
    d = int(d)
    return d - (1 << 64) if d >= (1 << 63) else d


def _grad_fn_ndim(g: Any) -> int | None:
    for attr in ("_saved_self_sym_sizes", "_saved_self_sizes", "_saved_sizes"):
        sizes = getattr(g, attr, None)
        if isinstance(sizes, (tuple, list)):
            return len(sizes)
    for attr in ("_saved_self", "_saved_result"):
        try:
            t = getattr(g, attr, None)
        except RuntimeError:  # freed saved tensor
            t = None
        if isinstance(t, torch.Tensor):
            return t.dim()
    return None


def _op_mixing_reason(g: Any, op_name: str) -> str | None:
    """Why an autograd op (torch-pruning treats it as element-wise) mixes channels, or None."""
    if g is None or not hasattr(g, "name"):
        return f"unknown operation {op_name!r}"
    base = _op_base(g.name())
    if any(w in base for w in _NORM_WORDS):
        return f"channels normalised together ({g.name()})"
    if any(w in base for w in _LAYOUT):
        return f"layout change or functional shuffle over channels ({g.name()})"
    if base in _MATMUL:
        return f"matrix product outside nn.Linear ({g.name()})"
    if base in _REDUCTIONS:
        dims = getattr(g, "_saved_dim", None)
        if dims is None:
            return f"reduction over all dimensions ({g.name()})"
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not dims:
            return f"reduction over all dimensions ({g.name()})"
        ndim = _grad_fn_ndim(g)
        for d in map(_signed, dims):
            if ndim is None:
                if d == 1 or d < 0:
                    return f"reduction over a possible channel dimension ({g.name()}, dim={d})"
                continue
            d = d % ndim
            channel_dims = {1} if ndim != 3 else {1, 2}
            if d in channel_dims:
                return f"reduction over the channel dimension ({g.name()}, dim={d})"
    return None


@dataclass
class _GroupInfo:
    members: list[tuple[nn.Module, int]] = field(default_factory=list)  # (module, out channel)
    inputs: list[tuple[nn.Module, int]] = field(default_factory=list)  # (consumer, in channel)
    slices: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    reasons: list[tuple[int, str]] = field(default_factory=list)  # (priority, text)


def _is_depthwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
            and m.groups == m.in_channels == m.out_channels)


def _analyse(items: Iterable[tuple[Any, list[int]]], dg: Any, names: Mapping[Any, str]) -> _GroupInfo:
    """Members, gate positions, parameter slices and blocking reasons of one unit's group items."""
    from torch_pruning import ops

    info = _GroupInfo()
    outputs = getattr(dg, "_qprune_outputs", set())

    def add(pname: str, dim: int, idxs: Iterable[int]) -> None:
        info.slices.setdefault((pname, dim), set()).update(int(i) for i in idxs)

    for dep, idxs in items:
        node, m = dep.target, dep.target.module
        out_side = dg.is_out_channel_pruning_fn(dep.handler)
        name = names.get(m, None)
        if isinstance(m, ops._OutputOp) or (out_side and node.grad_fn in outputs):
            info.reasons.append((0, "its channels reach the model output"))
        elif isinstance(m, nn.Parameter):
            pname = dg._param_to_name.get(m)
            if pname is not None:
                add(pname, int(node.pruning_dim), idxs)
        elif isinstance(m, nn.modules.conv._ConvNd):
            if _is_depthwise(m):
                info.members.extend((m, i) for i in idxs)
                add(f"{name}.weight", 0, idxs)
                if m.bias is not None:
                    add(f"{name}.bias", 0, idxs)
            elif m.groups > 1:
                info.reasons.append((2, f"grouped convolution {name} (groups={m.groups})"))
            elif out_side:
                info.members.extend((m, i) for i in idxs)
                add(f"{name}.weight", 1 if m.transposed else 0, idxs)
                if m.bias is not None:
                    add(f"{name}.bias", 0, idxs)
            else:
                info.inputs.extend((m, i) for i in idxs)
                add(f"{name}.weight", 0 if m.transposed else 1, idxs)
        elif isinstance(m, nn.Linear):
            if out_side:
                info.members.extend((m, i) for i in idxs)
                add(f"{name}.weight", 0, idxs)
                if m.bias is not None:
                    add(f"{name}.bias", 0, idxs)
            else:
                info.inputs.extend((m, i) for i in idxs)
                add(f"{name}.weight", 1, idxs)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            if m.affine:
                add(f"{name}.weight", 0, idxs)
                add(f"{name}.bias", 0, idxs)
        elif isinstance(m, nn.GroupNorm):
            if m.num_groups != m.num_channels:
                info.reasons.append((1, f"channels normalised together by GroupNorm {name}"))
            elif m.affine:
                add(f"{name}.weight", 0, idxs)
                add(f"{name}.bias", 0, idxs)
        elif isinstance(m, nn.LayerNorm):
            info.reasons.append((1, f"channels normalised together by LayerNorm {name}"))
        elif isinstance(m, nn.PReLU):
            if m.weight.numel() > 1:
                add(f"{name}.weight", 0, idxs)
        elif isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)):
            pass
        elif isinstance(m, ops._ElementWiseOp):
            why = _op_mixing_reason(node.grad_fn, str(m))
            if why:
                info.reasons.append((1, why))
        elif isinstance(m, (ops._ConcatOp, ops._SplitOp, ops._ReshapeOp, ops._SliceOp)):
            pass
        else:
            info.reasons.append((3, f"module torch-pruning cannot shrink exactly here: {type(m).__name__} {name or ''}"))
    return info


def _one_to_one(group: Any) -> bool:
    from torch_pruning import ops

    many = (ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND, ops.OPTYPE.RESHAPE, ops.OPTYPE.SLICE, ops.OPTYPE.EXPAND,
            ops.OPTYPE.CUSTOMIZED)
    return not any(it.dep.target.type in many for it in group.items)


def _split_by_root(group: Any) -> dict[int, list[tuple[Any, list[int]]]]:
    out: dict[int, dict[Any, list[int]]] = defaultdict(dict)
    for it in group.items:
        for idx, root in zip(it.idxs, it.root_idxs):
            out[int(root)].setdefault(it.dep, []).append(int(idx))
    return {r: list(d.items()) for r, d in out.items()}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def build_space(
    model: nn.Module,
    example_inputs: Any,
    *,
    layers: int | Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    include_linear: bool = False,
    min_keep: int = 1,
    verify: bool = True,
    _fast: bool = True,
) -> FilterSpace:
    """Discover the prunable units of ``model`` (see the module docstring for every rule).

    Args:
        model: the network (not modified; traced in eval mode, its mode restored).
        example_inputs: a tensor or tuple of tensors the model accepts (shapes matter, not values).
        layers: ``None`` (all), an int ``n`` (the first ``n`` prunable layers in module order), or
            names/``fnmatch`` patterns of root or member modules.
        exclude: names/patterns of modules whose output channels must not change.
        include_linear: also let ``nn.Linear`` output features be units.
        min_keep: units of every layer that stay (>= 1).
        verify: check gate == removal with one unit of each layer pruned; drop failing layers.

    Raises:
        QpruneError: bad ``layers``/``min_keep``, or nothing left to prune.
    """
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, np.integer)) or min_keep < 1:
        raise QpruneError(f"min_keep must be an integer >= 1, got {min_keep!r}")
    if isinstance(exclude, str):
        exclude = (exclude,)
    inputs = _as_tuple(example_inputs)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}

    # Per-channel element counts of every consumer's input, to pick each unit's activation site.
    extent: dict[str, int] = {}
    consumer_types = (nn.modules.conv._ConvNd, nn.Linear)

    def record(m: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() >= 2:
            inner = x.shape[2:] if isinstance(m, nn.modules.conv._ConvNd) else x.shape[1:-1]
            extent[names[m]] = max(extent.get(names[m], 0), int(math.prod(inner)))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, consumer_types)]
    try:
        dg = build_dependency_graph(model, inputs)
    finally:
        for h in hooks:
            h.remove()

    root_types: tuple[type, ...] = (nn.modules.conv._ConvNd,) + ((nn.Linear,) if include_linear else ())
    covered: set[tuple[str, int]] = set()
    raw: dict[str, list[tuple[int, _GroupInfo]]] = {}
    layer_reason: dict[str, str] = {}
    for root_name, root in model.named_modules():
        if not isinstance(root, root_types) or root not in dg.module2node:
            continue
        pruner = dg.get_pruner_of_module(root)
        n_out = pruner.get_out_channels(root) if pruner is not None else None
        if not n_out:
            continue
        todo = [r for r in range(int(n_out)) if (root_name, r) not in covered]
        if not todo:
            continue
        per_channel = None
        if _fast:
            # One group for all channels, split by root index: exact when every index mapping in
            # the group is one-to-one, i.e. no split/chunk, reshape, slice or shuffle can make two
            # root channels share a channel downstream (torch-pruning would merge them silently).
            full = dg.get_pruning_group(root, pruner.prune_out_channels, todo)
            if _one_to_one(full):
                per_channel = _split_by_root(full)
        for r in todo:
            if (root_name, r) in covered:
                continue
            if per_channel is not None:
                items = per_channel.get(r, [])
            else:
                group = dg.get_pruning_group(root, pruner.prune_out_channels, [r])
                items = [(it.dep, list(it.idxs)) for it in group.items]
            info = _analyse(items, dg, names)
            for m, c in info.members:
                covered.add((names[m], c))
            covered.add((root_name, r))
            if info.reasons:
                why = min(info.reasons)[1]
                layer_reason.setdefault(root_name, why)
            raw.setdefault(root_name, []).append((r, info))

    # Parameters: names and shapes of everything a unit may touch.
    all_params = dict(model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    shapes = {n: tuple(p.shape) for n, p in all_params.items()}

    excluded: dict[str, str] = {}
    kept_layers: list[str] = []
    for root_name, entries in raw.items():
        if root_name in layer_reason:
            excluded[root_name] = layer_reason[root_name]
            continue
        member_names = {names[m] for _, info in entries for m, _ in info.members}
        hit = [n for n in sorted(member_names, key=order.get) if _matches(n, exclude)]
        if hit:
            excluded[root_name] = f"excluded by exclude= ({hit[0]})"
            continue
        if len(entries) <= min_keep:
            excluded[root_name] = f"{len(entries)} unit(s), not more than min_keep={min_keep}"
            continue
        if not any(info.inputs for _, info in entries):
            excluded[root_name] = "no consumer takes its channels"
            continue
        kept_layers.append(root_name)

    # Restrict to the requested layers.
    if layers is not None:
        kept_layers = _select_layers(kept_layers, layers, raw, names, excluded)

    units: list[Unit] = []
    consumer_channels: dict[str, int] = {}
    modules = dict(model.named_modules())
    for root_name in kept_layers:
        for r, info in raw[root_name]:
            members = tuple(sorted({(names[m], int(c)) for m, c in info.members}, key=lambda t: (order[t[0]], t[1])))
            root_channels = [c for n, c in members if n == root_name] or [r]
            channel = min(root_channels)
            per_consumer: dict[str, list[int]] = defaultdict(list)
            for m, c in info.inputs:
                per_consumer[names[m]].append(int(c))
            ranked = sorted(per_consumer, key=lambda n: (-len(set(per_consumer[n])) * extent.get(n, 1), order[n]))
            inputs_ = tuple((n, c) for n in ranked for c in sorted(set(per_consumer[n])))
            for n in per_consumer:
                mod = modules[n]
                consumer_channels[n] = int(mod.in_channels if isinstance(mod, nn.modules.conv._ConvNd)
                                           else mod.in_features)
            slices = tuple(sorted((p, d, tuple(sorted(ix))) for (p, d), ix in info.slices.items()))
            for p, _, _ in slices:
                if p not in shapes:
                    raise QpruneError(f"internal: parameter {p!r} of a unit is not a parameter of the model")
            filt = 0
            for n, c in members:
                mod = modules[n]
                w = mod.weight
                odim = 1 if getattr(mod, "transposed", False) else 0
                filt += w.numel() // w.shape[odim] + (1 if getattr(mod, "bias", None) is not None else 0)
            unit_params = _removed(shapes, [slices])
            units.append(Unit(
                label=f"{root_name}:{channel}", layer=root_name, channel=int(channel), members=members,
                params=int(unit_params), filter_params=int(filt), inputs=inputs_, slices=slices,
            ))

    space = FilterSpace(
        units=units, layers=list(kept_layers), min_keep=int(min_keep), excluded=excluded,
        total_params=int(total),
        param_shapes={p: shapes[p] for u in units for p, _, _ in u.slices},
        consumer_channels=consumer_channels,
        input_specs=[(tuple(x.shape), str(x.dtype).replace("torch.", "")) for x in inputs
                     if isinstance(x, torch.Tensor)],
    )
    if verify and space.N:
        space = _verified(model, space, inputs)
    if space.N == 0:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(space.excluded.items())[:6])
        raise QpruneError(f"no prunable units found (layers={layers!r}, exclude={tuple(exclude)!r}). {reasons}")
    return space


def _removed(shapes: Mapping[str, tuple[int, ...]], slice_sets: Sequence[Sequence[tuple[str, int, tuple[int, ...]]]]) -> int:
    pruned: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for slices in slice_sets:
        for p, d, ix in slices:
            pruned[p][d].update(ix)
    total = 0
    for p, dims in pruned.items():
        shape = shapes[p]
        kept = 1
        for d, size in enumerate(shape):
            kept *= size - len(dims.get(d, ()))
        total += math.prod(shape) - kept
    return total


def _select_layers(
    kept: list[str],
    layers: int | Sequence[str],
    raw: Mapping[str, list[tuple[int, _GroupInfo]]],
    names: Mapping[Any, str],
    excluded: dict[str, str],
) -> list[str]:
    if isinstance(layers, bool):
        raise QpruneError(f"layers must be an int or a list of module names, got {layers!r}")
    if isinstance(layers, (int, np.integer)):
        if layers < 1:
            raise QpruneError(f"layers must be >= 1 (the first n prunable layers), got {layers}")
        if layers > len(kept):
            raise QpruneError(f"layers={layers} but the model has only {len(kept)} prunable layers")
        chosen = kept[: int(layers)]
    else:
        if isinstance(layers, str):
            layers = [layers]
        chosen = []
        for pat in layers:
            hits = [n for n in kept if _matches(n, [pat])
                    or any(_matches(names[m], [pat]) for _, info in raw[n] for m, _ in info.members)]
            if not hits:
                why = excluded.get(pat)
                raise QpruneError(f"layers: {pat!r} matches no prunable layer"
                                  + (f" ({pat} is excluded: {why})" if why else ""))
            chosen.extend(h for h in hits if h not in chosen)
        chosen.sort(key=kept.index)
    for n in kept:
        if n not in chosen:
            excluded[n] = "not selected by layers="
    return chosen


def _verified(model: nn.Module, space: FilterSpace, inputs: tuple[Any, ...]) -> FilterSpace:
    """Drop layers whose gated and removed networks differ with one of their units pruned."""
    from qprune.model.masking import equivalence_error

    def probe(lids: Sequence[int]) -> str | None:
        mask = np.zeros(space.N, dtype=bool)
        for lid in lids:
            idx = space.layer_units(lid)
            mask[idx[len(idx) // 2]] = True
        try:
            err, scale = equivalence_error(model, space, mask, inputs)
        except Exception as exc:  # noqa: BLE001 - any failure of the removed model is a verdict
            return f"physical removal fails: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        if not err <= 1e-4 * max(1.0, scale):
            return f"gated and removed models differ by {err:.3g} (output scale {scale:.3g})"
        return None

    if probe(range(space.n_layers)) is None:
        return space
    bad = {}
    for lid in range(space.n_layers):
        why = probe([lid])
        if why:
            bad[space.layers[lid]] = why
    if not bad:  # only the combination fails: refuse rather than guess
        bad = {name: "gate != removal when layers are pruned together" for name in space.layers}
    keep = [n for n in space.layers if n not in bad]
    units = [u for u in space.units if u.layer not in bad]
    excluded = dict(space.excluded)
    excluded.update(bad)
    return FilterSpace(
        units=units, layers=keep, min_keep=space.min_keep, excluded=excluded, total_params=space.total_params,
        param_shapes={p: space.param_shapes[p] for u in units for p, _, _ in u.slices},
        consumer_channels={n: space.consumer_channels[n] for n in {p for u in units for p, _ in u.inputs}},
        input_specs=space.input_specs,
    )
