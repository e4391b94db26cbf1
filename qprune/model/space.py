"""The filter space: which output channels of a network can be pruned, and what falls with each.

:func:`build_space` is the entry point. It traces the model once with torch-pruning
(:mod:`qprune.model.graph`), walks the pruning group of every output channel of every root layer
(:mod:`qprune.model.discovery`: what a unit holds, what blocks a layer), adds the residual-branch
units (:mod:`qprune.model.residual`) and the attention heads (:mod:`qprune.model.attention`),
screens and selects the layers, assembles the :class:`~qprune.model.units.Unit` records and checks
gate == removal (:mod:`qprune.model.verification`).

``Unit.layer`` is the *root*: the first module, in ``model.named_modules()`` order, whose output
channel is in the unit (a branch end's conv; an attention module for heads); ``Unit.channel`` its
smallest such channel (the head index); ``label = "<layer>:<channel>"``. The units of one root
form one layer (one block of the QUBO). ``Unit.members`` lists every ``(conv/linear path, output
channel)`` that disappears (BatchNorm etc. are not listed: they are not filters, but their
parameters are counted; see :mod:`qprune.model.units` for the counts); a head unit's member is
``(attention path, head)``.

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
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model import attention
from qprune.model.discovery import GroupInfo, discover_groups, trace_with_extents
from qprune.model.graph import build_dependency_graph, paused_gc
from qprune.model.masking import failure_line, run_failure
from qprune.model.modes import eval_mode
from qprune.model.residual import branch_units, find_branch_ends
from qprune.model.stats import mac_terms
from qprune.model.tensors import as_tuple
from qprune.model.units import FilterSpace, Unit, count_removed
from qprune.model.verification import verified

__all__ = ["FilterSpace", "Unit", "build_dependency_graph", "build_space"]

Groups = Mapping[str, list[tuple[int, GroupInfo]]]  # root path -> [(root channel, its group)]
BRANCH_MODES = ("auto", True, False)
_FLAT_LINEAR = ("a linear on flat [batch, features] inputs (a classifier head): its outputs are units only "
                "with include_linear=True (the default keeps the conv-filter space of the paper)")


def build_space(
    model: nn.Module,
    example_inputs: Any,
    *,
    layers: int | Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    include_linear: bool | None = None,
    residual_branches: bool | str = False,
    heads: bool = True,
    min_keep: int = 1,
    verify: bool = True,
    _fast: bool = True,
) -> FilterSpace:
    """Discover the prunable units of ``model`` (see the module docstrings for every rule).

    Args:
        model: the network (not modified; traced in eval mode, its mode restored).
        example_inputs: a tensor or tuple of tensors the model accepts (shapes matter, not values).
        layers: ``None`` (all), an int ``n`` (the first ``n`` prunable layers in module order), or
            names/``fnmatch`` patterns of root or member modules.
        exclude: names/patterns of modules whose output channels must not change.
        include_linear: ``nn.Linear`` output features as units: ``None`` (default) the linears
            that work on the last dim of a 3-D or higher input (MLP blocks of transformers and
            ConvNeXt), not a classifier on flat features; ``True`` every linear; ``False`` none.
        residual_branches: residual-branch units (:mod:`qprune.model.residual`): ``False``
            (default) none, ``"auto"`` for branch ends no other layer prunes (the paper's filters
            on the Half-UNet), ``True`` for all (prunable trunks are then kept whole).
        heads: attention heads as units (:mod:`qprune.model.attention`).
        min_keep: units of every layer that stay (>= 1).
        verify: check gate == removal with one unit of each layer pruned; drop failing layers.

    Raises:
        QpruneError: bad ``layers``/``min_keep``/``residual_branches``, a model that does not run
            on ``example_inputs`` (one line with what it raised), or nothing left to prune.
    """
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, np.integer)) or min_keep < 1:
        raise QpruneError(f"min_keep must be an integer >= 1, got {min_keep!r}")
    if not any(residual_branches is m or (isinstance(m, str) and residual_branches == m) for m in BRANCH_MODES):
        raise QpruneError(f"residual_branches must be 'auto', True or False, got {residual_branches!r}")
    if isinstance(exclude, str):
        exclude = (exclude,)
    inputs = as_tuple(example_inputs)
    _check_runs(model, inputs)
    with paused_gc():  # many small objects, all alive until the space is built
        attn = _attention_modules(model, inputs) if heads else {}
        dg, extent, rank = trace_with_extents(model, inputs)
        linear_roots: bool | set[str] = (include_linear if include_linear is not None
                                         else {n for n, r in rank.items() if r >= 3})
        blocked = {f"{p}.qkv": f"attention projection: its heads are the units of {p}"
                   for p, m in attn.items() if attention.adapter_for(m) == "timm"}
        raw, layer_reason = discover_groups(model, dg, linear_roots=linear_roots, fast=_fast, blocked=blocked)
        excluded: dict[str, str] = {}
        kept = _screen_layers(model, raw, layer_reason, exclude, min_keep, excluded)
        if include_linear is None:  # flat-feature linears stay out by default: say so
            excluded.update({n: _FLAT_LINEAR for n, r in rank.items() if r < 3 and n not in excluded})
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        units = _channel_units(model, kept, raw, extent, shapes)
        branches = _branch_layers(model, dg, units, residual_branches, exclude, min_keep, excluded, shapes)
        units.update(branches)
        units.update(_head_layers(model, attn, exclude, min_keep, excluded, shapes))
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        all_layers = sorted(units, key=order.__getitem__)
        if layers is not None:
            hint = "" if residual_branches is not False else (
                " (residual-branch units are off: residual_branches='auto' adds the convs whose output is "
                "added into a residual trunk as layers of their own)")
            all_layers = _select_layers(all_layers, layers, units, excluded, hint)
        space = _assemble(model, all_layers, units, attn, inputs, int(min_keep), excluded, shapes)
    if verify and space.N:
        space = verified(model, space, inputs)
    if space.N == 0:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(space.excluded.items())[:6])
        raise QpruneError(f"no prunable units found (layers={layers!r}, exclude={tuple(exclude)!r}). {reasons}")
    return space


def _check_runs(model: nn.Module, inputs: tuple) -> None:
    """A model that fails on the example input fails here, in one line, before any tracing."""
    failure = run_failure(model, inputs)
    if failure is not None:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs if isinstance(t, torch.Tensor))
        raise QpruneError(failure_line(f"the model does not run on example inputs of shape {shapes}: ",
                                       failure[1])) from failure[1]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _attention_modules(model: nn.Module, inputs: tuple[Any, ...]) -> dict[str, nn.Module]:
    """Attention modules qprune has an adapter for that the model calls on ``inputs`` (module order)."""
    cand = {n: m for n, m in model.named_modules() if attention.adapter_for(m) or
            type(m).__name__ == "ShiftedWindowAttentionV2"}
    if not cand:
        return {}
    called: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: called.add(n)) for n, m in cand.items()]
    with eval_mode(model, hooks), torch.no_grad():
        model(*inputs)
    return {n: m for n, m in cand.items() if n in called}


def _screen_layers(
    model: nn.Module,
    raw: Groups,
    layer_reason: Mapping[str, str],
    exclude: Sequence[str],
    min_keep: int,
    excluded: dict[str, str],
) -> list[str]:
    """The roots that may form a layer; every other root goes to ``excluded`` with its reason."""
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    kept: list[str] = []
    for root_name, why in layer_reason.items():
        if root_name not in raw:
            excluded[root_name] = why
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
        kept.append(root_name)
    return kept


def _branch_layers(
    model: nn.Module, dg: Any, layers: dict[str, list[Unit]], mode: bool | str, exclude: Sequence[str],
    min_keep: int, excluded: dict[str, str], shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, list[Unit]]:
    """The residual-branch layers for ``mode``; with ``True`` the trunk layers they cut through
    go to ``excluded`` (removed from ``layers``)."""
    if mode is False:
        return {}
    ends = find_branch_ends(model, dg)
    owner = {m: lay for lay, us in layers.items() for u in us for m, _ in u.members}
    out: dict[str, list[Unit]] = {}
    for x, end in ends.items():
        if x in owner and mode == "auto":
            continue  # its channels are pruned with a layer of the space already (a prunable trunk)
        if _matches(x, exclude) or _matches(end.e, exclude):
            excluded[x] = f"excluded by exclude= ({x})"
            continue
        if end.channels <= min_keep:
            excluded[x] = f"{end.channels} unit(s), not more than min_keep={min_keep}"
            continue
        excluded.pop(x, None)
        out[x] = branch_units(model, end, shapes)
    if mode is True:
        for x in out:
            lay = owner.get(x)
            if lay is not None and lay in layers:
                del layers[lay]
                excluded[lay] = "residual trunk kept whole: its branch ends are units (residual_branches=True)"
    return out


def _head_layers(
    model: nn.Module, attn: Mapping[str, nn.Module], exclude: Sequence[str], min_keep: int,
    excluded: dict[str, str], shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, list[Unit]]:
    """One layer of head units per supported attention module."""
    out: dict[str, list[Unit]] = {}
    for path, m in attn.items():
        why = attention.unsupported(m)
        if why:
            excluded[path] = why
            continue
        if _matches(path, exclude):
            excluded[path] = f"excluded by exclude= ({path})"
            continue
        n_heads, hd = attention.head_geometry(m)
        if n_heads <= min_keep:
            excluded[path] = f"{n_heads} head(s), not more than min_keep={min_keep}"
            continue
        site = attention.out_projection(path, m)
        units = []
        for h in range(n_heads):
            slices, filters = attention.head_slices(path, m, h)
            units.append(Unit(
                label=f"{path}:{h}", layer=path, channel=h, members=((path, h),),
                params=int(count_removed(shapes, [slices])),
                filter_params=int(sum(len(ix) * _row_size(shapes[p], d) for p, d, ix in filters)),
                inputs=tuple((site, c) for c in range(h * hd, (h + 1) * hd)), slices=slices, kind="head",
                filters=filters,
            ))
        out[path] = units
    return out


def _row_size(shape: tuple[int, ...], dim: int) -> int:
    """Elements of one index along ``dim`` of a tensor of ``shape``."""
    return math.prod(shape) // int(shape[dim])


def _select_layers(
    kept: list[str], layers: int | Sequence[str], units: Mapping[str, list[Unit]], excluded: dict[str, str],
    hint: str = "",
) -> list[str]:
    """Apply ``layers=`` (a count or names/patterns); the layers left out join ``excluded``; ``hint``
    ends the error of a count above the layers there are."""
    if isinstance(layers, bool):
        raise QpruneError(f"layers must be an int or a list of module names, got {layers!r}")
    if isinstance(layers, (int, np.integer)):
        if layers < 1:
            raise QpruneError(f"layers must be >= 1 (the first n prunable layers), got {layers}")
        if layers > len(kept):
            raise QpruneError(f"layers={layers} but the model has only {len(kept)} prunable layers{hint}")
        chosen = kept[: int(layers)]
    else:
        patterns = [layers] if isinstance(layers, str) else layers
        chosen = []
        for pat in patterns:
            hits = [n for n in kept if _matches(n, [pat]) or any(_matches(m, [pat]) for u in units[n] for m, _ in u.members)]
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


def _channel_units(
    model: nn.Module, kept: list[str], raw: Groups, extent: Mapping[str, int], shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, list[Unit]]:
    """The ``"channel"`` units of every kept root, by root path."""
    maker = _UnitMaker(model, extent, shapes)
    return {root: [maker.unit(root, r, info) for r, info in raw[root]] for root in kept}


def _assemble(
    model: nn.Module, chosen: list[str], layers: Mapping[str, list[Unit]], attn: Mapping[str, nn.Module],
    inputs: tuple[Any, ...], min_keep: int, excluded: dict[str, str], shapes: Mapping[str, tuple[int, ...]],
) -> FilterSpace:
    """The :class:`FilterSpace` of the chosen layers' units (before verification)."""
    modules = dict(model.named_modules())
    units = [u for lay in chosen for u in layers[lay]]
    consumer_channels: dict[str, int] = {}
    producer_channels: dict[str, int] = {}
    for u in units:
        for n, _ in u.inputs:
            mod = modules[n]
            consumer_channels[n] = int(mod.in_channels if isinstance(mod, nn.modules.conv._ConvNd) else mod.in_features)
        for n, _ in u.outputs:
            mod = modules[n]
            producer_channels[n] = int(getattr(mod, "out_channels", None) or getattr(mod, "out_features", None)
                                       or mod.num_features)
    return FilterSpace(
        units=units, layers=list(chosen), min_keep=min_keep, excluded=excluded,
        total_params=int(sum(p.numel() for p in model.parameters())),
        param_shapes={p: shapes[p] for u in units for p, _, _ in u.slices},
        consumer_channels=consumer_channels,
        input_specs=[(tuple(x.shape), str(x.dtype).replace("torch.", "")) for x in inputs
                     if isinstance(x, torch.Tensor)],
        producer_channels=producer_channels,
        attention={p: str(attention.adapter_for(attn[p])) for p in chosen if p in attn},
        mac_terms=mac_terms(model, inputs),
    )


class _UnitMaker:
    """Turns one group (module references) into a :class:`Unit` (paths, indices and counts)."""

    def __init__(self, model: nn.Module, extent: Mapping[str, int], shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.names = {m: n for n, m in model.named_modules()}
        self.order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        self.modules = dict(model.named_modules())
        self.extent, self.shapes = extent, shapes
        self._cache: dict[str, tuple[bool, bool]] = {}

    def unit(self, root_name: str, r: int, info: GroupInfo) -> Unit:
        """The unit of root channel ``r``."""
        names, order = self.names, self.order
        members = tuple(sorted({(names[m], int(c)) for m, c in info.members}, key=lambda t: (order[t[0]], t[1])))
        root_channels = [c for n, c in members if n == root_name] or [r]
        channel = min(root_channels)
        slices = tuple(sorted((p, d, tuple(sorted(ix))) for (p, d), ix in info.slices.items()))
        for p, _, _ in slices:
            if p not in self.shapes:
                raise QpruneError(f"internal: parameter {p!r} of a unit is not a parameter of the model")
        filters = self._filters(members)
        return Unit(
            label=f"{root_name}:{channel}", layer=root_name, channel=int(channel), members=members,
            params=int(count_removed(self.shapes, [slices])),
            filter_params=int(sum(len(ix) * _row_size(self.shapes[p], d) for p, d, ix in filters)),
            inputs=self._inputs(info), slices=slices, filters=filters,
        )

    def _inputs(self, info: GroupInfo) -> tuple[tuple[str, int], ...]:
        """Gate positions, the consumer whose input carries the most elements first."""
        per_consumer: dict[str, list[int]] = defaultdict(list)
        for m, c in info.inputs:
            per_consumer[self.names[m]].append(int(c))
        ranked = sorted(per_consumer,
                        key=lambda n: (-len(set(per_consumer[n])) * self.extent.get(n, 1), self.order[n]))
        return tuple((n, c) for n in ranked for c in sorted(set(per_consumer[n])))

    def _traits(self, path: str) -> tuple[bool, bool]:
        """``(transposed, has bias)`` of a member module, cached (module attribute reads are slow)."""
        t = self._cache.get(path)
        if t is None:
            mod = self.modules[path]
            t = self._cache[path] = (bool(getattr(mod, "transposed", False)), getattr(mod, "bias", None) is not None)
        return t

    def _filters(self, members: Sequence[tuple[str, int]]) -> tuple[tuple[str, int, tuple[int, ...]], ...]:
        """The member filters' own weights + biases as slices (the paper's ``P_i`` runs over them)."""
        rows: dict[tuple[str, int], set[int]] = defaultdict(set)
        for n, c in members:
            transposed, bias = self._traits(n)
            rows[(f"{n}.weight", 1 if transposed else 0)].add(c)
            if bias:
                rows[(f"{n}.bias", 0)].add(c)
        return tuple(sorted((p, d, tuple(sorted(ix))) for (p, d), ix in rows.items()))
