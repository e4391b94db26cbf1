"""One way to call a sampler: :class:`SamplerCall` (and :func:`sample` for a single call).

Every solver samples through it: the gamma search, the layerwise block solves and ``qprune solve``.
It resolves the backend (a registered name or a dimod sampler), checks the user's parameters against
``sampler.parameters`` once, adds what the caller controls (``num_reads``, ``seed``,
``initial_states``) only where the sampler accepts it, adds what the backend says it wants (its fast
default ``beta_range``, :func:`qprune.backends.traits`), and returns the reads as an int8 0/1 array in
the variable order asked for, with the reported energies.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dimod
import numpy as np

from qprune import backends
from qprune.backends.registry import SamplerTraits
from qprune.errors import QpruneError

__all__ = ["DEFAULT_BATCH", "SamplerCall", "Samples", "batch_variables", "backend_name", "sample"]

# Variables per packed call when the backend states no preference.
DEFAULT_BATCH = 1024

Arrays = tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], float]  # linear, (row, col, quad), offset


@dataclass
class Samples:
    """The reads of one sampler call."""

    X: np.ndarray  # int8 [R, N], 0/1, columns in the order asked for
    energy: np.ndarray  # float [R], as the sampler reported them
    num_occurrences: np.ndarray  # int [R]
    time_s: float  # wall time of the sampler call
    info: dict[str, Any] = field(default_factory=dict)  # the SampleSet's info

    @property
    def best(self) -> int:
        """Row of the lowest reported energy (the row dimod's ``SampleSet.first`` picks)."""
        return int(np.argsort(self.energy)[0])


def backend_name(backend: str | dimod.Sampler) -> str:
    """A name for reports: the registered name, or the sampler's class name."""
    return backend if isinstance(backend, str) else type(backend).__name__


def batch_variables(backend: str | dimod.Sampler) -> int:
    """Variables per call when independent sub-problems are packed into one BQM, as the backend
    describes itself (:func:`qprune.backends.traits`), else :data:`DEFAULT_BATCH`."""
    batch = backends.traits(backend).batch_variables
    return DEFAULT_BATCH if batch is None else int(batch)


@dataclass
class SamplerCall:
    """A sampler bound to the user's checked parameters and the backend's traits; call it per BQM."""

    sampler: dimod.Sampler
    name: str
    accepted: frozenset[str]  # empty: the sampler does not say (duck-typed): pass the user's as given
    params: dict[str, Any]
    traits: SamplerTraits

    @classmethod
    def of(cls, backend: str | dimod.Sampler, params: Mapping[str, Any] | None = None) -> SamplerCall:
        """Resolve ``backend`` and check ``params`` against what it accepts (one clear error)."""
        name = backend_name(backend)
        sampler = backends.get(backend)
        try:
            accepted = frozenset(sampler.parameters)
        except Exception:  # noqa: BLE001 - a duck-typed sampler without .parameters
            accepted = frozenset()
        user = dict(params or {})
        unknown = sorted(k for k in user if accepted and k not in accepted)
        if unknown:
            raise QpruneError(
                f"backend {name!r} does not accept sampler parameter(s) {unknown}; it accepts {sorted(accepted)}"
            )
        return cls(sampler, name, accepted, user, backends.traits(backend))

    def accepts(self, parameter: str) -> bool:
        return parameter in self.accepted

    def kwargs(self, bqm: dimod.BinaryQuadraticModel, *, reads: int | None = None, seed: int | None = None,
               initial_states: Any = None) -> dict[str, Any]:
        """The keyword arguments of one call: the user's, then reads/seed/initial states where
        accepted (they override the user's), then the backend's beta range if the call leaves it open."""
        kw = dict(self.params)
        if reads is not None and self.accepts("num_reads"):
            kw["num_reads"] = max(1, int(reads))
        if seed is not None and self.accepts("seed"):
            kw["seed"] = int(seed)
        if initial_states is not None and self.accepts("initial_states"):
            kw["initial_states"] = initial_states
        if self.traits.beta_range is not None and self.accepts("beta_range"):
            beta_range = self.traits.beta_range(bqm, kw)
            if beta_range is not None:
                kw["beta_range"] = beta_range
        return kw

    def __call__(self, bqm: dimod.BinaryQuadraticModel | Arrays, labels: Sequence[Hashable] | None = None, *,
                 reads: int | None = None, seed: int | None = None, initial_states: Any = None) -> Samples:
        """Sample ``bqm`` (or BINARY arrays ``(linear, (row, col, quad), offset)`` over 0..N-1)."""
        bqm = as_bqm(bqm)
        labels = list(bqm.variables) if labels is None else labels
        kw = self.kwargs(bqm, reads=reads, seed=seed, initial_states=initial_states)
        t0 = time.perf_counter()
        ss = self.sampler.sample(bqm, **kw)
        record = ss.record
        dt = time.perf_counter() - t0
        return Samples(columns(ss, record, labels), np.asarray(record.energy, dtype=np.float64),
                       np.asarray(record.num_occurrences), dt, dict(ss.info))


def sample(backend: str | dimod.Sampler, bqm: dimod.BinaryQuadraticModel | Arrays,
           labels: Sequence[Hashable] | None = None, *, reads: int | None = None, seed: int | None = None,
           params: Mapping[str, Any] | None = None, initial_states: Any = None) -> Samples:
    """One call of ``backend`` on ``bqm``: :meth:`SamplerCall.of` then the call."""
    return SamplerCall.of(backend, params)(bqm, labels, reads=reads, seed=seed, initial_states=initial_states)


def as_bqm(model: dimod.BinaryQuadraticModel | Arrays) -> dimod.BinaryQuadraticModel:
    """A BQM as is, or a BINARY one from ``(linear, (row, col, quad), offset)`` numpy vectors."""
    if isinstance(model, dimod.BinaryQuadraticModel):
        return model
    linear, quad, offset = model
    return dimod.BinaryQuadraticModel.from_numpy_vectors(linear, quad, offset, dimod.BINARY)


def columns(ss: dimod.SampleSet, record: np.recarray, labels: Sequence[Hashable]) -> np.ndarray:
    """The reads of ``ss`` as int8 0/1 rows with one column per label, in ``labels`` order."""
    pos = {v: i for i, v in enumerate(ss.variables)}
    try:
        cols = np.array([pos[v] for v in labels], dtype=np.int64)
    except KeyError as exc:
        raise QpruneError(f"the sampler returned no value for variable {exc.args[0]!r}") from None
    X = np.asarray(record.sample)[:, cols]
    if ss.vartype is dimod.SPIN:
        X = (X + 1) // 2
    return X.astype(np.int8)
