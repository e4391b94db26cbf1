"""Backend registry: lookup, listing, third-party registration, dimod conformance, seeds."""

from __future__ import annotations

import unittest
from types import SimpleNamespace

import dimod
import dimod.testing
import numpy as np
import pytest

from qprune import backends
from qprune.backends import registry
from qprune.errors import BackendUnavailable, QpruneError

BUILTIN = ("neal", "tabu", "greedy", "exact")


def _bqm(n: int = 12, seed: int = 0) -> dimod.BinaryQuadraticModel:
    rng = np.random.default_rng(seed)
    Q = np.triu(rng.normal(size=(n, n)))
    return dimod.BinaryQuadraticModel.from_qubo({(i, j): Q[i, j] for i in range(n) for j in range(i, n)})


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch):
    """Registry state restored after the test, whatever it registered."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_BROKEN", dict(registry._BROKEN))
    yield registry


# --------------------------------------------------------------------------------------------------
# lookup and listing


@pytest.mark.parametrize("name", BUILTIN)
def test_get_builtin_returns_a_sampler(name: str) -> None:
    sampler = backends.get(name)
    assert isinstance(sampler, dimod.Sampler)
    assert backends.info(name).installed


def test_get_passes_a_sampler_instance_through() -> None:
    s = dimod.RandomSampler()
    assert backends.get(s) is s


def test_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(QpruneError, match=r"unknown backend 'nope'.*neal"):
        backends.get("nope")


def test_available_is_sorted_and_lists_the_builtins() -> None:
    names = [b.name for b in backends.available()]
    assert names == sorted(names)
    assert set(BUILTIN) <= set(names)
    neal = backends.info("neal")
    assert not neal.needs_token and neal.extra is None


def test_register_third_party_and_duplicate(clean_registry) -> None:
    info = backends.register("mine", dimod.RandomSampler, description="random", extra=None)
    assert backends.get("mine").__class__ is dimod.RandomSampler
    assert info in backends.available()
    with pytest.raises(QpruneError, match="already registered"):
        backends.register("mine", dimod.RandomSampler)
    backends.register("mine", dimod.ExactSolver, replace=True)
    assert isinstance(backends.get("mine"), dimod.ExactSolver)
    registry.unregister("mine")
    with pytest.raises(QpruneError, match="unknown backend"):
        backends.get("mine")


def test_missing_dependency_names_the_extra(clean_registry) -> None:
    backends.register("ghost", dimod.RandomSampler, requires=("no_such_module_qprune_xyz",), extra="ghost")
    assert not backends.info("ghost").installed
    with pytest.raises(BackendUnavailable, match=r"pip install 'qprune\[ghost\]'"):
        backends.get("ghost")


def test_factory_config_is_passed_through() -> None:
    exact = backends.get("exact", max_variables=3)
    with pytest.raises(QpruneError, match="refuses n=4"):
        exact.sample(_bqm(4))


# --------------------------------------------------------------------------------------------------
# entry points


def _fake_entry_points(items: dict[str, object]):
    def entry_points(group: str):
        assert group == "qprune.backends"
        return [SimpleNamespace(name=n, value=f"plugin:{n}", load=(lambda o=o: _load(o))) for n, o in items.items()]

    return entry_points


def _load(obj: object) -> object:
    if isinstance(obj, Exception):
        raise obj
    return obj


def test_entry_point_hook_and_sampler_class(clean_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def hook() -> None:
        calls.append(1)
        backends.register("plugin-hook", dimod.RandomSampler, description="from a hook")

    class PluginSampler(dimod.ExactSolver):
        """A plugin's sampler class."""

    monkeypatch.setattr(registry, "entry_points", _fake_entry_points(
        {"plugin-hook": hook, "plugin-class": PluginSampler, "plugin-broken": ImportError("no module named x")}
    ))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    with pytest.warns(RuntimeWarning, match="plugin-broken"):
        names = [b.name for b in backends.available()]
    assert {"plugin-hook", "plugin-class"} <= set(names) and "plugin-broken" not in names
    assert calls == [1]
    assert isinstance(backends.get("plugin-class"), PluginSampler)
    assert backends.info("plugin-class").description == "A plugin's sampler class."
    with pytest.raises(BackendUnavailable, match="plugin-broken.*failed to load"):
        backends.get("plugin-broken")
    backends.available()  # loaded once: the hook does not run again
    assert calls == [1]


# --------------------------------------------------------------------------------------------------
# dimod conformance: 32 generated tests per backend (small BQMs, every vartype and label kind)


@pytest.mark.filterwarnings("ignore:All bqm biases are zero")
@dimod.testing.load_sampler_bqm_tests(lambda: backends.get("neal"))
class TestNealConformance(unittest.TestCase):
    pass


@dimod.testing.load_sampler_bqm_tests(lambda: backends.get("tabu"))
class TestTabuConformance(unittest.TestCase):
    pass


@dimod.testing.load_sampler_bqm_tests(lambda: backends.get("greedy"))
class TestGreedyConformance(unittest.TestCase):
    pass


@dimod.testing.load_sampler_bqm_tests(lambda: backends.get("exact"), max_num_variables=24)
class TestExactConformance(unittest.TestCase):
    pass


@pytest.mark.parametrize("name", BUILTIN)
def test_sampler_api_and_energies(name: str) -> None:
    sampler = backends.get(name)
    dimod.testing.assert_sampler_api(sampler)
    bqm = _bqm(10, seed=3)
    kw = {"num_reads": 5, "seed": 1} if "num_reads" in sampler.parameters else {}
    ss = sampler.sample(bqm, **kw)
    dimod.testing.assert_sampleset_energies(ss, bqm)
    assert set(ss.variables) == set(bqm.variables)


def test_exact_refuses_more_than_24_variables() -> None:
    bqm = dimod.BinaryQuadraticModel({i: 1.0 for i in range(25)}, {}, 0.0, "BINARY")
    with pytest.raises(QpruneError, match=r"backend 'exact'.*refuses n=25 > 24"):
        backends.get("exact").sample(bqm)


def test_exact_finds_the_ground_state() -> None:
    bqm = _bqm(10, seed=4)
    ss = backends.get("exact").sample(bqm)
    brute = min(bqm.energy({v: (s >> i) & 1 for i, v in enumerate(bqm.variables)}) for s in range(2**10))
    assert ss.first.energy == pytest.approx(brute)


@pytest.mark.parametrize("name", ("neal", "tabu", "greedy"))
def test_same_seed_same_samples(name: str) -> None:
    bqm = _bqm(30, seed=5)
    # tabu is time-limited: a fixed restart budget makes its search deterministic too
    kw = {"num_restarts": 5, "timeout": 10_000} if name == "tabu" else {}
    a = backends.get(name).sample(bqm, num_reads=6, seed=11, **kw)
    b = backends.get(name).sample(bqm, num_reads=6, seed=11, **kw)
    np.testing.assert_array_equal(a.record.sample, b.record.sample)
    if name != "tabu":
        # and the seed matters: short anneals / greedy descents on a larger frustrated BQM differ
        big = _bqm(100, seed=6)
        kw = {"num_sweeps": 5} if name == "neal" else {}
        c1 = backends.get(name).sample(big, num_reads=6, seed=11, **kw)
        c2 = backends.get(name).sample(big, num_reads=6, seed=12, **kw)
        assert not np.array_equal(c1.record.sample, c2.record.sample)


def test_tabu_default_timeout_scales_with_size() -> None:
    from qprune.backends.classical import tabu_timeout_ms

    assert tabu_timeout_ms(20) == 5 and tabu_timeout_ms(500) == 50 and tabu_timeout_ms(40_000) == 100
