"""The module-call trace of one forward pass, which the prefix tree splits and resumes along.

A trace lists the model's module calls in order, each with its start and end event positions
(one counter for starts and ends) and its parent call; ``share`` holds the measured fraction of
the pass's time spent before each position. :class:`~qprune.refine.scoring.recorder.Recorder` records
one and replays its calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["Abort", "Call", "Trace", "TraceMismatch", "version"]


def version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter (None where it is not tracked: inference tensors)."""
    try:
        return int(t._version)
    except RuntimeError:
        return None


class Abort(BaseException):
    """Raised from a pre-hook to end a forward pass at a stage boundary (a BaseException so that
    an ``except Exception`` in a model's forward does not swallow it)."""


class TraceMismatch(RuntimeError):
    """The model's call sequence differed from the recorded trace."""


@dataclass
class Call:
    module: nn.Module
    name: str
    index: int  # the module's call count before this call, within one forward
    start: int  # event positions (one counter for starts and ends)
    end: int = -1
    parent: int = -1  # call id of the enclosing call, -1 = the root forward
    skipped: dict[int, int] = field(default_factory=dict)  # id(module) -> calls nested inside


class Trace:
    """The ordered module calls of one forward pass."""

    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls
        self.in_place = True  # until the trace run shows otherwise
        self.share = np.linspace(0.0, 1.0, 2 * len(calls) + 2)  # replaced by measured times
        self.by_key = {(id(c.module), c.index): cid for cid, c in enumerate(calls)}
        self.start_index = {c.start: cid for cid, c in enumerate(calls)}
        for cid, c in enumerate(calls):  # what a replay of call cid must count as called
            p = c.parent
            while p >= 0:
                skipped = calls[p].skipped
                skipped[id(c.module)] = skipped.get(id(c.module), 0) + 1
                p = calls[p].parent

    def span(self, start: int, stop: int | None) -> float:
        """Fraction of a whole forward's time spent between two event positions."""
        end = self.share[-1] if stop is None else self.share[stop]
        return float(end - self.share[start])

    def span_calls(self, start: int, stop: int | None) -> float:
        """Fraction of a whole forward's module-call events between two positions
        (deterministic, unlike :meth:`span`)."""
        last = len(self.share) - 1
        return ((last if stop is None else stop) - start) / last

    def call_at(self, pos: int) -> int:
        """The call starting at event position ``pos``."""
        return self.start_index[pos]

    def open_at(self, cid: int, pos: int) -> bool:
        """Whether call ``cid`` (or the root, -1) is running at event position ``pos``."""
        return cid < 0 or self.calls[cid].start < pos < self.calls[cid].end

    def replayed_at(self, pos: int) -> list[int]:
        """The maximal calls completed before ``pos``: what a forward resumed there replays."""
        return [
            cid for cid, c in enumerate(self.calls) if c.end < pos and self.open_at(c.parent, pos)
        ]

    def recorded_in(self, lo: int, hi: int | None) -> list[int]:
        """Calls completing in ``(lo, hi)`` whose parent is still running at ``hi``: the stored
        outputs a later stage may replay (none after the last stage)."""
        if hi is None:
            return []
        return [
            cid for cid, c in enumerate(self.calls)
            if lo < c.end < hi and self.open_at(c.parent, hi)
        ]
