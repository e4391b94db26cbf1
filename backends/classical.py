"""Classical samplers that ship with the core install: neal (default), tabu, greedy, exact."""

from __future__ import annotations

import inspect
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import dimod
import numpy as np

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


def default_beta_range(bqm: dimod.BinaryQuadraticModel) -> list[float]:
    """dwave-samplers' default simulated-annealing ``[hot_beta, cold_beta]`` for ``bqm``, vectorised.

    ``SimulatedAnnealingSampler`` derives it (``_default_ising_beta_range``) from the Ising form with a
    Python loop over every coupling: about a second for the 220k couplings of a 4,000-unit pruning
    QUBO, more than a 15-read anneal. This is the same formula on numpy arrays and returns the same
    floats, bit for bit: the per-spin sums |h_i| + sum_j |J_ij| are accumulated in the loop's order
    (|h_i| first, then the neighbours by ascending index) and in the model's dtype, and a BINARY model
    is converted with dimod's own ``change_vartype``, as the sampler does. Hot: log(2) / (2 max_i field_i); cold:
    log(#spins at the smallest nonzero |bias| / 0.01) / (2 * that bias). A model whose biases are all
    zero gets dwave-samplers' warning and its arbitrary [0.1, 1].
    """
    spin = bqm if bqm.vartype is dimod.SPIN else bqm.change_vartype(dimod.SPIN, inplace=False)
    h, (row, col, J), _ = spin.to_numpy_vectors(sort_labels=False)  # the model's own variable order
    n = h.size
    if h.dtype.kind != "f":  # an object-dtype model (DictBQM): its int/float biases, as float64
        h, J = h.astype(np.float64), J.astype(np.float64)
    ah, aJ = np.abs(h), np.abs(J)  # in the model's dtype, as the loop's sums are
    # Couplings as (high, low) index pairs in the loop's order: by high, then low (dimod already
    # returns them so; sort if a version does not). Then adding |J| to the high ends and then to the
    # low ends gives every spin |h_i|, its lower neighbours ascending, its higher ones ascending.
    hi, lo = np.maximum(row, col), np.minimum(row, col)
    key = hi.astype(np.int64) * n + lo
    if key.size > 1 and not np.all(key[1:] > key[:-1]):
        order = np.argsort(key, kind="stable")
        hi, lo, aJ = hi[order], lo[order], aJ[order]
    field = ah.copy()
    np.add.at(field, hi, aJ)  # np.add.at adds sequentially, in index order
    np.add.at(field, lo, aJ)
    # smallest nonzero |bias| (h or J) and the number of spins whose own smallest one it is
    h_nz, J_nz = ah[ah != 0], aJ[aJ != 0]
    if h_nz.size + J_nz.size == 0:
        warnings.warn("All bqm biases are zero (all energies are zero), this is likely a value error. "
                      "Temperature range is set arbitrarily to [0.1,1]. Metropolis-Hastings update is "
                      "non-ergodic.", stacklevel=2)
        return [0.1, 1.0]
    min_bias = np.float64(min(h_nz.min(initial=np.inf), J_nz.min(initial=np.inf)))
    at_min = ah == min_bias
    on_min = aJ == min_bias
    at_min[hi[on_min]] = True
    at_min[lo[on_min]] = True
    max_field = float(field.max(initial=0.0))
    hot = np.log(2) / (2 * max_field) if max_field != 0 else 1.0
    cold = np.log(np.sum(at_min) / 0.01) / (2 * min_bias)
    return [float(hot), float(cold)]


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _beta_range_unset(arguments: Mapping[str, Any]) -> bool:
    """True when a sample call leaves the beta schedule to the sampler's default range."""
    return (arguments.get("beta_range") is None and arguments.get("beta_schedule") is None
            and arguments.get("beta_schedule_type", "geometric") != "custom")


def beta_range_for(bqm: dimod.BinaryQuadraticModel, arguments: Mapping[str, Any]) -> list[float] | None:
    """The ``beta_range`` a simulated-annealing call with ``arguments`` should be given: the sampler's
    own default, computed by :func:`default_beta_range`, when the call leaves the schedule to that
    default and the model has float biases; None otherwise (the sampler decides). The ``neal``
    backend describes itself with it, so solvers pass it to plain dwave-samplers SA instances too.
    """
    # object-dtype models (DictBQM, arbitrary Python numbers) keep dwave-samplers' own loop
    if _beta_range_unset(arguments) and getattr(bqm, "dtype", None) in _FLOAT_DTYPES:
        return default_beta_range(bqm)
    return None


def _make_neal_sampler() -> type:
    from dwave.samplers import SimulatedAnnealingSampler

    signature = inspect.signature(SimulatedAnnealingSampler.sample)

    class NealSampler(SimulatedAnnealingSampler):
        """:class:`dwave.samplers.SimulatedAnnealingSampler` that computes its default ``beta_range``
        with :func:`default_beta_range` (same values, vectorised) instead of a Python loop over every
        coupling. Everything else (parameters, seeds, schedules, ``SampleSet.info``) is the parent's.
        """

        def sample(self, bqm: dimod.BinaryQuadraticModel, *args: Any, **kwargs: Any) -> dimod.SampleSet:
            bound = signature.bind(self, bqm, *args, **kwargs)
            beta_range = beta_range_for(bqm, bound.arguments)
            if beta_range is not None:
                bound.arguments["beta_range"] = beta_range
            return super().sample(*bound.args[1:], **bound.kwargs)

    NealSampler.__module__ = __name__
    NealSampler.__qualname__ = "NealSampler"
    return NealSampler


_NEAL_LOCK = threading.Lock()


def _neal_class() -> type:
    with _NEAL_LOCK:  # one class, even when threads ask at once
        if "NealSampler" not in globals():
            globals()["NealSampler"] = _make_neal_sampler()
    return globals()["NealSampler"]


def __getattr__(name: str) -> Any:
    # ``NealSampler`` is built on first use so that importing the backends (listing them) does not
    # import dwave.samplers (~0.5 s); once built it is a plain module attribute (and pickles).
    if name == "NealSampler":
        return _neal_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _neal(**config: Any) -> dimod.Sampler:
    return _neal_class()(**config)


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
         requires=("dwave.samplers",), beta_range=beta_range_for,
         sampler_classes=("dwave.samplers.sa.sampler.SimulatedAnnealingSampler", f"{__name__}.NealSampler"))
register("tabu", _tabu, description="tabu search (dwave-samplers); default timeout 5-100 ms per read by size",
         requires=("dwave.samplers",))
register("greedy", _greedy, description="steepest descent from random starts (dwave-samplers)",
         requires=("dwave.samplers",))
register("exact", _exact, description=f"brute force (dimod.ExactSolver), <= {EXACT_MAX_VARIABLES} variables",
         max_variables=EXACT_MAX_VARIABLES)
