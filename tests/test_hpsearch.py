import json
import math

import pytest

from qprune.errors import QpruneError
from qprune.qubo.formulation import Weights
from qprune.pipeline.tune import search_weights


def _peaked(w: Weights) -> float:
    # maximum at alpha = 10, lam = 0.1
    return -((math.log10(w.alpha) - 1.0) ** 2) - (math.log10(w.lam) + 1.0) ** 2


def test_tpe_search_approaches_known_optimum_and_saves(tmp_path):
    out = tmp_path / "best.json"
    res = search_weights(_peaked, n_trials=60, space={"alpha": (1e-2, 1e2), "lam": (1e-3, 1e1)},
                         seed=1, progress=False, save_best=out)
    assert res.n_trials == 60
    assert res.best_value > -0.05
    assert abs(math.log10(res.best_weights.alpha) - 1.0) < 0.25
    saved = json.loads(out.read_text())
    assert saved["best_value"] == pytest.approx(res.best_value)
    # weights outside the searched space keep the base values
    assert res.best_weights.beta_diag == Weights().beta_diag


def test_sqlite_storage_resumes_a_study(tmp_path):
    db = tmp_path / "study.db"
    space = {"alpha": (1e-2, 1e2)}
    first = search_weights(_peaked, n_trials=5, space=space, storage=db, sampler="random", progress=False)
    second = search_weights(_peaked, n_trials=4, space=space, storage=db, sampler="random", progress=False)
    assert first.n_trials == 5 and second.n_trials == 9
    assert second.best_value >= first.best_value


def test_random_search_is_seeded():
    a = search_weights(_peaked, n_trials=6, sampler="random", seed=7, progress=False)
    b = search_weights(_peaked, n_trials=6, sampler="random", seed=7, progress=False)
    assert [t["params"] for t in a.trials] == [t["params"] for t in b.trials]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_trials": None, "timeout": None}, "budget"),
        ({"n_trials": 0}, "n_trials"),
        ({"sampler": "grid"}, "grid"),
        ({"space": {"alpah": (1.0, 2.0)}}, "alpah"),
        ({"space": {"alpha": (0.0, 2.0)}}, "alpha"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(QpruneError, match=match):
        search_weights(_peaked, progress=False, **kwargs)
