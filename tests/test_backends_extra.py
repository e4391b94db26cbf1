"""openjij, openjij-sqa, dwave (offline, MockDWaveSampler), dwave-hybrid, qaoa, and neal on the
OR-Library bqp instances (the exact-k CQM: tests/test_cqm.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import unittest
import warnings
from pathlib import Path

import dimod
import dimod.testing
import numpy as np
import pytest

from qprune.backends import available, get, info
from qprune.errors import BackendUnavailable, QpruneError
from qprune.instances.orlib import load_instance

HAS_OPENJIJ = importlib.util.find_spec("openjij") is not None
HAS_DWAVE = importlib.util.find_spec("dwave.system") is not None
HAS_QAOA = all(importlib.util.find_spec(m) is not None for m in ("qiskit_optimization", "qiskit_aer"))

needs_openjij = pytest.mark.skipif(not HAS_OPENJIJ,
                                   reason="openjij extra not installed (pip install 'qprune[openjij]')")
needs_dwave = pytest.mark.skipif(not HAS_DWAVE, reason="dwave extra not installed (pip install 'qprune[dwave]')")
needs_qaoa = pytest.mark.skipif(not HAS_QAOA, reason="qaoa extra not installed (pip install 'qprune[qaoa]')")


def _random_bqm(n: int, seed: int, vartype: str = "BINARY", labels: str = "s") -> dimod.BinaryQuadraticModel:
    """A dense random BQM with string (or int) labels."""
    bqm = dimod.generators.gnp_random_bqm(n, 0.6, vartype, random_state=seed)
    if labels == "s":
        bqm.relabel_variables({v: f"layer.{v // 4}:{v}" for v in list(bqm.variables)})
    return bqm


def _exact_min(bqm: dimod.BinaryQuadraticModel) -> float:
    return float(dimod.ExactSolver().sample(bqm).first.energy)


# ----------------------------------------------------------------------------------- registry


def test_new_backends_are_registered_with_their_extras():
    names = {b.name: b for b in available()}
    for name, extra in (("openjij", "openjij"), ("openjij-sqa", "openjij"), ("dwave", "dwave"),
                        ("dwave-hybrid", "dwave"), ("qaoa", "qaoa")):
        assert names[name].extra == extra
        assert names[name].description
    assert info("dwave").needs_token and info("dwave-hybrid").needs_token
    assert info("qaoa").max_variables == 20


def test_listing_backends_imports_no_optional_dependency():
    code = ("import sys, qprune.backends as b; b.available(); "
            "print(any(m in sys.modules for m in ('openjij', 'qiskit', 'qiskit_aer', 'dwave.system')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -------------------------------------------------------------------------- dimod conformance

if HAS_OPENJIJ:

    @dimod.testing.load_sampler_bqm_tests(lambda: get("openjij", num_reads=3, num_sweeps=100))
    class TestOpenJijConformance(unittest.TestCase):
        pass

    @dimod.testing.load_sampler_bqm_tests(lambda: get("openjij-sqa", num_reads=3, num_sweeps=100))
    class TestOpenJijSQAConformance(unittest.TestCase):
        pass

if HAS_DWAVE:
    _MOCK = None

    def _mock_qpu():
        """One shared pegasus-16 mock (0.2 s to build) with an SA substitute (the default 128-qubit
        Chimera cannot embed our blocks)."""
        global _MOCK
        if _MOCK is None:
            from dwave.samplers import SimulatedAnnealingSampler
            from dwave.system.testing import MockDWaveSampler

            _MOCK = MockDWaveSampler(topology_type="pegasus", topology_shape=[16],
                                     substitute_sampler=SimulatedAnnealingSampler(),
                                     substitute_kwargs={"num_sweeps": 200})
        return _MOCK

    @dimod.testing.load_sampler_bqm_tests(lambda: get("dwave", qpu=_mock_qpu()))
    class TestDWaveMockConformance(unittest.TestCase):
        pass

    @dimod.testing.load_sampler_bqm_tests(lambda: get("dwave-hybrid", sampler=dimod.ExactSolver()))
    class TestDWaveHybridWrapperConformance(unittest.TestCase):
        pass

if HAS_QAOA:

    @dimod.testing.load_sampler_bqm_tests(lambda: get("qaoa", reps=1, maxiter=15, shots=128))
    class TestQAOAConformance(unittest.TestCase):
        pass


# ------------------------------------------------------------------------------------- openjij


@needs_openjij
@pytest.mark.parametrize("name", ["openjij", "openjij-sqa"])
def test_openjij_seed_reproduces_and_reads_differ(name):
    bqm = _random_bqm(30, 1)
    s = get(name)
    a = s.sample(bqm, num_reads=6, seed=7, num_sweeps=50)
    b = s.sample(bqm, num_reads=6, seed=7, num_sweeps=50)
    c = s.sample(bqm, num_reads=6, seed=8, num_sweeps=50)
    assert np.array_equal(a.record.sample, b.record.sample)
    assert len({tuple(r) for r in a.record.sample}) > 1  # an int seed alone would give 6 equal reads
    assert not np.array_equal(a.record.sample, c.record.sample)
    assert len(a) == 6 and set(a.variables) == set(bqm.variables) and a.vartype is dimod.BINARY
    dimod.testing.assert_sampleset_energies(a, bqm)


@needs_openjij
@pytest.mark.parametrize("name", ["openjij", "openjij-sqa"])
def test_openjij_finds_the_optimum_and_keeps_spin_vartype(name):
    s = get(name, num_sweeps=300)
    for seed in range(3):
        bqm = _random_bqm(12, seed)
        assert s.sample(bqm, num_reads=10, seed=0).first.energy == pytest.approx(_exact_min(bqm))
    spin = _random_bqm(10, 5, "SPIN")
    ss = s.sample(spin, num_reads=10, seed=0)
    assert ss.vartype is dimod.SPIN and set(np.unique(ss.record.sample)) <= {-1, 1}
    assert ss.first.energy == pytest.approx(_exact_min(spin))


@needs_openjij
def test_openjij_leaves_the_global_numpy_rng_alone():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    get("openjij").sample(_random_bqm(10, 0), num_reads=2, seed=1)
    assert np.random.random() == expected  # openjij's schedule helper calls np.random.seed()


@needs_openjij
def test_openjij_sqa_is_scale_invariant():
    """SQA's beta is absolute; the model is normalised, so units (1e-3 pruning biases) do not matter."""
    bqm = _random_bqm(16, 3)
    small = bqm.copy()
    small.scale(1e-3)
    s = get("openjij-sqa")
    a = s.sample(bqm, num_reads=4, seed=2, num_sweeps=100)
    b = s.sample(small, num_reads=4, seed=2, num_sweeps=100)
    assert np.array_equal(a.record.sample, b.record.sample)


@needs_openjij
def test_openjij_initial_states_are_accepted_and_checked():
    bqm = _random_bqm(8, 0)
    s = get("openjij")
    start = dimod.ExactSolver().sample(bqm).lowest().truncate(1)
    ss = s.sample(bqm, num_reads=3, seed=0, initial_states=start)
    assert len(ss) == 3
    ss = s.sample(bqm, num_reads=2, seed=0, initial_states=([[0] * 8, [1] * 8], list(bqm.variables)))
    assert len(ss) == 2
    with pytest.raises(QpruneError, match="initial_states"):
        s.sample(bqm, num_reads=2, initial_states=([[0] * 3], ["a", "b", "c"]))
    with pytest.raises(QpruneError, match="unknown openjij parameter"):
        s.sample(bqm, num_sweep=10)


@needs_openjij
def test_openjij_works_in_the_gamma_search():
    from qprune.solve.gamma.exact_k import solve_exact_k
    from qprune.instances.synthetic import random_formulation

    f = random_formulation((5, 6, 7), seed=2)
    res = solve_exact_k(f, 6, "openjij", seed=0, sampler_params={"num_sweeps": 200})
    assert res.x.sum() == 6


# -------------------------------------------------------------------------------------- dwave


def _no_dwave_config(monkeypatch, tmp_path):
    """No token anywhere: env cleared, config search confined to an empty home."""
    for var in ("DWAVE_API_TOKEN", "DWAVE_CONFIG_FILE", "DWAVE_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "etc"))


@needs_dwave
@pytest.mark.parametrize("name", ["dwave", "dwave-hybrid"])
def test_dwave_without_token_is_a_one_line_error(monkeypatch, tmp_path, name):
    _no_dwave_config(monkeypatch, tmp_path)
    with pytest.raises(BackendUnavailable) as err:
        get(name)
    msg = str(err.value)
    assert "\n" not in msg and "dwave config create" in msg and "DWAVE_API_TOKEN" in msg


@needs_dwave
def test_dwave_token_is_found_in_the_environment_without_a_network_call(monkeypatch, tmp_path):
    from qprune.backends.dwave import check_credentials

    _no_dwave_config(monkeypatch, tmp_path)
    monkeypatch.setenv("DWAVE_API_TOKEN", "DEV-not-a-real-token")
    check_credentials("dwave")  # reads the Ocean configuration only: no exception, no request
    check_credentials("dwave", {"token": "explicit"})


@needs_dwave
def test_dwave_embeds_once_across_a_gamma_sweep():
    s = get("dwave", qpu=_mock_qpu())
    base = _random_bqm(12, 4)
    seen = []
    for gamma in (0.0, 0.5, 1.0, 2.0):
        bqm = base.copy()
        for v in bqm.variables:
            bqm.add_linear(v, -gamma)
        ss = s.sample(bqm, num_reads=10, seed=3)
        seen.append((ss.info["embedding_reused"], ss.info["embedding_context"]["embedding"]))
        dimod.testing.assert_sampleset_energies(ss, bqm)
        assert "chain_break_fraction" in ss.data_vectors
        assert 0.0 <= ss.info["chain_break_fraction"] <= 1.0
    assert s.embeddings_computed == 1
    assert [r for r, _ in seen] == [False, True, True, True]
    assert all(dict(e) == dict(seen[0][1]) for _, e in seen)
    other = _random_bqm(6, 9)  # another structure: embedded once more
    s.sample(other, num_reads=5)
    s.sample(other, num_reads=5)
    assert s.embeddings_computed == 2


@needs_dwave
def test_dwave_reports_chain_breaks_with_a_weak_chain_strength():
    bqm = dimod.generators.gnp_random_bqm(20, 1.0, "SPIN", random_state=0)  # K20 needs chains
    weak = get("dwave", qpu=_mock_qpu(), chain_strength=1e-4)
    ss = weak.sample(bqm, num_reads=20, seed=1)
    assert ss.info["max_chain_length"] > 1
    assert ss.info["chain_break_fraction"] > 0
    assert np.mean(ss.data_vectors["chain_break_fraction"]) == pytest.approx(ss.info["chain_break_fraction"])
    strong = get("dwave", qpu=_mock_qpu()).sample(bqm, num_reads=20, seed=1)  # uniform torque compensation
    assert strong.info["chain_break_fraction"] < ss.info["chain_break_fraction"]


@needs_dwave
def test_dwave_drops_non_qpu_parameters_with_a_warning():
    s = get("dwave", qpu=_mock_qpu())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ss = s.sample(_random_bqm(4, 0), num_reads=3, num_sweeps=50)
    assert ss.info["ignored_parameters"] == ["num_sweeps"]
    assert any("num_sweeps" in str(w.message) for w in caught)


@needs_dwave
def test_dwave_backend_in_the_gamma_search_embeds_once():
    from qprune.solve.gamma.exact_k import solve_exact_k
    from qprune.instances.synthetic import random_formulation

    f = random_formulation((4, 5), seed=1)
    s = get("dwave", qpu=_mock_qpu())
    res = solve_exact_k(f, 4, s, seed=0, search_reads=10, final_reads=20)
    assert res.x.sum() == 4
    assert res.info["solves"] >= 2 and s.embeddings_computed == 1


@needs_dwave
def test_dwave_hybrid_wrapper_ignores_reads_and_seed():
    from dwave.samplers import SimulatedAnnealingSampler

    s = get("dwave-hybrid", sampler=SimulatedAnnealingSampler())
    bqm = _random_bqm(8, 2)
    ss = s.sample(bqm, num_reads=5, seed=1)
    assert ss.info["ignored_parameters"] == ["num_reads", "seed"]
    dimod.testing.assert_sampleset_energies(ss, bqm)


# --------------------------------------------------------------------------------------- qaoa


@needs_qaoa
@pytest.mark.parametrize("n,seed", [(8, 0), (8, 1), (10, 2), (10, 3)])
def test_qaoa_reaches_the_exact_optimum_on_small_instances(n, seed):
    bqm = _random_bqm(n, seed)
    ss = get("qaoa").sample(bqm, seed=1)
    assert ss.first.energy == pytest.approx(_exact_min(bqm))
    dimod.testing.assert_sampleset_energies(ss, bqm)
    assert "probability" in ss.data_vectors and len(ss) > 1  # the other sampled bitstrings too


@needs_qaoa
def test_qaoa_is_seeded_and_keeps_spin():
    bqm = _random_bqm(6, 4, "SPIN")
    s = get("qaoa", reps=1)
    a, b = s.sample(bqm, seed=5), s.sample(bqm, seed=5)
    assert np.array_equal(a.record.sample, b.record.sample)
    assert a.vartype is dimod.SPIN and a.first.energy == pytest.approx(_exact_min(bqm))


@needs_qaoa
def test_qaoa_size_guard_suggests_a_sub_problem():
    with pytest.raises(QpruneError, match=r"--layers.*--strategy layerwise"):
        get("qaoa").sample(_random_bqm(21, 0))
    with pytest.raises(QpruneError, match="max_qubits"):
        get("qaoa", max_qubits=4).sample(_random_bqm(5, 0))
    with pytest.raises(QpruneError, match="optimizer"):
        get("qaoa", optimizer="ADAM")


# ------------------------------------------------------------------------------- bqp with neal


def load_bqp(shared_data: Path, instance: str) -> tuple[dimod.BinaryQuadraticModel, float]:
    """OR-Library bqp instance as a minimisation BQM, and its best-known (minimum) energy."""
    return load_instance(shared_data / "qubo", instance)


# Tuned on these instances (seed 0): 10 reads x 1,000 sweeps already hit every bqp50/100/250 optimum;
# bqp1000 gets 20 reads x 2,000 sweeps for margin (10 x 1,000 was within 0.06 %).
_NEAL = {50: (10, 1000), 100: (10, 1000), 250: (20, 1000), 500: (20, 2000), 1000: (20, 2000)}


def _neal_gap(shared_data: Path, size: int, idx: int) -> float:
    bqm, best = load_bqp(shared_data, f"bqp{size}.{idx}")
    reads, sweeps = _NEAL[size]
    e = get("neal").sample(bqm, num_reads=reads, num_sweeps=sweeps, seed=0).first.energy
    return (e - best) / abs(best)


@pytest.mark.parametrize("size", [50, 100])
def test_neal_reaches_best_known_on_bqp50_and_bqp100(shared_data, size):
    for idx in range(1, 11):
        assert _neal_gap(shared_data, size, idx) <= 1e-12, f"bqp{size}.{idx}"


@pytest.mark.slow
def test_neal_reaches_best_known_on_bqp250(shared_data):
    for idx in range(1, 11):
        assert _neal_gap(shared_data, 250, idx) <= 1e-12, f"bqp250.{idx}"


@pytest.mark.slow
def test_neal_is_within_a_tenth_of_a_percent_on_bqp1000(shared_data):
    for idx in range(1, 11):
        assert _neal_gap(shared_data, 1000, idx) <= 1e-3, f"bqp1000.{idx}"
