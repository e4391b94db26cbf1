"""torch-pruning's importance criteria on qprune's units: a helper module of the benchmarks (no main).

``benchmarks/peers.py`` (equal k), ``budgets.py`` (equal MACs) and ``quality.py`` score our units with
torch-pruning 1.6.1's own criteria (:data:`CRITERIA`); this module holds what they share: which
torch-pruning group scores which of our layers (:func:`match_scopes`), the per-unit scores of a
criterion (:func:`unit_scores`, :func:`criterion_scores`), the gradients the Taylor and Hessian
criteria read (:func:`gradient_pass`, :func:`set_grads`) and one global ranking searched to a cost
budget (:func:`ranking_under`).

Which groups score which units
    The groups are those of torch-pruning's own ``DependencyGraph`` (``get_all_groups``). A group
    whose conv/linear items (outputs and consumers' inputs) are exactly the unit set of one of our
    layers scores that layer (``own group``): in the Half-UNet the NAF blocks' ``conv1`` layers
    (torch-pruning roots that group at ``sca.1``) and ``conv4`` layers. A group root channel belongs
    to the unit whose members hold it; a unit with several root channels (a ``conv4`` SimpleGate
    pair: pruning one half removes both) takes the LOWEST of their scores, which is what
    torch-pruning's global threshold does (the unit goes as soon as one of its root channels is
    under the threshold). Residual-branch units (``conv3``, ``conv5``, ``upN.conv``) have no group
    of their own in torch-pruning: its group for those convs is the whole residual trunk
    (LayerNorm-normalised, so our space keeps it whole), and pruning it would remove trunk channels.
    They are scored by the same criterion on a one-item group holding only the branch conv's output
    filters (``branch filters``), torch-pruning's ``Importance`` call on the filters that the unit
    removes.

Gradients
    Taylor and Hessian gradients are accumulated on the problem's calibration batches with the
    problem's loss, as torch-pruning's examples do: Taylor, ``loss.backward()`` per batch, summed;
    Hessian, per-sample ``backward`` and the mean of ``grad²`` (torch-pruning's ``accumulate_grad``
    keys its running sums by parameter but tests membership by name, so it keeps only the LAST
    sample; we put the mean of ``grad²`` into ``param.grad`` ourselves, which is what its
    ``__call__`` then reads).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group

from qprune.errors import QpruneError
from qprune.model.units import FilterSpace
from qprune.pipeline.run import Prepared, constraint_of
from qprune.solve.baselines import greedy_prune
from qprune.solve.budgets.budget import CostModel

__all__ = ["CRITERIA", "Scope", "criterion_scores", "gradient_pass", "match_scopes", "ranking_under", "set_grads",
           "unit_scores"]

#: row name -> (torch-pruning importance factory, gradient it needs: None | "taylor" | "hessian")
CRITERIA: dict[str, tuple[Callable[[], Any], str | None]] = {
    "tp-magnitude": (tp.importance.GroupMagnitudeImportance, None),
    "tp-taylor": (tp.importance.GroupTaylorImportance, "taylor"),
    "tp-hessian": (tp.importance.GroupHessianImportance, "hessian"),
    "tp-lamp": (tp.importance.LAMPImportance, None),
    "tp-fpgm": (tp.importance.FPGMImportance, None),
}
_ROOTS = (nn.modules.conv._ConvNd, nn.Linear)


# ------------------------------------------------------------------------ groups -> our units


@dataclass
class Scope:
    """One of our layers and the torch-pruning group that scores it."""

    layer: str
    kind: str  # "own group" | "branch filters"
    root: str  # path of the group's root module
    group: Any  # torch_pruning Group with every root channel
    root_to_unit: np.ndarray  # int [root channels]: unit index of each root channel


def _item_sets(group: Any, dg: Any, names: dict[nn.Module, str]) -> tuple[set, set]:
    """``(out, in)``: ``(path, channel)`` of the conv/linear outputs and inputs a group prunes."""
    outs, ins = set(), set()
    for item in group:
        m = item.dep.target.module
        if not isinstance(m, _ROOTS) or m not in names:
            continue
        depthwise = isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.in_channels == m.out_channels > 1
        if dg.is_out_channel_pruning_fn(item.dep.handler):
            outs.update((names[m], int(i)) for i in item.idxs)
        elif not depthwise:  # a depthwise conv's input channel is its output channel (a member)
            ins.update((names[m], int(i)) for i in item.idxs)
    return outs, ins


def _root_map(space: FilterSpace, layer: str, root: str, n: int) -> np.ndarray | None:
    """Unit index of each of the ``n`` root channels (None when some channel is in no unit)."""
    out = np.full(n, -1, dtype=np.int64)
    for u in space.layer_units(layer):
        for path, c in space.units[u].members:
            if path == root and c < n:
                out[c] = u
    return None if (out < 0).any() else out


def _filters_group(dg: Any, module: nn.Module) -> Any:
    """A one-item torch-pruning group: every output filter of ``module`` and nothing else."""
    fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
    node = dg.module2node[module]
    n = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    group = Group()
    group.add_dep(Dependency(fn, fn, source=node, target=node), list(range(n)))
    group[0].root_idxs = list(range(n))
    group._DG = dg
    return group


def match_scopes(model: nn.Module, space: FilterSpace, example: torch.Tensor) -> tuple[list[Scope], list[nn.Module]]:
    """A scope per layer of the space, and the modules of every group that matches none of our
    layers (the ``ignored_layers`` that leave MetaPruner only the units it can express)."""
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    wanted: dict[str, tuple[set, set]] = {}
    for lid, layer in enumerate(space.layers):
        units = [space.units[i] for i in space.layer_units(lid)]
        wanted[layer] = ({m for u in units for m in u.members}, {c for u in units for c in u.inputs})
    scopes: dict[str, Scope] = {}
    ignored: list[nn.Module] = []
    for group in dg.get_all_groups():
        root = group[0].dep.target.module
        outs, ins = _item_sets(group, dg, names)
        layer = next((lay for lay, (mo, mi) in wanted.items() if mo == outs and mi == ins), None)
        rmap = None if layer is None else _root_map(space, layer, names[root], len(group[0].idxs))
        if layer is None or rmap is None:
            ignored.extend(modules[p] for p in sorted({p for p, _ in outs}))
            continue
        scopes[layer] = Scope(layer, "own group", names[root], group, rmap)
    for lid, layer in enumerate(space.layers):
        if layer in scopes:
            continue
        module = modules[layer]
        n = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        rmap = _root_map(space, layer, layer, n)
        if rmap is None:
            raise QpruneError(f"layer {layer!r}: its units do not cover its output channels; no group scores it")
        scopes[layer] = Scope(layer, "branch filters", layer, _filters_group(dg, module), rmap)
    return [scopes[lay] for lay in space.layers], ignored


def unit_scores(scopes: Sequence[Scope], importance: Any, n_units: int) -> np.ndarray:
    """Per unit: the lowest normalised importance of its root channels (nan where unscored)."""
    scores = np.full(n_units, np.nan)
    for s in scopes:
        imp = importance(s.group)
        if imp is None:
            raise QpruneError(f"{type(importance).__name__} gives no score for layer {s.layer!r}")
        imp = imp.detach().double().cpu().numpy()
        np.fmin.at(scores, s.root_to_unit, imp)
    return scores


# ------------------------------------------------------------------------ gradients


def gradient_pass(model: nn.Module, batches: Sequence[Any], loss_fn: Callable, kind: str) -> dict[str, torch.Tensor]:
    """What ``param.grad`` holds for a criterion: Taylor, the summed batch-loss gradients;
    Hessian, the per-sample mean of ``grad²`` (see the module doc)."""
    model.eval()
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    with torch.enable_grad():
        for x, y in batches:
            samples = [(x, y)] if kind == "taylor" else [(x[i:i + 1], y[i:i + 1]) for i in range(x.shape[0])]
            for xs, ys in samples:
                model.zero_grad(set_to_none=True)
                loss_fn(model(xs), ys).backward()
                for n, p in params.items():
                    if p.grad is not None:
                        acc[n] += p.grad if kind == "taylor" else p.grad.pow(2)
                count += 1
    model.zero_grad(set_to_none=True)
    return acc if kind == "taylor" else {n: a / count for n, a in acc.items()}


def set_grads(model: nn.Module, grads: dict[str, torch.Tensor] | None) -> None:
    """Put ``grads`` into ``param.grad`` (None clears them)."""
    for n, p in model.named_parameters():
        p.grad = None if grads is None else grads[n].clone()


# ------------------------------------------------------------------------ scores and budgets


def criterion_scores(prep: Prepared, names: Sequence[str], example: torch.Tensor) -> dict[str, np.ndarray]:
    """Each criterion's score of every unit of ``prep`` (a copy of its model per criterion; the
    gradients from its calibration batches, one pass per kind), units no group scores above all others."""
    grads: dict[str, dict[str, torch.Tensor]] = {}
    out = {}
    for crit in names:
        factory, need = CRITERIA[crit]
        tm = copy.deepcopy(prep.model)
        scopes, _ = match_scopes(tm, prep.space, example)
        if need is not None:
            if need not in grads:
                grads[need] = gradient_pass(copy.deepcopy(prep.model), prep.work.calibration, prep.work.loss, need)
            set_grads(tm, grads[need])
        s = unit_scores(scopes, factory(), prep.space.N)
        out[crit] = np.where(np.isfinite(s), s, np.nanmax(s) + 1.0)
    return out


def ranking_under(space: FilterSpace, scores: np.ndarray, cost: CostModel, cap: float) -> np.ndarray | None:
    """One global ranking (lowest score pruned first, within the per-layer caps) at the least count
    whose ``cost`` is at most ``cap`` (bisection over the count); None when even the caps' count is over."""

    def mask_of(k: int) -> np.ndarray:
        return greedy_prune(scores, k, constraint=constraint_of(space, k))

    lo, hi = 0, int(space.max_pruned_per_layer.sum())
    if cost.of_mask(mask_of(hi)) > cap:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cost.of_mask(mask_of(mid)) <= cap else (mid + 1, hi)
    return mask_of(lo)
