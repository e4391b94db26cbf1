"""The one-off choices of a scorer, per validation batch shape: memory layout, images per pass,
and whether masks run on cut layers.

**Fewer images per pass, the faster layout.** Passes over many images can cost more per image
on a CPU, so a validation batch is run in pieces (outputs concatenated before the metric, so any
metric sees the whole batch) and, for 4-D inputs, in channels-last memory format, whichever of
these the timings once per batch shape show to be fastest per image. Why pieces pay on a CPU: an
activation over many images is larger than glibc's mmap threshold (32 MB), so every op gets
fresh pages from the kernel, zero-filled on first touch (F=64 Half-UNet, 8 images of 128x128, 1
thread, fresh process: ~270k minor page faults and ~105-120 ms/image per pass of 8, none and
~50-60 ms/image per pass of 1). How much that costs depends on the allocator's state (a
long-running process may serve big tensors from free heap space), which is why it is timed, not
assumed. A piece or layout is used only if its output matches the standard pass (rtol 1e-4; 3e-2 when
the scorer runs in bfloat16): a model whose samples interact in eval mode is never split.

**Cut layers** (:class:`qprune.model.cut.ChannelCut`) are checked against the gated model once;
where the two differ (a layer the filter space does not describe) the gates stay.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.model.cut import ChannelCut
from qprune.model.masking import Gates
from qprune.model.tensors import iter_tensors
from qprune.refine.scoring.forward import Layout, matches, sync_clock
from qprune.refine.scoring.stats import ScorerStats

__all__ = ["Planner"]

Config = tuple[bool, int]  # (channels-last, images per pass)


class Planner:
    """Makes and keeps the per-shape choices; ``layout`` and ``physical`` are None until chosen
    (or as the user fixed them), ``per_pass`` maps a batch shape to its images per pass,
    ``out_bytes`` to the bytes of one whole batch's output, ``inputs`` holds the batches' inputs
    in the chosen layout."""

    def __init__(self, model: nn.Module, space: Any, batches: list, images_per_pass: int | None,
                 layout: bool | None, physical: bool | None, cuda: bool, stats: ScorerStats,
                 rtol: float = 1e-4) -> None:
        self.model, self.space, self.batches, self.cuda, self.stats = model, space, batches, cuda, stats
        self.rtol = rtol  # what "the same output" allows: float32 rounding, or bfloat16's
        self.images_per_pass, self.layout, self.physical = images_per_pass, layout, physical
        self.n = int(space.N)
        self.per_pass: dict[tuple, int] = {}
        self.out_bytes: dict[tuple, int] = {}
        self.inputs: list[torch.Tensor] | None = None

    def cutting(self) -> contextlib.AbstractContextManager[ChannelCut | None]:
        """The layers cut per mask while the context is open, if masks run that way."""
        return ChannelCut(self.model, self.space) if self.physical else contextlib.nullcontext()

    def pieces(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The pieces of a validation batch that go through one pass each."""
        m = self.per_pass[tuple(x.shape)]
        return [x[lo:lo + m] for lo in range(0, int(x.shape[0]), m)]

    def plan(self, gates: Gates) -> None:
        """Per batch shape, time the candidate (layout, images per pass) pairs on the open
        model and keep the fastest per image whose output matches the standard pass."""
        four_d = any(p.dim() == 4 for p in self.model.parameters())
        # time passes that gate like a real mask does (every gated consumer multiplies): one
        # unit off per layer
        probe = np.zeros(self.n, dtype=np.int8)
        probe[np.unique(np.asarray(self.space.layer_ids), return_index=True)[1]] = 1
        for x, _ in self.batches:
            shape = tuple(x.shape)
            if shape in self.per_pass:
                continue
            if self.physical is None:
                self.check_cut(gates, x)
            cl, m = self._choose(gates, x, probe, self._candidates(x, four_d))
            if self.layout is None:
                self.layout = cl
            self.per_pass[shape] = m
            self.stats.images_per_pass["x".join(map(str, shape))] = m
        self.stats.channels_last = bool(self.layout)
        self.stats.physical = bool(self.physical)
        if self.inputs is None:
            self.inputs = [
                x.contiguous(memory_format=torch.channels_last) if self.layout and x.dim() == 4 else x
                for x, _ in self.batches
            ]

    def _candidates(self, x: torch.Tensor, four_d: bool) -> list[Config]:
        b = int(x.shape[0])
        if self.images_per_pass is not None:
            sizes = [min(self.images_per_pass, b)]
        else:
            sizes = [d for d in dict.fromkeys((b, 4, 2, 1)) if d <= b and b % d == 0]
        if self.layout is not None:
            layouts = [self.layout and x.dim() == 4]
        else:
            layouts = [False, True] if x.dim() == 4 and four_d else [False]
        return [(cl, m) for cl in layouts for m in sizes]

    def _choose(self, gates: Gates, x: torch.Tensor, probe: np.ndarray, configs: list[Config]) -> Config:
        """Round 0 checks each config (and warms it up); rounds 1-2 time them interleaved, so
        that a load change on a shared machine does not favour one config."""
        shape, b = tuple(x.shape), int(x.shape[0])
        times: dict[Config, float] = {}
        ref: Any = None
        for rnd in range(3):
            if rnd and len(configs) == 1:
                break  # nothing to choose between
            for cl, m in list(configs):
                if (cl, m) not in configs:  # dropped this round (the layout failed)
                    continue
                ran = self._timed_pass(gates, x, probe, cl, m)
                if ran is None:  # the model cannot run channels-last
                    configs = [c for c in configs if not c[0]]
                    continue
                out, elapsed = ran
                if rnd == 0:
                    if ref is None:
                        ref = out
                        self.out_bytes[shape] = sum(
                            t.numel() * t.element_size() for t in iter_tensors(out)) * b // m
                    elif not matches(out, ref, m, self.rtol):
                        configs.remove((cl, m))
                    continue
                times[(cl, m)] = min(times.get((cl, m), math.inf), elapsed / m)
        return min(configs, key=lambda c: times.get(c, math.inf))

    def _timed_pass(self, gates: Gates, x: torch.Tensor, probe: np.ndarray, cl: bool,
                    m: int) -> tuple[Any, float] | None:
        """The probe mask's output on the first ``m`` images in one layout, and its seconds;
        None (with a warning) when the channels-last layout fails."""
        with Layout(self.model, cl), self.cutting() as cut:
            if cut is None:
                gates.set(probe)
            else:
                gates.clear()
                cut.set(probe)
            xl = x[:m].contiguous(memory_format=torch.channels_last) if cl else x[:m]
            t0 = sync_clock(self.cuda)
            try:
                out = self.model(xl)
            except Exception as exc:  # noqa: BLE001 -- a layout the model cannot run
                if not cl:
                    raise
                warnings.warn(f"MaskScorer: channels-last layout not used ({exc})",
                              RuntimeWarning, stacklevel=6)
                return None
            return out, sync_clock(self.cuda) - t0

    def check_cut(self, gates: Gates, x: torch.Tensor) -> None:
        """Use cut layers only if the cut model computes what the gated one does: compared once,
        on a batch, with a third of every layer's units pruned."""
        lids = np.asarray(self.space.layer_ids)
        probe = np.zeros(self.n, dtype=np.int8)
        for lid in np.unique(lids):
            probe[np.flatnonzero(lids == lid)[1::3]] = 1
        gates.set(probe)
        ref = self.model(x)
        gates.clear()
        why = None
        try:
            with ChannelCut(self.model, self.space) as cut:
                cut.set(probe)
                out = self.model(x)
            if not matches(out, ref, int(x.shape[0]), self.rtol):
                why = "its output differs from the gated model's"
        except Exception as exc:  # noqa: BLE001 -- a model the cut cannot run
            why = f"{type(exc).__name__}: {exc}"
        self.physical = why is None
        if why is not None:
            warnings.warn(f"MaskScorer: layers not cut per mask, gated instead ({why})",
                          RuntimeWarning, stacklevel=5)
