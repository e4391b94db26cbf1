"""Exact scores of many masks on one model, faster than one gated pass per mask.

:func:`naive_score` is the reference: one gated forward pass per mask. :class:`MaskScorer` must
equal it up to float rounding (``tests/test_scoring.py``) while sharing work between masks:

* :mod:`~qprune.refine.scoring.scorer` — :class:`MaskScorer` and :func:`naive_score`.
* :mod:`~qprune.refine.scoring.trace`, :mod:`~qprune.refine.scoring.recorder` — the model's forward
  recorded once as replayable calls, cut where a mask first changes the activations.
* :mod:`~qprune.refine.scoring.tree` — masks sharing an unchanged prefix replay it once.
* :mod:`~qprune.refine.scoring.planner` — per batch shape: memory layout, images per pass, and
  whether masks run on cut layers.
* :mod:`~qprune.refine.scoring.costs`, :mod:`~qprune.refine.scoring.forward`,
  :mod:`~qprune.refine.scoring.session`, :mod:`~qprune.refine.scoring.stats` — masks per pass and
  their timed costs, replicated gated passes, one scoring session, and what the scorer did.
"""

from __future__ import annotations

from qprune.refine.scoring.scorer import MaskScorer, ScorerStats, naive_score

__all__ = ["MaskScorer", "ScorerStats", "naive_score"]
