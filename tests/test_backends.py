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


# --------------------------------------------------------------------------------------------------
# neal: dwave-samplers' default beta range, vectorised


def _random_bqm(n: int, density: float, vartype: str, seed: int, *, zero_linear: bool = False,
                isolated: int = 0, zero_couplings: bool = False, labels: str = "int",
                dtype: type = np.float64) -> dimod.BinaryQuadraticModel:
    """Random float biases (sums round differently in another order), plus the awkward cases."""
    rng = np.random.default_rng(seed)
    iu, ju = np.triu_indices(n, 1)
    keep = rng.random(iu.size) < density
    q = rng.normal(size=int(keep.sum())) * 10 ** rng.uniform(-2, 2)
    if zero_couplings:
        q[rng.random(q.size) < 0.3] = 0.0
    lin = np.zeros(n) if zero_linear else rng.normal(size=n)
    bqm = dimod.BinaryQuadraticModel.from_numpy_vectors(lin, (iu[keep], ju[keep], q), 0.5, vartype, dtype=dtype)
    for i in range(isolated):  # no couplings; half of them with a zero bias too
        bqm.add_variable(n + i, 0.0 if i % 2 else float(rng.normal()))
    if labels == "str":  # unsortable-in-model-order labels: the model's own order must be used
        bqm.relabel_variables({v: f"v{int(p)}" for v, p in zip(list(bqm.variables), rng.permutation(len(bqm)))})
    return bqm


def _dwave_beta_ranges(bqm: dimod.BinaryQuadraticModel) -> list[list[float]]:
    """The default range as dwave-samplers computes it: its internal helper (where this version has
    one) and what its sampler reports using."""
    import dwave.samplers.sa.sampler as sa

    out = []
    helper = getattr(sa, "_default_ising_beta_range", None)
    if helper is not None:
        spin = bqm if bqm.vartype is dimod.SPIN else bqm.change_vartype(dimod.SPIN, inplace=False)
        out.append([float(b) for b in helper(spin.linear, spin.quadratic)])
    ss = sa.SimulatedAnnealingSampler().sample(bqm, num_reads=1, num_sweeps=1, seed=0)
    out.append([float(b) for b in ss.info["beta_range"]])
    return out


_RANGE_CASES = {
    "dense": dict(n=40, density=0.8),
    "sparse": dict(n=60, density=0.1),
    "zero-linear": dict(n=30, density=0.5, zero_linear=True),
    "isolated": dict(n=25, density=0.3, isolated=4),
    "zero-linear+isolated": dict(n=25, density=0.3, zero_linear=True, isolated=4),
    "zero-couplings": dict(n=30, density=0.6, zero_couplings=True),
    "str-labels": dict(n=30, density=0.5, labels="str", isolated=2),
    "float32": dict(n=30, density=0.7, dtype=np.float32),
    "single": dict(n=1, density=0.0),
}


@pytest.mark.parametrize("vartype", ["BINARY", "SPIN"])
@pytest.mark.parametrize("case", sorted(_RANGE_CASES))
def test_default_beta_range_equals_dwave_samplers(case: str, vartype: str) -> None:
    from qprune.backends.classical import default_beta_range

    for seed in range(5):
        bqm = _random_bqm(**_RANGE_CASES[case], vartype=vartype, seed=seed)
        got = default_beta_range(bqm)
        assert all(type(b) is float for b in got)
        for ref in _dwave_beta_ranges(bqm):
            assert got == ref  # bit for bit: the schedules, hence the samples, must be identical


def test_default_beta_range_rounded_biases_count_the_smallest_gaps() -> None:
    # many spins share the smallest |bias|: the cold end depends on how many
    from qprune.backends.classical import default_beta_range

    rng = np.random.default_rng(3)
    for vartype in ("BINARY", "SPIN"):
        Q = np.round(rng.normal(size=(30, 30)), 1)
        bqm = dimod.BinaryQuadraticModel(np.triu(Q), vartype)
        for ref in _dwave_beta_ranges(bqm):
            assert default_beta_range(bqm) == ref
        # the same integer-valued biases in an object-dtype model (dimod.DictBQM)
        ints = dimod.DictBQM({v: int(10 * b) for v, b in bqm.linear.items()},
                             {uv: int(10 * b) for uv, b in bqm.quadratic.items()}, 0, vartype)
        for ref in _dwave_beta_ranges(ints):
            assert default_beta_range(ints) == ref


def test_default_beta_range_all_zero_and_empty_warn_like_dwave() -> None:
    from qprune.backends.classical import default_beta_range

    for bqm in (dimod.BinaryQuadraticModel({"a": 0.0, "b": 0.0}, {("a", "b"): 0.0}, 1.0, "SPIN"),
                dimod.BinaryQuadraticModel("BINARY")):
        with pytest.warns(UserWarning, match="All bqm biases are zero"):
            assert default_beta_range(bqm) == [0.1, 1.0]


def test_default_beta_range_does_not_rely_on_dimods_coupling_order(monkeypatch: pytest.MonkeyPatch) -> None:
    from qprune.backends.classical import default_beta_range

    bqm = _random_bqm(40, 0.7, "SPIN", seed=9)
    ref = _dwave_beta_ranges(bqm)[0]
    original = dimod.BinaryQuadraticModel.to_numpy_vectors
    rng = np.random.default_rng(0)

    def shuffled(self, *args, **kwargs):
        h, (row, col, q), off = original(self, *args, **kwargs)
        p = rng.permutation(row.size)
        flip = rng.random(row.size) < 0.5
        row, col = np.where(flip, col, row)[p], np.where(flip, row, col)[p]
        return h, (row, col, q[p]), off

    monkeypatch.setattr(dimod.BinaryQuadraticModel, "to_numpy_vectors", shuffled)
    assert default_beta_range(bqm) == ref


def test_neal_is_a_simulated_annealing_sampler_without_the_coupling_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    import dwave.samplers.sa.sampler as sa

    from qprune.backends.classical import NealSampler

    neal = backends.get("neal")
    assert type(neal) is NealSampler and isinstance(neal, sa.SimulatedAnnealingSampler)
    plain = sa.SimulatedAnnealingSampler()
    assert neal.parameters == plain.parameters and neal.properties == plain.properties
    assert type(pickle.loads(pickle.dumps(neal))) is NealSampler

    def loop(*args, **kwargs):
        raise AssertionError("dwave-samplers' per-coupling beta range loop ran")

    monkeypatch.setattr(sa, "_default_ising_beta_range", loop, raising=False)
    bqm = _bqm(20, seed=1)
    ss = neal.sample(bqm, num_reads=2, num_sweeps=10, seed=1)
    dimod.testing.assert_sampleset_energies(ss, bqm)


@pytest.mark.parametrize("labels", ["int", "str"])
@pytest.mark.parametrize("vartype", ["BINARY", "SPIN"])
def test_neal_same_seed_same_samples_as_plain_simulated_annealing(vartype: str, labels: str) -> None:
    from dwave.samplers import SimulatedAnnealingSampler

    neal, plain = backends.get("neal"), SimulatedAnnealingSampler()
    calls = [
        dict(num_reads=8, num_sweeps=40, seed=7),
        dict(num_reads=8, num_sweeps=40, seed=7, beta_schedule_type="linear"),
        dict(num_reads=4, num_sweeps=30, num_sweeps_per_beta=3, seed=8, randomize_order=True),
        dict(num_reads=4, num_sweeps=10, seed=9, beta_range=[0.05, 3.0]),  # the caller's range stands
        dict(num_reads=4, seed=10, beta_schedule_type="custom", beta_schedule=[0.1, 0.5, 1.0, 4.0]),
    ]
    for i, kw in enumerate(calls):
        bqm = _random_bqm(60, 0.4, vartype, seed=20 + i, isolated=2, labels=labels)
        a, b = neal.sample(bqm, **kw), plain.sample(bqm, **kw)
        assert a.vartype is b.vartype and list(a.variables) == list(b.variables)
        np.testing.assert_array_equal(a.record.sample, b.record.sample)
        np.testing.assert_array_equal(a.record.energy, b.record.energy)
        assert a.info.keys() == b.info.keys()
        assert a.info["beta_schedule_type"] == b.info["beta_schedule_type"]
        ra, rb = a.info["beta_range"], b.info["beta_range"]
        assert (ra is None and rb is None) or [float(x) for x in ra] == [float(x) for x in rb]
    # positional arguments bind as the parent's (beta_range, num_reads, num_sweeps)
    bqm = _bqm(20, seed=2)
    pos = neal.sample(bqm, None, 3, 20, seed=4)
    ref = plain.sample(bqm, num_reads=3, num_sweeps=20, seed=4)
    np.testing.assert_array_equal(pos.record.sample, ref.record.sample)
    with pytest.raises(TypeError, match="multiple values"):
        neal.sample(bqm, [0.1, 1.0], beta_range=[0.1, 2.0])


def test_neal_leaves_an_invalid_custom_schedule_to_dwave() -> None:
    neal = backends.get("neal")
    with pytest.raises(ValueError, match="'beta_schedule' must be provided"):
        neal.sample(_bqm(5), beta_schedule_type="custom")
    with pytest.raises(ValueError, match="'beta_schedule' must be set to None"):
        neal.sample(_bqm(5), beta_schedule=[0.1, 1.0])


def test_traits_come_from_the_entry_and_the_instance(clean_registry) -> None:
    class Mine(dimod.RandomSampler):
        pass

    path = f"{Mine.__module__}.{Mine.__qualname__}"
    backends.register("mine", Mine, max_variables=50, sampler_classes=(path,))
    assert backends.traits("mine").batch_variables == 50  # no batch size: the size limit
    assert backends.traits(Mine()).batch_variables == 50  # the instance's class is listed
    backends.register("mine", Mine, max_variables=50, batch_variables=8, sampler_classes=(path,), replace=True)
    assert backends.traits("mine").batch_variables == 8 == backends.traits(Mine()).batch_variables
    inst = Mine()
    inst.batch_variables = 3  # the instance's own attribute wins
    assert backends.traits(inst).batch_variables == 3
    assert backends.traits(dimod.RandomSampler()) == backends.SamplerTraits()
    assert backends.traits("neal").beta_range is not None and backends.traits("tabu").beta_range is None
