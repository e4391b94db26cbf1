"""The table of exact-k strategies (qprune.solve.strategies) and its typed options."""

from __future__ import annotations

import numpy as np
import pytest

from qprune.errors import QpruneError
from qprune.instances.synthetic import random_formulation
from qprune.solve.constraint import ExactK
from qprune.solve.gamma.exact_k import GammaOptions, solve_exact_k
from qprune.solve.layerwise import LayerwiseOptions, solve_layerwise
from qprune.solve.strategies import STRATEGIES, get_strategy, solve


def test_the_table_names_each_strategy_once() -> None:
    assert list(STRATEGIES) == ["gamma", "layerwise"]
    assert STRATEGIES["gamma"].options_type is GammaOptions
    assert STRATEGIES["layerwise"].options_type is LayerwiseOptions
    with pytest.raises(QpruneError, match="unknown strategy 'annealing'; choose 'gamma' or 'layerwise'"):
        get_strategy("annealing")


def test_options_are_checked_by_name() -> None:
    gamma = get_strategy("gamma")
    assert gamma.make_options(None) == GammaOptions()
    assert gamma.make_options({"search_reads": 3}) == GammaOptions(search_reads=3)
    with pytest.raises(QpruneError, match=r"strategy 'gamma' has no option\(s\) \['steps'\]"):
        gamma.make_options({"steps": 3})
    with pytest.raises(QpruneError, match="as a mapping"):
        gamma.make_options(LayerwiseOptions())


def test_the_table_gives_what_the_functions_give() -> None:
    f = random_formulation((7, 8, 6), seed=2)
    con = ExactK.build(f.num_variables, 8, (f.layer_ids, np.array([2, 5, 5])))
    a = get_strategy("gamma").solve(f, 8, "neal", 3, constraint=con, options={"search_reads": 5, "final_reads": 10})
    b = solve_exact_k(f, 8, "neal", 3, constraint=con, search_reads=5, final_reads=10)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.x[f.layer_ids == 0].sum() <= 2
    c = solve(f, 8, "neal", strategy="layerwise", seed=1, constraint=con, gamma=0.2)
    d = solve_layerwise(f, 8, "neal", 1, gamma=0.2, constraint=con)
    np.testing.assert_array_equal(c.x, d.x)
    assert c.energy == d.energy


def test_a_solver_takes_its_options_as_an_object_or_by_name_and_names_a_bad_one() -> None:
    f = random_formulation((7, 8, 6), seed=2)
    by_name = solve_exact_k(f, 8, "neal", 3, search_reads=5, final_reads=10)
    as_object = solve_exact_k(f, 8, "neal", 3, options=GammaOptions(search_reads=5, final_reads=10))
    knob_wins = solve_exact_k(f, 8, "neal", 3, options=GammaOptions(search_reads=5, final_reads=99), final_reads=10)
    np.testing.assert_array_equal(by_name.x, as_object.x)
    np.testing.assert_array_equal(by_name.x, knob_wins.x)
    assert knob_wins.info["final_reads"] == 10
    with pytest.raises(QpruneError, match=r"solve_exact_k has no option\(s\) \['max_itr'\]; it takes \['max_iter'"):
        solve_exact_k(f, 8, max_itr=3)
    with pytest.raises(QpruneError, match=r"solve_layerwise has no option\(s\) \['sweeps'\]"):
        solve_layerwise(f, 8, sweeps=3)
    a = solve_layerwise(f, 8, "neal", 3, reads=2)
    b = solve_layerwise(f, 8, "neal", 3, options=LayerwiseOptions(reads=2))
    np.testing.assert_array_equal(a.x, b.x)
