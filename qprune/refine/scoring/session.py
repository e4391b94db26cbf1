"""One scoring session: what is on the model while masks are scored, and how a pass is set up.

A pass computes under its masks in one of two ways. **Gated**: the full-size layers run and each
pruned unit is zeroed at the inputs of its consumers (:class:`qprune.model.masking.Gates`; one
mask per replica of the batch, so many masks can share a pass). **Cut** (one mask per pass):
:class:`qprune.model.cut.ChannelCut` swaps in the parameters index-selected to the channels the
mask keeps, so the pass runs the physically pruned layers (a pruned unit's zeros are simply not
computed; F=64 Half-UNet at 36 %: 0.70 of the multiply-accumulates). A pass may mix the two:
the units it cuts, the others gated.
"""

from __future__ import annotations

import numpy as np

from qprune.model.cut import ChannelCut
from qprune.model.masking import Gates
from qprune.refine.scoring.recorder import Recorder
from qprune.refine.scoring.stats import ScorerStats

__all__ = ["Session"]


class Session:
    """Our gates, the cut layers (None: masks are gated only) and the prefix tree's recorder
    (None: no tree) for one scoring session; ``share`` is the part of a validation batch the
    current passes run on (a pass over a piece counts as that share of a whole pass)."""

    def __init__(
        self, gates: Gates, cut: ChannelCut | None, recorder: Recorder | None, stats: ScorerStats, n: int
    ) -> None:
        self.gates, self.cut, self.recorder, self.stats, self.n = gates, cut, recorder, stats, n
        self.share = 1.0

    @property
    def physical(self) -> bool:
        """Whether masks run on cut layers in this session."""
        return self.cut is not None

    def open(self) -> None:
        """The unpruned model: every gate open, every cut layer whole."""
        self.gates.clear()
        if self.cut is not None:
            self.cut.set(np.zeros(self.n, dtype=np.int8))

    def set_masks(self, masks: np.ndarray, cut: np.ndarray | None = None) -> None:
        """Make the model compute under ``masks`` [D, N]: the units in ``cut`` (bool [N]; one
        mask per pass) on cut layers, the others by gates (one mask: the cheaper broadcast
        gates). With cut layers open, ``cut=None`` gates every unit on whole layers."""
        if self.cut is None:
            self.gates.set(masks if len(masks) > 1 else masks[0])
            return
        if cut is None:
            cut = np.zeros(self.n, dtype=bool)
        assert len(masks) == 1, "cut layers take one mask per pass"
        self.cut.set(masks[0] & cut)
        self.gates.set(masks[0] & ~cut)

    def count(self, copies: int, span: float, span_calls: float | None = None) -> None:
        """Count one pass of ``copies`` replicas over ``span`` of a forward (see :class:`ScorerStats`)."""
        self.stats.count_pass(copies, span, self.share, span_calls)
