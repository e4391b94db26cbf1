"""The exact-k strategies for a Formulation, in one table: :data:`STRATEGIES`.

``"gamma"`` is the paper's search on the capacity weight (:func:`qprune.solve.exact_k.solve_exact_k`),
``"layerwise"`` the per-layer count curves + exact DP (:func:`qprune.solve.layerwise.solve_layerwise`).
Each entry names its options dataclass, so options arriving as a mapping (a config file, the
pipeline's ``solver_options``) are checked by name before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import dimod

from qprune.errors import QpruneError
from qprune.solve.constraint import ExactK
from qprune.solve.exact_k import GammaOptions, exact_k_search
from qprune.solve.layerwise import LayerwiseOptions, layerwise_search
from qprune.solve.result import ExactKResult

__all__ = ["STRATEGIES", "Strategy", "get_strategy", "solve"]


@dataclass(frozen=True)
class Strategy:
    """One exact-k strategy: ``run(formulation, k, backend, seed, *, constraint, sampler_params,
    progress, options)`` with ``options`` an instance of ``options_type``."""

    name: str
    description: str
    options_type: type
    run: Callable[..., ExactKResult]

    def make_options(self, options: Any = None) -> Any:
        """``options`` as this strategy's dataclass (None: the defaults; a mapping: checked by name)."""
        if options is None:
            return self.options_type()
        if isinstance(options, self.options_type):
            return options
        if not isinstance(options, Mapping):
            raise QpruneError(f"strategy {self.name!r} takes its options as a mapping or a "
                              f"{self.options_type.__name__}, got {type(options).__name__}")
        known = [f.name for f in fields(self.options_type)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise QpruneError(f"strategy {self.name!r} has no option(s) {unknown}; it takes {known}")
        return self.options_type(**options)

    def solve(self, formulation: Any, k: int, backend: str | dimod.Sampler = "neal", seed: int | None = 0, *,
              constraint: ExactK | None = None, sampler_params: Mapping[str, Any] | None = None,
              progress: bool = False, options: Any = None) -> ExactKResult:
        """Run the strategy; ``options`` as for :meth:`make_options`."""
        return self.run(formulation, k, backend, seed, constraint=constraint, sampler_params=sampler_params,
                        progress=progress, options=self.make_options(options))


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("gamma", "search on the capacity weight gamma until exactly k are pruned (the paper's)",
                 GammaOptions, exact_k_search),
        Strategy("layerwise", "per-layer best-energy-per-count curves + an exact DP over the layers",
                 LayerwiseOptions, layerwise_search),
    )
}


def get_strategy(name: str) -> Strategy:
    """The :class:`Strategy` called ``name``; unknown names raise with the list of known ones."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        choices = " or ".join(repr(s) for s in STRATEGIES)
        raise QpruneError(f"unknown strategy {name!r}; choose {choices}") from None


def solve(formulation: Any, k: int, backend: str | dimod.Sampler = "neal", *, strategy: str = "gamma",
          seed: int | None = 0, constraint: ExactK | None = None, sampler_params: Mapping[str, Any] | None = None,
          progress: bool = False, **options: Any) -> ExactKResult:
    """Exact-k with the strategy called ``strategy``; ``options`` are that strategy's (checked by name)."""
    return get_strategy(strategy).solve(formulation, k, backend, seed, constraint=constraint,
                                        sampler_params=sampler_params, progress=progress, options=options)
