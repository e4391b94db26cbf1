"""What the pipeline runs on: a problem, or plain batches with a loss and a metric.

:func:`as_workload` adapts both to one :class:`Workload`; :func:`evaluate` is the batch-size-weighted
metric mean every stage reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model.modes import eval_mode

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Workload:
    """What the pipeline needs from a problem or from plain batches + functions."""

    calibration: Sequence[Batch]
    validation: Sequence[Batch]
    test: Sequence[Batch]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]] | None
    primary: str | None  # name of the headline metric
    space_kwargs: dict[str, Any]


def as_workload(
    model: nn.Module,
    problem_or_batches: Any,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    metric_fn: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float] | float] | None = None,
) -> Workload:
    """Adapt a :class:`qprune.problems.Problem` or an iterable of (input, target) batches."""
    if hasattr(problem_or_batches, "calibration_batches"):
        p = problem_or_batches
        return Workload(
            calibration=list(p.calibration_batches()),
            validation=list(p.validation_batches()),
            test=list(p.test_batches()),
            loss=loss_fn or p.loss,
            metrics=p.metrics,
            primary=getattr(p, "primary_metric", None),
            space_kwargs=dict(p.prunable(model)),
        )
    batches = list(problem_or_batches)
    if not batches:
        raise QpruneError("no calibration batches were given")
    if loss_fn is None:
        raise QpruneError("plain batches need a loss_fn(output, target)")
    metrics = None
    if metric_fn is not None:
        def metrics(out: torch.Tensor, target: torch.Tensor) -> Mapping[str, float]:
            value = metric_fn(out, target)
            return value if isinstance(value, Mapping) else {"metric": float(value)}
    return Workload(batches, batches, batches, loss_fn, metrics, None, {})


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    metrics: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]] | None,
) -> dict[str, float]:
    """Mean of each metric over ``batches`` (weighted by batch size), model in eval mode."""
    if metrics is None:
        return {}
    totals: dict[str, float] = {}
    count = 0
    with eval_mode(model):
        for x, y in batches:
            values = metrics(model(x), y)
            n = int(x.shape[0])
            for name, v in values.items():
                totals[name] = totals.get(name, 0.0) + float(v) * n
            count += n
    return {name: v / max(count, 1) for name, v in totals.items()}
