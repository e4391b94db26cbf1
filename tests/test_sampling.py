"""qprune.solve.sampling: the one way solvers call a sampler, and the backend traits it reads."""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import dimod
import numpy as np
import pytest

from qprune import backends
from qprune.backends.classical import default_beta_range
from qprune.errors import QpruneError
from qprune.solve.sampling import DEFAULT_BATCH, SamplerCall, batch_variables, sample


def _bqm(n: int = 10, seed: int = 0) -> dimod.BinaryQuadraticModel:
    rng = np.random.default_rng(seed)
    Q = np.triu(rng.normal(size=(n, n)))
    return dimod.BinaryQuadraticModel.from_qubo({(f"v{i}", f"v{j}"): Q[i, j] for i in range(n) for j in range(i, n)})


class Recorder(dimod.Sampler):
    """Neal that records every call's keyword arguments."""

    def __init__(self, parameters: dict[str, list] | None = None) -> None:
        from dwave.samplers import SimulatedAnnealingSampler

        self.inner = SimulatedAnnealingSampler()
        self._parameters = self.inner.parameters if parameters is None else parameters
        self.calls: list[dict[str, Any]] = []

    @property
    def parameters(self) -> dict[str, list]:
        return self._parameters

    @property
    def properties(self) -> dict[str, Any]:
        return {}

    def sample(self, bqm: dimod.BinaryQuadraticModel, **kw: Any) -> dimod.SampleSet:
        self.calls.append(dict(kw))
        return self.inner.sample(bqm, **{k: v for k, v in kw.items() if k in self.inner.parameters})


def test_unknown_user_parameters_are_one_clear_error() -> None:
    with pytest.raises(QpruneError, match=r"backend 'neal' does not accept sampler parameter\(s\) \['num_sweepz'\]"):
        SamplerCall.of("neal", {"num_sweepz": 3})
    with pytest.raises(QpruneError, match="unknown backend"):
        SamplerCall.of("nope")


def test_reads_seed_and_states_only_where_accepted() -> None:
    rec = Recorder({"num_reads": []})
    call = SamplerCall.of(rec, {"num_reads": 99})
    call(_bqm(), reads=4, seed=7, initial_states=([[0] * 10], [f"v{i}" for i in range(10)]))
    assert rec.calls == [{"num_reads": 4}]  # the solver's reads override the user's; no seed, no states
    full = Recorder()
    SamplerCall.of(full, {"num_sweeps": 50})(_bqm(), reads=3, seed=1)
    assert full.calls[0]["num_reads"] == 3 and full.calls[0]["seed"] == 1 and full.calls[0]["num_sweeps"] == 50


class DuckSampler:
    """No ``parameters`` at all: the user's parameters pass as given, nothing is added."""

    def __init__(self) -> None:
        self.kw: dict[str, Any] = {}

    def sample(self, bqm: dimod.BinaryQuadraticModel, **kw: Any) -> dimod.SampleSet:
        self.kw = kw
        return dimod.ExactSolver().sample(bqm)


def test_a_duck_typed_sampler_gets_the_user_parameters_only() -> None:
    duck = DuckSampler()
    call = SamplerCall(duck, "duck", frozenset(), {"anything": 1}, backends.SamplerTraits())
    s = call(_bqm(4), reads=5, seed=2)
    assert duck.kw == {"anything": 1} and s.X.shape == (16, 4)


class SpinSampler(dimod.Sampler):
    """Answers in SPIN, with its variables in reverse order."""

    parameters: ClassVar[dict[str, list]] = {}
    properties: ClassVar[dict[str, Any]] = {}

    def sample(self, bqm: dimod.BinaryQuadraticModel, **kw: Any) -> dimod.SampleSet:
        labels = list(bqm.variables)[::-1]
        X = np.array([[1, -1] * (len(labels) // 2)])
        return dimod.SampleSet.from_samples((X, labels), dimod.SPIN, energy=[0.0])


def test_samples_come_back_binary_in_the_order_asked_for() -> None:
    bqm = _bqm(4)
    order = ["v0", "v2", "v1", "v3"]
    s = sample(SpinSampler(), bqm, order)
    # reversed labels v3 v2 v1 v0 hold +1 -1 +1 -1, so v0=0 v1=1 v2=0 v3=1
    assert s.X.dtype == np.int8 and s.X.tolist() == [[0, 0, 1, 1]]
    with pytest.raises(QpruneError, match="no value for variable 'x'"):
        sample(SpinSampler(), bqm, ["x"])


def test_arrays_in_and_the_best_read() -> None:
    lin = np.array([0.5, -2.0, 0.5])
    quad = (np.array([0]), np.array([1]), np.array([-1.0]))
    s = sample("exact", (lin, quad, 0.0), range(3))
    assert s.X.shape == (8, 3) and s.X[s.best].tolist() == [1, 1, 0]
    assert s.energy[s.best] == pytest.approx(-2.5)


def test_the_neal_trait_passes_the_fast_beta_range_to_a_plain_sa_sampler() -> None:
    from dwave.samplers import SimulatedAnnealingSampler

    bqm = _bqm(12, 3)
    rec = Recorder()  # wraps SA, but no backend describes its class: no trait
    SamplerCall.of(rec)(bqm, reads=2, seed=0)
    assert "beta_range" not in rec.calls[0]
    sa = SimulatedAnnealingSampler()
    call = SamplerCall.of(sa)
    assert call.traits.beta_range is not None
    assert call.kwargs(bqm, reads=5, seed=1)["beta_range"] == default_beta_range(bqm)
    custom = SamplerCall.of(sa, {"beta_schedule_type": "custom", "beta_schedule": [0.1, 1.0]})
    assert "beta_range" not in custom.kwargs(bqm)
    # the same reads as leaving the range to dwave-samplers
    ours = call(bqm, reads=5, seed=1).X
    theirs = sa.sample(bqm, num_reads=5, seed=1)
    np.testing.assert_array_equal(ours, theirs.record.sample[:, [theirs.variables.index(v) for v in bqm.variables]])


def test_batch_variables_come_from_the_backend() -> None:
    assert batch_variables("neal") == DEFAULT_BATCH == 1024
    assert batch_variables("exact") == 24 == batch_variables(backends.get("exact"))
    assert batch_variables("qaoa") == 1 and batch_variables("dwave") == 1
    from dwave.samplers import TabuSampler

    assert batch_variables(TabuSampler()) == DEFAULT_BATCH


@pytest.mark.skipif(importlib.util.find_spec("dwave.system") is None, reason="dwave extra not installed")
def test_a_qpu_sampler_instance_takes_one_block_per_call() -> None:
    from dwave.samplers import SimulatedAnnealingSampler
    from dwave.system.testing import MockDWaveSampler

    qpu = backends.get("dwave", qpu=MockDWaveSampler(topology_type="pegasus", topology_shape=[4],
                                                     substitute_sampler=SimulatedAnnealingSampler()))
    assert batch_variables(qpu) == 1
