"""Refinement against a model's real validation metric: the pipeline's and the CLI's entry."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

import torch

from qprune.errors import QpruneError
from qprune.refine.chunked import layer_chunks, refine_chunked
from qprune.refine.journal import ScoreJournal
from qprune.refine.result import RefineResult, as_mask
from qprune.refine.scoring.scorer import MaskScorer
from qprune.refine.tt import refine
from qprune.solve.constraint import ExactK

__all__ = ["refine_mask", "search_subset"]


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
    precision: str = "float32",
    search_images: int | None = None,
    search_crop: int | None = None,
    journal: str | os.PathLike[str] | None = None,
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

    A faster, approximate search: ``precision="bfloat16"`` (the scorer's passes under bfloat16
    autocast) and ``search_images`` (score masks on that many validation images, spread evenly over
    the split, :func:`search_subset`), ``search_crop`` (score the central ``crop x crop`` pixels of
    each of those images). Either way the search's winner and the seed are then scored
    exactly (float32, the whole validation split) and the winner is kept only if it beats the seed
    there; ``info["exact"]`` holds both exact scores and ``info["kept_seed"]`` says whether the
    seed was kept. ``journal``: a file that keeps every score of the search
    (:class:`~qprune.refine.journal.ScoreJournal`), so the same call started again after a stop
    resumes where it was.
    """
    val_batches, metric_fn = _validation_of(problem, batches, metric)
    x0 = as_mask(seed_mask, list(space.labels) if isinstance(seed_mask, Mapping) else None)
    if x0.size != space.N:
        raise QpruneError(f"seed mask has {x0.size} entries, the filter space {space.N}")
    if constraint is None:
        constraint = ExactK.for_space(space, k)
    reduced = search_images is not None or search_crop is not None
    search = search_subset(val_batches, search_images, search_crop) if reduced else val_batches
    scorer = MaskScorer(model, space, search, metric_fn, progress=False, precision=precision,
                        **dict(scorer_options or {}))
    objective = scorer if journal is None else ScoreJournal(scorer, journal, space.N)
    try:
        if chunked:
            groups = layer_chunks(np.asarray(space.layer_ids), size=group_size)
            result = refine_chunked(x0, objective, k, groups, budget=budget, seed=seed, progress=progress,
                                    constraint=constraint, **options)
        else:
            result = refine(x0, objective, k, budget=budget, seed=seed, progress=progress,
                            constraint=constraint, **options)
    finally:
        scorer.close()
    result.info["scorer"] = {**scorer.stats(), "precision": precision,
                             "images": sum(int(x.shape[0]) for x, _ in search), "crop": search_crop}
    if isinstance(objective, ScoreJournal):
        result.info["journal"] = {"path": str(journal), "replayed": objective.replayed,
                                  "computed": objective.computed}
    if precision != "float32" or search is not val_batches:
        _exact_final(result, x0, MaskScorer(model, space, val_batches, metric_fn, progress=False,
                                            **dict(scorer_options or {})))
    return result


def _exact_final(result: RefineResult, x0: np.ndarray, exact: MaskScorer) -> None:
    """Score the seed and the search's winner exactly; keep the seed unless the winner beats it."""
    if not result.improved:
        value = float(exact(x0[None, :])[0])
        result.info.update(exact={"seed": value, "refined": value}, kept_seed=True)
        return
    seed_value, value = (float(v) for v in exact(np.stack([x0, result.x])))
    kept = value <= seed_value
    result.info.update(exact={"seed": seed_value, "refined": value}, kept_seed=kept,
                       search={"value": result.value, "seed_value": result.seed_value})
    if kept:
        result.x, result.value = x0.copy(), result.seed_value


def search_subset(batches: Sequence[Any], images: int | None,
                  crop: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``images`` of the validation images (None: all), evenly spaced over the split (neighbouring
    patches often come from one photo), in batches of the original batch size.

    ``crop``: keep only the central ``crop x crop`` pixels of each image (input and target). For
    the same pixels scored, many central crops rank masks closer to the whole split than a few whole
    images (the pixels come from more photos); corners rank worse (the missing context is on two
    sides). The model must accept that size (a U-Net: a multiple of its total downsampling).
    """
    batches = list(batches)
    if not all(isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) for x, y in batches):
        raise QpruneError("search_images needs validation batches of (input, target) tensors")
    xs, ys = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    images = len(xs) if images is None else images
    if isinstance(images, bool) or not 1 <= int(images) <= len(xs):
        raise QpruneError(f"search_images must be between 1 and the {len(xs)} validation images, got {images!r}")
    if crop is not None:
        xs, ys = _central(xs, crop), _central(ys, crop)
    idx = torch.from_numpy(np.linspace(0, len(xs) - 1, int(images)).round().astype(np.int64))
    size = int(batches[0][0].shape[0])
    return [(xs[idx[i:i + size]], ys[idx[i:i + size]]) for i in range(0, len(idx), size)]


def _central(t: torch.Tensor, crop: int) -> torch.Tensor:
    """The central ``crop x crop`` window of images ``[B, C, H, W]`` (a copy, so the rest is freed)."""
    if t.dim() != 4:
        raise QpruneError(f"search_crop needs image batches [B, C, H, W] as input and target, got shape "
                          f"{list(t.shape)}")
    h, w = int(t.shape[-2]), int(t.shape[-1])
    if isinstance(crop, bool) or not 1 <= int(crop) <= min(h, w):
        raise QpruneError(f"search_crop must be between 1 and the images' smaller side ({min(h, w)}), got {crop!r}")
    top, left = (h - int(crop)) // 2, (w - int(crop)) // 2
    return t[..., top:top + int(crop), left:left + int(crop)].contiguous()


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
