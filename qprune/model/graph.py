"""torch-pruning's dependency graph with qprune's additions, shared by discovery and removal.

:func:`build_dependency_graph` traces a model once. Two things are added to what torch-pruning
builds, so that :func:`qprune.model.space.build_space` and physical removal
(:func:`qprune.model.masking.prune_model`) see the same groups:

* a pruner for ``nn.PixelShuffle`` / ``nn.PixelUnshuffle``: torch-pruning treats the shuffle as
  element-wise and mis-maps indices; :class:`ShufflePruner` tracks channel counts and the graph
  edges get an index mapping in which a block of ``r²`` channels meets one channel;
* the autograd nodes of every model output (:func:`graph_outputs`): torch-pruning adds an output
  node only where no module produced the output tensor, so a conv whose output IS the model output
  would otherwise look like any other conv;
* the autograd nodes created INSIDE each ``nn.Linear`` (:func:`internal_ops`): on a 3-D or 4-D
  input a linear is view -> addmm -> view, and torch-pruning sees the addmm as an element-wise op
  of its own; it is the linear's own product, not a channel-mixing matmul between layers;
* pruners that remove WHOLE groups of grouped convolutions and of GroupNorm
  (:class:`GroupedConvPruner`, :class:`GroupNormGroupsPruner`): torch-pruning's own slice the
  per-group width and keep ``groups``, which is only right for channel positions pruned alike
  in every group; a unit of a grouped conv is one group (``groups`` drops by one);
* a LayerNorm pruner that leaves alone a LayerNorm normalising only dims after the channel dim
  of an NCHW-style tensor (:class:`LayerNormPruner`, :func:`layernorm_is_channelwise`):
  torch-pruning would cut its last normalised dim with channel indices.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

from qprune.model.modes import eval_mode
from qprune.model.tensors import as_tuple

__all__ = [
    "GroupNormGroupsPruner", "GroupedConvPruner", "LayerNormPruner", "ShufflePruner", "build_dependency_graph",
    "graph_outputs", "internal_ops", "is_grouped", "layernorm_is_channelwise", "layernorm_ranks", "paused_gc",
    "shuffle_factor",
]

_SHUFFLES = (nn.PixelShuffle, nn.PixelUnshuffle)
_OUTPUTS = "_qprune_outputs"  # attribute of the graph holding the outputs' grad_fns
_INTERNAL = "_qprune_internal"  # attribute of the graph holding the grad_fns inside nn.Linear
_RANKS = "_qprune_ln_ranks"  # attribute of the graph holding the input rank of each LayerNorm


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off inside the block (back on after, if it was on).

    Tracing a model, walking its dependency groups and building the units allocate hundreds of
    thousands of small containers that all stay alive until the space is built, so every
    allocation burst triggers collections that rescan all of them for nothing: measured half of
    ``build_space`` on torchvision's vit_b_16 (13 s -> 7 s). Nothing in such a block needs cycles
    collected early; they are collected once the collector is back on.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def is_grouped(m: nn.Module) -> bool:
    """A grouped convolution that is not depthwise (``1 < groups`` and not ``groups == in == out``)."""
    return (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
            and not m.groups == m.in_channels == m.out_channels)


class GroupedConvPruner(tp.pruner.function.ConvPruner):
    """torch-pruning's conv pruner, except that a grouped conv loses whole INPUT groups.

    A grouped conv's weight is ``[out, in/groups, k, k]``: removing one whole input group leaves
    ``in/groups`` as it is and drops ``groups`` by one; its output rows of that group go with the
    out-channel group of the same unit (pruned separately, :func:`qprune.model.masking.prune_model`).
    """

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Remove whole input groups of a grouped conv; any other conv as torch-pruning does."""
        if not is_grouped(layer):
            return super().prune_in_channels(layer, idxs)
        per = layer.in_channels // layer.groups
        gone = sorted(set(int(i) for i in idxs))
        groups = {i // per for i in gone}
        if len(gone) != per * len(groups):
            raise ValueError(f"grouped conv: input channels {gone[:8]} are not whole groups of {per}")
        layer.in_channels -= len(gone)
        layer.groups -= len(groups)
        return layer


def layernorm_is_channelwise(m: nn.Module, rank: int | None) -> bool:
    """Whether ``nn.LayerNorm`` ``m``, fed a tensor of ``rank`` dims with channels at dim 1, leaves
    the channel dim out of its normalised dims (each channel then stands alone: zeroing it at the
    consumers equals removing it)."""
    # an exact nn.LayerNorm only: subclasses (LayerNorm2d variants) permute inside their forward
    return type(m) is nn.LayerNorm and rank is not None and len(m.normalized_shape) <= rank - 2


class LayerNormPruner(tp.pruner.function.LayernormPruner):
    """torch-pruning's LayerNorm pruner, except for LayerNorms that do not normalise the channels."""

    def __init__(self, ranks: dict[int, int]) -> None:
        super().__init__()
        self.ranks = ranks  # id(module) -> rank of its input, recorded while tracing

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Nothing to cut for a channel-wise LayerNorm (its parameters span the other dims)."""
        if layernorm_is_channelwise(layer, self.ranks.get(id(layer))):
            return layer
        return super().prune_out_channels(layer, idxs)

    prune_in_channels = prune_out_channels


class GroupNormGroupsPruner(tp.pruner.function.GroupNormPruner):
    """torch-pruning's GroupNorm pruner, also dropping ``num_groups`` for each whole group removed."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Remove whole groups (channels normalised together must go together)."""
        per = layer.num_channels // layer.num_groups
        gone = sorted(set(int(i) for i in idxs))
        groups = {i // per for i in gone}
        if len(gone) != per * len(groups):
            raise ValueError(f"GroupNorm: channels {gone[:8]} are not whole groups of {per}")
        super().prune_out_channels(layer, gone)
        layer.num_groups -= len(groups)
        return layer

    prune_in_channels = prune_out_channels


class ShufflePruner(tp.pruner.BasePruningFunc):
    """torch-pruning pruner for ``nn.PixelShuffle`` / ``nn.PixelUnshuffle`` (no parameters).

    torch-pruning treats the shuffle as element-wise and mis-maps indices. This pruner only
    tracks channel counts; the index mapping (a block of ``r²`` input channels <-> one output
    channel) is installed on the graph edges by :func:`build_dependency_graph`. Indices AT the
    shuffle node are in its output coordinates, as torch-pruning does for flatten.
    """

    TARGET_MODULES = _SHUFFLES

    def __init__(self) -> None:
        super().__init__()
        self.channels: dict[int, list[int]] = {}  # id(module) -> [in, out]

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Shrink the recorded channel counts (the module itself has nothing to cut)."""
        ch = self.channels.get(id(layer))
        if ch is not None:
            r2 = shuffle_factor(layer) ** 2
            ch[1] -= len(idxs)
            ch[0] = ch[1] * r2 if isinstance(layer, nn.PixelShuffle) else ch[1] // r2
        return layer

    prune_in_channels = prune_out_channels  # channel-wise: lets the group pass through

    def get_out_channels(self, layer: nn.Module) -> int | None:
        """Output channels seen while tracing (None for a shuffle the trace did not reach)."""
        ch = self.channels.get(id(layer))
        return None if ch is None else ch[1]

    def get_in_channels(self, layer: nn.Module) -> int | None:
        """Input channels seen while tracing (None for a shuffle the trace did not reach)."""
        ch = self.channels.get(id(layer))
        return None if ch is None else ch[0]


def shuffle_factor(m: nn.Module) -> int:
    """``r`` of a pixel (un)shuffle: ``r²`` channels on one side meet one channel on the other."""
    return int(m.upscale_factor if isinstance(m, nn.PixelShuffle) else m.downscale_factor)


def _tolerant(update: Any, errors: tuple[type[Exception], ...]) -> Any:
    """torch-pruning's index mapping through a reshape or a concat, with the node given no mapping
    where torch-pruning's own arithmetic fails (the tracer would otherwise fail for the whole model):

    * a reshape that splits the channels into a group dimension (a channel shuffle: view, transpose,
      view, as in ShuffleNet) makes the ratio of its channel counts 0: ``ZeroDivisionError``;
    * a concat whose inputs' channel counts it cannot infer while it infers the output's (Swin's
      patch merging concatenates four strided views on the last dimension): ``TypeError`` from
      summing ``None``.

    The layers whose channels pass through such a node cannot be followed
    (:func:`qprune.model.discovery.discover_groups` excludes them, naming the reason) or fail the
    gate-equals-removal check, and the rest of the model still prunes."""
    if getattr(update, "_qprune_tolerant", False):
        return update

    def tolerant(graph: Any, node: Any) -> Any:
        try:
            return update(graph, node)
        except errors:
            return None

    tolerant._qprune_tolerant = True  # type: ignore[attr-defined]
    return tolerant


# every caller (graph building, group discovery, torch-pruning's own get_pruning_group) goes through them
_mapping = tp.dependency.index_mapping
_mapping.update_reshape_index_mapping = _tolerant(_mapping.update_reshape_index_mapping, (ZeroDivisionError,))
_mapping.update_concat_index_mapping = _tolerant(_mapping.update_concat_index_mapping, (TypeError,))


def build_dependency_graph(model: nn.Module, example_inputs: Any) -> Any:
    """torch-pruning ``DependencyGraph`` of ``model`` with qprune's custom pruners installed.

    Used by :func:`qprune.model.space.build_space` and by physical removal, so both see the same
    groups. The model is traced in eval mode; its training flag is restored afterwards.
    """
    inputs = as_tuple(example_inputs)
    pruner = ShufflePruner()
    outputs: set[Any] = set()
    internal: set[Any] = set()
    ranks: dict[int, int] = {}
    dg = _trace(model, inputs, pruner, outputs, internal, ranks)
    _map_shuffle_indices(dg)
    outputs.discard(None)
    setattr(dg, _OUTPUTS, outputs)
    setattr(dg, _INTERNAL, internal)
    setattr(dg, _RANKS, ranks)
    return dg


def graph_outputs(dg: Any) -> set[Any]:
    """The ``grad_fn`` of every tensor the traced model returned (empty for a foreign graph)."""
    return getattr(dg, _OUTPUTS, set())


def layernorm_ranks(dg: Any) -> dict[int, int]:
    """``id(LayerNorm) -> rank of its input`` as traced."""
    return getattr(dg, _RANKS, {})


def internal_ops(dg: Any) -> set[Any]:
    """The ``grad_fn`` of every autograd node created inside an ``nn.Linear`` call."""
    return getattr(dg, _INTERNAL, set())


def _inner_grad_fns(out: torch.Tensor, inp: Any, into: set[Any]) -> None:
    """Add the autograd nodes between ``inp`` and ``out`` (one module call) to ``into``."""
    stop = inp.grad_fn if isinstance(inp, torch.Tensor) else None
    stack, budget = [out.grad_fn], 64  # a linear is a handful of nodes; never walk the whole graph
    while stack and budget:
        fn = stack.pop()
        if fn is None or fn is stop or fn in into or "AccumulateGrad" in type(fn).__name__:
            continue
        into.add(fn)
        budget -= 1
        stack.extend(f for f, _ in getattr(fn, "next_functions", ()))


def _trace(
    model: nn.Module, inputs: tuple[Any, ...], pruner: ShufflePruner, outputs: set[Any], internal: set[Any],
    ranks: dict[int, int],
) -> Any:
    """Build the graph; record shuffle channel counts into ``pruner``, output nodes into
    ``outputs``, the nodes inside linear layers into ``internal`` and LayerNorm input ranks."""
    def record(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        pruner.channels[id(m)] = [int(args[0].shape[1]), int(out.shape[1])]

    def inner(m: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.grad_fn is not None and args:
            _inner_grad_fns(out, args[0], internal)

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, _SHUFFLES)]
    hooks += [m.register_forward_hook(inner) for m in model.modules() if isinstance(m, nn.Linear)]
    hooks += [m.register_forward_pre_hook(lambda mod, a: ranks.__setitem__(id(mod), a[0].dim()) if a else None)
              for m in model.modules() if isinstance(m, nn.LayerNorm)]

    def forward(mod: nn.Module, xs: tuple) -> Any:
        out = mod(*xs)
        # keep the grad_fns of all outputs so a conv whose output IS the model output is recognised
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

    with eval_mode(model, hooks, train=model.training):  # the trace may switch modes; the caller's stays
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph()
            dg.REGISTERED_PRUNERS[tp.ops.OPTYPE.CONV] = GroupedConvPruner()
            dg.REGISTERED_PRUNERS[tp.ops.OPTYPE.GN] = GroupNormGroupsPruner()
            dg.REGISTERED_PRUNERS[tp.ops.OPTYPE.LN] = LayerNormPruner(ranks)
            return dg.build_dependency(  # registering the shuffles also refreshes the pruning-fn caches
                model, example_inputs=inputs, verbose=False, forward_fn=forward,
                customized_pruners={nn.PixelShuffle: pruner, nn.PixelUnshuffle: pruner},
            )


def _map_shuffle_indices(dg: Any) -> None:
    """Give the edges into and out of every shuffle node the ``r²``-block index mapping."""
    for m, node in dg.module2node.items():
        if not isinstance(m, _SHUFFLES):
            continue
        stride = shuffle_factor(m) ** 2
        down = isinstance(m, nn.PixelShuffle)  # input block of r² -> one output channel
        for in_node in node.inputs:
            for dep in in_node.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _FlattenIndexMapping(stride=stride, reverse=down)
            for dep in node.dependencies:
                if dep.target is in_node:
                    dep.index_mapping[0] = _FlattenIndexMapping(stride=stride, reverse=not down)
