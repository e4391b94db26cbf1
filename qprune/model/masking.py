"""Apply a mask to a model: reversible gates (one mask or a batch of masks) or physical removal.

Gate placement: a pruned unit is zeroed at the INPUT of every consumer (``Unit.inputs``: the next
convs / linears, after BatchNorm, activations, pooling and residual adds), because that is exactly
where physical removal takes the channel away. Zeroing a conv's raw output would not be the same
(``BN(0) = beta - mean·gamma/sigma`` is not zero). With the exclusions of :mod:`qprune.model.discovery`, the
gated model therefore computes the same function as the physically pruned one (up to float
rounding: summing fewer terms vs. summing zeros).

Residual-branch units (:mod:`qprune.model.residual`) are zeroed at the OUTPUT of their branch end
(``Unit.outputs``, forward hooks), which is exactly what removal adds into the trunk; attention
heads at the output projection's input columns, with the attention module's forward routed so
that the projection runs as a module (:mod:`qprune.model.attention`).

* :class:`Gates` - forward pre-hooks on the consumers (and forward hooks on branch ends);
  ``set(mask)`` with one mask ``[N]``, or with
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
import gc
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model import attention
from qprune.model.graph import build_dependency_graph, paused_gc
from qprune.model.modes import eval_mode
from qprune.model.residual import prune_branch
from qprune.model.tensors import as_tuple, iter_tensors, map_tensors
from qprune.model.units import FilterSpace, MaskLike

__all__ = [
    "GateHook", "Gates", "OutputGateHook", "apply_mask", "equivalence_error", "map_tensors", "prune_model",
    "remove_gates",
]

_ATTR = "_qprune_gates"


class GateHook:
    """Forward pre-hook of one consumer; a class (not a closure) so copies can be found and stripped."""

    def __init__(self, gates: Gates, path: str, channel_dim: int) -> None:
        self.gates = gates
        self.path = path
        self.channel_dim = channel_dim  # 1 for convs, -1 for linears

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        return self.gates._gate_input(self, args)


class OutputGateHook(GateHook):
    """Forward hook of one branch end: zeroes the pruned channels of its output."""

    def __call__(self, module: nn.Module, args: tuple, output: Any = None) -> Any:  # type: ignore[override]
        if not isinstance(output, torch.Tensor):
            return None
        return self.gates._apply(self.path, output, self.channel_dim, self.gates._out_gate)


def _channel_dim(mod: nn.Module) -> int:
    """Where a module's channels are: dim 1 for convs and norms, the last dim for linears."""
    return -1 if isinstance(mod, nn.Linear) else 1


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
        self._out_slots: dict[str, torch.Tensor] = {}
        for path, cout in space.producer_channels.items():
            if path not in modules:
                raise QpruneError(f"model has no module {path!r} of the filter space (a different architecture?)")
            self._out_slots[path] = torch.full((cout,), n, dtype=torch.long)
        for i, u in enumerate(space.units):
            for path, c in u.inputs:
                self._slots[path][c] = i
            for path, c in u.outputs:
                self._out_slots[path][c] = i
        self._gate: dict[str, torch.Tensor | None] = {p: None for p in self._slots}
        self._out_gate: dict[str, torch.Tensor | None] = {p: None for p in self._out_slots}
        self._cache: dict[tuple, torch.Tensor] = {}
        self.B: int | None = None  # None: one mask for every sample
        self._hooks: list[tuple[nn.Module, GateHook]] = []
        for path in self._slots:
            mod = modules[path]
            hook = GateHook(self, path, 1 if isinstance(mod, nn.modules.conv._ConvNd) else -1)
            mod.register_forward_pre_hook(hook)
            self._hooks.append((mod, hook))
        for path in self._out_slots:
            mod = modules[path]
            out_hook = OutputGateHook(self, path, _channel_dim(mod))
            mod.register_forward_hook(out_hook)
            self._hooks.append((mod, out_hook))
        # heads are gated at the output projection, which must then run as a module
        self._routes = attention.routed([modules[p] for p, kind in space.attention.items()
                                         if attention.ADAPTERS.get(kind) and p in modules])

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
        for table, slots_of in ((self._gate, self._slots), (self._out_gate, self._out_slots)):
            for path, slots in slots_of.items():
                g = keep[..., slots]
                # skip the multiply where this consumer sees nothing pruned
                table[path] = None if bool((g == 1).all()) else g
        self._cache.clear()
        return self

    def clear(self) -> Gates:
        """Open every gate (the model computes its unpruned function)."""
        self._gate = {p: None for p in self._slots}
        self._out_gate = {p: None for p in self._out_slots}
        self._cache.clear()
        self.B = None
        return self

    def remove(self) -> None:
        """Take the hooks off the model (idempotent)."""
        for mod, hook in self._hooks:
            for hooks in (mod._forward_pre_hooks, mod._forward_hooks):
                for key, h in list(hooks.items()):
                    if h is hook:
                        del hooks[key]
        self._hooks = []
        self._routes.close()
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
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        gx = self._apply(hook.path, args[0], hook.channel_dim, self._gate)
        return None if gx is None else (gx, *args[1:])

    def _apply(self, path: str, x: torch.Tensor, channel_dim: int, table: dict[str, torch.Tensor | None]) -> Any:
        """``x`` times the gates of ``path`` from ``table`` (None: nothing gated there)."""
        g = table.get(path)
        if g is None or not self.enabled:
            return None
        out = table is self._out_gate
        c = x.shape[channel_dim]
        if g.shape[-1] != c:
            raise QpruneError(f"gate of {path!r} has {g.shape[-1]} channels but its {'output' if out else 'input'} "
                              f"has {c}")
        if g.dim() == 1:
            key = (path, out, x.dtype, x.device, x.dim())
            gx = self._cache.get(key)
            if gx is None:
                shape = [1] * x.dim()
                shape[channel_dim] = c
                gx = self._cache[key] = g.to(device=x.device, dtype=x.dtype).view(shape)
        else:
            b = g.shape[0]
            if x.shape[0] % b:
                raise QpruneError(f"batched gates: input batch {x.shape[0]} at {path!r} is not a multiple "
                                  f"of the number of masks {b} (replicate the batch, or use Gates.run)")
            n = x.shape[0] // b
            key = (path, out, x.dtype, x.device, x.dim(), n)
            gx = self._cache.get(key)
            if gx is None:
                rep = g.to(device=x.device, dtype=x.dtype).repeat_interleave(n, dim=0)  # [B*n, C]
                if channel_dim == 1:
                    gx = rep.view(b * n, c, *([1] * (x.dim() - 2)))
                else:
                    gx = rep.view(b * n, *([1] * (x.dim() - 2)), c)
                self._cache[key] = gx
        return x * gx


def _strip_gates(model: nn.Module) -> None:
    """Remove every qprune gate hook (e.g. the ones a deepcopy of a gated model carries)."""
    for mod in model.modules():
        for hooks in (mod._forward_pre_hooks, mod._forward_hooks):
            for key, h in list(hooks.items()):
                if isinstance(h, GateHook):
                    del hooks[key]
    attention.strip_routes(model)
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
    with paused_gc():  # the graph's many small objects live until the cut is done
        dg = build_dependency_graph(new, inputs)
        modules = dict(new.named_modules())
        lids = space.layer_ids
        later: list[tuple[str, list[int]]] = []  # branch and head layers: cut after every group
        for lid, layer in enumerate(space.layers):
            sel = np.flatnonzero(m & (lids == lid))
            if not sel.size:
                continue
            if space.units[sel[0]].kind != "channel":
                later.append((layer, [int(i) for i in sel]))
                continue
            _prune_channels(dg, modules, layer, [space.units[i] for i in sel])
        for layer, sel in later:
            units = [space.units[i] for i in sel]
            if units[0].kind == "head":
                attention.prune_heads(new, layer, [u.channel for u in units])
            else:
                e = units[0].outputs[0][0]
                prune_branch(new, layer, e, [u.channel for u in units], space.producer_channels[e],
                             -1 if isinstance(modules[e], nn.Linear) else 1)
    # the trace's autograd nodes hold the uncut weights in reference cycles: free them now, not at
    # the collector's leisure (a model's worth of memory per cut otherwise)
    del dg, modules
    gc.collect()
    for n, p in new.named_parameters():
        if n in flags:
            p.requires_grad_(flags[n])
    _check_runs_after_removal(new, inputs)
    got = sum(p.numel() for p in new.parameters())
    want = space.predicted_params(m)
    if got != want:
        warnings.warn(f"pruned model has {got} parameters, the filter space predicted {want}", RuntimeWarning,
                      stacklevel=2)
    return new


MAX_LINE = 240  #: characters of a one-line error that quotes what the model raised


def run_failure(model: nn.Module, inputs: tuple) -> tuple[str, Exception] | None:
    """One forward of ``model`` (eval mode, no grad, its mode restored): None when it runs, else the
    innermost module that raised (the model's class name when none did) and what it raised."""
    stack: list[str] = []

    def leave(*_: Any) -> None:  # a forward hook's return value would replace the module's output
        stack.pop()

    hooks = [h for n, mod in model.named_modules() if n
             for h in (mod.register_forward_pre_hook(lambda *_, n=n: stack.append(n)),
                       mod.register_forward_hook(leave))]
    try:
        with eval_mode(model, hooks), torch.no_grad():
            model(*inputs)
        return None
    except Exception as exc:  # the model's own error: the caller reports it in one line
        return (stack[-1] if stack else type(model).__name__), exc


@contextmanager
def isolated(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode with the gates already on it (``apply_mask(..., mode="gate")``) switched
    off, so that only gates set inside the block act; all is put back on exit."""
    others = {id(h.gates): h.gates for mod in model.modules()
              for hooks in (mod._forward_pre_hooks, mod._forward_hooks)
              for h in hooks.values() if isinstance(h, GateHook)}
    enabled = {key: g.enabled for key, g in others.items()}
    try:
        for g in others.values():
            g.enabled = False
        with eval_mode(model):
            yield model
    finally:
        for key, g in others.items():
            g.enabled = enabled[key]


def failure_line(head: str, exc: Exception, tail: str = "") -> str:
    """``head``, the exception's type and first line, ``tail``: cut to fit :data:`MAX_LINE`."""
    head = f"{head}{type(exc).__name__}: "
    first = (str(exc).strip().splitlines() or [""])[0]
    room = max(20, MAX_LINE - len(head) - len(tail))
    first = first if len(first) <= room else first[:room - 3].rstrip() + "..."
    return head + first + tail


def _check_runs_after_removal(model: nn.Module, inputs: tuple) -> None:
    """One forward of the cut model; where the cut left shapes a module cannot take (an op the
    dependency tracer did not follow), a one-line error naming the innermost module that failed."""
    failure = run_failure(model, inputs)
    if failure is not None:
        where, exc = failure
        raise QpruneError(failure_line(f"removing these units breaks the model at {where} (", exc,
                                       "); exclude the layers that feed it")) from exc


def _prune_channels(dg: Any, modules: dict[str, nn.Module], layer: str, units: Sequence[Any]) -> None:
    """Prune one layer's ``"channel"`` units: the root's group, then the out-channel groups of
    members it does not reach (a grouped conv's output groups: its input side keeps no link)."""
    names = {mod: n for n, mod in modules.items()}
    root = modules[layer]
    idxs = sorted({c for u in units for name, c in u.members if name == layer})
    group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs)
    reached: dict[str, set[int]] = {}
    for it in group.items:
        if dg.is_out_channel_pruning_fn(it.dep.handler) and it.dep.target.module in names:
            reached.setdefault(names[it.dep.target.module], set()).update(int(i) for i in it.idxs)
    rest: dict[str, set[int]] = {}
    for u in units:
        for name, c in u.members:
            if c not in reached.get(name, set()):
                rest.setdefault(name, set()).add(c)
    group.prune()
    for name, chans in rest.items():
        mod = modules[name]
        dg.get_pruning_group(mod, dg.get_pruner_of_module(mod).prune_out_channels, sorted(chans)).prune()


def equivalence_error(
    model: nn.Module,
    space: FilterSpace,
    mask: MaskLike,
    example_inputs: Any,
) -> tuple[float, float]:
    """``(max |gated − removed|, max |gated|)`` over all output tensors, both models in eval mode."""
    inputs = as_tuple(example_inputs)
    pruned = prune_model(model, space, mask, inputs)
    with isolated(model):
        gates = Gates(model, space).set(space.check_mask(mask))
        with eval_mode(model, (gates,)), eval_mode(pruned), torch.no_grad():
            a = list(iter_tensors(model(*inputs)))
            b = list(iter_tensors(pruned(*inputs)))
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise QpruneError("removed model's outputs have other shapes than the gated model's")
    err = max((float((x - y).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)
    scale = max((float(x.abs().max()) for x in a if x.numel()), default=0.0)
    return err, scale


# Old private names, still imported by qprune.refine.scoring.scorer (and by older callers).
_GateHook = GateHook
_tensors = iter_tensors
