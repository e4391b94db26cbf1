"""Term providers, the provider registry and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from qprune.errors import QpruneError
from qprune.qubo.formulation import Weights, formulate
from qprune.qubo.scaling import (
    cap_spectral_norm,
    energy_spread,
    magnitude_scale,
    normalise_terms,
    spectral_norm,
    unit_variance,
)
from qprune.instances.synthetic import synthetic_instance
from qprune.qubo.terms import (
    Term,
    activation_similarity,
    capacity,
    channel_fisher,
    compute_terms,
    l1_redundancy,
    l1_scores,
    register_term,
    taylor,
    term_requirements,
    unregister_term,
    validate_term,
    weight_fisher,
)


def term_energy(term: Term, x: np.ndarray) -> float:
    """Energy of one term by its definition: linear . x + sum_{i<j} M_ij x_i x_j (+ cross)."""
    e = 0.0 if term.linear is None else float(term.linear @ x)
    for idx, M in term.blocks or []:
        xb = x[idx]
        e += float(np.triu(M, 1)[np.ix_(xb == 1, xb == 1)].sum())
    if term.cross is not None:
        C = term.cross
        e += float(np.sum(C.data * x[C.row] * x[C.col]))
    return e


def dense_matrix(term: Term, n: int) -> np.ndarray:
    """The symmetric A with x^T A x = energy: diag(linear) + M / 2."""
    A = np.zeros((n, n))
    for idx, M in term.blocks or []:
        A[np.ix_(idx, idx)] += M / 2
    if term.cross is not None:
        C = term.cross.toarray()
        A += (C + C.T) / 2
    A[np.diag_indices(n)] += term.linear if term.linear is not None else 0.0
    return A


# ---------------------------------------------------------------------------------------- providers


def test_l1_scores_hand_computed():
    w0 = np.array([[1.0, -2.0], [3.0, -4.0]])  # mean |w| = 10 / 4
    w1 = -0.5 * np.ones((3, 3, 3))
    np.testing.assert_allclose(l1_scores([w0, w1]), [2.5, 0.5])
    with pytest.raises(QpruneError, match=r"weights\[0\] is empty"):
        l1_scores([np.zeros(0)])


def test_l1_redundancy_hand_computed():
    t = l1_redundancy(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(t.linear, [1, 4, 9, 16])  # A_ii = s_i^2
    assert len(t.blocks) == 2
    (i0, M0), (i1, M1) = t.blocks
    np.testing.assert_array_equal(i0, [0, 1])
    np.testing.assert_array_equal(i1, [2, 3])
    np.testing.assert_allclose(M0, [[0, 4], [4, 0]])  # Q_ij = 2 s_i s_j
    np.testing.assert_allclose(M1, [[0, 24], [24, 0]])
    # Wang et al.: the energy is sum over layers of (sum_i s_i x_i)^2
    assert term_energy(t, np.ones(4)) == pytest.approx((1 + 2) ** 2 + (3 + 4) ** 2)


def test_l1_redundancy_is_sum_of_layer_squares_and_network_wide_variant():
    rng = np.random.default_rng(0)
    s = rng.random(12)
    lids = np.array([2, 0, 0, 1, 2, 1, 0, 2, 1, 1, 0, 2])  # interleaved ids: blocks follow the ids
    local = l1_redundancy(s, lids)
    wide = l1_redundancy(s, lids, network_wide=True)
    assert local.cross is None and wide.cross is not None
    for _ in range(20):
        x = rng.integers(0, 2, 12).astype(float)
        want = sum((s[lids == lid] @ x[lids == lid]) ** 2 for lid in (0, 1, 2))
        assert term_energy(local, x) == pytest.approx(want)
        assert term_energy(wide, x) == pytest.approx((s @ x) ** 2)


def test_importance_terms_divide_by_params():
    v, P = np.array([2.0, 6.0]), np.array([2.0, 3.0])
    for fn in (taylor, weight_fisher, channel_fisher):
        np.testing.assert_allclose(fn(v, P).linear, [1.0, 2.0])
        np.testing.assert_allclose(fn(v, P, per_param=False).linear, [2.0, 6.0])
    assert taylor(v, P).name == "taylor"
    with pytest.raises(QpruneError, match=r"params\[1\] = 0.0"):
        taylor(v, np.array([1.0, 0.0]))
    with pytest.raises(QpruneError, match="2 importance values but 3"):
        weight_fisher(v, np.ones(3))


def test_capacity_hand_computed():
    np.testing.assert_allclose(capacity(np.array([1.0, 3.0])).linear, [0.25, 0.75])
    with pytest.raises(QpruneError, match=r"params\[0\] = -1.0"):
        capacity(np.array([-1.0, 3.0]))
    np.testing.assert_allclose(capacity(np.array([1.0, 3.0, 4.0]), reward="units").linear, [1 / 3] * 3)
    with pytest.raises(QpruneError, match="unknown capacity reward 'filters'"):
        capacity(np.array([1.0]), reward="filters")


def test_similarity_identical_channels_correlate_one():
    base = np.array([0.1, 2.0, -1.0, 3.0, 0.5])
    acts = {0: np.stack([base, base.copy(), -base, np.full(5, 7.0)]), 1: np.stack([base, 2 * base + 1])}
    t = activation_similarity(acts, np.array([0, 0, 0, 0, 1, 1]))
    (i0, S0), (i1, S1) = t.blocks
    np.testing.assert_array_equal(i0, [0, 1, 2, 3])
    assert S0[0, 1] == pytest.approx(1.0)  # identical channels
    assert S0[0, 2] == 0.0  # perfectly anti-correlated: clipped by max(0, S)
    assert S0[0, 3] == 0.0 and S0[3, 1] == 0.0  # a constant (dead) channel correlates with nothing
    assert S1[0, 1] == pytest.approx(1.0)  # Pearson ignores scale and offset
    assert np.all(np.diag(S0) == 0) and np.allclose(S0, S0.T)
    assert t.linear is None


def test_similarity_matches_numpy_corrcoef():
    rng = np.random.default_rng(3)
    act = rng.standard_normal((6, 40))
    act[1] = act[0] + 0.3 * rng.standard_normal(40)
    (idx, S), = activation_similarity({5: act}, np.array([5] * 6)).blocks
    want = np.maximum(np.corrcoef(act), 0.0)
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(S, want, atol=1e-12)


def test_similarity_errors_name_the_layer():
    with pytest.raises(QpruneError, match=r"activations\[0\] has shape \(3, 4\); expected \[2 units"):
        activation_similarity({0: np.zeros((3, 4))}, np.array([0, 0]))
    with pytest.raises(QpruneError, match="layer id 7"):
        activation_similarity({7: np.zeros((2, 4))}, np.array([0, 0]))
    with pytest.raises(QpruneError, match="Pearson needs >= 2"):
        activation_similarity({0: np.zeros((2, 1))}, np.array([0, 0]))


def test_builtin_terms_are_block_diagonal_by_layer():
    inst = synthetic_instance(n_units=300, layer_sizes=(16, 40), seed=1, n_samples=64)
    terms = compute_terms(["l1_redundancy", "activation_similarity", "taylor", "capacity"], inst)
    lids = inst["layer_ids"]
    for name in ("l1_redundancy", "activation_similarity"):
        t = terms[name]
        assert t.cross is None
        assert len(t.blocks) == len(np.unique(lids))
        for idx, M in t.blocks:
            assert np.unique(lids[idx]).size == 1  # a block never spans layers
            np.testing.assert_array_equal(idx, np.flatnonzero(lids == lids[idx[0]]))
            assert np.allclose(M, M.T) and np.all(np.diag(M) == 0)
        A = dense_matrix(t, lids.size)
        assert np.all(A[lids[:, None] != lids[None, :]] == 0)
    assert np.all(terms["activation_similarity"].blocks[0][1] >= 0)


# -------------------------------------------------------------------------------------- normalising


def test_unit_variance_diagonal_and_off_diagonal_separately():
    rng = np.random.default_rng(0)
    s = rng.lognormal(-3, 1, 50)
    t = unit_variance(l1_redundancy(s, np.repeat([0, 1, 2, 3, 4], 10)))
    assert np.std(np.abs(t.linear)) == pytest.approx(1.0, rel=1e-9)
    off = np.concatenate([M[np.triu_indices(10, 1)] for _, M in t.blocks])
    assert np.std(np.abs(off)) == pytest.approx(1.0, rel=1e-9)
    # the two parts got different factors: the raw off-diagonal is 2 s_i s_j, not s_i^2
    raw = l1_redundancy(s, np.repeat([0, 1, 2, 3, 4], 10))
    f_lin = raw.linear[0] / t.linear[0]
    f_off = raw.blocks[0][1][0, 1] / t.blocks[0][1][0, 1]
    assert f_lin != pytest.approx(f_off)


def test_unit_variance_constant_and_zero_components():
    assert magnitude_scale(np.full(5, 3.0)) == pytest.approx(3.0)  # constant -> +-1, not 1/eps
    assert magnitude_scale(np.zeros(5)) == 1.0
    np.testing.assert_allclose(unit_variance(Term("c", linear=np.full(4, -2.0))).linear, -1.0)


def test_normalise_terms_leaves_capacity_alone():
    inst = synthetic_instance(n_units=100, layer_sizes=(20,), seed=2, n_samples=32)
    raw = compute_terms(["capacity", "taylor"], inst, scale=False)
    scaled = compute_terms(["capacity", "taylor"], inst)
    np.testing.assert_array_equal(raw["capacity"].linear, scaled["capacity"].linear)
    assert scaled["capacity"].linear.sum() == pytest.approx(1.0)
    assert energy_spread(scaled["taylor"], 100) == pytest.approx(1.0, rel=1e-9)
    ratio = scaled["taylor"].linear / raw["taylor"].linear  # one factor for the whole term
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)
    np.testing.assert_allclose(raw["taylor"].linear, inst["taylor"] / inst["params"])


def test_spectral_norm_power_iteration_matches_eigvalsh():
    rng = np.random.default_rng(5)
    lids = np.repeat(np.arange(4), [5, 9, 3, 7])
    sim = activation_similarity(
        {l: rng.standard_normal(((lids == l).sum(), 30)) for l in range(4)}, lids
    )
    sim.linear = rng.standard_normal(lids.size)
    for t in (sim, l1_redundancy(rng.random(lids.size), lids)):
        exact = np.abs(np.linalg.eigvalsh(dense_matrix(t, lids.size))).max()
        assert spectral_norm(t) == pytest.approx(exact, rel=1e-6)
    # the cross-layer variant goes through the sparse path
    wide = l1_redundancy(rng.random(lids.size), lids, network_wide=True)
    exact = np.abs(np.linalg.eigvalsh(dense_matrix(wide, lids.size))).max()
    assert spectral_norm(wide) == pytest.approx(exact, rel=1e-6)


def test_spectral_cap_holds():
    inst = synthetic_instance(n_units=200, layer_sizes=(16, 32), seed=4, n_samples=32)
    terms = compute_terms(["l1_redundancy", "activation_similarity", "capacity"], inst, spectral_cap=0.2)
    A = dense_matrix(terms["l1_redundancy"], 200)
    norm = np.abs(np.linalg.eigvalsh(A)).max()
    assert norm <= 0.2 * (1 + 1e-6)
    assert norm == pytest.approx(0.2, rel=1e-6)  # the normalisation left it above 0.2 (0.36)
    # the cap is a no-op for a term already below it, and rejects nonsense
    small = Term("t", linear=np.array([0.1, 0.2]))
    assert cap_spectral_norm(small, 1.0) is small
    with pytest.raises(QpruneError, match="spectral cap must be positive"):
        cap_spectral_norm(small, 0.0)
    # without unit variance the cap alone applies
    only_cap = normalise_terms({"l1_redundancy": l1_redundancy(inst["l1"] * 50, inst["layer_ids"])},
                               unit_variance=False, energy=False, spectral_cap=2.0)
    assert spectral_norm(only_cap["l1_redundancy"]) == pytest.approx(2.0, rel=1e-6)


# ----------------------------------------------------------------------------------------- registry


def test_compute_terms_from_raw_weights_and_options():
    weights = [np.array([1.0, -1.0]), np.array([2.0, 2.0]), np.array([3.0])]
    inputs = {"weights": weights, "layer_ids": np.array([0, 0, 1]), "params": np.array([2.0, 2.0, 1.0])}
    terms = compute_terms(["l1_redundancy"], inputs, scale=False)
    np.testing.assert_allclose(terms["l1_redundancy"].linear, [1.0, 4.0, 9.0])
    wide = compute_terms(["l1_redundancy"], inputs, scale=False, options={"l1_redundancy": {"network_wide": True}})
    assert wide["l1_redundancy"].cross.nnz == 2


def test_compute_terms_reports_missing_inputs_and_unknown_terms():
    inputs = {"params": np.ones(3), "layer_ids": np.zeros(3, int), "taylor": None}
    with pytest.raises(QpruneError, match="term 'taylor' needs input\\(s\\) 'taylor'"):
        compute_terms(["taylor"], inputs)
    with pytest.raises(QpruneError, match="unknown term 'nope'; known terms: .*capacity"):
        compute_terms(["nope"], inputs)
    with pytest.raises(QpruneError, match="term 'taylor': bad options \\{'scale': 2\\}"):
        compute_terms(["taylor"], {"params": np.ones(2), "taylor": np.ones(2)}, options={"taylor": {"scale": 2}})
    assert term_requirements(["activation_similarity", "taylor"]) == {"activations", "layer_ids", "taylor", "params"}


def test_user_term_without_touching_the_core():
    """A user registers a provider, computes it by name and weights it into the QUBO via extra."""

    def depth_penalty(inputs, scale=1.0):
        lids = np.asarray(inputs["layer_ids"], dtype=float)
        return Term("whatever", linear=scale * lids)  # the registry renames it to its key

    register_term("depth", depth_penalty, requires=("layer_ids",))
    try:
        with pytest.raises(QpruneError, match="already registered"):
            register_term("depth", depth_penalty)
        inst = synthetic_instance(n_units=40, layer_sizes=(8, 12), seed=0, n_samples=16)
        names = ["l1_redundancy", "taylor", "capacity", "depth"]
        terms = compute_terms(names, inst, options={"depth": {"scale": 2.0}}, scale=False)
        assert terms["depth"].name == "depth"
        np.testing.assert_allclose(terms["depth"].linear, 2.0 * inst["layer_ids"])
        kw = {"labels": inst["labels"], "layer_ids": inst["layer_ids"]}
        base = formulate(terms, "gradient", **kw)
        extra = formulate(terms, "gradient", Weights(extra={"depth": 0.5}), **kw)
        x = np.random.default_rng(1).integers(0, 2, (10, 40))
        np.testing.assert_allclose(extra.energy(x) - base.energy(x), 0.5 * x @ terms["depth"].linear)
        # a provider may also return a bare vector
        register_term("ones", lambda inputs: np.ones(len(inputs["layer_ids"])), requires=("layer_ids",))
        assert compute_terms(["ones"], inst)["ones"].linear.shape == (40,)
    finally:
        unregister_term("depth")
        unregister_term("ones")


def test_validate_term_rejects_malformed_terms():
    M = np.array([[0.0, 1.0], [2.0, 0.0]])
    with pytest.raises(QpruneError, match="block 0: matrix is not symmetric"):
        validate_term(Term("u", blocks=[(np.array([0, 1]), M)]), 2)
    with pytest.raises(QpruneError, match="nonzero diagonal"):
        validate_term(Term("u", blocks=[(np.array([0, 1]), np.eye(2))]), 2)
    with pytest.raises(QpruneError, match="linear has shape \\(3,\\), expected \\(2,\\)"):
        validate_term(Term("u", linear=np.ones(3)), 2)
    with pytest.raises(QpruneError, match="index out of range"):
        validate_term(Term("u", blocks=[(np.array([0, 5]), np.zeros((2, 2)))]), 2)
    with pytest.raises(QpruneError, match="cross has diagonal"):
        validate_term(Term("u", cross=scipy.sparse.coo_matrix(([1.0], ([1], [1])), shape=(2, 2))), 2)
