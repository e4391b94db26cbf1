"""The sampler-free side of the layerwise strategy: greedy curves, windowed swaps, the DP, sparse couplings."""

from __future__ import annotations

from dataclasses import replace

import dimod
import numpy as np
import pytest

from qprune.errors import QpruneError
from qprune.instances.synthetic import random_formulation
from qprune.solve.layerwise.block_moves import greedy_curve, swap_deltas, swap_descent, tabu
from qprune.solve.layerwise.blocks import Block
from qprune.solve.dp import combine_counts
from qprune.solve.layerwise import solve_layerwise
from qprune.solve.sparsify import sparsify, sparsify_block
from qprune.solve.layerwise.swap_search import best_masked_swap


def _pruning_like(sizes, seed):
    """Random linear terms, couplings >= 0 divided by (m - 1): the shape of every built-in QUBO."""
    f = random_formulation(sizes, seed=seed)
    return replace(f, blocks=[(idx, np.abs(M) / max(1, idx.size - 1)) for idx, M in f.blocks])


def _block(m, seed, merged=False):
    rng = np.random.default_rng(seed)
    U = np.triu(np.abs(rng.normal(size=(m, m))) * 0.3, 1)
    if merged:
        sub = np.repeat([0, 1], [m // 2, m - m // 2])
        return Block((0, 1), np.arange(m), rng.normal(size=m), U + U.T, sub, np.array([m // 3, m - m // 2]))
    return Block((0,), np.arange(m), rng.normal(size=m), U + U.T, np.zeros(m, np.int64), np.array([m]))


def _all_states(m):
    return ((np.arange(1 << m)[:, None] >> np.arange(m)) & 1).astype(np.int8)


@pytest.mark.parametrize("seed", range(6))
def test_windowed_best_swap_is_the_full_matrix_argmin(seed):
    rng = np.random.default_rng(seed)
    m = 40
    b = _block(m, seed)
    for _ in range(20):
        x = rng.random(m) < rng.uniform(0.1, 0.9)
        g = b.h + b.M @ x
        ones, zeros = np.flatnonzero(x), np.flatnonzero(~x)
        D = g[zeros][None, :] - g[ones][:, None] - b.M[np.ix_(ones, zeros)]
        flat = int(np.argmin(D))
        d, i, j = best_masked_swap(x, ~x, g, b.M, b.row_max)
        assert (d, i, j) == (float(D.flat[flat]), ones[flat // zeros.size], zeros[flat % zeros.size])
    assert best_masked_swap(np.zeros(m, bool), np.ones(m, bool), b.h, b.M, b.row_max)[1] == -1


@pytest.mark.parametrize("merged", [False, True])
def test_polish_reaches_a_swap_local_minimum_and_tabu_never_worsens(merged):
    b = _block(24, 3, merged)
    x0 = greedy_curve(b)[1][7]
    y, e = swap_descent(x0, b)
    assert y.sum() == 7 and e == pytest.approx(float(b.h @ y + 0.5 * y @ b.M @ y))
    swaps = swap_deltas(y.astype(bool), b.h + b.M @ y, b)
    assert swaps is not None and swaps[2].min() >= -1e-12
    z, ez = tabu(y, b, 200)
    assert z.sum() == 7 and ez <= e + 1e-12
    if merged:
        for X in (y, z):
            assert X[b.sub == 0].sum() <= b.caps[0] and X[b.sub == 1].sum() <= b.caps[1]


def test_greedy_curve_has_a_state_of_every_count_within_the_caps():
    for merged in (False, True):
        b = _block(14, 5, merged)
        E, X = greedy_curve(b)
        assert E.size == b.cap + 1 and np.isfinite(E).all()
        assert (X.sum(axis=1) == np.arange(b.cap + 1)).all()
        assert np.allclose(E, X @ b.h + 0.5 * np.einsum("ci,ij,cj->c", X, b.M, X))
        S = _all_states(b.m)
        ES = S @ b.h + 0.5 * np.einsum("si,ij,sj->s", S, b.M, S)
        ok = (S[:, b.sub == 0].sum(1) <= b.caps[0]) & (S[:, b.sub == 1].sum(1) <= b.caps[-1])
        for c in range(b.cap + 1):
            assert E[c] >= ES[ok & (S.sum(1) == c)].min() - 1e-9


@pytest.mark.parametrize("k", [5, 13, 22])
def test_search_path_matches_enumeration_on_pruning_like_blocks(k):
    """No sampler call (couplings >= 0, neal): greedy + descent + tabu against the exact curves."""
    f = _pruning_like((16, 14), seed=11)
    exact = solve_layerwise(f, k, gamma=0.1)
    searched = solve_layerwise(f, k, "neal", seed=0, gamma=0.1, brute_force_max=0)
    assert searched.info["heuristic_blocks"] == 2 and searched.info["sampled_blocks"] == 0
    assert searched.energy == pytest.approx(exact.energy, abs=1e-9)


def test_mixed_sign_blocks_are_sampled_and_explicit_steps_sample_all():
    f = random_formulation((24, 22), seed=7)  # N(0, 1) couplings: negative ones
    assert solve_layerwise(f, 15, "neal", seed=0, gamma=0.0).info["sampled_blocks"] == 2
    g = _pruning_like((24, 22), seed=7)
    assert solve_layerwise(g, 15, "neal", seed=0, gamma=0.0).info["sampled_blocks"] == 0
    assert solve_layerwise(g, 15, "neal", seed=0, gamma=0.0, steps=2).info["sampled_blocks"] == 2
    with pytest.raises(QpruneError, match="tabu_max"):
        solve_layerwise(g, 15, tabu_max=-1)


def test_search_path_is_deterministic_and_ties_the_sampled_path():
    f = _pruning_like((60, 48, 72, 36), seed=8)
    a = solve_layerwise(f, 80, "neal", seed=0)
    b = solve_layerwise(f, 80, "neal", seed=5)
    sampled = solve_layerwise(f, 80, "neal", seed=0, gamma=a.gamma, steps=4, focus_steps=2)
    assert np.array_equal(a.x, b.x) and a.x.sum() == 80
    assert a.energy <= sampled.energy + 1e-9 * (1 + abs(sampled.energy))


def _dp_reference(curves, k):
    best = (np.inf, None)
    for combo in np.ndindex(*[len(c) for c in curves]):
        if sum(combo) == k:
            e = sum(c[i] for c, i in zip(curves, combo))
            if e < best[0]:
                best = (e, list(combo))
    return best


@pytest.mark.parametrize("seed", range(30))
def test_combine_counts_is_the_exact_minimum(seed):
    rng = np.random.default_rng(seed)
    curves = [rng.integers(-6, 6, rng.integers(1, 6)).astype(float) for _ in range(rng.integers(1, 5))]
    for C in curves:
        if rng.random() < 0.3:
            C[rng.integers(0, C.size)] = np.inf
    k = int(rng.integers(0, sum(c.size - 1 for c in curves) + 1))
    want, _ = _dp_reference(curves, k)
    if not np.isfinite(want):
        with pytest.raises(QpruneError, match="reaches k"):
            combine_counts(curves, k)
        return
    e, counts = combine_counts(curves, k)
    assert e == want and sum(counts) == k
    assert sum(c[i] for c, i in zip(curves, counts)) == want


def test_sparsify_keeps_each_units_strongest_couplings_symmetrically():
    rng = np.random.default_rng(0)
    U = np.triu(rng.normal(size=(12, 12)), 1)
    M = U + U.T
    S = sparsify_block(M, 3)
    assert np.array_equal(S, S.T) and not np.diag(S).any()
    for i in range(12):
        strongest = np.argsort(-np.abs(np.where(np.arange(12) == i, 0, M[i])))[:3]
        assert np.array_equal(S[i, strongest], M[i, strongest])
    assert set(np.flatnonzero(S[0])) <= set(np.flatnonzero(M[0]))
    assert np.array_equal(sparsify_block(M, 11), M) and not sparsify_block(M, 0).any()
    f = random_formulation((5, 7), seed=1)
    sf = sparsify(f, 2)
    assert np.array_equal(sf.linear, f.linear) and all(np.count_nonzero(b) <= 2 * 2 * idx.size
                                                      for idx, b in sf.blocks)
    with pytest.raises(QpruneError, match="keep"):
        sparsify(f, -1)


def test_layerwise_result_builds_its_bqm_only_when_read():
    f = _pruning_like((9, 11), seed=3)
    res = solve_layerwise(f, 7, gamma=0.2)
    assert not isinstance(res._bqm, dimod.BinaryQuadraticModel)  # a builder until read
    assert res.bqm is res.bqm and res.bqm.energy(res.sample) == pytest.approx(res.energy, abs=1e-9)
