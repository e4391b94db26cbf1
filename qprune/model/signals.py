"""Calibration signals for the QUBO terms, collected in ONE pass (forward + backward per batch).

Per unit ``i`` (a :class:`qprune.model.space.Unit`; multi-member units SUM over their members):

* ``l1``: mean |w| over the member filters' weights (biases excluded): Σ|w| / count, pooled over
  members. Needs no data.
* ``taylor``: ``(Σ_{w∈W_i} g_w w)²`` per batch (``taylor_abs=True``: ``|Σ g_w w|``), averaged over
  batches. ``W_i`` = the member filters' weights AND biases; ``g`` = ∂L/∂w of the batch loss.
* ``weight_fisher``: ``Σ_{w∈W_i} F_w w²`` with ``F_w`` the running average of ``g_w²`` over batches.
* ``channel_fisher``: a virtual gate ``m_i`` (all ones) multiplies the unit's channels at every
  gate position — the consumers' inputs, exactly where pruning zeroes the unit (see
  :mod:`qprune.model.masking`), so ``m_i = 0`` IS the pruned network. ``d_i = ∂L/∂m_i = Σ_positions
  Σ_{n,space} A ∂L/∂A`` (autograd of the gate, exact), divided by the batch size; with
  ``fisher_space="mean"`` also by the spatial size of the unit's activation site (the paper's
  "mean over batch and space"), which biases a global ranking against high-resolution layers, so
  it is not the default. ``I_CF = avg of d_i²``.
* ``gate_grads``: ``[samples x blocks, N]``, the same gate derivative for every calibration sample
  on its own, ``d_i(s) = ∂L_s/∂m_i``: every sample gets gates of its own (one backward per batch
  still gives all of them, since a sample's loss depends only on its own gates), and on a spatial
  map each sample's gates are split into a ``gate_grid`` x ``gate_grid`` grid of blocks, each block
  a row (``gate_grid=1``: one row per sample). Its empirical second moment is the gates' Fisher
  (:func:`qprune.qubo.providers.gate_fisher`); blocks give many more rows than units, which a
  well-conditioned estimate needs. Memory: ``8 bytes x rows x N``.
* ``activations``: per layer id, ``[units_in_layer, samples]``: each unit's channel at its
  activation site (``Unit.inputs[0]``, the consumer input with the most elements), adaptively
  average-pooled to ``activation_pool x activation_pool`` per input image (16 samples per image by
  default; linear inputs are pooled to ``activation_pool²`` bins), concatenated over images until
  ``max_activation_samples`` columns. Memory bound: ``4 bytes x N x max_activation_samples``
  (float32; N = units; 768 units x 4096 = 12.6 MB) plus one batch; float64 models keep float64.

"Averaged" means: the plain running mean over batches (``ema=None``) or an exponential moving
average ``s <- ema·s + (1-ema)·v`` started at the first batch's value (``ema`` in [0, 1)); the same
rule serves Taylor, ``F_w`` and the channel-Fisher squares. The model runs in eval mode (BatchNorm
uses its running statistics, dropout is off); its mode, and the ``requires_grad`` flags of the
parameters touched, are restored afterwards. Gradients come from ``torch.autograd.grad``: ``.grad``
fields of the model are never written. Only what ``needs`` asks for is computed.

The pass is split in three: hooks at the gate positions (:mod:`qprune.model.probes`), per-batch
accumulation (:mod:`qprune.model.accumulate`), and the finalisation into :class:`Signals` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from qprune.errors import QpruneError
from qprune.model.accumulate import GradientSums, Members
from qprune.model.modes import eval_mode
from qprune.model.probes import ActivationSites, ConsumerProbes
from qprune.model.units import FilterSpace

__all__ = ["ALL_SIGNALS", "Signals", "collect_signals"]

#: every name ``needs`` may contain
ALL_SIGNALS = frozenset({"l1", "taylor", "weight_fisher", "channel_fisher", "activations", "gate_grads"})
FISHER_SPACES = ("sum", "mean")  #: how the channel-Fisher derivative is reduced over space

Loss = Callable[[Any, Any], torch.Tensor]


@dataclass
class Signals:
    """Per-unit calibration signals (numpy float64 vectors in the order of ``space.units``).

    ``activations[layer_id]`` rows follow the order of that layer's units in ``space.units``.
    """

    l1: np.ndarray
    taylor: np.ndarray | None = None
    weight_fisher: np.ndarray | None = None
    channel_fisher: np.ndarray | None = None
    activations: dict[int, np.ndarray] | None = None  # layer id -> [units_in_layer, samples]
    gate_grads: np.ndarray | None = None  # [samples x blocks, N] per-sample gate derivatives
    n_batches: int = 0
    loss: float | None = None  # mean calibration loss over the batches

    def missing(self, names: Iterable[str]) -> list[str]:
        """The signals among ``names`` that were not collected, sorted."""
        return sorted(n for n in names if getattr(self, n, None) is None)

    def vector(self, name: str) -> np.ndarray:
        """A per-unit signal as float64; a ``QpruneError`` naming it when it was not collected."""
        if self.missing([name]):
            raise QpruneError(f"signal {name!r} was not collected (collect_signals(needs=...) names what to collect)")
        return np.asarray(getattr(self, name), dtype=np.float64)


def collect_signals(
    model: nn.Module,
    space: FilterSpace,
    batches: Iterable[Any],
    loss_fn: Loss,
    *,
    needs: Iterable[str] = ALL_SIGNALS,
    ema: float | None = None,
    taylor_abs: bool = False,
    fisher_space: str = "sum",
    max_activation_samples: int = 4096,
    activation_pool: int = 4,
    gate_grid: int = 4,
    mask: np.ndarray | None = None,
    progress: bool = True,
) -> Signals:
    """Collect the signals named in ``needs`` over ``batches`` of ``(inputs, target)``.

    Args:
        model: the unpruned model the space was built on (any device; batches are moved to it).
        space: its :class:`~qprune.model.units.FilterSpace`.
        batches: iterable of ``(inputs, target)``; ``inputs`` a tensor or a tuple of tensors.
        loss_fn: ``loss_fn(output, target)`` -> scalar tensor (minimised).
        needs: subset of :data:`ALL_SIGNALS`; ``l1`` is always filled (it needs no data).
        ema: None = plain mean over batches; else the EMA decay in [0, 1).
        taylor_abs: ``|Σ g w|`` instead of its square.
        max_activation_samples: columns kept per layer for ``activations``.
        activation_pool: spatial pooling size per image for ``activations``.
        fisher_space: ``"sum"`` (exact gate derivative, default) or ``"mean"`` (also divided by
            the spatial size of the activation site) for the channel-Fisher signal.
        gate_grid: blocks per side of every sample's gates for ``gate_grads`` (1: one row per sample).
        mask: bool/0-1 [N] (1 = pruned): collect on the model with these units already gated off
            (every gradient is then taken at that point; None: the unpruned model).
        progress: tqdm bar over the batches.

    Raises:
        QpruneError: a bad option, a model that does not match ``space``, no batches, or a
            batch / loss of the wrong form.
    """
    needs = _check_options(needs, ema, fisher_space, max_activation_samples, activation_pool)
    if isinstance(gate_grid, bool) or int(gate_grid) < 1:
        raise QpruneError(f"gate_grid must be an integer >= 1, got {gate_grid!r}")
    if mask is not None and np.asarray(mask).shape != (space.N,):
        raise QpruneError(f"mask has shape {np.asarray(mask).shape}; the space has {space.N} units")
    members = Members(model, space)
    l1 = members.l1()
    if not needs - {"l1"}:
        return Signals(l1=l1)
    sums = GradientSums(
        members, members.params(), ema=ema, taylor="taylor" in needs, weight_fisher="weight_fisher" in needs,
        channel_fisher="channel_fisher" in needs, taylor_abs=taylor_abs, fisher_space=fisher_space,
        gate_grads="gate_grads" in needs,
    )
    acts = (ActivationSites(space, int(activation_pool), int(max_activation_samples))
            if "activations" in needs else None)
    probes = ConsumerProbes(model, space, acts, gates=sums.needs_gates or mask is not None,
                            per_sample=int(gate_grid) if sums.want_rows else None, open_mask=mask)
    losses = _calibrate(model, batches, loss_fn, probes, sums, progress)
    return Signals(
        l1=l1,
        taylor=sums.taylor(),
        weight_fisher=sums.weight_fisher(),
        channel_fisher=sums.channel_fisher(),
        activations=acts.result() if acts is not None else None,
        gate_grads=sums.gate_grads(),
        n_batches=len(losses),
        loss=float(np.mean(losses)) if losses else None,
    )


def _check_options(
    needs: Iterable[str], ema: float | None, fisher_space: str, max_activation_samples: int, activation_pool: int,
) -> frozenset[str]:
    """``needs`` as a frozenset, after every option has been checked."""
    if fisher_space not in FISHER_SPACES:
        raise QpruneError(f"fisher_space must be 'sum' or 'mean', got {fisher_space!r}")
    needs = frozenset(needs)
    unknown = needs - ALL_SIGNALS
    if unknown:
        raise QpruneError(f"unknown signals {sorted(unknown)}; choose from {sorted(ALL_SIGNALS)}")
    if ema is not None and not (0.0 <= float(ema) < 1.0):
        raise QpruneError(f"ema must be None or in [0, 1), got {ema!r}")
    if int(max_activation_samples) < 2:
        raise QpruneError(f"max_activation_samples must be >= 2, got {max_activation_samples!r}")
    if int(activation_pool) < 1:
        raise QpruneError(f"activation_pool must be >= 1, got {activation_pool!r}")
    return needs


def _calibrate(
    model: nn.Module, batches: Iterable[Any], loss_fn: Loss, probes: ConsumerProbes, sums: GradientSums,
    progress: bool,
) -> list[float]:
    """Run every batch through the hooked model (eval mode); the losses, one per batch.

    The model's mode and the ``requires_grad`` flags of the member parameters are restored, and
    the hooks removed, whatever happens.
    """
    params = sums.params
    flags = [p.requires_grad for p in params]
    losses: list[float] = []
    try:
        with eval_mode(model, (probes,)):
            for p in params:
                p.requires_grad_(sums.needs_param_grads)
            total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
            for batch in tqdm(batches, total=total, desc="calibration signals", disable=not progress, leave=False):
                losses.append(_step(model, batch, loss_fn, probes, sums))
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    if not losses:
        raise QpruneError("collect_signals got no calibration batches")
    return losses


def _step(model: nn.Module, batch: Any, loss_fn: Loss, probes: ConsumerProbes, sums: GradientSums) -> float:
    """One batch: forward (and backward where gradients are needed); returns the batch loss."""
    inputs, target = _split(batch)
    params = sums.params
    device = params[0].device if params else torch.device("cpu")
    xs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
    target = target.to(device) if isinstance(target, torch.Tensor) else target
    bsz = next((x.shape[0] for x in xs if isinstance(x, torch.Tensor)), 1)
    probes.virtual.clear()
    probes.batch = int(bsz)
    if not (sums.needs_param_grads or sums.needs_gates):
        with torch.no_grad():
            out = model(*xs)
            return float(_scalar(loss_fn(out, target)))
    with torch.enable_grad():
        out = model(*xs)
        loss = _scalar(loss_fn(out, target))
        wrt = (params if sums.needs_param_grads else []) + (probes.gate_tensors() if sums.needs_gates else [])
        grads = torch.autograd.grad(loss, wrt, allow_unused=True) if wrt else ()
    value = float(loss.detach())
    sums.update(grads, probes, bsz)
    return value


def _split(batch: Any) -> tuple[tuple[Any, ...], Any]:
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        inputs, target = batch
    else:
        raise QpruneError("calibration batches must be (inputs, target) pairs")
    if isinstance(inputs, torch.Tensor):
        return (inputs,), target
    return tuple(inputs), target


def _scalar(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise QpruneError("loss_fn(out, target) must return a scalar tensor")
    return loss.reshape(())
