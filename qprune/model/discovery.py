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
      flatten);
    * a whole group of a grouped convolution: the producer's channels of one input group, the
      grouped conv's output channels of that group and what those drag along (``groups`` drops by
      one when it goes); likewise a whole group of a ``GroupNorm`` with several channels per group
      (the other groups' statistics do not change, so zeroing the group equals removing it).

Linear roots: the hidden units of an MLP (``fc1 -> act -> fc2`` on the last dim: ConvNeXt's
pwconv1 -> pwconv2, ViT/Swin MLPs) are output features of a linear root; which linears may be
roots is the caller's choice (``linear_roots``).

Blocking reasons (a layer with any is excluded from the space)
    * the channel reaches the model output (the final conv; a denoiser's last layer);
    * the channel is normalised together with other channels: LayerNorm / LayerNorm2d /
      functional group norms / RMSNorm / ``F.normalize``, or any reduction (mean, sum, softmax,
      max, …) over the channel dimension — removing a channel changes the statistics of the others,
      so zeroing is not removal. In NAFNet / the Half-UNet and in ConvNeXt / ViT / Swin this
      excludes the residual trunk (normalised by the blocks' norms), leaving the channels inside
      the blocks (and the residual-branch units of :mod:`qprune.model.residual`);
    * a grouped conv whose input groups are fed by several layers, or that is a root itself (its
      output groups can only go with their input groups);
    * layout changes (permute/transpose), matrix products outside ``nn.Linear`` (attention:
      its heads are units of :mod:`qprune.model.attention`), functional pixel/channel shuffles,
      unknown autograd ops, and modules torch-pruning cannot shrink channel-wise
      (MultiheadAttention's embedding, LSTM, Embedding).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch_pruning import _helpers  # torch-pruning's private index type (index + root index)
from torch_pruning import ops
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.pruner import function as tp_function

from qprune.model.graph import (
    build_dependency_graph, graph_outputs, internal_ops, is_grouped, layernorm_is_channelwise, layernorm_ranks,
)
from qprune.model.mixing import op_mixing_reason

__all__ = ["GroupInfo", "analyse_group", "discover_groups", "is_depthwise", "is_grouped", "trace_with_extents"]

Item = tuple[Any, list[int]]  # (torch-pruning dependency, indices at its target)
_CONSUMERS = (nn.modules.conv._ConvNd, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_PASS_THROUGH = (nn.PixelShuffle, nn.PixelUnshuffle, ops._ConcatOp, ops._SplitOp, ops._ReshapeOp, ops._SliceOp)


@dataclass
class GroupInfo:
    """What one unit's group items amount to."""

    members: list[tuple[nn.Module, int]] = field(default_factory=list)  # (module, out channel)
    inputs: list[tuple[nn.Module, int]] = field(default_factory=list)  # (consumer, in channel)
    slices: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    reasons: list[tuple[int, str]] = field(default_factory=list)  # (priority, text)
    # whole groups: grouped conv -> its input channels in the unit; GroupNorm -> its channels
    grouped: dict[nn.Module, set[int]] = field(default_factory=dict)
    gn_groups: dict[nn.Module, set[int]] = field(default_factory=dict)

    def add(self, pname: str, dim: int, idxs: Iterable[int]) -> None:
        """Record that the unit removes ``idxs`` of dimension ``dim`` of parameter ``pname``."""
        self.slices.setdefault((pname, dim), set()).update(int(i) for i in idxs)

    def merge(self, other: GroupInfo) -> None:
        """Fold ``other`` (the group of the same unit's grouped-conv outputs) into this one."""
        self.members.extend(other.members)
        self.inputs.extend(other.inputs)
        for key, ix in other.slices.items():
            self.slices.setdefault(key, set()).update(ix)
        self.reasons.extend(other.reasons)
        for src, dst in ((other.grouped, self.grouped), (other.gn_groups, self.gn_groups)):
            for m, ix in src.items():
                dst.setdefault(m, set()).update(ix)


def is_depthwise(m: nn.Module) -> bool:
    """A depthwise conv (``groups == in == out > 1``): its output channel is tied to its input channel."""
    return (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
            and m.groups == m.in_channels == m.out_channels)


def trace_with_extents(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, dict[str, int], dict[str, int]]:
    """The dependency graph; per consumer path the element count of one input channel; per linear
    path the rank of its input.

    The extents are recorded during the graph's own trace (no second forward); a unit's activation
    site is the consumer whose input carries the most elements. A linear on a 3-D or higher input
    works on the last dim of a sequence or a channels-last map (an MLP inside a block).
    """
    names = {m: n for n, m in model.named_modules()}
    extent: dict[str, int] = {}
    rank: dict[str, int] = {}

    def record(m: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() >= 2:
            inner = x.shape[2:] if isinstance(m, nn.modules.conv._ConvNd) else x.shape[1:-1]
            extent[names[m]] = max(extent.get(names[m], 0), int(math.prod(inner)))
            if isinstance(m, nn.Linear):
                rank[names[m]] = max(rank.get(names[m], 0), x.dim())

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, _CONSUMERS)]
    try:
        dg = build_dependency_graph(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return dg, extent, rank


def discover_groups(
    model: nn.Module, dg: Any, *, linear_roots: bool | Collection[str], fast: bool = True,
    blocked: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[tuple[int, GroupInfo]]], dict[str, str]]:
    """``({root path: [(root channel, GroupInfo)]}, {root path: first blocking reason})``.

    Roots (convs; linears where ``linear_roots`` is True or names them) in module order; a channel
    already covered by an earlier root's unit is skipped, so a residual trunk becomes one unit
    under its first conv. ``fast`` asks torch-pruning for one group per root and splits it into
    units by the root channels that share a channel downstream (what a per-channel group would
    give). ``blocked`` roots are not analysed; they go to the reasons as they are.
    """
    names = {m: n for n, m in model.named_modules()}
    covered: set[tuple[str, int]] = set()
    raw: dict[str, list[tuple[int, GroupInfo]]] = {}
    layer_reason: dict[str, str] = dict(blocked or {})
    splits = _Splits(dg, fast)
    memo: dict[Any, str | None] = {}
    for root_name, root in model.named_modules():
        if not _is_root(root_name, root, linear_roots) or root not in dg.module2node or root_name in layer_reason:
            continue
        pruner = dg.get_pruner_of_module(root)
        n_out = pruner.get_out_channels(root) if pruner is not None else None
        todo = [r for r in range(int(n_out or 0)) if (root_name, r) not in covered]
        if not todo:
            continue
        if is_grouped(root):
            layer_reason[root_name] = (f"grouped convolution {root_name} (groups={root.groups}): its output groups "
                                       "go only with their input groups, which no prunable layer feeds")
            continue
        try:
            splits.items(root, todo[0])
        except _TooLarge:
            layer_reason[root_name] = _TOO_LARGE
            continue
        except (IndexError, KeyError, ZeroDivisionError, ValueError) as exc:  # torch-pruning lost the channels
            layer_reason[root_name] = (f"the dependency tracer cannot follow its channels ({type(exc).__name__} in "
                                       f"torch-pruning's index mapping: a channel shuffle or split it does not model)")
            continue
        for r in todo:
            if (root_name, r) in covered:
                continue
            if root_name in layer_reason:  # blocked: only mark what its units would cover
                covered.update(_members(splits.items(root, r), dg, names))
                covered.add((root_name, r))
                continue
            try:
                info = analyse_group(splits.items(root, r), dg, names, memo)
                _whole_groups(info, dg, names, splits, memo)
            except _TooLarge:
                layer_reason.setdefault(root_name, _TOO_LARGE)
                break
            for m, c in info.members:
                covered.add((names[m], c))
            covered.add((root_name, r))
            if info.reasons:
                layer_reason.setdefault(root_name, min(info.reasons)[1])
            raw.setdefault(root_name, []).append((r, info))
    return raw, layer_reason


def _members(items: Iterable[Item], dg: Any, names: Mapping[Any, str]) -> set[tuple[str, int]]:
    """``(path, output channel)`` of the convs/linears whose outputs a unit's items remove."""
    out = set()
    for dep, idxs in items:
        m = dep.target.module
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m in names and (
                dg.is_out_channel_pruning_fn(dep.handler) or is_depthwise(m)):
            out.update((names[m], int(i)) for i in idxs)
    return out


def _is_root(name: str, m: nn.Module, linear_roots: bool | Collection[str]) -> bool:
    if isinstance(m, nn.modules.conv._ConvNd):
        return True
    if isinstance(m, nn.Linear):
        return linear_roots if isinstance(linear_roots, bool) else name in linear_roots
    return False


class _Splits:
    """Per root: its channels' group items, from one torch-pruning group split by root channel."""

    def __init__(self, dg: Any, fast: bool) -> None:
        self.dg, self.fast = dg, fast
        self.cache: dict[Any, Any] = {}  # root -> {channel: items}, None (per channel) or _TooLarge

    def items(self, root: nn.Module, r: int) -> list[Item]:
        """The items of the unit holding root channel ``r`` (the channels it shares a group with)."""
        pruner = self.dg.get_pruner_of_module(root)
        if root not in self.cache:
            n = int(pruner.get_out_channels(root))
            try:
                self.cache[root] = _split_group(self.dg, root, pruner, list(range(n))) if self.fast else None
            except _TooLarge:
                self.cache[root] = _TooLarge  # remembered: the walk would blow the budget again
        per = self.cache[root]
        if per is _TooLarge:
            raise _TooLarge
        if per is not None:
            return per.get(r, [])
        group = self.dg.get_pruning_group(root, pruner.prune_out_channels, [r])
        return [(it.dep, list(it.idxs)) for it in group.items]


class _TooLarge(Exception):
    """A group whose indices multiply beyond any channel count (see :func:`_raw_group`)."""


_BUDGET_PER_CHANNEL, _BUDGET_BASE = 400, 100_000
_TOO_LARGE = ("its dependency group is too large to analyse (reshapes of a windowed attention, which "
              "torch-pruning maps as flattens, multiply its indices)")


def _raw_group(dg: Any, root: nn.Module, fn: Any, idxs: list[int]) -> list[tuple[Any, list[Any]]]:
    """torch-pruning's group traversal for ``idxs`` of ``root``, before it merges the items.

    The same walk as ``DependencyGraph.get_pruning_group``, but each item keeps every
    ``(index, root index)`` pair that reached it: the merge keeps one root per index, and which
    root channels meet at a target is what splits the group into units. Raises
    :class:`_TooLarge` past a budget of pairs: torch-pruning maps the window partitions of Swin
    as flattens, whose index multiplication never ends in a real channel count.
    """
    if isinstance(root, nn.modules.conv._ConvNd) and root.groups == root.out_channels and root.out_channels > 1:
        fn = tp_function.prune_depthwise_conv_out_channels
    if not getattr(dg, "_qprune_mapped", False):  # discovery never changes the graph: map its indices once
        index_mapping.update_index_mapping(dg)
        dg._qprune_mapped = True
    start = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
    root_node = dg.module2node[root]
    first = Dependency(fn, fn, source=root_node, target=root_node)
    items: dict[tuple[Any, Any], tuple[Any, list[Any]]] = {(root_node, fn): (first, list(start))}
    seen: dict[tuple[Any, Any], set[Any]] = {(root_node, fn): set(start)}
    stack = [(first, start)]
    budget = _BUDGET_PER_CHANNEL * len(idxs) + _BUDGET_BASE
    while stack:  # a closure over (target, handler, index, root index): each pair travels once
        dep, ix = stack.pop()
        budget -= len(ix)
        if budget < 0:
            raise _TooLarge
        for new_dep in dep.target.dependencies:
            if not new_dep.is_triggered_by(dep.handler):
                continue
            new_ix = ix
            for mapping in new_dep.index_mapping:
                if mapping is not None:
                    new_ix = mapping(new_ix)
            key = (new_dep.target, new_dep.handler)
            known = seen.setdefault(key, set())
            fresh = [h for h in dict.fromkeys(new_ix) if h not in known]
            if not fresh:
                continue
            known.update(fresh)
            items.setdefault(key, (new_dep, []))[1].extend(fresh)
            stack.append((new_dep, fresh))
    return list(items.values())


def _split_group(dg: Any, root: nn.Module, pruner: Any, todo: list[int]) -> dict[int, list[Item]] | None:
    """One traversal for all ``todo`` channels, split into units; None where that cannot be exact.

    Every index of every item remembers the root channel it came from. Root channels that reach
    the same index of the same target (a SimpleGate's two halves at the product, the r² channels
    of one shuffled channel, a grouped conv's input group) would each drag the other along in a
    per-channel group, so they form one unit (union-find); every other channel is a unit of its own.
    """
    raw = _raw_group(dg, root, pruner.prune_out_channels, todo)
    n = max(todo) + 1
    parent = np.arange(n)

    def find(r: int) -> int:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = int(parent[r])
        return r

    arrays: list[tuple[Any, np.ndarray, np.ndarray]] = []
    by_target: dict[tuple[int, bool], list[int]] = defaultdict(list)
    for dep, ix in raw:
        roots = [h.root_idx for h in ix]
        if any(r is None for r in roots):
            return None  # an index mapping that lost its root (GQA expand): per channel instead
        idx = np.fromiter((h.idx for h in ix), dtype=np.int64, count=len(ix))
        rts = np.asarray(roots, dtype=np.int64)
        out_side = bool(dg.is_out_channel_pruning_fn(dep.handler))
        by_target[(id(dep.target), out_side)].append(len(arrays))
        arrays.append((dep, idx, rts))
    # root channels meeting at the same (target, side, coupled index) fall together
    for (_, out_side), ks in by_target.items():
        m = arrays[ks[0]][0].target.module
        key = np.concatenate([_coupled(m, out_side, arrays[k][1]) for k in ks])
        rts = np.concatenate([arrays[k][2] for k in ks])
        order = np.argsort(key, kind="stable")
        key, rts = key[order], rts[order]
        same = np.flatnonzero((key[1:] == key[:-1]) & (rts[1:] != rts[:-1]))
        for a, b in zip(rts[same].tolist(), rts[same + 1].tolist()):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    comp = np.array([find(r) for r in range(n)], dtype=np.int64)
    per: dict[int, list[Item]] = defaultdict(list)
    for dep, idx, rts in arrays:
        c = comp[rts]
        order = np.argsort(c, kind="stable")
        cs, ix = c[order].tolist(), idx[order].tolist()
        bounds = [0, *(np.flatnonzero(c[order][1:] != c[order][:-1]) + 1).tolist(), len(cs)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            per[cs[a]].append((dep, [ix[a]] if b == a + 1 else sorted(set(ix[a:b]))))
    return {r: per[int(comp[r])] for r in todo}


def _coupled(m: Any, out_side: bool, idx: np.ndarray) -> np.ndarray:
    """What makes channels at a target fall together: the same index, or the same group on a
    grouped conv's input side and in a GroupNorm with several channels per group."""
    if isinstance(m, nn.GroupNorm) and m.num_groups != m.num_channels:
        return idx // (m.num_channels // m.num_groups)
    if not out_side and is_grouped(m):
        return idx // (m.in_channels // m.groups)
    return idx


def _whole_groups(info: GroupInfo, dg: Any, names: Mapping[Any, str], splits: _Splits,
                  memo: dict[Any, str | None]) -> None:
    """Check that grouped convs and GroupNorms see whole groups; add each grouped conv's output
    groups (and what they drag along) to the unit."""
    done: set[nn.Module] = set()
    while True:
        todo = [m for m in info.grouped if m not in done]
        if not todo:
            break
        for m in todo:
            done.add(m)
            idxs = info.grouped[m]
            per, per_out = m.in_channels // m.groups, m.out_channels // m.groups
            groups = sorted({i // per for i in idxs})
            if len(idxs) != per * len(groups):
                info.reasons.append((2, f"grouped convolution {names.get(m)} (groups={m.groups}): an input group "
                                        "holds channels of several units"))
                continue
            seen: set[int] = set()
            for g in groups:
                for o in range(g * per_out, (g + 1) * per_out):
                    if o in seen:
                        continue
                    sub = analyse_group(splits.items(m, o), dg, names, memo)
                    seen.update(c for mm, c in sub.members if mm is m)
                    info.merge(sub)
    for m, idxs in info.gn_groups.items():
        per = m.num_channels // m.num_groups
        if len(idxs) != per * len({i // per for i in idxs}):
            info.reasons.append((1, f"GroupNorm {names.get(m)} normalises channels of several units together"))


def analyse_group(items: Iterable[Item], dg: Any, names: Mapping[Any, str],
                  memo: dict[Any, Any] | None = None) -> GroupInfo:
    """Members, gate positions, parameter slices and blocking reasons of one unit's group items.

    ``memo`` caches, across units, the verdict on each element-wise op and each filter module's traits.
    """
    info = GroupInfo()
    outputs = graph_outputs(dg)
    internal = internal_ops(dg)
    memo = {} if memo is None else memo
    items = list(items)
    # channels sit at dim 1 when a conv produced them (a path through a permute is blocked anyway)
    conv_root = bool(items) and isinstance(items[0][0].target.module, nn.modules.conv._ConvNd)
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
            traits = memo.get(m)  # type: ignore[call-overload]
            if traits is None:
                traits = memo[m] = _traits(m)  # type: ignore[index]
            _filter_item(info, m, name, idxs, out_side, traits)
        elif isinstance(m, ops._ElementWiseOp):
            if node not in memo:
                # the view/addmm/view of a linear on a sequence is the linear itself, not a matmul between layers
                memo[node] = None if node.grad_fn in internal else op_mixing_reason(node.grad_fn, str(m))
            why = memo[node]
            if why:
                info.reasons.append((1, why))
        elif isinstance(m, nn.LayerNorm) and conv_root and layernorm_is_channelwise(m, layernorm_ranks(dg).get(id(m))):
            pass  # normalises dims after the channels only: each channel stands alone
        elif not isinstance(m, _PASS_THROUGH):
            _channelwise_item(info, m, name, idxs)
    return info


def _traits(m: nn.Module) -> Any:
    """``(transposed, depthwise, grouped, has bias)`` of a conv/linear (module attribute reads are slow)."""
    return (bool(getattr(m, "transposed", False)), is_depthwise(m), is_grouped(m), m.bias is not None)


def _filter_item(info: GroupInfo, m: nn.Module, name: str | None, idxs: list[int], out_side: bool,
                 traits: Any = None) -> None:
    """A conv or linear in the group: a member (its output channels) or a consumer (its inputs)."""
    transposed, depthwise, grouped, has_bias = traits if traits is not None else _traits(m)
    if depthwise:
        out_side, transposed = True, False  # its output channel IS its input channel
    elif grouped and not out_side:
        # whole input groups only: the weight keeps its per-group width, the group's outputs go too
        info.grouped.setdefault(m, set()).update(int(i) for i in idxs)
        return
    if out_side:
        info.members.extend((m, i) for i in idxs)
        info.add(f"{name}.weight", 1 if transposed else 0, idxs)
        if has_bias:
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
            info.gn_groups.setdefault(m, set()).update(int(i) for i in idxs)
        if m.affine:
            info.add(f"{name}.weight", 0, idxs)
            info.add(f"{name}.bias", 0, idxs)
    elif isinstance(m, nn.LayerNorm):
        info.reasons.append((1, f"channels normalised together by LayerNorm {name} (removing one changes "
                                "the others' statistics, so zeroing is not removing)"))
    elif isinstance(m, nn.PReLU):
        if m.weight.numel() > 1:
            info.add(f"{name}.weight", 0, idxs)
    else:
        info.reasons.append((3, f"module torch-pruning cannot shrink exactly here: {type(m).__name__} {name or ''}"))
