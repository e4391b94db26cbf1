"""The exact-k strategies for a Formulation, in one table: :data:`STRATEGIES`.

``"gamma"`` is the paper's search on the capacity weight (:func:`qprune.solve.gamma.exact_k.solve_exact_k`),
``"layerwise"`` the per-layer count curves + exact DP (:func:`qprune.solve.layerwise.solve_layerwise`).
:data:`DEFAULT_STRATEGY` is what ``prune()``, :class:`~qprune.pipeline.methods.MethodOptions` and the
CLI use when none is named: ``"layerwise"``, measured ~1,000x faster on the same QUBO
(``benchmarks/scale.py``, ``benchmarks/results/scale.md``): equal energy on resnet50, 5e-5 higher
(2.5e-8 relative: one 5-swap in one 1,152-unit layer that swap tabu misses) on efficientnet_b0.
Each entry names its options dataclass, so options arriving as a mapping (a config file, the
pipeline's ``solver_options``) are checked by name before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from importlib import import_module
from typing import TYPE_CHECKING, Any

from qprune.errors import QpruneError

if TYPE_CHECKING:  # annotations only: the table itself stays cheap to import (the CLI reads its names)
    import dimod

    from qprune.solve.constraint import ExactK
    from qprune.solve.result import ExactKResult

__all__ = ["DEFAULT_STRATEGY", "STRATEGIES", "Strategy", "get_strategy", "options_of", "solve"]


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


@dataclass(frozen=True)
class Strategy:
    """One exact-k strategy: ``run(formulation, k, backend, seed, *, constraint, sampler_params,
    progress, options)`` with ``options`` an instance of ``options_type``.

    ``runner`` and ``options`` are ``"module:name"`` paths, imported on first use, so that reading
    the table (names and descriptions for ``--help``) imports no solver.
    """

    name: str
    description: str
    options: str
    runner: str

    @property
    def options_type(self) -> type:
        """The strategy's options dataclass."""
        return _resolve(self.options)

    @property
    def run(self) -> Callable[..., ExactKResult]:
        """The strategy's search function."""
        return _resolve(self.runner)

    def make_options(self, options: Any = None) -> Any:
        """``options`` as this strategy's dataclass (None: the defaults; a mapping: checked by name)."""
        return options_of(self.options_type, options, who=f"strategy {self.name!r}")

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
                 "qprune.solve.gamma.exact_k:GammaOptions", "qprune.solve.gamma.exact_k:solve_exact_k"),
        Strategy("layerwise", "per-layer best-energy-per-count curves + an exact DP over the layers",
                 "qprune.solve.layerwise:LayerwiseOptions", "qprune.solve.layerwise:solve_layerwise"),
    )
}


DEFAULT_STRATEGY = "layerwise"


def options_of(cls: type, options: Any = None, knobs: Mapping[str, Any] | None = None, *, who: str) -> Any:
    """``options`` as the dataclass ``cls`` (None: its defaults; an instance; or a mapping of its fields),
    with ``knobs`` (fields by name) replacing the same fields. A name ``cls`` does not have is a
    one-line error that lists the ones it has."""
    if options is not None and not isinstance(options, (cls, Mapping)):
        raise QpruneError(f"{who} takes its options as a mapping or a {cls.__name__}, got {type(options).__name__}")
    given = dict(options) if isinstance(options, Mapping) else {}
    given.update(knobs or {})
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise QpruneError(f"{who} has no option(s) {unknown}; it takes {known}")
    return replace(options, **given) if isinstance(options, cls) else cls(**given)


def get_strategy(name: str) -> Strategy:
    """The :class:`Strategy` called ``name``; unknown names raise with the list of known ones."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        choices = " or ".join(repr(s) for s in STRATEGIES)
        raise QpruneError(f"unknown strategy {name!r}; choose {choices}") from None


def solve(formulation: Any, k: int, backend: str | dimod.Sampler = "neal", *, strategy: str = DEFAULT_STRATEGY,
          seed: int | None = 0, constraint: ExactK | None = None, sampler_params: Mapping[str, Any] | None = None,
          progress: bool = False, **options: Any) -> ExactKResult:
    """Exact-k with the strategy called ``strategy``; ``options`` are that strategy's (checked by name)."""
    return get_strategy(strategy).solve(formulation, k, backend, seed, constraint=constraint,
                                        sampler_params=sampler_params, progress=progress, options=options)
