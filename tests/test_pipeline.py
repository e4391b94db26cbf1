"""End-to-end pruning: every method, exact k, the Python API's result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qprune.problems as problems
from qprune.errors import QpruneError
from qprune.qubo.presets import Weights
from qprune.pipeline.compare import compare_rows
from qprune.pipeline.methods import MethodOptions, build_formulation
from qprune.pipeline.run import METHODS, prepare, prune, resolve_k, run_method


@pytest.fixture(scope="module")
def classify():
    return problems.load_pretrained("classify")


@pytest.fixture(scope="module")
def prepared(classify):
    problem, model = classify
    methods = [m for m in METHODS if not METHODS[m].refine]
    return prepare(model, problem, methods=methods, progress=False)


@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].refine])
def test_every_method_prunes_exactly_k(prepared, method):
    result = run_method(prepared, method, sparsity=0.3, options=MethodOptions(seed=0), remove=True)
    k = int(round(0.3 * prepared.space.N))
    assert result.k == k and int(result.mask.sum()) == k
    per_layer = result.per_layer()
    assert sum(r["pruned"] for r in per_layer) == k
    assert all(r["kept"] >= prepared.space.min_keep for r in per_layer)
    # the removed model is really smaller, as the space predicted
    assert result.stats_after["params"] == prepared.space.predicted_params(result.mask)
    assert result.stats_after["params"] < result.stats_before["params"]
    # the gated model and the physically pruned one agree
    x = prepared.work.test[0][0]
    with torch.no_grad():
        torch.testing.assert_close(result.pruned_model(x), result.gated_model(x), atol=1e-4, rtol=1e-4)
    assert set(result.metrics_after) == {"accuracy"}
    if METHODS[method].kind == "qubo":
        assert result.bqm is not None and result.energy is not None and result.gamma is not None


def test_same_seed_same_mask(prepared):
    a = run_method(prepared, "hybrid-qubo", k=20, options=MethodOptions(seed=3), remove=False)
    b = run_method(prepared, "hybrid-qubo", k=20, options=MethodOptions(seed=3), remove=False)
    assert np.array_equal(a.mask, b.mask)


def test_prune_api_on_plain_batches(classify):
    problem, model = classify
    batches = problem.calibration_batches()
    loss = torch.nn.functional.cross_entropy
    result = prune(model, batches, k=10, method="taylor-greedy", loss_fn=loss,
                   metric_fn=lambda out, y: float((out.argmax(1) == y).float().mean()), progress=False)
    assert int(result.mask.sum()) == 10
    assert "metric" in result.metrics_after
    assert set(result.timings) >= {"space", "signals", "solve", "evaluate"}


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_bad_sparsity(sparsity):
    with pytest.raises(QpruneError, match="sparsity"):
        resolve_k(100, sparsity=sparsity)


def test_unknown_method(classify):
    problem, model = classify
    with pytest.raises(QpruneError, match="unknown method 'nope'"):
        prune(model, problem, sparsity=0.3, method="nope", progress=False)


def test_units_capacity_is_a_pure_count_reward(prepared):
    """With reward="units" a separable QUBO (Taylor alone) prunes exactly its k cheapest units, whatever
    their sizes; the paper's params reward prefers big units instead."""
    weights = Weights(beta_diag=0.0, beta_off=0.0)
    f = build_formulation(prepared.space, prepared.signals, "gradient-qubo", weights=weights, capacity="units")
    np.testing.assert_allclose(f.reward, 1.0 / prepared.space.N)
    k = 20
    cheapest = np.sort(np.argsort(f.linear, kind="stable")[:k])
    assert np.bincount(prepared.space.layer_ids[cheapest]).max() <= prepared.space.max_pruned_per_layer.min()
    units = run_method(prepared, "gradient-qubo", k=k, options=MethodOptions(capacity="units", weights=weights),
                       remove=False)
    assert np.array_equal(np.flatnonzero(units.mask), cheapest)
    by_params = build_formulation(prepared.space, prepared.signals, "gradient-qubo", weights=weights)
    np.testing.assert_allclose(by_params.reward, prepared.space.params / prepared.space.params.sum())
    with pytest.raises(QpruneError, match="unknown capacity reward 'size'"):
        MethodOptions(capacity="size")


class _CalibrationDraw:
    """The problem with half of its calibration batches, chosen by ``seed``."""

    def __init__(self, problem, seed: int) -> None:
        self._p, self._seed = problem, seed

    def __getattr__(self, name: str):
        return getattr(self._p, name)

    def calibration_batches(self) -> list:
        batches = list(self._p.calibration_batches())
        pick = np.random.default_rng(self._seed).permutation(len(batches))[: max(1, len(batches) // 2)]
        return [batches[i] for i in pick]


def test_compare_rows_with_a_calibration_draw_per_seed_and_weights_per_method(classify):
    problem, model = classify
    assert len(list(problem.calibration_batches())) >= 2
    rows = compare_rows(model, problem, methods=["taylor-greedy", "hybrid-qubo"], sparsities=[0.3], seeds=[0, 1],
                        remove=False, progress=False, draws=lambda seed: _CalibrationDraw(problem, seed),
                        weights={"hybrid-qubo": Weights(alpha=2.0)})
    greedy = [r for r in rows if r["method"] == "taylor-greedy"]
    assert [r["seed"] for r in greedy] == [0, 1]
    assert greedy[0]["mask"] != greedy[1]["mask"], "each seed must be pruned on its own calibration draw"
    assert all(r["weights"]["alpha"] == 2.0 for r in rows if r["method"] == "hybrid-qubo")
    assert all(sum(r["pruned_per_layer"]) == r["k"] for r in rows)
    # seed 0's rows are what a comparison on that calibration alone gives
    alone = compare_rows(model, _CalibrationDraw(problem, 0), methods=["taylor-greedy"], sparsities=[0.3],
                         remove=False, progress=False)
    assert alone[0]["mask"] == greedy[0]["mask"]


def test_a_tt_variant_refines_the_mask_its_method_just_solved(classify, monkeypatch):
    import qprune.pipeline.run as run

    problem, model = classify
    prep = prepare(model, problem, methods=["hybrid-qubo"], progress=False)
    solves: list[int] = []
    real = run._qubo_mask
    monkeypatch.setattr(run, "_qubo_mask", lambda *a, **kw: solves.append(1) or real(*a, **kw))
    tt = MethodOptions(seed=2, tt_budget=8)
    x, out = run.select_mask(prep, "hybrid-qubo", 12, MethodOptions(seed=2))
    y, out_tt = run.select_mask(prep, "hybrid-qubo+tt", 12, tt)
    assert len(solves) == 1 and out_tt["info"]["reused"] and "reused" not in out.get("info", {})
    assert out_tt["timings"]["solve"] == out["timings"]["solve"] and out_tt["gamma"] == out["gamma"]
    assert out_tt["info"]["refine"]["seed_value"] <= out_tt["info"]["refine"]["value"]
    assert int(y.sum()) == 12
    # what the unrefined row records is its own: the refinement added nothing to it
    assert "refine" not in out.get("info", {}) and "refine" not in prep.last_qubo[2]["info"]
    # another seed, k or weights is another solve; so is a repeat of the unrefined method
    run.select_mask(prep, "hybrid-qubo+tt", 12, MethodOptions(seed=3, tt_budget=8))
    run.select_mask(prep, "hybrid-qubo+tt", 13, MethodOptions(seed=3, tt_budget=8))
    run.select_mask(prep, "hybrid-qubo+tt", 13, MethodOptions(seed=3, tt_budget=8, weights=Weights(alpha=2.0)))
    run.select_mask(prep, "hybrid-qubo", 13, MethodOptions(seed=3, weights=Weights(alpha=2.0)))
    assert len(solves) == 5
    # fresh, the refined call gives what it gave after the shared solve
    again = prepare(model, problem, methods=["hybrid-qubo"], progress=False)
    np.testing.assert_array_equal(run.select_mask(again, "hybrid-qubo+tt", 12, tt)[0], y)
