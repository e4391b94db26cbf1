"""One mask at a time, the model's layers cut to the kept channels in place: no copy, no re-tracing.

:func:`qprune.model.masking.prune_model` builds a physically smaller copy of a model with torch-pruning,
which takes a deep copy and a dependency-graph trace per mask (~0.16 s for the F=64 Half-UNet).
Scoring thousands of candidate masks needs the same arithmetic for far less: every tensor a unit
removes is already listed in the filter space (:attr:`qprune.model.space.Unit.slices`), so a mask's
pruned network is the original parameters index-selected along those dimensions. :class:`ChannelCut`
swaps such views in (``param.data``) for one mask, adjusts what a layer reads from its own
attributes rather than from its weights (the ``groups`` of a depthwise or grouped convolution, the
``num_groups`` of a GroupNorm) and slices the running statistics of norm layers along with their
affine parameters; the tensors of branch units (channels of a result added to a residual trunk)
keep their width with the pruned units' rows zero, so the branch's result stays as wide as the
trunk (the removed model scatters it back instead, :class:`qprune.model.residual.ChannelScatter`:
here a few more rows of a layer or two are cheaper than a strided copy per pass) and attention
modules with head units run their routed forward, which reads the head count from the cut
weights (:mod:`qprune.model.attention`); on exit everything is put back.

A cut network computes the same function as the gated one (a pruned unit contributes zeros there)
up to float rounding, where the space's slices describe every tensor the units touch. Layers the
space does not describe (a BatchNorm without affine parameters, an op that reads channel counts
from a module attribute not adjusted here) would make the cut network differ or fail, which is
why :class:`qprune.refine.scoring.MaskScorer` checks a cut against the gated model before it uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model import attention
from qprune.model.discovery import is_depthwise, is_grouped
from qprune.model.units import FilterSpace

__all__ = ["ChannelCut", "channels_last"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


class ChannelCut:
    """Context manager: ``set(mask)`` cuts ``model``'s layers to the channels ``mask`` keeps.

    Args:
        model: the network of the filter space; its tensors are replaced (``.data``) while the
            context is open and put back on exit (also on error). Run it under
            ``torch.no_grad()``/``inference_mode``: cut tensors are not trained.
        space: its :class:`qprune.model.units.FilterSpace`.

    ``set(mask)`` with a 0/1 array ``[N]`` (1 = pruned) may be called any number of times inside
    the context; each call cuts from the original tensors as they were when the context opened
    (so a layout change made before entering, e.g. channels-last weights, is kept).
    """

    def __init__(self, model: nn.Module, space: FilterSpace) -> None:
        self.model, self.n = model, int(space.N)
        tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
        modules = dict(model.named_modules())
        owners = _slice_owners(space, tensors)
        _add_running_stats(owners, tensors, modules)
        # a branch unit's tensors keep their width, its rows zero: the branch's result stays as wide
        # as the trunk it is added to (cut, it would have to be scattered back on every pass)
        branch = np.array([u.kind == "branch" for u in space.units], dtype=bool)
        self._plan = [(tensors[name], [(dim, owner, _owned_by(branch, owner)) for dim, owner in sorted(dims.items())])
                      for name, dims in owners.items()]
        # the units each tensor depends on: a tensor whose units' bits did not change since the
        # last set() keeps its cut (consecutive masks of a search mostly differ in a few layers)
        self._deps = [np.unique(np.concatenate([o[o >= 0] for o in dims.values()]))
                      for dims in owners.values()]
        self._last: list[bytes | None] = [None] * len(self._plan)
        touched = {name.rpartition(".")[0] for name in owners}
        self._depthwise = [modules[p] for p in touched if is_depthwise(modules.get(p))]
        self._grouped = [modules[p] for p in touched if is_grouped(modules.get(p))]
        self._groupnorms = [modules[p] for p in touched if isinstance(modules.get(p), nn.GroupNorm)]
        self._heads = [modules[p] for p in space.attention if p in modules]
        self._index: dict[bytes, torch.Tensor] = {}
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._attrs: list[tuple[nn.Module, str, Any]] = []
        self._routes: attention.routed | None = None

    def __enter__(self) -> ChannelCut:  # noqa: PYI034 - typing.Self needs Python 3.11
        self._saved = [(t, t.data) for t, _ in self._plan]
        self._last = [None] * len(self._plan)
        self._attrs = [(m, a, getattr(m, a)) for m in self._depthwise + self._grouped
                       for a in ("groups", "in_channels", "out_channels")]
        self._attrs += [(m, a, getattr(m, a)) for m in self._groupnorms
                        for a in ("num_groups", "num_channels")]
        self._routes = attention.routed(self._heads)
        return self

    def __exit__(self, *exc: object) -> None:
        for t, data in self._saved or []:
            t.data = data
        for m, attr, value in self._attrs:
            setattr(m, attr, value)
        if self._routes is not None:
            self._routes.close()
        self._saved, self._attrs, self._routes = None, [], None

    def set(self, mask: np.ndarray | torch.Tensor) -> ChannelCut:
        """Cut every listed tensor to the channels of ``mask`` (``[N]`` 0/1, 1 = pruned)."""
        if self._saved is None:
            raise RuntimeError("ChannelCut.set outside its context (use `with ChannelCut(...) as cut`)")
        m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
        if m.shape != (self.n,):
            raise QpruneError(f"mask must have shape [{self.n}], got {list(m.shape)}")
        for i, ((t, dims), (_, base)) in enumerate(zip(self._plan, self._saved)):
            key = np.packbits(m[self._deps[i]]).tobytes()
            if key == self._last[i]:
                continue
            self._last[i] = key
            out = base
            for dim, owner, zeroed in dims:
                keep = (owner < 0) | ~m[np.maximum(owner, 0)]
                if keep.all():
                    continue
                if zeroed:
                    out = out.index_fill(dim, self._indices(~keep, base.device), 0.0)
                else:
                    out = out.index_select(dim, self._indices(keep, base.device))
            if out is not base and channels_last(base):
                out = out.contiguous(memory_format=torch.channels_last)
            t.data = out
        for mod in self._depthwise:
            mod.groups = mod.in_channels = mod.out_channels = int(mod.weight.shape[0])
        orig = {(id(mod), a): v for mod, a, v in self._attrs}
        for mod in self._grouped:  # whole groups only: the per-group widths stay
            mod.out_channels = int(mod.weight.shape[0])
            mod.groups = orig[(id(mod), "groups")] * mod.out_channels // orig[(id(mod), "out_channels")]
            mod.in_channels = mod.groups * int(mod.weight.shape[1])
        for mod in self._groupnorms:
            mod.num_channels = int(mod.weight.shape[0])
            mod.num_groups = orig[(id(mod), "num_groups")] * mod.num_channels // orig[(id(mod), "num_channels")]
        return self

    def _indices(self, keep: np.ndarray, device: torch.device) -> torch.Tensor:
        key = np.packbits(keep).tobytes() + keep.size.to_bytes(4, "little") + str(device).encode()
        idx = self._index.get(key)
        if idx is None:
            if len(self._index) > 4096:  # masks of a long search: keep the memory bounded
                self._index.clear()
            idx = self._index[key] = torch.from_numpy(np.flatnonzero(keep)).to(device)
        return idx


def _owned_by(kinds: np.ndarray, owner: np.ndarray) -> bool:
    """Whether every unit that owns indices of a tensor dim (``owner``: unit per index, -1 none) is
    of the kinds flagged in ``kinds``."""
    owned = owner[owner >= 0]
    return bool(owned.size) and bool(kinds[owned].all())


def _slice_owners(space: FilterSpace, tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[int, np.ndarray]]:
    """owner[name][dim][i]: the unit whose removal takes index i of that dim, -1 = always kept."""
    owners: dict[str, dict[int, np.ndarray]] = {}
    for u, unit in enumerate(space.units):
        for name, dim, idxs in unit.slices:
            if name not in tensors:
                raise QpruneError(f"model has no parameter {name!r} of the filter space")
            own = owners.setdefault(name, {}).setdefault(
                dim, np.full(tensors[name].shape[dim], -1, dtype=np.int64))
            ix = np.asarray(idxs, dtype=np.int64)
            if np.any(own[ix] >= 0):
                raise QpruneError(f"units overlap on {name!r} dim {dim}: cannot cut them apart")
            own[ix] = u
    return owners


def _add_running_stats(
    owners: dict[str, dict[int, np.ndarray]], tensors: dict[str, torch.Tensor], modules: Mapping[str, nn.Module],
) -> None:
    """Running statistics follow their norm layer's affine parameters (the space does not list them)."""
    for name in list(owners):
        path, _, leaf = name.rpartition(".")
        mod = modules.get(path)
        if leaf == "weight" and isinstance(mod, _NORMS) and 0 in owners[name]:
            for buf in ("running_mean", "running_var"):
                t = getattr(mod, buf, None)
                if isinstance(t, torch.Tensor):
                    full = f"{path}.{buf}"
                    tensors[full] = t
                    owners[full] = {0: owners[name][0]}


def channels_last(t: torch.Tensor) -> bool:
    """Whether a tensor is 4-D and laid out channels-last (not merely compatible with it)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
