"""Layer-decomposed exact-k (qprune.solve.layerwise) against brute force and against the gamma search."""

from __future__ import annotations

import importlib.util

import dimod
import numpy as np
import pytest

from qprune.errors import QpruneError
from qprune.solve.constraint import ExactK
from qprune.solve.layerwise import block_count_curve, solve_layerwise
from qprune.solve.strategies import solve
from qprune.instances.synthetic import random_formulation

N = 18
ALL = ((np.arange(1 << N)[:, None] >> np.arange(N)) & 1).astype(np.int8)  # every state of 3 x 6 vars
COUNTS = ALL.sum(axis=1)


@pytest.fixture(scope="module")
def f3x6():
    return random_formulation((6, 6, 6), seed=3)


_ENERGY0: dict[int, tuple[object, np.ndarray, np.ndarray]] = {}


def _all_energies(f, gamma):
    """E_gamma of all 2^18 states = E_0 - gamma * reward.x (E_0 computed once per formulation)."""
    hit = _ENERGY0.get(id(f))
    if hit is None or hit[0] is not f or not np.array_equal(hit[2], f.reward):
        hit = (f, f.energy(ALL, 0.0), f.reward.copy())
        _ENERGY0[id(f)] = hit
    return hit[1] - gamma * (ALL @ hit[2])


def _brute(f, k, gamma, caps=None):
    """min E_gamma(x) over all 2^18 states with sum(x) = k (and per-layer caps)."""
    E = _all_energies(f, gamma)
    ok = COUNTS == k
    if caps is not None:
        for layer, cap in enumerate(caps):
            ok &= ALL[:, f.layer_ids == layer].sum(axis=1) <= cap
    return float(E[ok].min())


@pytest.mark.parametrize("gamma", [0.0, 0.4, 3.0])
@pytest.mark.parametrize("k", [0, 1, 5, 9, 14, 18])
def test_equals_brute_force_on_three_blocks_of_six(f3x6, k, gamma):
    res = solve_layerwise(f3x6, k, gamma=gamma)
    assert res.x.sum() == k and res.x.dtype == np.int8
    assert res.energy == pytest.approx(_brute(f3x6, k, gamma), abs=1e-9)
    assert res.gamma == gamma and res.info["gamma_source"] == "given"
    assert res.bqm.energy(res.sample) == pytest.approx(res.energy)
    assert res.objective == pytest.approx(float(f3x6.energy(res.x, 0.0)))
    assert sum(res.info["per_layer_counts"].values()) == k
    assert res.info["strategy"] == "layerwise" and res.info["exact_blocks"] == 3


@pytest.mark.parametrize("k", [3, 8, 12])
def test_heuristic_block_solver_is_exact_on_small_blocks(f3x6, k):
    """Forcing the sampler + swap-polish path (no enumeration) still finds the optimum here."""
    res = solve_layerwise(f3x6, k, "neal", seed=1, gamma=0.2, brute_force_max=0)
    assert res.info["heuristic_blocks"] == 3
    assert res.energy == pytest.approx(_brute(f3x6, k, 0.2), abs=1e-9)


def test_per_layer_caps_as_array_int_and_mapping(f3x6):
    caps = [2, 5, 3]
    lids = f3x6.layer_ids
    res = solve_layerwise(f3x6, 8, gamma=0.5, constraint=ExactK.per_layer(lids, 8, np.array(caps)))
    assert res.energy == pytest.approx(_brute(f3x6, 8, 0.5, caps))
    assert all(res.info["per_layer_counts"][layer] <= c for layer, c in enumerate(caps))
    res = solve_layerwise(f3x6, 8, gamma=0.5, constraint=ExactK.per_layer(lids, 8, {0: 2, 1: 5, 2: 3}))
    assert res.energy == pytest.approx(_brute(f3x6, 8, 0.5, caps))
    res = solve_layerwise(f3x6, 9, gamma=0.5, constraint=ExactK.per_layer(lids, 9, 3))
    assert res.energy == pytest.approx(_brute(f3x6, 9, 0.5, [3, 3, 3]))
    with pytest.raises(QpruneError, match="caps"):
        ExactK.per_layer(lids, 10, 3)


@pytest.mark.parametrize("brute_force_max", [20, 0])
def test_cross_layer_couplings_are_merged_exactly(brute_force_max):
    f = random_formulation((6, 6, 6), seed=4, cross_pairs=3)
    assert f.cross is not None and f.cross.nnz
    for k, caps in ((4, None), (9, None), (7, [2, 6, 6])):
        con = None if caps is None else ExactK.per_layer(f.layer_ids, k, np.array(caps))
        res = solve_layerwise(f, k, "neal", seed=0, gamma=0.3, constraint=con, brute_force_max=brute_force_max)
        assert res.info["merged_blocks"]
        assert res.energy == pytest.approx(_brute(f, k, 0.3, caps), abs=1e-9)


def test_default_gamma_is_the_lagrangian_one():
    """Without gamma, E is minimised at the gamma where the per-layer relaxation first reaches k.

    With one reward per layer (as for real layers: every filter of a conv has the same parameter
    count) the gamma = 0 curves shifted by -gamma r c are exact at any gamma: no second pass.
    """
    f = random_formulation((6, 6, 6), seed=5)
    f.reward = np.repeat([0.02, 0.05, 0.09], 6)
    for k in (4, 11):
        res = solve_layerwise(f, k)
        assert res.info["gamma_source"] == "lagrangian"
        assert res.energy == pytest.approx(_brute(f, k, res.gamma), abs=1e-9)
        # that gamma's unconstrained optimum prunes >= k units, a slightly smaller one prunes fewer
        at = COUNTS[np.argmin(_all_energies(f, res.gamma))]
        below = COUNTS[np.argmin(_all_energies(f, res.gamma - 1e-6 * max(1.0, abs(res.gamma))))]
        assert at >= k > below


def test_default_gamma_with_per_unit_rewards_resolves_at_that_gamma(f3x6):
    """Rewards that differ inside a layer: the curves are solved again at the chosen gamma."""
    for k in (4, 11):
        res = solve_layerwise(f3x6, k)
        assert res.energy == pytest.approx(_brute(f3x6, k, res.gamma), abs=1e-9)


@pytest.mark.parametrize("k", [5, 13, 22])
def test_heuristic_path_matches_enumeration_on_16_variable_blocks(k):
    """Sampling + swap descent + focus + tabu against the exact curves of the same blocks."""
    f = random_formulation((16, 14), seed=11)
    exact = solve_layerwise(f, k, gamma=0.1)
    heur = solve_layerwise(f, k, "neal", seed=0, gamma=0.1, brute_force_max=0)
    assert exact.info["exact_blocks"] == 2 and heur.info["heuristic_blocks"] == 2
    assert heur.energy == pytest.approx(exact.energy, abs=1e-9)


def test_block_count_curve_matches_enumeration():
    rng = np.random.default_rng(0)
    m = 9
    h = rng.normal(size=m)
    U = np.triu(rng.normal(size=(m, m)), 1)
    M = U + U.T
    E, X = block_count_curve(h, M)
    S = ((np.arange(1 << m)[:, None] >> np.arange(m)) & 1).astype(np.int8)
    ES = S @ h + 0.5 * np.einsum("bi,ij,bj->b", S, M, S)
    for c in range(m + 1):
        assert E[c] == pytest.approx(ES[S.sum(1) == c].min())
        assert X[c].sum() == c and h @ X[c] + 0.5 * X[c] @ M @ X[c] == pytest.approx(E[c])


def test_same_seed_same_mask_whatever_n_jobs():
    f = random_formulation((30, 25, 30, 28), seed=6)
    a = solve_layerwise(f, 40, "neal", seed=3, gamma=0.0, n_jobs=1, batch_variables=60)
    b = solve_layerwise(f, 40, "neal", seed=3, gamma=0.0, n_jobs=2, batch_variables=60)
    assert np.array_equal(a.x, b.x)
    assert a.info["heuristic_blocks"] == 4


def test_a_sampler_instance_and_sampler_params_are_used():
    from dwave.samplers import TabuSampler

    f = random_formulation((24, 22), seed=7)
    res = solve_layerwise(f, 15, TabuSampler(), seed=0, gamma=0.0, sampler_params={"timeout": 5})
    assert res.x.sum() == 15 and res.info["backend"] == "TabuSampler"


def test_result_beats_or_ties_the_gamma_search():
    """On the gamma search's own objective (gamma = 0) and on its final BQM."""
    from qprune.solve.gamma.exact_k import solve_exact_k

    f = random_formulation((40, 32, 48, 36), seed=8)
    k = 60
    g = solve_exact_k(f, k, "neal", seed=0)
    lw0 = solve_layerwise(f, k, "neal", seed=0, gamma=0.0)
    lwg = solve_layerwise(f, k, "neal", seed=0, gamma=g.gamma)
    tol = 1e-9 * (1 + abs(g.objective))
    assert lw0.objective <= g.objective + tol
    assert lwg.energy <= float(f.energy(g.x, g.gamma)) + tol


def test_errors_name_the_problem(f3x6):
    with pytest.raises(QpruneError, match="k=19"):
        solve_layerwise(f3x6, 19)
    with pytest.raises(QpruneError, match="Formulation"):
        solve_layerwise(dimod.BinaryQuadraticModel("BINARY"), 1)
    with pytest.raises(QpruneError, match="max_per_layer"):
        ExactK.per_layer(f3x6.layer_ids, 2, np.array([1, 2]))
    with pytest.raises(QpruneError, match="strategy"):
        solve(f3x6, 2, strategy="annealing")


def test_dispatcher_runs_both_strategies(f3x6):
    a = solve(f3x6, 5, "neal", strategy="layerwise", seed=0, gamma=0.0)
    b = solve(f3x6, 5, "neal", strategy="gamma", seed=0)
    assert a.x.sum() == b.x.sum() == 5
    assert a.info["strategy"] == "layerwise" and "iterations" in b.info


@pytest.mark.skipif(importlib.util.find_spec("dwave.system") is None, reason="dwave extra not installed")
def test_qpu_backend_embeds_each_block_once():
    from dwave.samplers import SimulatedAnnealingSampler
    from dwave.system.testing import MockDWaveSampler

    from qprune.backends import get

    qpu = get("dwave", qpu=MockDWaveSampler(topology_type="pegasus", topology_shape=[16],
                                            substitute_sampler=SimulatedAnnealingSampler()))
    f = random_formulation((8, 9, 10), seed=9)
    res = solve_layerwise(f, 12, qpu, seed=0, gamma=0.0, brute_force_max=0, steps=4, reads=5)
    assert res.x.sum() == 12
    assert qpu.embeddings_computed == 3  # one per block, reused across the 4 lambda steps


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("qiskit_optimization", "qiskit_aer")),
                    reason="qaoa extra not installed")
def test_qaoa_backend_on_small_blocks():
    f = random_formulation((4, 5), seed=10)
    X = ((np.arange(1 << 9)[:, None] >> np.arange(9)) & 1).astype(np.int8)
    res = solve_layerwise(f, 4, "qaoa", seed=0, gamma=0.0, brute_force_max=0, steps=2, focus_steps=1)
    assert res.energy == pytest.approx(float(f.energy(X, 0.0)[X.sum(1) == 4].min()))


def test_the_caps_must_be_per_layer(f3x6):
    across = ExactK.build(18, 8, (np.arange(18) % 2, 6))  # groups that cut across the layers
    with pytest.raises(QpruneError, match="caps per layer"):
        solve_layerwise(f3x6, 8, constraint=across)


def test_search_only_backends_sample_only_small_blocks_with_negative_couplings():
    from qprune.solve.layerwise.blocks import Block
    from qprune.solve.layerwise.search import SAMPLE_MAX, LayerwiseOptions, _plan, _sampled

    def block(m: int, sign: float) -> Block:
        M = sign * (np.ones((m, m)) - np.eye(m))
        return Block((0,), np.arange(m), np.zeros(m), M, np.zeros(m, dtype=np.int64), np.array([m]))

    plan = _plan("neal", 0, None, False, LayerwiseOptions())
    assert _sampled(block(64, -1.0), plan) and _sampled(block(SAMPLE_MAX, -1.0), plan)
    assert not _sampled(block(SAMPLE_MAX + 1, -1.0), plan)  # a dense big block: search only
    assert not _sampled(block(64, 1.0), plan)  # no negative coupling: search only
    asked = _plan("neal", 0, None, False, LayerwiseOptions(steps=2))
    assert _sampled(block(SAMPLE_MAX + 1, -1.0), asked)  # sampling asked for: every heavy block
