"""Exact-k search: the count is always k, caps hold, small cases reach the brute-force optimum."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import dimod
import numpy as np
import pytest

from qprune.solve.constraint import ExactK
from qprune.solve.gamma.exact_k import (
    ExactKResult,
    QuboArrays,
    lagrangian,
    repair_to_k,
    solve_exact_k,
    swap_polish,
)
from qprune.errors import QpruneError
from qprune.qubo.formulation import Formulation, formulate, preset_terms
from qprune.instances.synthetic import random_formulation, synthetic_instance
from qprune.qubo.terms import compute_terms

N_INSTANCES = 200
# small and cheap: this is a correctness test, not a benchmark
FAST = {"search_reads": 5, "final_reads": 10}
BACKEND_PARAMS: dict[str, dict[str, Any]] = {"neal": {"num_sweeps": 200}, "tabu": {"timeout": 1}, "greedy": {}}


@functools.cache
def instance(seed: int) -> tuple[Formulation, int]:
    """A random block-structured instance and a k: even seeds have arbitrary signs (and, some, couplings
    across layers), odd seeds are realistic hybrid QUBOs from the synthetic Half-UNet generator."""
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(2, 11, int(rng.integers(1, 5)))]
    if seed % 2 == 0:
        form = random_formulation(sizes, seed, cross_pairs=int(rng.integers(0, 3)) * (seed % 3 == 0),
                                  density=float(rng.uniform(0.4, 1.0)))
    else:
        form = realistic(sizes, seed)
    n = form.num_variables
    return form, int(rng.integers(0, n + 1))


def realistic(sizes: list[int], seed: int, n_samples: int = 16) -> Formulation:
    """Hybrid QUBO over layers of exactly these sizes, one synthetic_instance per layer, merged."""
    parts = [synthetic_instance(n_units=m, layer_sizes=(m,), seed=1000 * seed + i, n_samples=n_samples)
             for i, m in enumerate(sizes)]
    inst: dict[str, Any] = {
        "labels": [f"l{i}.{lab}" for i, p in enumerate(parts) for lab in p["labels"]],
        "layer_ids": np.repeat(np.arange(len(sizes)), sizes),
        "activations": {i: p["activations"][0] for i, p in enumerate(parts)},
    }
    for key in ("params", "l1", "taylor", "weight_fisher", "channel_fisher"):
        inst[key] = np.concatenate([p[key] for p in parts])
    terms = compute_terms(preset_terms("hybrid", "channel"), inst)
    return formulate(terms, "hybrid", fisher="channel", labels=inst["labels"], layer_ids=inst["layer_ids"])


def brute_force(arrs: QuboArrays, k: int, gamma: float = 0.0, caps: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """min E_gamma(x) subject to sum(x) = k (and the caps), by enumerating every such x."""
    n = arrs.n
    states = np.arange(2**n, dtype=np.int64)
    bits = ((states[:, None] >> np.arange(n)[None, :]) & 1).astype(np.int8)
    X = bits[bits.sum(axis=1) == k]
    if caps is not None:
        group, cap = caps
        onehot = np.eye(int(group.max()) + 1)[group]
        X = X[np.all(X @ onehot <= cap[None, :], axis=1)]
    return float(arrs.energy(X, gamma).min())


def check_result(res: ExactKResult, form: Formulation | None, k: int) -> None:
    assert res.x.dtype == np.int8 and int(res.x.sum()) == k
    assert set(np.unique(res.x)) <= {0, 1}
    assert res.sample == {v: int(b) for v, b in zip(res.labels, res.x)}
    # energy on the returned BQM at the final gamma; objective without the gamma term
    assert res.energy == pytest.approx(res.bqm.energy(res.sample), rel=1e-9, abs=1e-9)
    if form is not None:
        assert res.objective == pytest.approx(float(form.energy(res.x, 0.0)), rel=1e-9, abs=1e-9)
        assert res.energy == pytest.approx(float(form.energy(res.x, res.gamma)), rel=1e-9, abs=1e-9)


# --------------------------------------------------------------------------------------------------
# exact k on every backend


@pytest.mark.parametrize("backend", ["neal", "tabu", "greedy"])
def test_exact_k_on_200_instances(backend: str) -> None:
    # tabu's reads cost ~3 ms each whatever the size: fewer of them keep the test short
    reads = {"search_reads": 3, "final_reads": 5} if backend == "tabu" else FAST
    for seed in range(N_INSTANCES):
        form, k = instance(seed)
        res = solve_exact_k(form, k, backend, seed, sampler_params=BACKEND_PARAMS[backend], **reads)
        check_result(res, form, k)


def test_exact_k_with_the_exact_backend_on_small_instances() -> None:
    done = 0
    for seed in range(N_INSTANCES):
        form, k = instance(seed)
        if form.num_variables > 12:
            continue
        res = solve_exact_k(form, k, "exact", seed, **FAST)
        check_result(res, form, k)
        # the exact backend sees every state: the result is the optimum at the final gamma
        arrs = QuboArrays.from_bqm(form.objective_bqm(), form.reward, form.labels)
        assert res.energy == pytest.approx(brute_force(arrs, k, res.gamma), abs=1e-9)
        done += 1
    assert done >= 40


def test_neal_reaches_the_constrained_optimum_on_small_instances() -> None:
    """min objective s.t. sum(x) = k (uniform reward: gamma is the multiplier of the count)."""
    hits, total = 0, 0
    for seed in range(N_INSTANCES):
        form, k = instance(seed)
        if form.num_variables > 20:
            continue
        bqm = form.objective_bqm()
        res = solve_exact_k(lagrangian(bqm), k, "neal", seed, sampler_params=BACKEND_PARAMS["neal"], **FAST)
        check_result(res, None, k)
        best = brute_force(QuboArrays.from_bqm(bqm), k)
        total += 1
        hits += res.objective <= best + 1e-9 * (1 + abs(best))
    rate = hits / total
    print(f"neal exact-k optimum rate: {hits}/{total} = {rate:.1%}")
    assert total >= 100
    assert rate >= 0.95


def test_formulation_reward_result_is_optimal_at_its_gamma() -> None:
    """With the capacity reward, the result minimises the energy at the final gamma at fixed k."""
    hits, total = 0, 0
    for seed in range(0, N_INSTANCES, 4):
        form, k = instance(seed)
        if form.num_variables > 16:
            continue
        res = solve_exact_k(form, k, "neal", seed, sampler_params=BACKEND_PARAMS["neal"], **FAST)
        arrs = QuboArrays.from_bqm(form.objective_bqm(), form.reward, form.labels)
        total += 1
        hits += res.energy <= brute_force(arrs, k, res.gamma) + 1e-9
    assert hits >= 0.9 * total


# --------------------------------------------------------------------------------------------------
# group caps


def caps_for(form: Formulation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    sizes = np.bincount(form.layer_ids)
    cap = np.maximum(0, sizes - rng.integers(1, 3, len(sizes)))  # keep >= 1-2 channels per layer
    return form.layer_ids, cap, int(rng.integers(0, cap.sum() + 1))


@pytest.mark.parametrize("backend", ["neal", "greedy"])
def test_max_per_group_is_respected(backend: str) -> None:
    rng = np.random.default_rng(1)
    for seed in range(0, N_INSTANCES, 2):
        form, _ = instance(seed)
        group, cap, k = caps_for(form, rng)
        res = solve_exact_k(form, k, backend, seed, constraint=ExactK.build(form.num_variables, k, (group, cap)),
                            sampler_params=BACKEND_PARAMS[backend], **FAST)
        check_result(res, form, k)
        assert np.all(np.bincount(group, weights=res.x, minlength=len(cap)) <= cap)


def test_max_per_group_matches_brute_force_mostly() -> None:
    rng = np.random.default_rng(2)
    hits, total = 0, 0
    for seed in range(1, N_INSTANCES, 4):
        form, _ = instance(seed)
        if form.num_variables > 16:
            continue
        group, cap, k = caps_for(form, rng)
        bqm = form.objective_bqm()
        con = ExactK.build(bqm.num_variables, k, (group, cap))
        res = solve_exact_k(lagrangian(bqm), k, "neal", seed, constraint=con,
                            sampler_params=BACKEND_PARAMS["neal"], **FAST)
        total += 1
        hits += res.objective <= brute_force(QuboArrays.from_bqm(bqm), k, 0.0, (group, cap)) + 1e-9
    assert total >= 10 and hits >= 0.9 * total


def test_caps_accept_scalar_and_mapping_and_reject_infeasible() -> None:
    form = random_formulation((4, 4, 4), 3)
    res = solve_exact_k(form, 6, "greedy", 0, constraint=ExactK.build(12, 6, (form.layer_ids, 2)), **FAST)
    assert np.all(np.bincount(form.layer_ids, weights=res.x) <= 2)
    res = solve_exact_k(form, 5, "greedy", 0, constraint=ExactK.build(12, 5, (form.layer_ids, {0: 0, 1: 4})), **FAST)
    assert res.x[form.layer_ids == 0].sum() == 0
    with pytest.raises(QpruneError, match="at most 6"):
        ExactK.build(12, 7, (form.layer_ids, 2))
    with pytest.raises(QpruneError, match="negative"):
        ExactK.build(12, 1, (form.layer_ids, -1))
    with pytest.raises(QpruneError, match="group ids"):
        ExactK.build(12, 1, (form.layer_ids[:-1], 2))


def test_caps_spanning_components_are_repaired() -> None:
    # groups that cut across the layers: the per-component DP cannot see them; repair must
    form = random_formulation((6, 6, 6), 4)
    group = np.arange(18) % 3
    res = solve_exact_k(form, 9, "neal", 0, constraint=ExactK.build(18, 9, (group, np.array([1, 4, 4]))), **FAST)
    counts = np.bincount(group, weights=res.x)
    assert res.k == 9 and counts[0] <= 1 and np.all(counts[1:] <= 4)


# --------------------------------------------------------------------------------------------------
# reproducibility, info, edge cases


@pytest.mark.parametrize("backend,params", [("neal", {"num_sweeps": 200}), ("greedy", {}),
                                            ("tabu", {"num_restarts": 3, "timeout": 10_000})])
def test_same_seed_same_result(backend: str, params: dict[str, Any]) -> None:
    form = synthetic_formulation(60, seed=3)
    a = solve_exact_k(form, 21, backend, 7, sampler_params=params, **FAST)
    b = solve_exact_k(form, 21, backend, 7, sampler_params=params, **FAST)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.gamma == b.gamma and a.energy == b.energy
    assert [r["gamma"] for r in a.info["iterations"]] == [r["gamma"] for r in b.info["iterations"]]


def synthetic_formulation(n: int, seed: int) -> Formulation:
    sizes = [12, 20] * (n // 32) + ([n % 32] if n % 32 >= 2 else [])
    sizes[-1] += n - sum(sizes)
    return realistic(sizes, seed, n_samples=32)


def test_info_records_the_search() -> None:
    form = synthetic_formulation(80, seed=1)
    res = solve_exact_k(form, 30, "neal", 0, **FAST)
    info = res.info
    assert info["solves"] == len(info["iterations"]) >= 2
    assert info["iterations"][-1]["phase"] == "final" and info["iterations"][-1]["reads"] == 10
    for row in info["iterations"]:
        assert {"gamma", "count_best", "count_recombined", "reads_with_k", "energy_best", "time_s"} <= set(row)
    assert info["total_time_s"] >= info["solve_time_s"] > 0
    assert {"repaired", "repair_moves", "polished", "polish_moves", "hit", "gamma", "bracket"} <= set(info)
    lo, hi = info["bracket"]
    assert lo <= res.gamma <= hi


def test_trivial_and_invalid_k() -> None:
    form = random_formulation((3, 4), 0)
    for k, want in ((0, 0), (7, 7)):
        res = solve_exact_k(form, k, "neal", 0)
        assert res.k == want and res.info["solves"] == 0
        check_result(res, form, k)
    for bad in (-1, 8):
        with pytest.raises(QpruneError, match=f"k={bad} is out of range"):
            solve_exact_k(form, bad, "neal", 0)
    with pytest.raises(QpruneError, match="integer"):
        solve_exact_k(form, 2.5, "neal", 0)  # type: ignore[arg-type]
    with pytest.raises(QpruneError, match="unknown backend"):
        solve_exact_k(form, 2, "nope", 0)
    with pytest.raises(QpruneError, match="does not accept"):
        solve_exact_k(form, 2, "neal", 0, sampler_params={"num_sweepz": 3})


def test_exact_backend_refuses_large_problems() -> None:
    form = random_formulation((10, 10, 10), 0)
    with pytest.raises(QpruneError, match="refuses n=30"):
        solve_exact_k(form, 10, "exact", 0)


def test_callable_must_match_its_reward() -> None:
    form = random_formulation((3, 4), 0)  # reward is not uniform
    with pytest.raises(QpruneError, match="reward"):
        solve_exact_k(form.bqm, 3, "neal", 0)
    res = solve_exact_k(form.bqm, 3, "neal", 0, reward=form.reward, **FAST)
    check_result(res, form, 3)
    with pytest.raises(QpruneError, match="> 0"):
        solve_exact_k(form.bqm, 3, "neal", 0, reward=-form.reward)


class ZeroSampler(dimod.Sampler):
    """Always answers the all-zero state: the search can never land on k by itself."""

    parameters: ClassVar[dict[str, list]] = {"num_reads": []}
    properties: ClassVar[dict[str, Any]] = {}

    def sample(self, bqm: dimod.BinaryQuadraticModel, num_reads: int = 1, **kw: Any) -> dimod.SampleSet:
        zeros = np.zeros((num_reads, bqm.num_variables), dtype=np.int8)
        return dimod.SampleSet.from_samples_bqm((zeros, list(bqm.variables)), bqm)


def test_repair_when_the_solver_never_hits_k() -> None:
    form = synthetic_formulation(50, seed=2)
    res = solve_exact_k(form, 17, ZeroSampler(), 0, max_iter=4, recombine=False, **FAST)
    check_result(res, form, 17)
    assert res.info["repaired"] and res.info["source"] == "repair" and res.info["repair_moves"] == 17
    assert not res.info["hit"] and res.info["solves"] == 5


class SpySampler(dimod.Sampler):
    """Neal that records the keyword arguments of every call."""

    def __init__(self) -> None:
        from dwave.samplers import SimulatedAnnealingSampler

        self.inner = SimulatedAnnealingSampler()
        self.calls: list[dict[str, Any]] = []

    @property
    def parameters(self) -> dict[str, list]:
        return self.inner.parameters

    @property
    def properties(self) -> dict[str, Any]:
        return self.inner.properties

    def sample(self, bqm: dimod.BinaryQuadraticModel, **kw: Any) -> dimod.SampleSet:
        self.calls.append(kw)
        return self.inner.sample(bqm, **kw)


def test_warm_starts_and_derived_seeds() -> None:
    spy = SpySampler()
    form = synthetic_formulation(80, seed=4)
    solve_exact_k(form, 33, spy, 5, **FAST)
    assert len(spy.calls) >= 2
    assert "initial_states" not in spy.calls[0]
    assert all("initial_states" in c for c in spy.calls[1:])
    seeds = [c["seed"] for c in spy.calls]
    assert len(set(seeds)) == len(seeds)
    spy2 = SpySampler()
    solve_exact_k(form, 33, spy2, 5, warm_start=False, **FAST)
    assert all("initial_states" not in c for c in spy2.calls)


# --------------------------------------------------------------------------------------------------
# building blocks


def test_arrays_match_dimod_energies() -> None:
    form = random_formulation((5, 6), 1, cross_pairs=3, offset=1.5)
    bqm = form.bqm(0.7)
    arrs = QuboArrays.from_bqm(form.objective_bqm(), form.reward, form.labels)
    X = np.random.default_rng(0).integers(0, 2, (20, arrs.n)).astype(np.int8)
    np.testing.assert_allclose(arrs.energy(X, 0.7), bqm.energies((X, form.labels)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(arrs.objective(X), form.energy(X), rtol=1e-12, atol=1e-12)
    lo, hi = arrs.gamma_bracket()
    # the bracket is rigorous: all zeros optimal below lo, all ones optimal above hi
    ex = dimod.ExactSolver()
    assert ex.sample(form.bqm(lo - 1e-9)).first.energy == pytest.approx(form.energy(np.zeros(arrs.n), lo - 1e-9))
    assert ex.sample(form.bqm(hi + 1e-9)).first.energy == pytest.approx(form.energy(np.ones(arrs.n), hi + 1e-9))


def test_lagrangian_subtracts_gamma_per_variable() -> None:
    bqm = random_formulation((3, 3), 2).objective_bqm()
    build = lagrangian(bqm)
    b = build(2.0)
    assert all(b.get_linear(v) == pytest.approx(bqm.get_linear(v) - 2.0) for v in bqm.variables)
    assert b.quadratic == bqm.quadratic and list(b.variables) == list(bqm.variables)


def test_swap_polish_reaches_a_swap_local_optimum() -> None:
    form = random_formulation((8, 7), 5)
    arrs = QuboArrays.from_bqm(form.objective_bqm(), form.reward, form.labels)
    rng = np.random.default_rng(0)
    for trial in range(10):
        x0 = np.zeros(arrs.n, dtype=np.int8)
        x0[rng.choice(arrs.n, 6, replace=False)] = 1
        x, _, gain = swap_polish(arrs, x0, gamma=0.3)
        assert x.sum() == 6
        e = float(arrs.energy(x, 0.3))
        assert gain == pytest.approx(float(arrs.energy(x0, 0.3)) - e, abs=1e-9)
        for i in np.flatnonzero(x):
            for j in np.flatnonzero(x == 0):
                y = x.copy()
                y[i], y[j] = 0, 1
                assert float(arrs.energy(y, 0.3)) >= e - 1e-9


def test_repair_to_k_adds_and_removes_the_cheapest() -> None:
    form = random_formulation((6, 6), 6)
    arrs = QuboArrays.from_bqm(form.objective_bqm(), form.reward, form.labels)
    x, moves = repair_to_k(arrs, np.zeros(arrs.n, dtype=np.int8), 4)
    assert x.sum() == 4 and moves == 4
    x, moves = repair_to_k(arrs, np.ones(arrs.n, dtype=np.int8), 9)
    assert x.sum() == 9 and moves == 3
    # one step from all-ones removes the unit whose removal lowers the objective most
    g = arrs.field(np.ones(arrs.n))
    x, _ = repair_to_k(arrs, np.ones(arrs.n, dtype=np.int8), arrs.n - 1)
    assert x[int(np.argmax(g))] == 0


def test_progress_bar_runs(capsys: pytest.CaptureFixture[str]) -> None:
    form = random_formulation((5, 5), 0)
    res = solve_exact_k(form, 4, "neal", 0, progress=True, **FAST)
    assert res.k == 4


def test_the_constraint_must_fit_the_problem() -> None:
    form = random_formulation((6, 6, 6), 4)
    caps = (np.arange(18) % 3, np.array([1, 4, 4]))
    with pytest.raises(QpruneError, match="n=18, k=9"):
        solve_exact_k(form, 8, "neal", 0, constraint=ExactK.build(18, 9, caps))
    with pytest.raises(QpruneError, match="must be an ExactK"):
        solve_exact_k(form, 9, "neal", 0, constraint=caps)


def test_repair_and_polish_keep_the_constraint() -> None:
    from qprune.solve.constraint import ExactK

    form = random_formulation((6, 6), 6)
    arrs = QuboArrays.from_bqm(form.objective_bqm(), form.reward, form.labels)
    con = ExactK.build(arrs.n, 7, (form.layer_ids, np.array([2, 6])))
    x, _ = repair_to_k(arrs, np.ones(arrs.n, dtype=np.int8), 7, con)
    assert con.ok(x)
    y, _, _ = swap_polish(arrs, x, con, gamma=0.2)
    assert con.ok(y)
