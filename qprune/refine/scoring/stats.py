"""What a :class:`~qprune.refine.scoring.MaskScorer` did: counters, choices, the cost model's correction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScorerStats"]


@dataclass
class ScorerStats:
    """What a :class:`~qprune.refine.scoring.MaskScorer` did so far."""

    calls: int = 0
    masks: int = 0  # masks asked for
    cache_hits: int = 0
    evaluated: int = 0  # distinct masks scored
    forwards: int = 0  # forward passes (whole or partial)
    replicas: int = 0  # batch copies pushed through those passes
    work: float = 0.0  # sum over passes of copies x fraction of a forward's time they ran
    work_calls: float = 0.0  # the same counted in module calls (deterministic)
    batches: int = 1
    tree_batches: int = 0  # (call, batch piece) pairs scored with the prefix tree
    plain_batches: int = 0  # ... with plain batching (cheaper by the cost model, or no tree)
    time: float = 0.0  # all calls, preparation included
    prepare_time: float = 0.0  # the one-off timings and trace recordings (see MaskScorer.prepare)
    prefix_tree: bool = True
    channels_last: bool | None = None  # the memory layout the passes run in (None: not chosen yet)
    physical: bool | None = None  # masks run on layers cut to their kept channels (None: not chosen yet)
    images_per_pass: dict[str, int] = field(default_factory=dict)  # per validation batch shape
    cost_factor: dict[str, float] = field(default_factory=lambda: {"tree": 1.0, "plain": 1.0})
    best: float = -math.inf

    def as_dict(self) -> dict[str, Any]:
        d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}
        # 1.0 = one whole forward per mask and batch (no sharing); the prefix tree makes it < 1
        denom = self.evaluated * self.batches
        d["work_vs_naive"] = self.work / denom if denom else None
        d["calls_vs_naive"] = self.work_calls / denom if denom else None
        return d

    def count_pass(self, copies: int, span: float, share: float, span_calls: float | None = None) -> None:
        """One forward pass of ``copies`` batch replicas over ``span`` of a whole forward's time
        (``span_calls`` of its module calls), on ``share`` of a validation batch."""
        self.forwards += 1
        self.replicas += copies
        self.work += copies * span * share
        self.work_calls += copies * (span if span_calls is None else span_calls) * share
