"""Per-batch accumulation of the gradient signals, and their reduction to one value per unit.

Used by :func:`qprune.model.signals.collect_signals`. Everything here is float64 on the CPU once it
is per unit; per-parameter running averages (the weight-Fisher ``F_w``) stay on the model's device.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model.probes import ConsumerProbes
from qprune.model.units import FilterSpace, Slice, Unit

__all__ = ["GradientSums", "Members", "Running", "per_channel_sum"]


class Running:
    """Plain running mean (``decay=None``) or an EMA ``s <- decay·s + (1-decay)·v`` started at the first value."""

    def __init__(self, decay: float | None) -> None:
        self.decay = decay
        self.t = 0
        self.value: torch.Tensor | None = None

    def update(self, v: torch.Tensor) -> None:
        """Fold in one batch's value."""
        self.t += 1
        if self.value is None:
            self.value = v.detach().clone()
        elif self.decay is None:
            self.value += (v - self.value) / self.t
        else:
            self.value.mul_(self.decay).add_(v, alpha=1.0 - self.decay)


def per_channel_sum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over every dim but ``dim`` -> [t.shape[dim]]."""
    dims = [d for d in range(t.dim()) if d != dim]
    return t.sum(dim=dims) if dims else t


def _member_filters(u: Unit, modules: Mapping[str, nn.Module]) -> list[Slice]:
    """A unit's filters from its members' output rows (spaces saved without ``Unit.filters``)."""
    out: list[Slice] = []
    for path, c in u.members:
        mod = modules.get(path)
        if mod is None or not isinstance(getattr(mod, "weight", None), torch.Tensor):
            raise QpruneError(f"model has no filter module {path!r} of the filter space")
        out.append((f"{path}.weight", 1 if getattr(mod, "transposed", False) else 0, (c,)))
        if getattr(mod, "bias", None) is not None:
            out.append((f"{path}.bias", 0, (c,)))
    return out


class Members:
    """The units' own filter weights and biases (``Unit.filters``), for vectorised per-unit sums.

    ``entries`` holds ``(index into params(), dim, indices along dim, their units)`` per
    parameter and dim: a conv's output rows and bias, a head's q/k/v rows, a branch end's rows.
    """

    def __init__(self, model: nn.Module, space: FilterSpace) -> None:
        modules = dict(model.named_modules())
        named = dict(model.named_parameters())
        rows: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
        for i, u in enumerate(space.units):
            for name, d, ix in (u.filters or _member_filters(u, modules)):
                rows[(name, int(d))].extend((int(c), i) for c in ix)
        self.n = space.N
        self._params: list[nn.Parameter] = []
        index: dict[str, int] = {}
        self.entries: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
        for (name, d), pairs in rows.items():
            p = named.get(name)
            if p is None:
                raise QpruneError(f"model has no parameter {name!r} of the filter space")
            if name not in index:
                index[name] = len(self._params)
                self._params.append(p)
            ch = torch.tensor([c for c, _ in pairs], dtype=torch.long, device=p.device)
            un = torch.tensor([i for _, i in pairs], dtype=torch.long, device=p.device)
            self.entries.append((index[name], d, ch, un))

    def params(self) -> list[nn.Parameter]:
        """The parameters the filters live in (each once)."""
        return list(self._params)

    def scatter(self, per_param: Sequence[torch.Tensor]) -> torch.Tensor:
        """float64 [N]: per unit, the sum over its filters' elements of ``per_param`` (tensors
        shaped like :meth:`params`)."""
        acc = torch.zeros(self.n, dtype=torch.float64)
        sums: dict[tuple[int, int], torch.Tensor] = {}
        for pi, d, ch, un in self.entries:
            v = sums.get((pi, d))
            if v is None:
                v = sums[(pi, d)] = per_channel_sum(per_param[pi].detach(), d)
            acc.index_add_(0, un.cpu(), v[ch].double().cpu())
        return acc

    def l1(self) -> np.ndarray:
        """float64 [N]: mean |w| over the units' filter weights (biases and other vectors excluded)."""
        with torch.no_grad():
            absw = [p.detach().abs() if p.dim() >= 2 else torch.zeros_like(p) for p in self._params]
            ones = [torch.ones_like(p) if p.dim() >= 2 else torch.zeros_like(p) for p in self._params]
            return (self.scatter(absw) / self.scatter(ones)).numpy()


class GradientSums:
    """Running Taylor, weight-Fisher and channel-Fisher sums over calibration batches.

    Args:
        members: the units' filters; ``params`` are ``members.params()``.
        ema: None = plain mean over batches; else the EMA decay.
        taylor, weight_fisher, channel_fisher: which signals to accumulate.
        gate_grads: keep every sample's gate derivatives (the probes' per-sample rows, times the
            batch size: the derivative of each sample's own loss when the loss is a batch mean).
        taylor_abs: ``|Σ g w|`` instead of its square.
        fisher_space: ``"sum"`` or ``"mean"`` (channel-Fisher divided by the site's spatial size).
    """

    def __init__(
        self, members: Members, params: list[nn.Parameter], *, ema: float | None, taylor: bool,
        weight_fisher: bool, channel_fisher: bool, taylor_abs: bool, fisher_space: str, gate_grads: bool = False,
    ) -> None:
        self.members, self.params = members, params
        self.want_t, self.want_wf, self.want_cf = taylor, weight_fisher, channel_fisher
        self.want_rows = gate_grads
        self.rows: list[torch.Tensor] = []
        self.taylor_abs, self.fisher_space = taylor_abs, fisher_space
        self.taylor_acc, self.cf_acc = Running(ema), Running(ema)
        self.fisher_acc = [Running(ema) for _ in params] if weight_fisher else []

    @property
    def needs_gates(self) -> bool:
        """Whether the virtual gates' gradients are needed."""
        return self.want_cf or self.want_rows

    @property
    def needs_param_grads(self) -> bool:
        """Whether the parameters' gradients are needed (channel-Fisher alone needs only the gates')."""
        return self.want_t or self.want_wf

    def update(self, grads: Sequence[torch.Tensor | None], probes: ConsumerProbes, bsz: int) -> None:
        """Fold in one batch: ``grads`` are the parameters' (if needed) then the virtual gates' gradients."""
        np_ = len(self.params) if self.needs_param_grads else 0
        if self.needs_param_grads:
            pgrads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads[:np_])]
            self._update_params(pgrads)
        gate_grads = list(grads[np_:])
        if self.want_rows:
            self.rows.append(probes.sample_rows(gate_grads) * bsz)
        if self.want_cf:
            if probes.per_sample is not None:  # per-sample gates: their sum is the shared gate's gradient
                gate_grads = [None if g is None else per_channel_sum(g, 1) for g in gate_grads]
            self._update_channel_fisher(gate_grads, probes.virtual, probes.slots, probes.extent, bsz)

    def _update_params(self, pgrads: list[torch.Tensor]) -> None:
        if self.want_t:
            s = self.members.scatter([g * p for p, g in zip(self.params, pgrads)])
            self.taylor_acc.update(s.abs() if self.taylor_abs else s * s)
        if self.want_wf:
            for acc, g in zip(self.fisher_acc, pgrads):
                acc.update(g.detach() * g.detach())

    def _update_channel_fisher(
        self, gate_grads: Sequence[torch.Tensor | None], virtual: Mapping[str, list[torch.Tensor]],
        slots: Mapping[str, torch.Tensor], extent: torch.Tensor, bsz: int,
    ) -> None:
        n = self.members.n
        d = torch.zeros(n + 1, dtype=torch.float64)  # slot n: channels of no unit
        k = 0
        for path, vs in virtual.items():
            for _ in vs:
                g = gate_grads[k]
                k += 1
                if g is not None:
                    d.index_add_(0, slots[path], g.detach().double().cpu())
        # "sum": the exact gate derivative (batch-mean loss). "mean" also divides by the
        # spatial size, which ranks high-resolution layers as unimportant: on the digits
        # CNN at 30 % fisher-greedy kept 0.82 accuracy with "sum" and 0.12 with "mean".
        d = d[:n] / (bsz * extent) if self.fisher_space == "mean" else d[:n] / bsz
        self.cf_acc.update(d * d)

    def gate_grads(self) -> np.ndarray | None:
        """float64 [samples x blocks, N]: every calibration sample's gate derivatives (None if not kept)."""
        return torch.cat(self.rows).numpy() if self.want_rows and self.rows else None

    def taylor(self) -> np.ndarray | None:
        """Averaged Taylor importance per unit (None if not accumulated)."""
        return self.taylor_acc.value.numpy() if self.want_t else None

    def channel_fisher(self) -> np.ndarray | None:
        """Averaged squared gate derivative per unit (None if not accumulated)."""
        return self.cf_acc.value.numpy() if self.want_cf else None

    def weight_fisher(self) -> np.ndarray | None:
        """``Σ_w F_w w²`` per unit with the averaged ``F_w`` (None if not accumulated)."""
        if not self.want_wf:
            return None
        values = [acc.value * p.detach() ** 2 for p, acc in zip(self.params, self.fisher_acc)]
        return self.members.scatter(values).numpy()
