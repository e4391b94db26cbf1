"""Unit discovery: walk torch-pruning's groups and say what each output channel drags along.

For every output channel ``r`` of a root layer (a conv; a linear with ``include_linear``) we ask
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
    * a block of ``r²`` conv channels feeding ``nn.PixelShuffle(r)`` (see :mod:`qprune.model.graph`;
      ``nn.PixelUnshuffle`` likewise);
    * the consumers' input slices (next conv's / linear's input channels, through concat, split,
      flatten).

Blocking reasons (a layer with any is excluded from the space)
    * the channel reaches the model output (the final conv; a denoiser's last layer);
    * the channel is normalised together with other channels: LayerNorm / LayerNorm2d / GroupNorm
      (``groups < channels``) / RMSNorm / ``F.normalize``, or any reduction (mean, sum, softmax,
      max, …) over the channel dimension — removing a channel changes the statistics of the others,
      so zeroing is not removal. In NAFNet / the Half-UNet this excludes the residual trunk (the
      block inputs, normalised by ``norm1``/``norm2``), leaving the channels inside each NAF block;
    * grouped (non-depthwise) convolutions, layout changes (permute/transpose), matrix products
      outside ``nn.Linear``, functional pixel/channel shuffles, unknown autograd ops, and modules
      torch-pruning cannot shrink channel-wise (MultiheadAttention, LSTM, Embedding).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch_pruning import ops

from qprune.model.graph import build_dependency_graph, graph_outputs
from qprune.model.mixing import op_mixing_reason

__all__ = ["GroupInfo", "analyse_group", "discover_groups", "is_depthwise", "trace_with_extents"]

Item = tuple[Any, list[int]]  # (torch-pruning dependency, indices at its target)
_CONSUMERS = (nn.modules.conv._ConvNd, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_PASS_THROUGH = (nn.PixelShuffle, nn.PixelUnshuffle, ops._ConcatOp, ops._SplitOp, ops._ReshapeOp, ops._SliceOp)
# index mappings that can make two root channels share a channel downstream
_MANY_TO_ONE = (ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND, ops.OPTYPE.RESHAPE, ops.OPTYPE.SLICE, ops.OPTYPE.EXPAND,
                ops.OPTYPE.CUSTOMIZED)


@dataclass
class GroupInfo:
    """What one unit's group items amount to."""

    members: list[tuple[nn.Module, int]] = field(default_factory=list)  # (module, out channel)
    inputs: list[tuple[nn.Module, int]] = field(default_factory=list)  # (consumer, in channel)
    slices: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    reasons: list[tuple[int, str]] = field(default_factory=list)  # (priority, text)

    def add(self, pname: str, dim: int, idxs: Iterable[int]) -> None:
        """Record that the unit removes ``idxs`` of dimension ``dim`` of parameter ``pname``."""
        self.slices.setdefault((pname, dim), set()).update(int(i) for i in idxs)


def is_depthwise(m: nn.Module) -> bool:
    """A depthwise conv (``groups == in == out > 1``): its output channel is tied to its input channel."""
    return (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
            and m.groups == m.in_channels == m.out_channels)


def trace_with_extents(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, dict[str, int]]:
    """The dependency graph, and per consumer path the element count of one input channel.

    The extents are recorded during the graph's own trace (no second forward); a unit's activation
    site is the consumer whose input carries the most elements.
    """
    names = {m: n for n, m in model.named_modules()}
    extent: dict[str, int] = {}

    def record(m: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() >= 2:
            inner = x.shape[2:] if isinstance(m, nn.modules.conv._ConvNd) else x.shape[1:-1]
            extent[names[m]] = max(extent.get(names[m], 0), int(math.prod(inner)))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, _CONSUMERS)]
    try:
        dg = build_dependency_graph(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return dg, extent


def discover_groups(
    model: nn.Module, dg: Any, *, include_linear: bool, fast: bool = True,
) -> tuple[dict[str, list[tuple[int, GroupInfo]]], dict[str, str]]:
    """``({root path: [(root channel, GroupInfo)]}, {root path: first blocking reason})``.

    Roots in module order; a channel already covered by an earlier root's unit is skipped, so a
    residual trunk becomes one unit under its first conv. ``fast`` asks torch-pruning for one group
    per root and splits it by root index where that is exact.
    """
    names = {m: n for n, m in model.named_modules()}
    root_types: tuple[type, ...] = (nn.modules.conv._ConvNd,) + ((nn.Linear,) if include_linear else ())
    covered: set[tuple[str, int]] = set()
    raw: dict[str, list[tuple[int, GroupInfo]]] = {}
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
        per_channel = _split_group(dg, root, pruner, todo) if fast else None
        for r in todo:
            if (root_name, r) in covered:
                continue
            if per_channel is not None:
                items = per_channel.get(r, [])
            else:
                group = dg.get_pruning_group(root, pruner.prune_out_channels, [r])
                items = [(it.dep, list(it.idxs)) for it in group.items]
            info = analyse_group(items, dg, names)
            for m, c in info.members:
                covered.add((names[m], c))
            covered.add((root_name, r))
            if info.reasons:
                layer_reason.setdefault(root_name, min(info.reasons)[1])
            raw.setdefault(root_name, []).append((r, info))
    return raw, layer_reason


def _split_group(dg: Any, root: nn.Module, pruner: Any, todo: list[int]) -> dict[int, list[Item]] | None:
    """One group for all channels, split by root index, or None where that would not be exact.

    Exact when every index mapping in the group is one-to-one, i.e. no split/chunk, reshape, slice
    or shuffle can make two root channels share a channel downstream (torch-pruning would merge
    them silently).
    """
    full = dg.get_pruning_group(root, pruner.prune_out_channels, todo)
    if any(it.dep.target.type in _MANY_TO_ONE for it in full.items):
        return None
    out: dict[int, dict[Any, list[int]]] = defaultdict(dict)
    for it in full.items:
        for idx, r in zip(it.idxs, it.root_idxs):
            out[int(r)].setdefault(it.dep, []).append(int(idx))
    return {r: list(d.items()) for r, d in out.items()}


def analyse_group(items: Iterable[Item], dg: Any, names: Mapping[Any, str]) -> GroupInfo:
    """Members, gate positions, parameter slices and blocking reasons of one unit's group items."""
    info = GroupInfo()
    outputs = graph_outputs(dg)
    for dep, idxs in items:
        node, m = dep.target, dep.target.module
        out_side = dg.is_out_channel_pruning_fn(dep.handler)
        name = names.get(m, None)
        if isinstance(m, ops._OutputOp) or (out_side and node.grad_fn in outputs):
            info.reasons.append((0, "its channels reach the model output"))
        elif isinstance(m, nn.Parameter):
            pname = dg._param_to_name.get(m)
            if pname is not None:
                info.add(pname, int(node.pruning_dim), idxs)
        elif isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            _filter_item(info, m, name, idxs, out_side)
        elif isinstance(m, ops._ElementWiseOp):
            why = op_mixing_reason(node.grad_fn, str(m))
            if why:
                info.reasons.append((1, why))
        elif not isinstance(m, _PASS_THROUGH):
            _channelwise_item(info, m, name, idxs)
    return info


def _filter_item(info: GroupInfo, m: nn.Module, name: str | None, idxs: list[int], out_side: bool) -> None:
    """A conv or linear in the group: a member (its output channels) or a consumer (its inputs)."""
    transposed = bool(getattr(m, "transposed", False))
    if isinstance(m, nn.modules.conv._ConvNd) and is_depthwise(m):
        out_side, transposed = True, False  # its output channel IS its input channel
    elif isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1:
        info.reasons.append((2, f"grouped convolution {name} (groups={m.groups})"))
        return
    if out_side:
        info.members.extend((m, i) for i in idxs)
        info.add(f"{name}.weight", 1 if transposed else 0, idxs)
        if m.bias is not None:
            info.add(f"{name}.bias", 0, idxs)
    else:
        info.inputs.extend((m, i) for i in idxs)
        info.add(f"{name}.weight", 0 if transposed else 1, idxs)


def _channelwise_item(info: GroupInfo, m: Any, name: str | None, idxs: list[int]) -> None:
    """A norm, PReLU or other module in the group: its per-channel parameters, or why it blocks."""
    if isinstance(m, _NORMS):
        if m.affine:
            info.add(f"{name}.weight", 0, idxs)
            info.add(f"{name}.bias", 0, idxs)
    elif isinstance(m, nn.GroupNorm):
        if m.num_groups != m.num_channels:
            info.reasons.append((1, f"channels normalised together by GroupNorm {name}"))
        elif m.affine:
            info.add(f"{name}.weight", 0, idxs)
            info.add(f"{name}.bias", 0, idxs)
    elif isinstance(m, nn.LayerNorm):
        info.reasons.append((1, f"channels normalised together by LayerNorm {name}"))
    elif isinstance(m, nn.PReLU):
        if m.weight.numel() > 1:
            info.add(f"{name}.weight", 0, idxs)
    else:
        info.reasons.append((3, f"module torch-pruning cannot shrink exactly here: {type(m).__name__} {name or ''}"))
