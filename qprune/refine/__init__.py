"""Post-solver refinement: a better exact-k mask against the real metric, and fast exact scoring.

* :func:`refine` (:mod:`qprune.refine.tt`): PROTES tensor-train search from a seed mask on any
  black-box objective over masks; :func:`refine_chunked` (:mod:`qprune.refine.chunked`) runs it
  chunk by chunk on large masks; :func:`refine_mask` (:mod:`qprune.refine.on_model`) refines
  against a model's validation metric (what the pipeline's ``--refine tt`` calls).
* :class:`MaskScorer` (:mod:`qprune.refine.scoring`): exact batched scores of many masks on a
  model, equal to :func:`naive_score` (one gated pass per mask) up to float rounding, or faster
  and rounded under bfloat16 (``precision="bfloat16"``).
* :class:`ScoreJournal` (:mod:`qprune.refine.journal`): a search's scores on disk, so a stopped
  search resumes.

Every stage works in one feasible set, :class:`qprune.solve.constraint.ExactK`, and caches mask
values in one :class:`~qprune.refine.cache.MaskCache`. The optional ``protes``/``jax`` packages
are imported only when a TT search starts (:mod:`qprune.refine.engine`).
"""

from __future__ import annotations

from qprune.refine.cache import MaskCache
from qprune.refine.chunked import layer_chunks, refine_chunked
from qprune.refine.journal import ScoreJournal, read_journal
from qprune.refine.on_model import refine_mask, search_subset
from qprune.refine.result import Objective, RefineResult
from qprune.refine.scoring import MaskScorer, ScorerStats, naive_score
from qprune.refine.tt import refine

__all__ = [
    "MaskCache", "MaskScorer", "Objective", "RefineResult", "ScoreJournal", "ScorerStats", "layer_chunks",
    "naive_score", "read_journal", "refine", "refine_chunked", "refine_mask", "search_subset",
]
