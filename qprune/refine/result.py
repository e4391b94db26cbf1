"""What a refinement returns (:class:`RefineResult`) and the objective type it refines against."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qprune.errors import QpruneError

Objective = Callable[[np.ndarray], Any]
"""Maps masks ``int8 [B, N]`` (1 = pruned) to ``B`` floats, higher is better."""

__all__ = ["Objective", "RefineResult", "as_mask"]


@dataclass
class RefineResult:
    """Outcome of :func:`refine` / :func:`refine_chunked`.

    ``x`` has exactly ``k`` ones and ``value >= seed_value``. ``trace`` lists ``(evaluations,
    best value)`` each time the best improved (the first entry is the seed), so a plot of the best
    value against the evaluation count is ``zip(*trace)``.
    """

    x: np.ndarray  # int8 [N], exactly k ones (1 = pruned)
    value: float  # objective(x) as evaluated
    seed_value: float  # objective(seed) as evaluated
    k: int
    evaluations: int  # objective evaluations (distinct masks) used, seed included
    proposals: int  # masks proposed, cache hits included
    iterations: int
    time: float  # seconds
    trace: list[tuple[int, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def improved(self) -> bool:
        """True when the search found a mask strictly better than the seed."""
        return self.value > self.seed_value

    @property
    def gain(self) -> float:
        """``value - seed_value`` (never negative)."""
        return self.value - self.seed_value

    def summary(self) -> dict[str, Any]:
        """JSON-friendly digest (no arrays) for reports and solver info."""
        return {
            "value": self.value, "seed_value": self.seed_value, "gain": self.gain,
            "improved": self.improved, "k": self.k, "evaluations": self.evaluations,
            "proposals": self.proposals, "iterations": self.iterations, "time": self.time,
            "trace": [[int(m), float(v)] for m, v in self.trace],
            **{key: val for key, val in self.info.items() if key != "stages"},
        }

    def sample(self, labels: Sequence[str]) -> dict[str, int]:
        """The mask as a ``{label: 0/1}`` sample (dimod style)."""
        if len(labels) != self.x.size:
            raise QpruneError(f"{len(labels)} labels for a mask of {self.x.size} variables")
        return {str(lab): int(v) for lab, v in zip(labels, self.x)}


def as_mask(seed_sample: Any, labels: Sequence[str] | None) -> np.ndarray:
    """A seed (0/1 vector, or a ``{label: 0/1}`` sample read in ``labels`` order) as ``int8 [N]``."""
    if isinstance(seed_sample, Mapping):
        keys = list(labels) if labels is not None else list(seed_sample)
        try:
            values = [seed_sample[key] for key in keys]
        except KeyError as exc:
            raise QpruneError(f"seed sample has no value for label {exc.args[0]!r}") from exc
        x = np.asarray(values)
    else:
        x = np.asarray(seed_sample)
    if x.ndim != 1 or x.size == 0:
        raise QpruneError(f"seed mask must be a non-empty 1-D 0/1 vector, got shape {x.shape}")
    if not np.all((x == 0) | (x == 1)):
        raise QpruneError("seed mask must contain only 0 and 1 (1 = pruned)")
    return x.astype(np.int8)

