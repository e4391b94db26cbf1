"""torch-pruning's dependency graph with qprune's additions, shared by discovery and removal.

:func:`build_dependency_graph` traces a model once. Two things are added to what torch-pruning
builds, so that :func:`qprune.model.space.build_space` and physical removal
(:func:`qprune.model.masking.prune_model`) see the same groups:

* a pruner for ``nn.PixelShuffle`` / ``nn.PixelUnshuffle``: torch-pruning treats the shuffle as
  element-wise and mis-maps indices; :class:`ShufflePruner` tracks channel counts and the graph
  edges get an index mapping in which a block of ``r²`` channels meets one channel;
* the autograd nodes of every model output (:func:`graph_outputs`): torch-pruning adds an output
  node only where no module produced the output tensor, so a conv whose output IS the model output
  would otherwise look like any other conv.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

from qprune.model.tensors import as_tuple

__all__ = ["ShufflePruner", "build_dependency_graph", "graph_outputs", "shuffle_factor"]

_SHUFFLES = (nn.PixelShuffle, nn.PixelUnshuffle)
_OUTPUTS = "_qprune_outputs"  # attribute of the graph holding the outputs' grad_fns


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


def build_dependency_graph(model: nn.Module, example_inputs: Any) -> Any:
    """torch-pruning ``DependencyGraph`` of ``model`` with qprune's custom pruners installed.

    Used by :func:`qprune.model.space.build_space` and by physical removal, so both see the same
    groups. The model is traced in eval mode; its training flag is restored afterwards.
    """
    inputs = as_tuple(example_inputs)
    pruner = ShufflePruner()
    outputs: set[Any] = set()
    dg = _trace(model, inputs, pruner, outputs)
    _map_shuffle_indices(dg)
    outputs.discard(None)
    setattr(dg, _OUTPUTS, outputs)
    return dg


def graph_outputs(dg: Any) -> set[Any]:
    """The ``grad_fn`` of every tensor the traced model returned (empty for a foreign graph)."""
    return getattr(dg, _OUTPUTS, set())


def _trace(model: nn.Module, inputs: tuple[Any, ...], pruner: ShufflePruner, outputs: set[Any]) -> Any:
    """Build the graph; record shuffle channel counts into ``pruner`` and output nodes into ``outputs``."""
    def record(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        pruner.channels[id(m)] = [int(args[0].shape[1]), int(out.shape[1])]

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, _SHUFFLES)]

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

    was_training = model.training
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, verbose=False, forward_fn=forward,
                customized_pruners={nn.PixelShuffle: pruner, nn.PixelUnshuffle: pruner},
            )
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


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
