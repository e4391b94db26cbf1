"""The loss-model QUBO (fisher-qubo): per-sample gate derivatives, the factored energy, its solvers."""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path

import dimod
import numpy as np
import pytest
import torch
from torch import nn

import qprune
from qprune.cli import build_parser
from qprune.errors import QpruneError
from qprune.model.masking import apply_mask
from qprune.model.signals import collect_signals
from qprune.model.space import build_space
from qprune.pipeline.budgeted import BudgetRequest
from qprune.pipeline.catalog import DEFAULT_METHOD
from qprune.pipeline.methods import MethodOptions, build_formulation
from qprune.pipeline.run import prepare, run_method, tune_weights
from qprune.qubo.fisher import fisher_shrinkage, gate_fisher
from qprune.qubo.formulation import formulate
from qprune.qubo.scaling import energy_spread, normalise_terms
from qprune.qubo.terms import compute_terms
from qprune.solve.budgets.budget import CostModel
from qprune.solve.constraint import ExactK
from qprune.solve.lowrank import FactoredState, polish_budget, polish_exact_k

ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    """conv1 (6) -> ReLU -> conv2 (5, stride 2) -> ReLU -> conv3 (3), plus a pooled head on conv1's
    channels (a site with no spatial map: coarser than any grid)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(5, 3, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        out = nn.functional.interpolate(self.conv3(torch.relu(self.conv2(h))), scale_factor=2)
        return out + self.fc(h.mean(dim=(2, 3)))[:, :, None, None]


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = Net().double().eval()
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    y = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    space = build_space(model, x[:1], exclude=("conv3", "fc"))
    assert space.N == 11
    return model, space, x, y


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean(dim=(1, 2, 3)).log().mean()  # a per-sample loss, averaged: not plain MSE


def _alone(model: nn.Module, space, x: torch.Tensor, y: torch.Tensor, mask=None) -> np.ndarray:
    """[S, N]: each sample's gate derivatives from autograd of that sample alone (one shared gate per unit)."""
    rows = []
    for i in range(x.shape[0]):
        s = collect_signals(model, space, [(x[i:i + 1], y[i:i + 1])], _loss, needs={"gate_grads"}, gate_grid=1,
                            mask=mask, progress=False)
        rows.append(s.gate_grads[0])
    return np.array(rows)


def test_per_sample_gate_derivatives_equal_autograd_of_each_sample_alone():
    model, space, x, y = _setup()
    s = collect_signals(model, space, [(x[:3], y[:3]), (x[3:], y[3:])], _loss, needs={"gate_grads"}, gate_grid=1,
                        progress=False)
    ref = _alone(model, space, x, y)
    assert s.gate_grads.shape == (5, space.N)
    np.testing.assert_allclose(s.gate_grads, ref, rtol=1e-9, atol=1e-12)
    # ... and the alone-derivative is the plain autograd of a gate on each unit's channels
    i = 2
    gate = torch.ones(6, dtype=torch.float64, requires_grad=True)
    h = torch.relu(model.conv1(x[i:i + 1])) * gate.view(1, -1, 1, 1)
    out = nn.functional.interpolate(model.conv3(torch.relu(model.conv2(h))), scale_factor=2)
    g, = torch.autograd.grad(_loss(out + model.fc(h.mean(dim=(2, 3)))[:, :, None, None], y[i:i + 1]), gate)
    conv1 = [j for j, u in enumerate(space.units) if u.members[0][0] == "conv1"]
    np.testing.assert_allclose(ref[i, conv1], g.numpy()[[space.units[j].members[0][1] for j in conv1]], rtol=1e-9)


def test_gate_grid_rows_sum_to_each_samples_derivative_and_masks_are_taken_there():
    model, space, x, y = _setup(1)
    one = collect_signals(model, space, [(x, y)], _loss, needs={"gate_grads"}, gate_grid=1, progress=False)
    grid = collect_signals(model, space, [(x, y)], _loss, needs={"gate_grads", "channel_fisher"}, gate_grid=2,
                           progress=False)
    assert grid.gate_grads.shape == (5 * 4, space.N)
    np.testing.assert_allclose(grid.gate_grads.reshape(5, 4, -1).sum(axis=1), one.gate_grads, rtol=1e-9, atol=1e-12)
    shared = collect_signals(model, space, [(x, y)], _loss, needs={"channel_fisher"}, progress=False)
    np.testing.assert_allclose(grid.channel_fisher, shared.channel_fisher, rtol=1e-9)
    mask = np.zeros(space.N)
    mask[[0, 3, 7]] = 1
    at = collect_signals(model, space, [(x, y)], _loss, needs={"gate_grads"}, gate_grid=1, mask=mask, progress=False)
    np.testing.assert_allclose(at.gate_grads, _alone(model, space, x, y, mask), rtol=1e-9, atol=1e-12)
    gated = apply_mask(copy.deepcopy(model), space, mask.astype(bool), mode="gate")
    assert at.loss == pytest.approx(float(_loss(gated(x), y).detach()), rel=1e-12)
    with pytest.raises(QpruneError, match="gate_grid"):
        collect_signals(model, space, [(x, y)], _loss, needs={"gate_grads"}, gate_grid=0, progress=False)
    with pytest.raises(QpruneError, match="mask has shape"):
        collect_signals(model, space, [(x, y)], _loss, needs={"gate_grads"}, mask=np.zeros(3), progress=False)


def _shrinkage_by_definition(D: np.ndarray) -> float:
    S, N = D.shape
    W = np.einsum("si,sj->sij", D, D)
    F = W.mean(axis=0)
    var = W.var(axis=0, ddof=1) / S
    off = ~np.eye(N, dtype=bool)
    return float(np.clip(var[off].sum() / (F[off] ** 2).sum(), 0, 1))


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (200, 8)])
def test_shrinkage_is_the_schafer_strimmer_estimate(shape):
    rng = np.random.default_rng(0)
    D = rng.standard_normal(shape) @ rng.standard_normal((shape[1], shape[1]))
    assert fisher_shrinkage(D) == pytest.approx(_shrinkage_by_definition(D), rel=1e-9)


def _fisher_formulation(S: int = 60, N: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    lids = np.repeat(np.arange(4), N // 4)
    D = rng.standard_normal((S, N)) * rng.uniform(0.2, 2.0, N)
    terms = compute_terms(["capacity", "gate_fisher"], {"gate_grads": D, "params": np.ones(N), "layer_ids": lids})
    return formulate(terms, preset="fisher", layer_ids=lids), D, lids


def test_factored_energy_equals_the_dense_bqm_and_the_shrunk_fisher():
    f, D, _ = _fisher_formulation()
    S, N = D.shape
    rho = fisher_shrinkage(D)
    F = D.T @ D / S
    F_rho = (1 - rho) * F + rho * np.diag(np.diag(F))
    X = np.random.default_rng(1).integers(0, 2, (100, N))
    E = f.energy(X)
    bqm = f.bqm(0.0)
    dense = bqm.energies((X, f.labels))
    np.testing.assert_allclose(E, dense, rtol=1e-9)
    np.testing.assert_allclose(E, 0.5 * np.einsum("bi,ij,bj->b", X, F_rho, X), rtol=1e-9)
    assert len(bqm.quadratic) == N * (N - 1) // 2  # every pair, across layers too
    assert f.factor is not None and f.factor.shape == (S, N)


def test_factored_state_field_and_moves_are_exact():
    f, _, _ = _fisher_formulation(seed=2)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, f.num_variables).astype(np.int8)
    st = FactoredState(f, x)
    for u in rng.integers(0, f.num_variables, 10):
        before = f.energy(st.x)
        gain = st.h[u] if st.x[u] == 0 else -st.h[u]
        st.flip(int(u))
        assert f.energy(st.x) - before == pytest.approx(gain, abs=1e-9)
        assert st.energy == pytest.approx(f.energy(st.x), abs=1e-9)


def test_polish_exact_k_keeps_k_and_caps_and_leaves_no_improving_swap():
    f, _, lids = _fisher_formulation(seed=4)
    con = ExactK.per_layer(lids, 9, 4)
    x0 = con.first_fit(np.arange(f.num_variables))
    x, info = polish_exact_k(f, x0, con)
    assert con.ok(x) and info["energy_after"] <= info["energy_before"] + 1e-12
    assert info["energy_after"] == pytest.approx(f.energy(x))
    E = f.energy(x)
    for i in np.flatnonzero(x == 0):
        for j in np.flatnonzero(x == 1):
            y = x.copy()
            y[i], y[j] = 1, 0
            if con.ok(y):
                assert f.energy(y) >= E - 1e-9


def test_polish_budget_stays_in_the_window_and_the_limits():
    problem, model = qprune.problems.load_pretrained("classify")
    prep = prepare(model, problem, methods=["fisher-qubo", "taylor-greedy"], progress=False)
    form = build_formulation(prep.space, prep.signals, "fisher-qubo")
    cost = CostModel.build(prep.space, "macs")
    lo, hi = 0.59 * cost.full(), 0.6 * cost.full()
    limits = ExactK.layer_limits(prep.space.layer_ids, round_to=2)
    x0 = run_method(prep, "taylor-greedy", budget=BudgetRequest.of("macs=0.6", round_to=2), remove=False).mask
    x, info = polish_budget(form, x0.astype(np.int8), cost, (lo, hi), limits)
    assert lo <= cost.of_mask(x) <= hi and limits.within_caps(x)[0]
    assert f"{info['energy_after']:.12g}" == f"{form.energy(x):.12g}"
    assert info["energy_after"] <= info["energy_before"]


def test_costs_after_moves_and_given_base_are_exact():
    problem, model = qprune.problems.load_pretrained("denoise")
    space = build_space(model, problem.example_inputs(), **problem.prunable(model))
    rng = np.random.default_rng(0)
    for kind in ("macs", "params"):
        cost = CostModel.build(space, kind)
        x = (rng.random(space.N) < 0.3).astype(np.int8)
        units = rng.choice(space.N, 12, replace=False)
        expect = [cost.of_mask(np.where(np.arange(space.N) == u, 1 - x, x)) for u in units]
        np.testing.assert_allclose(cost.costs_after_flips(x, units), expect, rtol=1e-12)
        I, J = np.flatnonzero(x == 0)[:4], np.flatnonzero(x == 1)[:3]
        pair = [[cost.of_mask(np.where(np.arange(space.N) == i, 1, np.where(np.arange(space.N) == j, 0, x)))
                 for j in J] for i in I]
        np.testing.assert_allclose(cost.costs_after_swaps(x, I, J), pair, rtol=1e-12)
        free = np.flatnonzero(x == 0)
        sub = cost.given(x, free)
        assert sub.full() == pytest.approx(cost.of_mask(x))
        y = (rng.random(free.size) < 0.4).astype(np.int8)
        both = x.copy()
        both[free] = y
        assert sub.of_mask(y) == pytest.approx(cost.of_mask(both))


def test_every_term_enters_with_unit_energy_spread():
    rng = np.random.default_rng(0)
    lids = np.repeat(np.arange(3), [4, 16, 9])
    n = lids.size
    inputs = {"l1": rng.random(n), "taylor": rng.random(n) * 1e-6, "channel_fisher": rng.random(n) * 1e3,
              "activations": {lay: rng.standard_normal((int((lids == lay).sum()), 20)) for lay in range(3)},
              "params": rng.integers(10, 100, n).astype(float), "layer_ids": lids}
    terms = compute_terms(["l1_redundancy", "taylor", "channel_fisher", "activation_similarity", "capacity"], inputs)
    for name in ("l1_redundancy", "taylor", "channel_fisher", "activation_similarity"):
        assert energy_spread(terms[name], n) == pytest.approx(1.0, rel=1e-9)
    assert np.array_equal(terms["capacity"].linear, inputs["params"] / inputs["params"].sum())
    raw = normalise_terms({"gate_fisher": gate_fisher(rng.standard_normal((30, n)))})
    assert energy_spread(raw["gate_fisher"], n) != pytest.approx(1.0)  # the loss model keeps its own scale


@pytest.mark.parametrize("budget", ["macs=0.5", "params=0.6", "macs=0.8"])
def test_fisher_qubo_meets_the_budget_within_one_percent_below(budget):
    problem, model = qprune.problems.load_pretrained("classify")
    result = qprune.prune(model, problem, budget=budget, method="fisher-qubo", progress=False, remove=False)
    frac = float(budget.split("=")[1])
    got = result.solver_info["budget_fraction"]
    assert frac - 0.01 <= got <= frac, got
    kind = budget.split("=")[0]
    assert CostModel.build(result.space, kind).of_mask(result.mask) / CostModel.build(result.space, kind).full() \
        == pytest.approx(got)
    assert [s["stage"] for s in result.solver_info["stages"]] == [1, 2, 3, 4]
    assert result.energy == pytest.approx(result.formulation.energy(result.mask.astype(int)))


def test_fisher_qubo_in_stages_prunes_exactly_k_and_one_stage_is_one_solve():
    problem, model = qprune.problems.load_pretrained("denoise")
    prep = prepare(model, problem, methods=["fisher-qubo"], progress=False)
    four = run_method(prep, "fisher-qubo", k=50, remove=False)
    assert int(four.mask.sum()) == 50 and len(four.solver_info["stages"]) == 4
    assert [s["pruned"] for s in four.solver_info["stages"]] == [12, 25, 38, 50]
    one = run_method(prep, "fisher-qubo", k=50, options=MethodOptions(steps=1), remove=False)
    assert int(one.mask.sum()) == 50 and "stages" not in one.solver_info
    assert one.energy == pytest.approx(one.solved.energy)
    again = run_method(prep, "fisher-qubo", k=50, remove=False)
    assert np.array_equal(again.mask, four.mask)  # the same seed gives the same mask
    with pytest.raises(QpruneError, match="steps must be a positive integer"):
        MethodOptions(steps=0)
    with pytest.raises(QpruneError, match="no QUBO to rebuild"):
        run_method(prep, "random", k=5, options=MethodOptions(steps=2), remove=False)
    with pytest.raises(QpruneError, match="no QUBO weights to tune"):
        tune_weights(prep, "fisher-qubo", 10, n_trials=1, progress=False)


def test_exported_bqm_of_fisher_qubo_is_its_whole_energy():
    problem, model = qprune.problems.load_pretrained("denoise")
    result = qprune.prune(model, problem, k=20, method="fisher-qubo", progress=False, remove=False)
    bqm = result.bqm
    assert isinstance(bqm, dimod.BinaryQuadraticModel)
    assert bqm.energy(result.sample) == pytest.approx(result.energy, rel=1e-9)


def test_the_default_method_is_the_one_the_readme_names():
    readme = (ROOT / "README.md").read_text()
    named = re.search(r"default method(?: is|,) `([a-z0-9+-]+)`", readme)
    assert named, "the README names the default method"
    assert named.group(1) == DEFAULT_METHOD
    assert inspect.signature(qprune.prune).parameters["method"].default == DEFAULT_METHOD
    args = build_parser().parse_args(["prune", "--problem", "denoise", "--sparsity", "0.3"])
    assert args.method == DEFAULT_METHOD


def test_energy_spread_is_the_exact_std_over_half_masks():
    import itertools

    import scipy.sparse

    from qprune.qubo.types import Term

    rng = np.random.default_rng(5)
    n = 10
    M = rng.standard_normal((6, 6))
    M = M + M.T
    np.fill_diagonal(M, 0.0)
    cross = scipy.sparse.coo_matrix(([1.5, -2.0], ([0, 7], [8, 9])), shape=(n, n))
    t = Term("t", linear=rng.standard_normal(n), blocks=[(np.arange(6), M)], cross=cross)
    X = np.array(list(itertools.product((0, 1), repeat=n)), dtype=float)
    E = X @ t.linear + 0.5 * np.einsum("bi,bi->b", X[:, :6] @ M, X[:, :6]) + 1.5 * X[:, 0] * X[:, 8] \
        - 2.0 * X[:, 7] * X[:, 9]
    assert energy_spread(t, n) == pytest.approx(E.std(), rel=1e-12)


def test_weight_search_stops_bad_trials_early():
    from qprune.pipeline.tune import PRUNE_AFTER, search_weights

    calls = []

    def score(w):
        good = w.alpha > 1.0
        calls.append(w.alpha)
        yield 1.0 if good else 0.0  # the first half says it all
        yield 1.0 if good else 0.0

    found = search_weights(score, n_trials=20, sampler="random", space={"alpha": (1e-2, 1e2)}, progress=False)
    states = [t["state"] for t in found.trials]
    assert "PRUNED" in states and states[:PRUNE_AFTER] == ["COMPLETE"] * PRUNE_AFTER
    assert found.best_weights.alpha > 1.0 and found.best_value == 1.0
