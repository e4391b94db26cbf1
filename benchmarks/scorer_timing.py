"""Timing a mask scorer from a cold start, its one-off preparation apart from the scoring.

Imports nothing from qprune, so ``old_scorer.py`` can time an earlier version's scorer with it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def timed_scores(scorer: Any, masks: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``scorer.prepare()`` then ``scorer(masks)``: the scores, the preparation's and the scoring's seconds."""
    t0 = time.perf_counter()
    scorer.prepare()
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = np.asarray(scorer(masks), dtype=float)
    return scores, setup, time.perf_counter() - t0
