"""The filter space: which output channels of a network can be pruned, and what falls with each.

:func:`build_space` is the entry point. It traces the model once with torch-pruning
(:mod:`qprune.model.graph`), walks the pruning group of every output channel of every root layer
(:mod:`qprune.model.discovery`: what a unit holds, what blocks a layer), screens and selects the
layers, assembles the :class:`~qprune.model.units.Unit` records and checks gate == removal
(:mod:`qprune.model.verification`).

``Unit.layer`` is the *root*: the first module, in ``model.named_modules()`` order, whose output
channel is in the unit; ``Unit.channel`` its smallest such channel; ``label = "<layer>:<channel>"``.
The units of one root form one layer (one block of the QUBO). ``Unit.members`` lists every
``(conv/linear path, output channel)`` that disappears (BatchNorm etc. are not listed: they are not
filters, but their parameters are counted; see :mod:`qprune.model.units` for the counts).

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
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model.discovery import GroupInfo, discover_groups, trace_with_extents
from qprune.model.graph import build_dependency_graph
from qprune.model.tensors import as_tuple
from qprune.model.units import FilterSpace, Unit, count_removed
from qprune.model.verification import verified

__all__ = ["FilterSpace", "Unit", "build_dependency_graph", "build_space"]

Groups = Mapping[str, list[tuple[int, GroupInfo]]]  # root path -> [(root channel, its group)]


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
    """Discover the prunable units of ``model`` (see the module docstrings for every rule).

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
    inputs = as_tuple(example_inputs)
    dg, extent = trace_with_extents(model, inputs)
    raw, layer_reason = discover_groups(model, dg, include_linear=include_linear, fast=_fast)
    excluded: dict[str, str] = {}
    kept_layers = _screen_layers(model, raw, layer_reason, exclude, min_keep, excluded)
    if layers is not None:
        kept_layers = _select_layers(model, kept_layers, layers, raw, excluded)
    space = _assemble(model, kept_layers, raw, extent, inputs, int(min_keep), excluded)
    if verify and space.N:
        space = verified(model, space, inputs)
    if space.N == 0:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(space.excluded.items())[:6])
        raise QpruneError(f"no prunable units found (layers={layers!r}, exclude={tuple(exclude)!r}). {reasons}")
    return space


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


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


def _select_layers(
    model: nn.Module,
    kept: list[str],
    layers: int | Sequence[str],
    raw: Groups,
    excluded: dict[str, str],
) -> list[str]:
    """Apply ``layers=`` (a count or names/patterns); the layers left out join ``excluded``."""
    if isinstance(layers, bool):
        raise QpruneError(f"layers must be an int or a list of module names, got {layers!r}")
    if isinstance(layers, (int, np.integer)):
        if layers < 1:
            raise QpruneError(f"layers must be >= 1 (the first n prunable layers), got {layers}")
        if layers > len(kept):
            raise QpruneError(f"layers={layers} but the model has only {len(kept)} prunable layers")
        chosen = kept[: int(layers)]
    else:
        chosen = _layers_by_name(model, kept, [layers] if isinstance(layers, str) else layers, raw, excluded)
    for n in kept:
        if n not in chosen:
            excluded[n] = "not selected by layers="
    return chosen


def _layers_by_name(
    model: nn.Module, kept: list[str], patterns: Sequence[str], raw: Groups, excluded: Mapping[str, str],
) -> list[str]:
    """Kept layers whose root or a member module matches one of ``patterns``, in module order."""
    names = {m: n for n, m in model.named_modules()}
    chosen: list[str] = []
    for pat in patterns:
        hits = [n for n in kept if _matches(n, [pat])
                or any(_matches(names[m], [pat]) for _, info in raw[n] for m, _ in info.members)]
        if not hits:
            why = excluded.get(pat)
            raise QpruneError(f"layers: {pat!r} matches no prunable layer"
                              + (f" ({pat} is excluded: {why})" if why else ""))
        chosen.extend(h for h in hits if h not in chosen)
    chosen.sort(key=kept.index)
    return chosen


def _assemble(
    model: nn.Module,
    kept_layers: list[str],
    raw: Groups,
    extent: Mapping[str, int],
    inputs: tuple[Any, ...],
    min_keep: int,
    excluded: dict[str, str],
) -> FilterSpace:
    """The :class:`FilterSpace` of the kept layers' units (before verification)."""
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    units: list[Unit] = []
    consumer_channels: dict[str, int] = {}
    maker = _UnitMaker(model, extent, shapes)
    for root_name in kept_layers:
        for r, info in raw[root_name]:
            units.append(maker.unit(root_name, r, info, consumer_channels))
    return FilterSpace(
        units=units, layers=list(kept_layers), min_keep=min_keep, excluded=excluded,
        total_params=int(sum(p.numel() for p in model.parameters())),
        param_shapes={p: shapes[p] for u in units for p, _, _ in u.slices},
        consumer_channels=consumer_channels,
        input_specs=[(tuple(x.shape), str(x.dtype).replace("torch.", "")) for x in inputs
                     if isinstance(x, torch.Tensor)],
    )


class _UnitMaker:
    """Turns one group (module references) into a :class:`Unit` (paths, indices and counts)."""

    def __init__(self, model: nn.Module, extent: Mapping[str, int], shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.names = {m: n for n, m in model.named_modules()}
        self.order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        self.modules = dict(model.named_modules())
        self.extent, self.shapes = extent, shapes

    def unit(self, root_name: str, r: int, info: GroupInfo, consumer_channels: dict[str, int]) -> Unit:
        """The unit of root channel ``r``; records its consumers' input widths in ``consumer_channels``."""
        names, order = self.names, self.order
        members = tuple(sorted({(names[m], int(c)) for m, c in info.members}, key=lambda t: (order[t[0]], t[1])))
        root_channels = [c for n, c in members if n == root_name] or [r]
        channel = min(root_channels)
        inputs = self._inputs(info, consumer_channels)
        slices = tuple(sorted((p, d, tuple(sorted(ix))) for (p, d), ix in info.slices.items()))
        for p, _, _ in slices:
            if p not in self.shapes:
                raise QpruneError(f"internal: parameter {p!r} of a unit is not a parameter of the model")
        return Unit(
            label=f"{root_name}:{channel}", layer=root_name, channel=int(channel), members=members,
            params=int(count_removed(self.shapes, [slices])), filter_params=int(self._filter_params(members)),
            inputs=inputs, slices=slices,
        )

    def _inputs(self, info: GroupInfo, consumer_channels: dict[str, int]) -> tuple[tuple[str, int], ...]:
        """Gate positions, the consumer whose input carries the most elements first."""
        per_consumer: dict[str, list[int]] = defaultdict(list)
        for m, c in info.inputs:
            per_consumer[self.names[m]].append(int(c))
        ranked = sorted(per_consumer,
                        key=lambda n: (-len(set(per_consumer[n])) * self.extent.get(n, 1), self.order[n]))
        for n in per_consumer:
            mod = self.modules[n]
            consumer_channels[n] = int(mod.in_channels if isinstance(mod, nn.modules.conv._ConvNd)
                                       else mod.in_features)
        return tuple((n, c) for n in ranked for c in sorted(set(per_consumer[n])))

    def _filter_params(self, members: Sequence[tuple[str, int]]) -> int:
        """The member filters' own weights + biases (the paper's ``P_i``)."""
        filt = 0
        for n, _ in members:
            mod = self.modules[n]
            w = mod.weight
            odim = 1 if getattr(mod, "transposed", False) else 0
            filt += w.numel() // w.shape[odim] + (1 if getattr(mod, "bias", None) is not None else 0)
        return filt
