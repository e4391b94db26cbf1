"""Formulation: presets, BQM construction, energies against a dense reference, the gamma term."""

from __future__ import annotations

import time

import dimod
import numpy as np
import pytest
import scipy.sparse

from qprune.errors import QpruneError
from qprune.qubo.formulation import Formulation, Weights, formulate, preset_terms
from qprune.instances.synthetic import random_formulation, synthetic_instance
from qprune.qubo.terms import Term, compute_terms

WEIGHTS = Weights(alpha=0.7, alpha_f=1.3, beta_diag=0.4, beta_off=0.9, lam=1.7)


def upper(term: Term, n: int) -> np.ndarray:
    """The term's QUBO entries as an upper-triangular [n, n] matrix (Q_ij for i<j, no diagonal)."""
    U = np.zeros((n, n))
    for idx, M in term.blocks or []:
        full = np.zeros((n, n))
        full[np.ix_(idx, idx)] = M
        U += np.triu(full, 1)
    if term.cross is not None:
        C = term.cross.toarray()
        U += np.triu(C + C.T, 1)
    return U


def dense_reference(terms: dict[str, Term], preset: str, fisher: str, w: Weights, gamma: float,
                    layer_ids: np.ndarray | None = None) -> np.ndarray:
    """Q (diag + strict upper) written straight from the paper's equations.

    With ``layer_ids`` the couplings within each layer are divided by (m - 1), m the layer's size
    (``coupling_scale="layer"``).
    """
    n = terms["capacity"].linear.size
    A = terms["l1_redundancy"]
    diag = w.beta_diag * A.linear - gamma * terms["capacity"].linear
    off = w.beta_off * upper(A, n)  # the A term's blocks already hold 2 A_ij
    if preset in ("gradient", "hybrid"):
        diag = diag + w.alpha * terms["taylor"].linear
    if preset == "hybrid":
        i_f = {
            "taylor": terms["taylor"].linear,
            "weight": terms["weight_fisher"].linear,
            "channel": terms["channel_fisher"].linear,
            "both": terms["weight_fisher"].linear + terms["channel_fisher"].linear,
        }[fisher]
        diag = diag + w.alpha_f * i_f
        off = off + w.lam * upper(terms["activation_similarity"], n)
    if layer_ids is not None:
        sizes = np.bincount(layer_ids)[layer_ids]
        same = layer_ids[:, None] == layer_ids[None, :]
        off = np.where(same, off / np.maximum(sizes - 1, 1)[:, None], off)
    return np.diag(diag) + off


def small_instance(seed: int = 0):
    inst = synthetic_instance(n_units=30, layer_sizes=(4, 7, 9), seed=seed, n_samples=24)
    names = ["l1_redundancy", "taylor", "weight_fisher", "channel_fisher", "activation_similarity", "capacity"]
    return inst, compute_terms(names, inst)


@pytest.mark.parametrize("coupling_scale", ["none", "layer"])
@pytest.mark.parametrize(
    "preset,fisher",
    [("l1", "taylor"), ("gradient", "taylor"), ("hybrid", "taylor"), ("hybrid", "weight"),
     ("hybrid", "channel"), ("hybrid", "both")],
)
def test_bqm_energy_matches_formulation_and_dense_reference(preset, fisher, coupling_scale):
    inst, terms = small_instance()
    form = formulate(terms, preset, WEIGHTS, fisher, labels=inst["labels"], layer_ids=inst["layer_ids"],
                     coupling_scale=coupling_scale)
    X = np.random.default_rng(1).integers(0, 2, (200, 30))
    scale_ids = np.asarray(inst["layer_ids"]) if coupling_scale == "layer" else None
    for gamma in (0.0, 2.5):
        Q = dense_reference(terms, preset, fisher, WEIGHTS, gamma, scale_ids)
        want = np.einsum("bi,ij,bj->b", X, Q, X)  # E = x^T Q x with Q upper triangular
        bqm = form.bqm(gamma)
        assert list(bqm.variables) == inst["labels"]
        np.testing.assert_allclose(form.energy(X, gamma), want, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bqm.energies((X, inst["labels"])), want, rtol=1e-10, atol=1e-10)
    assert form.energy(X[3], 2.5) == pytest.approx(float(np.einsum("i,ij,j", X[3], Q, X[3])))


def test_gamma_only_touches_the_linear_part():
    inst, terms = small_instance(seed=2)
    form = formulate(terms, "hybrid", WEIGHTS, labels=inst["labels"], layer_ids=inst["layer_ids"])
    b0, b1 = form.bqm(0.0), form.bqm(3.0)
    assert dict(b0.quadratic) == dict(b1.quadratic)
    assert b0.offset == b1.offset
    for v, d in zip(inst["labels"], form.reward):
        assert b1.linear[v] == pytest.approx(b0.linear[v] - 3.0 * d)
    assert form.objective_bqm() == b0
    np.testing.assert_allclose(form.reward, inst["params"] / inst["params"].sum())


def test_blocks_follow_layers():
    inst, terms = small_instance()
    form = formulate(terms, "hybrid", labels=inst["labels"], layer_ids=inst["layer_ids"])
    assert form.cross is None
    assert [idx.size for idx, _ in form.blocks] == [int((inst["layer_ids"] == l).sum()) for l in np.unique(inst["layer_ids"])]
    for b, (idx, M) in enumerate(form.blocks):
        assert np.all(form.layer_ids[idx] == form.layer_ids[idx[0]])
        assert np.allclose(M, M.T) and np.all(np.diag(M) == 0)
        assert form.block_of_layer()[int(form.layer_ids[idx[0]])] == b
    # every BQM interaction stays inside a layer
    lid = dict(zip(inst["labels"], inst["layer_ids"]))
    assert all(lid[u] == lid[v] for u, v in form.bqm(1.0).quadratic)


def test_cross_layer_couplings_from_network_wide_and_user_terms():
    inst, _ = small_instance()
    terms = compute_terms(["l1_redundancy", "capacity"], inst, options={"l1_redundancy": {"network_wide": True}})
    n = 30
    # a user term whose one block spans two layers, plus an explicit cross entry inside one layer
    span_idx = np.array([0, 1, 5, 12])
    S = np.random.default_rng(0).standard_normal((4, 4))
    S = S + S.T
    np.fill_diagonal(S, 0.0)
    odd = scipy.sparse.coo_matrix(([0.25, -0.5], ([2, 10], [3, 25])), shape=(n, n))
    terms["odd"] = Term("odd", blocks=[(span_idx, S)], cross=odd)
    w = Weights(beta_diag=0.5, beta_off=1.5, extra={"odd": 2.0})
    form = formulate(terms, "l1", w, labels=inst["labels"], layer_ids=inst["layer_ids"], coupling_scale="none")
    assert form.cross is not None and np.all(form.cross.row < form.cross.col)
    assert np.all(form.layer_ids[form.cross.row] != form.layer_ids[form.cross.col])
    Q = dense_reference(terms, "l1", "taylor", w, 0.7) + 2.0 * upper(terms["odd"], n)
    X = np.random.default_rng(4).integers(0, 2, (100, n))
    want = np.einsum("bi,ij,bj->b", X, Q, X)
    np.testing.assert_allclose(form.energy(X, 0.7), want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(form.bqm(0.7).energies((X, inst["labels"])), want, rtol=1e-10, atol=1e-10)


def test_random_formulation_with_cross_pairs():
    form = random_formulation((3, 4, 5), seed=7, cross_pairs=6, offset=0.5)
    X = np.random.default_rng(0).integers(0, 2, (64, 12))
    np.testing.assert_allclose(form.energy(X, 1.1), form.bqm(1.1).energies((X, form.labels)), atol=1e-12)
    assert form.cross.nnz > 0
    assert form.reward.sum() == pytest.approx(1.0)


def test_preset_terms_and_zero_weights():
    assert preset_terms("l1") == ("capacity", "l1_redundancy")
    assert preset_terms("hybrid", "both") == (
        "capacity", "l1_redundancy", "taylor", "weight_fisher", "channel_fisher", "activation_similarity",
    )
    inst, terms = small_instance()
    kw = {"labels": inst["labels"], "layer_ids": inst["layer_ids"]}
    partial = {k: terms[k] for k in ("l1_redundancy", "taylor", "capacity")}
    with pytest.raises(QpruneError, match="preset 'hybrid' needs term 'activation_similarity'"):
        formulate(partial, "hybrid", **kw)
    # a term whose weight is zero need not be computed
    form = formulate(partial, "hybrid", Weights(lam=0.0), **kw)
    ref = formulate(partial, "gradient", Weights(alpha=2.0), **kw)  # fisher=taylor: I_F = I_T
    X = np.random.default_rng(0).integers(0, 2, (20, 30))
    np.testing.assert_allclose(form.energy(X), ref.energy(X))


def test_formulate_rejects_bad_input():
    inst, terms = small_instance()
    kw = {"labels": inst["labels"], "layer_ids": inst["layer_ids"]}
    with pytest.raises(QpruneError, match="unknown preset 'fancy'"):
        formulate(terms, "fancy", **kw)
    with pytest.raises(QpruneError, match="unknown fisher choice 'hessian'"):
        formulate(terms, "hybrid", fisher="hessian", **kw)
    with pytest.raises(QpruneError, match="duplicate label 'body.0.conv:0'"):
        formulate(terms, labels=["body.0.conv:0"] * 30, layer_ids=inst["layer_ids"])
    with pytest.raises(QpruneError, match="lack 'capacity'"):
        formulate({k: v for k, v in terms.items() if k != "capacity"}, **kw)
    form = formulate(terms, **kw)
    with pytest.raises(QpruneError, match="samples must be 0/1"):
        form.energy(np.full(30, 2))
    with pytest.raises(QpruneError, match=r"expected \[30\] or \[B, 30\]"):
        form.energy(np.zeros(29))


def test_default_labels_and_formulation_dataclass():
    form = formulate(
        {"capacity": Term("capacity", linear=np.full(3, 1 / 3)),
         "l1_redundancy": Term("l1_redundancy", linear=np.ones(3))},
        "l1", layer_ids=[0, 0, 1],
    )
    assert isinstance(form, Formulation) and form.labels == ["unit:0", "unit:1", "unit:2"]
    bqm = form.bqm(0.0)
    assert bqm.vartype is dimod.BINARY and bqm.num_interactions == 0  # zero couplings are left out


def test_full_size_build_time():
    """A Half-UNet-sized instance (4,000 units, layers of 64/128) builds end to end; time printed."""
    inst = synthetic_instance(n_units=4000, layer_sizes=(64, 128), seed=0)
    names = preset_terms("hybrid", "both")
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        terms = compute_terms(names, inst, spectral_cap=1.0)
        form = formulate(terms, "hybrid", fisher="both", labels=inst["labels"], layer_ids=inst["layer_ids"])
        bqm = form.bqm(0.5)
        best = min(best, time.perf_counter() - t0)
    print(f"\n4,000-unit hybrid build (terms + formulation + BQM): {best * 1e3:.0f} ms best of 3, "
          f"{bqm.num_variables} variables, {bqm.num_interactions} interactions, {len(form.blocks)} blocks")
    assert bqm.num_variables == 4000 and len(form.blocks) >= 4000 // 128
