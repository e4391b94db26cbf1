"""What every exact-k solver returns: :class:`ExactKResult`."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import dimod
import numpy as np

__all__ = ["ExactKResult"]


@dataclass
class ExactKResult:
    """An exact-k solution.

    ``x`` holds exactly k ones, in the order of ``labels``; ``energy`` is measured on ``bqm`` (the BQM
    at the final ``gamma``) and ``objective`` on the objective without the gamma term (``build(0.0)``).
    ``info`` records the search: gamma per iteration, counts, energies, times, repair and polish.
    """

    labels: list[Hashable]
    x: np.ndarray
    sample: dict[Hashable, int]
    energy: float
    objective: float
    gamma: float
    bqm: dimod.BinaryQuadraticModel
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Number of ones (pruned units)."""
        return int(self.x.sum())
