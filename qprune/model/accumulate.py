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
from qprune.model.units import FilterSpace

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


def _out_dim(mod: nn.Module) -> int:
    return 1 if getattr(mod, "transposed", False) else 0


class Members:
    """Member filters of the units, grouped by module, for vectorised per-unit reductions.

    ``entries`` holds ``(module, output dim, member channels, their units)`` per member module.
    """

    def __init__(self, model: nn.Module, space: FilterSpace) -> None:
        modules = dict(model.named_modules())
        rows: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, u in enumerate(space.units):
            for path, c in u.members:
                rows[path].append((c, i))
        self.n = space.N
        self.entries: list[tuple[nn.Module, int, torch.Tensor, torch.Tensor]] = []
        for path, pairs in rows.items():
            mod = modules.get(path)
            if mod is None or not isinstance(getattr(mod, "weight", None), torch.Tensor):
                raise QpruneError(f"model has no filter module {path!r} of the filter space")
            dev = mod.weight.device
            ch = torch.tensor([c for c, _ in pairs], dtype=torch.long, device=dev)
            un = torch.tensor([i for _, i in pairs], dtype=torch.long, device=dev)
            self.entries.append((mod, _out_dim(mod), ch, un))

    def params(self) -> list[nn.Parameter]:
        """Weights and biases of the member modules, each weight followed by its bias (if any)."""
        out = []
        for mod, _, _, _ in self.entries:
            out.append(mod.weight)
            if getattr(mod, "bias", None) is not None:
                out.append(mod.bias)
        return out

    def scatter(self, per_module: list[torch.Tensor]) -> torch.Tensor:
        """Sum per-out-channel vectors of each member module into a per-unit vector [N] (float64)."""
        acc = torch.zeros(self.n, dtype=torch.float64)
        for (_, _, ch, un), v in zip(self.entries, per_module):
            acc.index_add_(0, un.cpu(), v.detach()[ch].double().cpu())
        return acc

    def per_filter(self, weight_values: Sequence[torch.Tensor], bias_values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per module: the per-channel sum of its weight-shaped value plus its bias-shaped value.

        ``weight_values``/``bias_values`` follow :meth:`params` (one per weight / per bias).
        """
        weights, biases = iter(weight_values), iter(bias_values)
        out = []
        for mod, odim, _, _ in self.entries:
            v = per_channel_sum(next(weights), odim)
            if getattr(mod, "bias", None) is not None:
                v = v + next(biases)
            out.append(v)
        return out

    def l1(self) -> np.ndarray:
        """float64 [N]: mean |w| over the units' member weights (biases excluded), pooled over members."""
        sums, counts = [], []
        with torch.no_grad():
            for mod, odim, _, _ in self.entries:
                w = mod.weight.detach()
                sums.append(per_channel_sum(w.abs(), odim))
                counts.append(torch.full((w.shape[odim],), w.numel() // w.shape[odim], dtype=torch.float64))
        return (self.scatter(sums) / self.scatter(counts)).numpy()


class GradientSums:
    """Running Taylor, weight-Fisher and channel-Fisher sums over calibration batches.

    Args:
        members: the units' member filters; ``params`` are ``members.params()``.
        ema: None = plain mean over batches; else the EMA decay.
        taylor, weight_fisher, channel_fisher: which signals to accumulate.
        taylor_abs: ``|Σ g w|`` instead of its square.
        fisher_space: ``"sum"`` or ``"mean"`` (channel-Fisher divided by the site's spatial size).
    """

    def __init__(
        self, members: Members, params: list[nn.Parameter], *, ema: float | None, taylor: bool,
        weight_fisher: bool, channel_fisher: bool, taylor_abs: bool, fisher_space: str,
    ) -> None:
        self.members, self.params = members, params
        self.want_t, self.want_wf, self.want_cf = taylor, weight_fisher, channel_fisher
        self.taylor_abs, self.fisher_space = taylor_abs, fisher_space
        self.taylor_acc, self.cf_acc = Running(ema), Running(ema)
        self.fisher_acc = [Running(ema) for _ in params] if weight_fisher else []

    @property
    def needs_param_grads(self) -> bool:
        """Whether the parameters' gradients are needed (channel-Fisher alone needs only the gates')."""
        return self.want_t or self.want_wf

    def update(
        self, grads: Sequence[torch.Tensor | None], virtual: Mapping[str, list[torch.Tensor]],
        slots: Mapping[str, torch.Tensor], extent: torch.Tensor, bsz: int,
    ) -> None:
        """Fold in one batch: ``grads`` are the parameters' (if needed) then the virtual gates' gradients."""
        np_ = len(self.params) if self.needs_param_grads else 0
        if self.needs_param_grads:
            pgrads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads[:np_])]
            self._update_params(pgrads)
        if self.want_cf:
            self._update_channel_fisher(grads[np_:], virtual, slots, extent, bsz)

    def _update_params(self, pgrads: list[torch.Tensor]) -> None:
        if self.want_t:
            prods = [g * p for p, g in zip(self.params, pgrads)]
            s = self.members.scatter(self._per_filter(prods))
            self.taylor_acc.update(s.abs() if self.taylor_abs else s * s)
        if self.want_wf:
            for acc, g in zip(self.fisher_acc, pgrads):
                acc.update(g.detach() * g.detach())

    def _per_filter(self, per_param: list[torch.Tensor]) -> list[torch.Tensor]:
        """Split ``per_param`` (in :meth:`Members.params` order) into weight and bias values per module."""
        weights, biases = [], []
        it = iter(per_param)
        for mod, _, _, _ in self.members.entries:
            weights.append(next(it))
            if getattr(mod, "bias", None) is not None:
                biases.append(next(it))
        return self.members.per_filter(weights, biases)

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
        return self.members.scatter(self._per_filter(values)).numpy()
