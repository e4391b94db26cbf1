"""Forward pre-hooks at the units' gate positions (the consumers' inputs) for one calibration pass.

A :class:`ConsumerProbes` hook on every gate position of the filter space (every consumer's input;
every branch end's output, :mod:`qprune.model.residual`; attention modules routed so that their
output projection runs as a module, :mod:`qprune.model.attention`)

* records the spatial size of each unit's activation site once (for ``fisher_space="mean"``);
* hands the consumer's input to :class:`ActivationSites` (pooled responses for similarity);
* multiplies the input by a virtual gate per channel (``requires_grad``), whose gradient is the
  channel-Fisher derivative ``∂L/∂m``; the gates of the current batch are in ``virtual``.

Gates are ones (the unpruned model) or ``1 - mask`` (``open_mask``: the model with a mask's units
already removed, so the derivatives are taken there). With ``per_sample=g`` every sample gets gates
of its own (``[B, C]``, or ``[B, C, g', g']`` on a spatial map: one gate per block of a g x g grid,
g' = min(g, side)): a sample's loss depends only on its own gates, so one backward per batch gives
every sample's derivative (:meth:`ConsumerProbes.sample_rows`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from qprune.errors import QpruneError
from qprune.model import attention
from qprune.model.units import FilterSpace

__all__ = ["ActivationSites", "ConsumerProbes", "rep_site", "site"]


class ConsumerProbes:
    """Hooks on the consumers of ``space`` (installed by the constructor; :meth:`remove` takes them off).

    Attributes:
        slots: gate site -> int [channels]: the unit each channel belongs to (N: none). A site is a
            consumer path (its input) or ``"<path>#out"`` (a branch end's output).
        extent: float64 [N]: spatial size at each unit's activation site times its slots there.
        virtual: site -> the virtual gates created in the current batch (clear per batch).
    """

    def __init__(self, model: nn.Module, space: FilterSpace, acts: ActivationSites | None, gates: bool, *,
                 per_sample: int | None = None, open_mask: np.ndarray | None = None) -> None:
        n = space.N
        self.per_sample = per_sample
        self.batch = 0  # the current batch's size (set by the caller before its forward)
        # gate value of every slot: 1 - mask for a unit's channels, 1 for channels of no unit (slot n)
        self._open = None if open_mask is None else torch.from_numpy(
            np.r_[1.0 - np.asarray(open_mask, dtype=np.float64), 1.0])
        modules = dict(model.named_modules())
        sizes = dict(space.consumer_channels)
        sizes.update({site(p, True): c for p, c in space.producer_channels.items()})
        self.slots = {p: torch.full((c,), n, dtype=torch.long) for p, c in sizes.items()}
        for i, u in enumerate(space.units):
            for p, c in u.inputs:
                self.slots[p][c] = i
            for p, c in u.outputs:
                self.slots[site(p, True)][c] = i
        self.acts, self.gates = acts, gates
        self.extent = torch.ones(n, dtype=torch.float64)
        firsts = [rep_site(u) for u in space.units]
        self._rep_slots = [sum(1 for p in _site_names(u) if p == f) for u, f in zip(space.units, firsts)]
        self._extent_known: set[str] = set()
        self._by_rep: dict[str, list[int]] = defaultdict(list)
        for i, f in enumerate(firsts):
            self._by_rep[f].append(i)
        self.virtual: dict[str, list[torch.Tensor]] = defaultdict(list)
        missing = [p for p in [*space.consumer_channels, *space.producer_channels] if p not in modules]
        if missing:
            raise QpruneError(f"model has no module {missing[0]!r} of the filter space (a different architecture?)")
        self._handles = []
        for p in space.consumer_channels:
            mod = modules[p]
            cdim = 1 if isinstance(mod, nn.modules.conv._ConvNd) else -1
            self._handles.append(mod.register_forward_pre_hook(self._hook(p, cdim)))
        for p in space.producer_channels:
            cdim = -1 if isinstance(modules[p], nn.Linear) else 1
            self._handles.append(modules[p].register_forward_hook(self._out_hook(site(p, True), cdim)))
        self._routes = attention.routed([modules[p] for p, kind in space.attention.items()
                                         if attention.ADAPTERS.get(kind) and p in modules])

    def gate_tensors(self) -> list[torch.Tensor]:
        """The current batch's virtual gates, in the order :attr:`virtual` lists them."""
        return [v for vs in self.virtual.values() for v in vs]

    def remove(self) -> None:
        """Take the hooks (and routes) off and drop the gates."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._routes.close()
        self.virtual.clear()

    def _hook(self, path: str, cdim: int) -> Callable[[nn.Module, tuple], tuple | None]:
        def fn(module: nn.Module, args: tuple) -> tuple | None:
            if not args or not isinstance(args[0], torch.Tensor):
                return None
            x = self._probe(path, args[0], cdim)
            return None if x is None else (x, *args[1:])
        return fn

    def _out_hook(self, key: str, cdim: int) -> Callable[[nn.Module, tuple, Any], Any]:
        def fn(module: nn.Module, args: tuple, out: Any) -> Any:
            return self._probe(key, out, cdim) if isinstance(out, torch.Tensor) else None
        return fn

    def _probe(self, key: str, x: torch.Tensor, cdim: int) -> torch.Tensor | None:
        """Record ``x`` at gate site ``key``; with gates on, ``x`` times a virtual gate (see the module doc)."""
        if key not in self._extent_known and key in self._by_rep:
            self._record_extent(key, x, cdim)
        if self.acts is not None:
            self.acts.record(key, x.detach(), cdim)
        if not self.gates:
            return None
        if self.per_sample is not None:
            return self._per_sample_gate(key, x, cdim)
        v = self._gate_values(key, x).requires_grad_(True)
        self.virtual[key].append(v)
        shape = [1] * x.dim()
        shape[cdim] = -1
        return x * v.view(shape)

    def _gate_values(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """[C]: the gate of every channel at site ``key`` (ones, or 1 - mask)."""
        if self._open is None:
            return torch.ones(self.slots[key].numel(), dtype=x.dtype, device=x.device)
        return self._open[self.slots[key]].to(dtype=x.dtype, device=x.device)

    def _per_sample_gate(self, key: str, x: torch.Tensor, cdim: int) -> torch.Tensor:
        """``x`` times gates of its own for every sample (and spatial block): see the module doc."""
        cdim = cdim % x.dim()
        bdim = 0 if x.shape[0] == self.batch else 1 if x.dim() > 2 and x.shape[1] == self.batch else None
        if bdim is None or bdim == cdim:
            raise QpruneError(f"per-sample gate derivatives need the batch ({self.batch}) in dim 0 or 1 at "
                              f"{key!r}, which sees shape {tuple(x.shape)}")
        base = self._gate_values(key, x)
        c = base.numel()
        g = int(self.per_sample)
        spatial = x.dim() == 4 and cdim == 1 and bdim == 0 and g > 1
        if spatial:
            gh, gw = min(g, x.shape[2]), min(g, x.shape[3])
            v = base.view(1, c, 1, 1).expand(self.batch, c, gh, gw).clone().requires_grad_(True)
            self.virtual[key].append(v)
            return x * F.interpolate(v, size=tuple(x.shape[2:]), mode="nearest")
        v = base.view(1, c).expand(self.batch, c).clone().requires_grad_(True)
        self.virtual[key].append(v)
        shape = [1] * x.dim()
        shape[bdim], shape[cdim] = self.batch, c
        return x * (v if bdim < cdim else v.t()).reshape(shape)

    def sample_rows(self, gate_grads: list[torch.Tensor | None]) -> torch.Tensor:
        """float64 [batch * g^2, N]: per sample and block, the derivative of the sample's loss share
        with respect to each unit's gate (per-sample gates; ``gate_grads`` in :meth:`gate_tensors` order).

        A site whose map is coarser than the grid (or has none) spreads each value evenly over the
        rows it covers, so a sample's rows always sum to its exact derivative. (Spreading that keeps
        the sum of squares instead gave worse masks on the bundled denoiser: 0.2-0.7 dB at 50-70 %
        of the MACs.)"""
        g = int(self.per_sample or 1)
        rows = self.batch * g * g
        n = int(self.extent.numel())
        out = torch.zeros(rows, n + 1, dtype=torch.float64)
        grads = iter(gate_grads)
        for path, vs in self.virtual.items():
            for v in vs:
                gr = next(grads)
                if gr is None:
                    continue
                gr = gr.detach().double().cpu()
                if gr.dim() == 4:
                    gh, gw = gr.shape[2:]
                    if (gh, gw) != (g, g):
                        gr = F.interpolate(gr, size=(g, g), mode="nearest") * (gh * gw / (g * g))
                    gr = gr.permute(0, 2, 3, 1).reshape(rows, -1)
                if gr.shape[0] != rows:
                    gr = gr.repeat_interleave(g * g, dim=0) / (g * g)
                out.index_add_(1, self.slots[path], gr)
        return out[:, :n]

    def _record_extent(self, path: str, x: torch.Tensor, cdim: int) -> None:
        inner = x.shape[2:] if cdim == 1 else x.shape[1:-1]
        idx = self._by_rep[path]
        self.extent[idx] = float(math.prod(inner)) * torch.tensor([self._rep_slots[i] for i in idx],
                                                                   dtype=torch.float64)
        self._extent_known.add(path)


def site(path: str, output: bool = False) -> str:
    """The key of a gate site: a consumer's path (its input), ``"<path>#out"`` for an output."""
    return f"{path}#out" if output else path


def _site_names(u: Any) -> list[str]:
    return [site(p) for p, _ in u.inputs] + [site(p, True) for p, _ in u.outputs]


def rep_site(u: Any) -> str:
    """A unit's activation site: its first consumer input, else its first gated output."""
    return _site_names(u)[0]


class ActivationSites:
    """Pooled responses of each unit at its activation site, bounded to ``cap`` columns per unit."""

    def __init__(self, space: FilterSpace, pool: int, cap: int) -> None:
        self.pool, self.cap = pool, cap
        self.space = space
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        self.slot_lists: list[list[int]] = []
        for i, u in enumerate(space.units):
            first = rep_site(u)
            pairs = [(site(p), c) for p, c in u.inputs] + [(site(p, True), c) for p, c in u.outputs]
            sl = [c for p, c in pairs if p == first]
            self.slot_lists.append(sl)
            groups[(first, len(sl))].append(i)
        # per site: list of (unit indices, slot matrix [U, S], chunks, columns so far)
        self.sites: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for (key, _), idx in groups.items():
            mat = torch.tensor([self.slot_lists[i] for i in idx], dtype=torch.long)
            self.sites[key].append({"units": idx, "slots": mat, "chunks": [], "cols": 0})

    def record(self, path: str, x: torch.Tensor, cdim: int) -> None:
        """Keep the pooled responses of the units whose site is ``path`` (until ``cap`` columns)."""
        for g in self.sites.get(path, ()):
            if g["cols"] >= self.cap:
                continue
            r = self._pooled(x, g["slots"], cdim)
            take = min(r.shape[1], self.cap - g["cols"])
            g["chunks"].append(r[:, :take])
            g["cols"] += take

    def _pooled(self, x: torch.Tensor, mat: torch.Tensor, cdim: int) -> torch.Tensor:
        """[U, images x bins]: each unit's channels at ``x``, pooled per image."""
        u, s = mat.shape
        sel = x.index_select(cdim, mat.flatten().to(x.device))
        if not sel.is_floating_point():
            sel = sel.float()
        if cdim != 1:
            sel = sel.movedim(-1, 1)  # [n, U*S, (T)]
        nb = sel.shape[0]
        if sel.dim() == 4:
            h, w = sel.shape[2:]
            sel = F.adaptive_avg_pool2d(sel, (min(self.pool, h), min(self.pool, w)))
            r = sel.reshape(nb, u, -1)
        elif sel.dim() == 2:  # linear features: the S slots are the spatial positions
            r = sel.reshape(nb, u, s)
            if s > self.pool * self.pool:
                r = F.adaptive_avg_pool1d(r, self.pool * self.pool)
        else:
            flat = sel.reshape(nb, u * s, -1)
            flat = F.adaptive_avg_pool1d(flat, min(self.pool * self.pool, flat.shape[-1]))
            r = flat.reshape(nb, u, -1)
        # float32 storage keeps the memory bound; float64 models keep their precision
        keep = torch.float64 if r.dtype == torch.float64 else torch.float32
        return r.permute(1, 0, 2).reshape(u, -1).to(device="cpu", dtype=keep)

    def result(self) -> dict[int, np.ndarray]:
        """layer id -> [units_in_layer, samples] (layers whose units all have responses)."""
        rows: dict[int, torch.Tensor] = {}
        lids = self.space.layer_ids
        for groups in self.sites.values():
            for g in groups:
                if not g["chunks"]:
                    continue
                arr = torch.cat(g["chunks"], dim=1)
                for r, i in enumerate(g["units"]):
                    rows[i] = arr[r]
        out: dict[int, np.ndarray] = {}
        for lid in range(self.space.n_layers):
            idx = np.flatnonzero(lids == lid)
            if not all(int(i) in rows for i in idx):
                continue
            width = min(rows[int(i)].shape[0] for i in idx)
            out[lid] = torch.stack([rows[int(i)][:width] for i in idx]).numpy()
        return out
