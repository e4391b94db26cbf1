"""Masks per forward pass and what a pass costs, both from timings taken once per input shape.

Leaves of the prefix tree that split at the same point, and plain batching, push several masks
through one pass: the batch is replicated once per mask and each replica gets its own gates. A
replicated pass saves per-call overhead but on a CPU it costs MORE per image once it no longer
fits the caches (F=64 Half-UNet, 64x64 tiles, 1 thread: 21 ms/image for 1 image, 38 ms/image for
16, 99 ms/image for 256), so a pass of 1 and of a few copies is timed once per input shape and
one copy per pass is used when replication does not pay (the scorer's ``chunk`` overrides). The
same timings, and the time profile of the trace, estimate what the prefix tree and plain
batching would take; what each choice then really took corrects the estimates for the next
calls (they count forward time only, not hooks, replays or the metric).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qprune.refine.scoring.forward import replicate, sync_clock
from qprune.refine.scoring.session import Session
from qprune.refine.scoring.stats import ScorerStats

__all__ = ["PassCosts"]


class PassCosts:
    """Per input shape: masks per pass, and a pass's time ``t(D) = overhead + per copy * D``.

    ``chunk`` is the scorer's fixed masks per pass (None: chosen here); ``target_mb`` bounds the
    largest activation of a replicated pass; the learnt corrections live in
    ``stats.cost_factor``.
    """

    def __init__(self, model: nn.Module, cuda: bool, chunk: int | None, target_mb: float,
                 stats: ScorerStats) -> None:
        self.model, self.cuda, self.chunk, self.target_mb, self.stats = model, cuda, chunk, target_mb, stats
        self.sample_bytes: dict[tuple, int] = {}  # per input shape: the largest activation of one sample
        self.costs: dict[tuple, tuple[float, float]] = {}  # per input shape: (overhead, per copy) seconds
        self.chunks: dict[tuple, int] = {}  # per input shape: 1 where replication does not pay

    def chunk_for(self, x: torch.Tensor, session: Session) -> int:
        """Masks per forward pass: ``chunk``, or what fits ``target_mb`` unless measuring showed
        that batching does not pay for this input shape."""
        if self.chunk is not None or session.physical:
            return self.chunk or 1
        shape = tuple(x.shape)
        if shape not in self.costs:
            self.costs[shape] = self.measure(x, session)
        return self.chunks.get(shape) or self.mem_chunk(x, session)

    def ensure(self, x: torch.Tensor, session: Session) -> tuple[float, float]:
        """The ``(overhead, per copy)`` of this input shape, measured if not yet known."""
        shape = tuple(x.shape)
        if shape not in self.costs:
            self.costs[shape] = self.measure(x, session)
        return self.costs[shape]

    def plain(self, x: torch.Tensor, masks: int, chunk: int) -> float:
        """Estimated seconds to score ``masks`` masks by plain batching, ``chunk`` per pass."""
        overhead, per_copy = self.costs[tuple(x.shape)]
        return math.ceil(masks / chunk) * overhead + per_copy * masks

    def mem_chunk(self, x: torch.Tensor, session: Session) -> int:
        """The most copies (at most 128) whose largest activation fits ``target_mb``."""
        per_sample = self.sample_bytes.get(tuple(x.shape))
        if per_sample is None:  # measure once: the largest activation of one forward
            biggest = [0]

            def watch(module: nn.Module, args: object, out: object) -> None:
                if isinstance(out, torch.Tensor):
                    biggest[0] = max(biggest[0], out.numel() * out.element_size())

            session.open()
            handle = torch.nn.modules.module.register_module_forward_hook(watch)
            try:
                self.model(x[:1])
            finally:
                handle.remove()
            per_sample = self.sample_bytes[tuple(x.shape)] = biggest[0]
        fit = int(self.target_mb * 2**20 // max(per_sample * int(x.shape[0]), 1))
        return max(1, min(128, fit))

    def measure(self, x: torch.Tensor, session: Session) -> tuple[float, float]:
        """``(overhead, per copy)`` seconds of a forward pass, ``t(D) = overhead + per copy * D``,
        fitted on D = 1 and D = min(chunk, 8) (best of a few runs). It decides between the
        prefix tree (more, smaller passes) and plain batching (fewer, larger passes), and turns
        batching off (chunk 1) when a replicated pass costs more per copy than single passes --
        the usual case on a CPU once a pass no longer fits in its caches."""
        shape = tuple(x.shape)
        chunk = 1 if session.physical else min(self.chunk or self.mem_chunk(x, session), 8)
        session.open()

        def best(copies: int, reps: int) -> float:
            xs = replicate(x, copies)
            times = []
            for _ in range(reps):
                t0 = sync_clock(self.cuda)
                self.model(xs)
                times.append(sync_clock(self.cuda) - t0)
            return min(times)

        best(1, 1)  # warm-up
        t1 = best(1, 3)
        if chunk == 1:  # one copy per pass either way: the tree can only save work
            return 0.0, t1
        tc = best(chunk, 2)
        if self.chunk is None and tc / chunk >= 0.9 * t1:
            self.chunks[shape] = 1
            return 0.0, t1
        per_copy = max((tc - t1) / (chunk - 1), 1e-9)
        return max(t1 - per_copy, 0.0), per_copy

    def learn(self, kind: str, estimate: float, actual: float) -> None:
        """Correct the cost model with what a run really took: the estimates count forward
        time only, not hooks, replays, splits or the metric, and those weigh differently on the
        tree (many short passes) and on plain batching."""
        if estimate > 0 and actual > 0:
            f = self.stats.cost_factor
            f[kind] = math.sqrt(f[kind] * actual / estimate)  # geometric running mean
