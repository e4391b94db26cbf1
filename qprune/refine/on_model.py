"""Refinement against a model's real validation metric: the pipeline's and the CLI's entry."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from qprune.errors import QpruneError
from qprune.refine.chunked import layer_chunks, refine_chunked
from qprune.refine.result import RefineResult, as_mask
from qprune.refine.scoring.scorer import MaskScorer
from qprune.refine.tt import refine
from qprune.solve.constraint import ExactK

__all__ = ["refine_mask"]


def refine_mask(
    model: Any,
    space: Any,
    problem: Any,
    seed_mask: np.ndarray | Mapping[str, int],
    k: int,
    budget: int = 20_000,
    seed: int | None = 0,
    chunked: bool = False,
    *,
    constraint: ExactK | None = None,
    batches: Sequence[Any] | None = None,
    metric: Callable[[Any, Any], float] | None = None,
    group_size: int = 128,
    progress: bool = True,
    scorer_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> RefineResult:
    """Refine ``seed_mask`` against the real validation metric of a model.

    ``problem`` is a :class:`qprune.problems.Problem` (``validation_batches()``, ``metric``) or
    the pipeline's ``Workload`` (``validation``, ``metrics`` + ``primary``); ``batches`` /
    ``metric`` override what it provides. A :class:`qprune.refine.scoring.MaskScorer` (batched,
    exact, cached) scores the masks. The feasible set is ``constraint`` (an
    :class:`~qprune.solve.constraint.ExactK` for ``(space.N, k)``), else the space's own
    (``ExactK.for_space(space, k)``).
    ``chunked=True`` runs :func:`~qprune.refine.chunked.refine_chunked` over consecutive-layer
    chunks of about ``group_size`` units (:func:`~qprune.refine.chunked.layer_chunks`);
    otherwise :func:`~qprune.refine.tt.refine` on the whole mask. ``options`` go to the stage;
    ``result.info["scorer"]`` holds the scorer's statistics.
    """
    val_batches, metric_fn = _validation_of(problem, batches, metric)
    x0 = as_mask(seed_mask, list(space.labels) if isinstance(seed_mask, Mapping) else None)
    if x0.size != space.N:
        raise QpruneError(f"seed mask has {x0.size} entries, the filter space {space.N}")
    if constraint is None:
        constraint = ExactK.for_space(space, k)
    scorer = MaskScorer(model, space, val_batches, metric_fn, progress=False, **dict(scorer_options or {}))
    try:
        if chunked:
            groups = layer_chunks(np.asarray(space.layer_ids), size=group_size)
            result = refine_chunked(x0, scorer, k, groups, budget=budget, seed=seed, progress=progress,
                                    constraint=constraint, **options)
        else:
            result = refine(x0, scorer, k, budget=budget, seed=seed, progress=progress,
                            constraint=constraint, **options)
    finally:
        scorer.close()
    result.info["scorer"] = scorer.stats()
    return result


def _validation_of(
    problem: Any, batches: Sequence[Any] | None, metric: Callable[[Any, Any], float] | None
) -> tuple[list[Any], Callable[[Any, Any], float]]:
    """Validation batches and a scalar metric from a Problem or the pipeline's Workload."""
    if batches is None:
        if hasattr(problem, "validation_batches"):
            batches = problem.validation_batches()
        elif hasattr(problem, "validation"):
            batches = problem.validation
        else:
            raise QpruneError("refinement needs validation batches: pass a Problem or batches=")
    batches = list(batches)
    if not batches:
        raise QpruneError("refinement needs at least one validation batch")
    if metric is None:
        if callable(getattr(problem, "metric", None)):
            metric = problem.metric
        elif callable(getattr(problem, "metrics", None)):
            metrics, primary = problem.metrics, getattr(problem, "primary", None)

            def metric(out: Any, target: Any) -> float:
                values = metrics(out, target)
                if primary is not None:
                    return float(values[primary])
                if len(values) != 1:
                    raise QpruneError(f"several metrics {sorted(values)} and no primary one to refine on")
                return float(next(iter(values.values())))
        else:
            raise QpruneError("refinement needs a metric (higher is better): pass a Problem or metric=")
    return batches, metric
