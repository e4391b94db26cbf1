"""Classical samplers that ship with the core install: neal (default), tabu, greedy, exact."""

from __future__ import annotations

from typing import Any

import dimod

from qprune.backends.registry import register
from qprune.errors import QpruneError

EXACT_MAX_VARIABLES = 24


class GuardedExactSolver(dimod.ExactSolver):
    """:class:`dimod.ExactSolver` that refuses problems it cannot enumerate in reasonable time."""

    def __init__(self, max_variables: int = EXACT_MAX_VARIABLES) -> None:
        super().__init__()
        self.max_variables = max_variables

    def sample(self, bqm: dimod.BinaryQuadraticModel, **kwargs: Any) -> dimod.SampleSet:
        if bqm.num_variables > self.max_variables:
            raise QpruneError(
                f"backend 'exact' enumerates 2^n states and refuses n={bqm.num_variables} "
                f"> {self.max_variables} variables; use a sub-problem (--layers) or another backend"
            )
        return super().sample(bqm, **kwargs)


def _neal(**config: Any) -> dimod.Sampler:
    from dwave.samplers import SimulatedAnnealingSampler

    return SimulatedAnnealingSampler(**config)


def tabu_timeout_ms(num_variables: int) -> int:
    """Default tabu time per read: dwave-samplers' 100 ms is right for thousands of variables but
    makes every read of a 20-variable block cost 100 ms; scale it with the size (5..100 ms)."""
    return int(min(100, max(5, num_variables // 10)))


def _tabu(**config: Any) -> dimod.Sampler:
    from dwave.samplers import TabuSampler

    class SizedTabuSampler(TabuSampler):
        """:class:`dwave.samplers.TabuSampler` whose default ``timeout`` grows with the problem size."""

        def sample(self, bqm: dimod.BinaryQuadraticModel, **kwargs: Any) -> dimod.SampleSet:
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = tabu_timeout_ms(len(bqm.variables))
            return super().sample(bqm, **kwargs)

    return SizedTabuSampler(**config)


def _greedy(**config: Any) -> dimod.Sampler:
    from dwave.samplers import SteepestDescentSampler

    return SteepestDescentSampler(**config)


def _exact(max_variables: int = EXACT_MAX_VARIABLES) -> dimod.Sampler:
    return GuardedExactSolver(max_variables)


register("neal", _neal, description="simulated annealing (dwave-samplers); the default",
         requires=("dwave.samplers",))
register("tabu", _tabu, description="tabu search (dwave-samplers); default timeout 5-100 ms per read by size",
         requires=("dwave.samplers",))
register("greedy", _greedy, description="steepest descent from random starts (dwave-samplers)",
         requires=("dwave.samplers",))
register("exact", _exact, description=f"brute force (dimod.ExactSolver), <= {EXACT_MAX_VARIABLES} variables",
         max_variables=EXACT_MAX_VARIABLES)
