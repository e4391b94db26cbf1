"""Which units a prune may touch: the filter-space options of :func:`qprune.prune`.

How a method runs is :class:`qprune.pipeline.methods.MethodOptions`; per-layer limits under a
budget go with the budget (:class:`qprune.pipeline.budgeted.BudgetRequest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qprune.errors import QpruneError

__all__ = ["SpaceOptions"]


@dataclass(frozen=True)
class SpaceOptions:
    """The filter space of a prune (see :func:`qprune.model.space.build_space`).

    Attributes:
        layers: ``None`` (all prunable layers), an int ``n`` (the first ``n``), or names / patterns.
        exclude: names / patterns of modules whose output channels must not change.
        min_keep: units every layer keeps (a count >= 1; a kept fraction goes with a budget:
            ``BudgetRequest.min_keep_frac``).
        residual_branches: residual-branch units: ``False`` (none), ``"auto"`` (where no other layer
            prunes the trunk) or ``True``.
    """

    layers: Sequence[str] | int | None = None
    exclude: Sequence[str] = ()
    min_keep: int = 1
    residual_branches: bool | str = False

    def __post_init__(self) -> None:
        if isinstance(self.min_keep, bool) or not isinstance(self.min_keep, int) or self.min_keep < 1:
            raise QpruneError(f"min_keep must be a count >= 1, got {self.min_keep!r} (a kept fraction per layer "
                              "is BudgetRequest.of(budget, min_keep_frac=...))")
