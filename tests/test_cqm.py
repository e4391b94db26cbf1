"""The exact-k CQM (qprune.solve.cqm): built from ExactK, solved offline, repaired within the caps."""

from __future__ import annotations

from typing import Any

import dimod
import numpy as np
import pytest

from qprune.errors import BackendUnavailable, QpruneError
from qprune.instances.synthetic import random_formulation
from qprune.solve.constraint import ExactK
from qprune.solve.cqm import build_exact_k_cqm, solve_cqm_exact_k

ALL8 = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.int8)


def test_exact_k_cqm_is_built_as_stated():
    f = random_formulation((3, 4), seed=0)
    obj = f.objective_bqm()
    cqm = build_exact_k_cqm(obj, 3, constraint=ExactK.build(7, 3, (f.layer_ids, np.array([1, 4]))))
    assert set(cqm.variables) == set(f.labels)
    assert all(cqm.vartype(v) is dimod.BINARY for v in cqm.variables)
    x = dict(zip(f.labels, np.r_[1, 0, 0, 1, 1, 0, 0]))
    assert cqm.objective.energy(x) == pytest.approx(obj.energy(x))
    count = cqm.constraints["count"]
    assert count.sense is dimod.sym.Sense.Eq and count.rhs == 3
    assert dict(count.lhs.linear) == {v: 1.0 for v in f.labels}
    group0 = cqm.constraints["group_0"]  # layer 1's cap (4) equals its size: no constraint for it
    assert group0.sense is dimod.sym.Sense.Le and group0.rhs == 1 and "group_1" not in cqm.constraints
    assert cqm.check_feasible(x)
    assert not cqm.check_feasible({**x, f.labels[1]: 1})
    with pytest.raises(QpruneError):
        build_exact_k_cqm(obj, 99)


def test_the_constraint_must_fit_the_cqm():
    f = random_formulation((3, 4), seed=0)
    obj = f.objective_bqm()
    with pytest.raises(QpruneError, match="n=7, k=3"):
        build_exact_k_cqm(obj, 2, constraint=ExactK.build(7, 3))


def test_cqm_exact_k_matches_brute_force_with_an_exact_cqm_solver():
    f = random_formulation((4, 4), seed=3)
    obj = f.objective_bqm()
    E = f.energy(ALL8, 0.0)
    for k in (2, 5):
        res = solve_cqm_exact_k(obj, k, sampler=dimod.ExactCQMSolver())
        assert res.x.sum() == k and res.gamma == 0.0 and res.info["strategy"] == "cqm"
        assert res.objective == pytest.approx(E[ALL8.sum(1) == k].min())
        assert not res.info["repaired"]


class InfeasibleCQMSampler:
    """Answers every CQM with one infeasible sample: everything pruned."""

    def sample_cqm(self, cqm: dimod.ConstrainedQuadraticModel, **kw: Any) -> dimod.SampleSet:
        labels = list(cqm.variables)
        ss = dimod.SampleSet.from_samples_cqm((np.ones((1, len(labels)), np.int8), labels), cqm)
        assert not ss.record.is_feasible.any()
        return ss


def test_the_repair_respects_the_caps():
    f = random_formulation((4, 4), seed=3)
    caps = (f.layer_ids, np.array([1, 4]))
    res = solve_cqm_exact_k(f.objective_bqm(), 4, sampler=InfeasibleCQMSampler(), constraint=ExactK.build(8, 4, caps))
    assert res.info["repaired"] and res.x.sum() == 4
    assert res.x[f.layer_ids == 0].sum() <= 1
    assert res.energy == pytest.approx(f.objective_bqm().energy(res.sample))


def test_cqm_exact_k_without_token_is_a_one_line_error(monkeypatch, tmp_path):
    pytest.importorskip("dwave.system")
    for var in ("DWAVE_API_TOKEN", "DWAVE_CONFIG_FILE", "DWAVE_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "etc"))
    with pytest.raises(BackendUnavailable, match="DWAVE_API_TOKEN") as err:
        solve_cqm_exact_k(random_formulation((3,), seed=0).objective_bqm(), 1)
    assert "\n" not in str(err.value)
