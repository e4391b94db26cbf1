"""ExactK: the one feasible set (exactly k ones, per-group caps) shared by every solver."""

from __future__ import annotations

import dimod
import numpy as np
import pytest

from qprune.errors import QpruneError
from qprune.solve.constraint import ExactK


def test_build_forms_agree() -> None:
    layers = np.array([5, 5, 5, 7, 7, 9])
    a = ExactK.build(6, 3, (layers, 2))
    b = ExactK.build(6, 3, (layers, {5: 2, 7: 2, 9: 2}))
    c = ExactK.per_layer(layers, 3, np.array([0] * 5 + [2, 0, 2, 0, 2]))
    for con in (a, b, c):
        assert con.group.tolist() == [0, 0, 0, 1, 1, 2] and con.cap.tolist() == [2, 2, 1]
        assert con.reachable == 5
    assert ExactK.build(6, 3).reachable == 6 and not ExactK.build(6, 3).capped


@pytest.mark.parametrize("bad, msg", [
    ((np.zeros(5), 1), "5 group ids for 6 variables"),
    ("nonsense", "must be a pair"),
    ((np.zeros(6, int), -1), "max count is negative"),
    ((np.zeros(6, int), 2), "the group caps allow at most 2"),
    ((np.array([0, 0, 0, 1, 1, 9]), np.array([3, 3])), "must index the 2 max counts"),
])
def test_build_rejects_bad_input(bad, msg: str) -> None:
    with pytest.raises(QpruneError, match=msg):
        ExactK.build(6, 3, bad)


def test_k_outside_range() -> None:
    with pytest.raises(QpruneError, match=r"k=7 is outside \[0, 6\]"):
        ExactK.build(6, 7)


def test_checks_and_counts() -> None:
    con = ExactK.build(6, 3, (np.array([0, 0, 0, 1, 1, 2]), np.array([2, 2, 1])))
    X = np.array([[1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 1], [1, 0, 0, 1, 1, 1]])
    assert con.ok_rows(X).tolist() == [True, False, False, False]
    assert con.within_caps(X).tolist() == [True, False, True, True]
    assert con.counts_rows(X).tolist() == [[2, 1, 0], [3, 0, 0], [1, 0, 1], [1, 2, 1]]
    assert con.room(X[0]).tolist() == [False, False, False, True, True, True]


def test_every_maker_and_mender_stays_feasible() -> None:
    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(4), 5)
    con = ExactK.build(20, 9, (group, np.array([1, 4, 4, 4])))
    R = con.random(rng, 50)
    assert con.ok_rows(R).all()
    S = con.swaps(rng, R[0], 40)
    assert con.ok_rows(S).all() and ((S != R[0]).sum(axis=1) <= 2).all()
    junk = (rng.random((30, 20)) < 0.7).astype(np.int8)
    fixed = con.repair(junk, rng.random(20))
    assert con.ok_rows(fixed).all()
    order = np.argsort(rng.random(20))
    x = con.first_fit(order)
    assert con.ok(x) and x[order[0]] == 1
    uncapped = ExactK.build(20, 9)
    assert uncapped.ok_rows(uncapped.repair(junk, rng.random((30, 20)))).all()
    assert uncapped.ok_rows(uncapped.random(rng, 5)).all()


def test_repair_follows_the_key() -> None:
    con = ExactK.build(4, 2)
    assert con.repair(np.array([[1, 1, 1, 1]]), np.array([0.1, 0.9, 0.5, 0.2]))[0].tolist() == [0, 1, 1, 0]
    assert con.repair(np.array([[0, 0, 0, 0]]), np.array([0.1, 0.9, 0.5, 0.2]))[0].tolist() == [0, 1, 1, 0]


def test_restrict_counts_the_fixed_ones() -> None:
    con = ExactK.build(6, 3, (np.array([0, 0, 0, 1, 1, 1]), 2))
    fixed = np.array([1, 1, 0, 0, 0, 0])
    sub = con.restrict([2, 3, 4, 5], 1, fixed)
    assert sub.cap.tolist() == [0, 2] and sub.group.tolist() == [0, 1, 1, 1]
    with pytest.raises(QpruneError, match="k=3 cannot be met on these 1 variables"):
        con.restrict([2], 3, fixed)


def test_enumerate_and_cqm_agree() -> None:
    con = ExactK.build(5, 2, (np.array([0, 0, 1, 1, 1]), np.array([1, 2])))
    X = con.enumerate()
    assert len(X) == 2 * 3 + 3  # one from group 0 and one from 1, or two from group 1
    labels = list("abcde")
    cqm = dimod.ConstrainedQuadraticModel()
    cqm.set_objective(dimod.BinaryQuadraticModel({v: 0.0 for v in labels}, {}, 0.0, "BINARY"))
    con.add_to_cqm(cqm, labels)
    feasible = [x for x in np.ndindex(*(2,) * 5) if cqm.check_feasible(dict(zip(labels, x)))]
    assert sorted(map(tuple, X.tolist())) == sorted(feasible)


def test_messages_name_the_argument_and_coerce_checks_n_and_k() -> None:
    with pytest.raises(QpruneError, match="max_per_layer: group ids must index"):
        ExactK.per_layer(np.array([0, 0, 1, 2]), 1, np.array([1, 1]))
    con = ExactK.build(4, 2, (np.array([0, 0, 1, 1]), 1))
    assert ExactK.coerce(4, 2, con) is con
    assert not ExactK.coerce(4, 2).capped
    with pytest.raises(QpruneError, match="must be an ExactK"):
        ExactK.coerce(4, 2, (np.array([0, 0, 1, 1]), 1))
    with pytest.raises(QpruneError, match="n=4, k=2"):
        ExactK.coerce(4, 3, con)


def test_cqm_labels_can_be_chosen() -> None:
    con = ExactK.build(4, 2, (np.array([0, 0, 1, 1]), np.array([1, 2])))
    cqm = dimod.ConstrainedQuadraticModel()
    cqm.set_objective(dimod.BinaryQuadraticModel({v: 0.0 for v in "abcd"}, {}, 0.0, "BINARY"))
    con.add_to_cqm(cqm, list("abcd"), count_label="count", cap_label="group_{}")
    assert set(cqm.constraints) == {"count", "group_0"}


def test_every_solver_baseline_and_refiner_takes_only_the_one_constraint() -> None:
    """One feasible set: each entry point that chooses or changes a mask has a ``constraint=``
    and no other way to give caps, and refuses anything but an ExactK."""
    import inspect

    from qprune.refine.chunked import refine_chunked
    from qprune.refine.on_model import refine_mask
    from qprune.refine.tt import refine
    from qprune.solve.baselines import greedy_prune, random_prune
    from qprune.solve.cqm import build_exact_k_cqm, solve_cqm_exact_k
    from qprune.solve.gamma.exact_k import solve_exact_k
    from qprune.solve.layerwise import solve_layerwise
    from qprune.solve.local import repair_to_k, swap_polish
    from qprune.solve.lowrank import polish_exact_k

    takers = [greedy_prune, random_prune, solve_exact_k, solve_layerwise,
              build_exact_k_cqm, solve_cqm_exact_k, refine, refine_chunked, refine_mask, repair_to_k, swap_polish,
              polish_exact_k]
    for fn in takers:
        params = inspect.signature(fn).parameters
        assert "constraint" in params, fn.__name__
        assert not {"max_per_group", "max_per_layer", "layer_ids", "caps"} & set(params), fn.__name__
    caps = (np.array([0, 0, 1, 1]), 1)
    with pytest.raises(QpruneError, match="must be an ExactK"):
        greedy_prune(np.zeros(4), 2, constraint=caps)
    with pytest.raises(QpruneError, match="must be an ExactK"):
        random_prune(4, 2, constraint=caps)
