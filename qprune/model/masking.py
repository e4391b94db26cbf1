"""Apply a mask to a model: reversible gates (one mask or a batch of masks) or physical removal.

Gate placement: a pruned unit is zeroed at the INPUT of every consumer (``Unit.inputs``: the next
convs / linears, after BatchNorm, activations, pooling and residual adds), because that is exactly
where physical removal takes the channel away. Zeroing a conv's raw output would not be the same
(``BN(0) = beta - mean·gamma/sigma`` is not zero). With the exclusions of :mod:`qprune.model.discovery`, the
gated model therefore computes the same function as the physically pruned one (up to float
rounding: summing fewer terms vs. summing zeros).

* :class:`Gates` - forward pre-hooks on the consumers; ``set(mask)`` with one mask ``[N]``, or with
  ``B`` masks ``[B, N]`` to score them all in ONE forward over a batch replicated ``B`` times
  (sample ``b·n + j`` sees mask ``b``); exact per sample because every layer in between acts per
  sample (models in eval mode).
* :func:`apply_mask` - ``mode="gate"`` attaches Gates to the model in place (undo with
  :func:`remove_gates`); ``mode="remove"`` returns a NEW, physically smaller deep copy, pruned with
  torch-pruning's dependency groups (plus qprune's PixelShuffle pruner).
* :func:`equivalence_error` - max |gated − removed| on given inputs, the check behind
  ``build_space(verify=True)`` (:mod:`qprune.model.verification`) and the tests.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model.graph import build_dependency_graph
from qprune.model.tensors import as_tuple, iter_tensors, map_tensors
from qprune.model.units import FilterSpace, MaskLike

__all__ = ["GateHook", "Gates", "apply_mask", "equivalence_error", "map_tensors", "prune_model", "remove_gates"]

_ATTR = "_qprune_gates"


class GateHook:
    """Forward pre-hook of one consumer; a class (not a closure) so copies can be found and stripped."""

    def __init__(self, gates: Gates, path: str, channel_dim: int) -> None:
        self.gates = gates
        self.path = path
        self.channel_dim = channel_dim  # 1 for convs, -1 for linears

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        return self.gates._gate_input(self, args)


class Gates:
    """Per-consumer input gates for the units of ``space`` on ``model`` (hooks; the model is not copied).

    ``set(mask)`` with a bool/0-1 array ``[N]`` (True = pruned) gates every sample alike;
    ``set(masks)`` with ``[B, N]`` expects inputs whose batch is the original batch repeated ``B``
    times (``x.repeat(B, 1, ...)``) and gates sample ``b·n + j`` with mask ``b``. :meth:`run` does the
    replication and returns outputs shaped ``[B, n, ...]``. ``clear()`` opens every gate;
    ``remove()`` takes the hooks off. Also a context manager (removes on exit).
    """

    def __init__(self, model: nn.Module, space: FilterSpace) -> None:
        self.model = model
        self.space = space
        self.enabled = True
        modules = dict(model.named_modules())
        n = space.N
        self._slots: dict[str, torch.Tensor] = {}
        for path, cin in space.consumer_channels.items():
            mod = modules.get(path)
            if mod is None:
                raise QpruneError(f"model has no module {path!r} of the filter space (a different architecture?)")
            actual = mod.in_channels if isinstance(mod, nn.modules.conv._ConvNd) else getattr(mod, "in_features", None)
            if actual != cin:
                raise QpruneError(f"module {path!r} has {actual} input channels, the filter space expects {cin} "
                                  "(gate the unpruned model the space was built on)")
            self._slots[path] = torch.full((cin,), n, dtype=torch.long)
        for i, u in enumerate(space.units):
            for path, c in u.inputs:
                self._slots[path][c] = i
        self._gate: dict[str, torch.Tensor | None] = {p: None for p in self._slots}
        self._cache: dict[tuple, torch.Tensor] = {}
        self.B: int | None = None  # None: one mask for every sample
        self._hooks: list[tuple[nn.Module, GateHook]] = []
        for path in self._slots:
            mod = modules[path]
            hook = GateHook(self, path, 1 if isinstance(mod, nn.modules.conv._ConvNd) else -1)
            mod.register_forward_pre_hook(hook)
            self._hooks.append((mod, hook))

    # ----- masks
    def set(self, masks: np.ndarray | torch.Tensor | Sequence) -> Gates:
        """Gate with one mask ``[N]`` or a batch ``[B, N]`` (True/1 = pruned)."""
        m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
        n = self.space.N
        if m.dim() not in (1, 2) or m.shape[-1] != n:
            raise QpruneError(f"masks must have shape [{n}] or [B, {n}], got {list(m.shape)}")
        keep = 1.0 - m.detach().to(torch.float32).cpu()
        if m.dim() == 1:
            keep = torch.cat([keep, torch.ones(1)])
            self.B = None
        else:
            keep = torch.cat([keep, torch.ones(m.shape[0], 1)], dim=1)
            self.B = int(m.shape[0])
        for path, slots in self._slots.items():
            g = keep[..., slots]
            # skip the multiply where this consumer sees nothing pruned
            self._gate[path] = None if bool((g == 1).all()) else g
        self._cache.clear()
        return self

    def clear(self) -> Gates:
        """Open every gate (the model computes its unpruned function)."""
        self._gate = {p: None for p in self._slots}
        self._cache.clear()
        self.B = None
        return self

    def remove(self) -> None:
        """Take the hooks off the model (idempotent)."""
        for mod, hook in self._hooks:
            for key, h in list(mod._forward_pre_hooks.items()):
                if h is hook:
                    del mod._forward_pre_hooks[key]
        self._hooks = []
        if getattr(self.model, _ATTR, None) is self:
            delattr(self.model, _ATTR)

    def __enter__(self) -> Gates:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ----- forward
    def run(self, inputs: Any, masks: np.ndarray | torch.Tensor | None = None) -> Any:
        """Forward ``inputs`` (batch n) under ``masks`` [B, N] in one pass; tensors out as [B, n, ...].

        With ``masks=None`` the masks last given to :meth:`set` are used. A 1-D mask runs unreplicated.
        """
        if masks is not None:
            self.set(masks)
        xs = as_tuple(inputs)
        if self.B is None:
            return self.model(*xs)
        b = self.B
        rep = tuple(x.repeat(b, *([1] * (x.dim() - 1))) if isinstance(x, torch.Tensor) else x for x in xs)
        out = self.model(*rep)
        return map_tensors(out, lambda t: t.reshape(b, t.shape[0] // b, *t.shape[1:]))

    def _gate_input(self, hook: GateHook, args: tuple) -> tuple | None:
        g = self._gate.get(hook.path)
        if g is None or not self.enabled or not args:
            return None
        x = args[0]
        if not isinstance(x, torch.Tensor):
            return None
        c = x.shape[hook.channel_dim]
        if g.shape[-1] != c:
            raise QpruneError(f"gate of {hook.path!r} has {g.shape[-1]} channels but its input has {c}")
        if g.dim() == 1:
            key = (hook.path, x.dtype, x.device, x.dim())
            gx = self._cache.get(key)
            if gx is None:
                shape = [1] * x.dim()
                shape[hook.channel_dim] = c
                gx = self._cache[key] = g.to(device=x.device, dtype=x.dtype).view(shape)
        else:
            b = g.shape[0]
            if x.shape[0] % b:
                raise QpruneError(f"batched gates: input batch {x.shape[0]} at {hook.path!r} is not a multiple "
                                  f"of the number of masks {b} (replicate the batch, or use Gates.run)")
            n = x.shape[0] // b
            key = (hook.path, x.dtype, x.device, x.dim(), n)
            gx = self._cache.get(key)
            if gx is None:
                rep = g.to(device=x.device, dtype=x.dtype).repeat_interleave(n, dim=0)  # [B*n, C]
                if hook.channel_dim == 1:
                    gx = rep.view(b * n, c, *([1] * (x.dim() - 2)))
                else:
                    gx = rep.view(b * n, *([1] * (x.dim() - 2)), c)
                self._cache[key] = gx
        return (x * gx, *args[1:])


def _strip_gates(model: nn.Module) -> None:
    """Remove every qprune gate hook (e.g. the ones a deepcopy of a gated model carries)."""
    for mod in model.modules():
        for key, h in list(mod._forward_pre_hooks.items()):
            if isinstance(h, GateHook):
                del mod._forward_pre_hooks[key]
    if _ATTR in model.__dict__:
        delattr(model, _ATTR)


def apply_mask(
    model: nn.Module,
    space: FilterSpace,
    mask: MaskLike,
    mode: str = "gate",
    example_inputs: Any = None,
) -> nn.Module:
    """Prune the units in ``mask`` (True/1 = pruned; or ``{label: 0/1}``).

    ``mode="gate"``: attach (or update) :class:`Gates` on ``model`` IN PLACE and return it; the gates
    are at ``model._qprune_gates``; :func:`remove_gates` undoes them. ``mode="remove"``: return a new,
    physically smaller copy (see :func:`prune_model`); ``model`` is left as it is.
    """
    if mode == "remove":
        return prune_model(model, space, mask, example_inputs)
    if mode != "gate":
        raise QpruneError(f"mode must be 'gate' or 'remove', got {mode!r}")
    m = space.check_mask(mask)
    gates = model.__dict__.get(_ATTR)
    if gates is None or gates.space is not space:
        if gates is not None:
            gates.remove()
        gates = Gates(model, space)
        model.__dict__[_ATTR] = gates
    gates.set(m)
    return model


def remove_gates(model: nn.Module) -> nn.Module:
    """Undo ``apply_mask(..., mode="gate")``; returns the model."""
    gates = model.__dict__.get(_ATTR)
    if gates is not None:
        gates.remove()
    return model


def prune_model(
    model: nn.Module,
    space: FilterSpace,
    mask: MaskLike,
    example_inputs: Any = None,
) -> nn.Module:
    """A deep copy of ``model`` with the units in ``mask`` physically removed.

    One torch-pruning group per layer (the root's pruned channels) is pruned; the dependency graph
    couples every member, BN, per-channel parameter and consumer slice exactly as
    :func:`qprune.model.space.build_space` saw them. ``example_inputs`` (for re-tracing) default to random
    tensors of the shapes the space was built with. Gate hooks on ``model`` are not copied.
    """
    m = space.check_mask(mask)
    new = copy.deepcopy(model)
    _strip_gates(new)
    if not m.any():
        return new
    inputs = as_tuple(example_inputs) if example_inputs is not None else space.example_inputs()
    try:
        device = next(new.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
    flags = {n: p.requires_grad for n, p in new.named_parameters()}
    dg = build_dependency_graph(new, inputs)
    modules = dict(new.named_modules())
    lids = space.layer_ids
    for lid, layer in enumerate(space.layers):
        sel = np.flatnonzero(m & (lids == lid))
        if not sel.size:
            continue
        root = modules[layer]
        idxs = sorted({c for i in sel for name, c in space.units[i].members if name == layer})
        pruner = dg.get_pruner_of_module(root)
        dg.get_pruning_group(root, pruner.prune_out_channels, idxs).prune()
    for n, p in new.named_parameters():
        if n in flags:
            p.requires_grad_(flags[n])
    got = sum(p.numel() for p in new.parameters())
    want = space.predicted_params(m)
    if got != want:
        warnings.warn(f"pruned model has {got} parameters, the filter space predicted {want}", RuntimeWarning,
                      stacklevel=2)
    return new


def equivalence_error(
    model: nn.Module,
    space: FilterSpace,
    mask: MaskLike,
    example_inputs: Any,
) -> tuple[float, float]:
    """``(max |gated − removed|, max |gated|)`` over all output tensors, both models in eval mode."""
    inputs = as_tuple(example_inputs)
    pruned = prune_model(model, space, mask, inputs)
    others = [h.gates for mod in model.modules() for h in mod._forward_pre_hooks.values()
              if isinstance(h, GateHook)]
    was_training = model.training
    gates = Gates(model, space).set(space.check_mask(mask))
    try:
        for g in others:
            g.enabled = False
        model.eval()
        pruned.eval()
        with torch.no_grad():
            a = list(iter_tensors(model(*inputs)))
            b = list(iter_tensors(pruned(*inputs)))
    finally:
        gates.remove()
        for g in others:
            g.enabled = True
        model.train(was_training)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise QpruneError("removed model's outputs have other shapes than the gated model's")
    err = max((float((x - y).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)
    scale = max((float(x.abs().max()) for x in a if x.numel()), default=0.0)
    return err, scale


# Old private names, still imported by qprune.refine.scoring (and by older callers).
_GateHook = GateHook
_tensors = iter_tensors
