import numpy as np
import pytest

from qprune.solve.constraint import ExactK
from qprune.solve.baselines import greedy_prune, random_prune
from qprune.errors import QpruneError


def test_greedy_prunes_lowest_scores_exactly_k():
    scores = np.array([5.0, 1.0, 3.0, 0.5, 4.0])
    x = greedy_prune(scores, 2)
    assert x.tolist() == [0, 1, 0, 1, 0]


def test_greedy_respects_per_layer_caps():
    scores = np.array([0.1, 0.2, 0.3, 5.0, 6.0, 7.0])
    layer_ids = np.array([0, 0, 0, 1, 1, 1])
    x = greedy_prune(scores, 4, constraint=ExactK.per_layer(layer_ids, 4, np.array([2, 2])))
    assert x.sum() == 4
    assert x[:3].sum() == 2 and x[3:].sum() == 2
    assert x.tolist() == [1, 1, 0, 1, 1, 0]


@pytest.mark.parametrize("k", [-1, 7])
def test_greedy_rejects_bad_k(k):
    with pytest.raises(QpruneError, match=f"k={k}"):
        greedy_prune(np.zeros(6), k)


def test_greedy_rejects_k_above_caps_and_nan():
    with pytest.raises(QpruneError, match="at most 2"):
        greedy_prune(np.zeros(4), 3, constraint=ExactK.per_layer(np.array([0, 0, 1, 1]), 3, np.array([1, 1])))
    with pytest.raises(QpruneError, match="NaN"):
        greedy_prune(np.array([0.0, np.nan]), 1)


def test_random_is_seeded_and_exact():
    a = random_prune(50, 17, seed=3)
    b = random_prune(50, 17, seed=3)
    c = random_prune(50, 17, seed=4)
    assert a.sum() == 17 and np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_constraint_is_first_fit_over_the_sorted_scores():
    scores = np.array([0.1, 0.2, 0.3, 5.0, 6.0, 7.0])
    layer_ids = np.array([0, 0, 0, 1, 1, 1])
    con = ExactK.build(6, 4, (layer_ids, np.array([2, 2])))
    x = greedy_prune(scores, 4, constraint=con)
    assert x.tolist() == con.first_fit(np.argsort(scores, kind="stable")).tolist()
    r = random_prune(6, 4, seed=1, constraint=con)
    assert con.ok(r) and r.tolist() == random_prune(6, 4, seed=1, constraint=con).tolist()
