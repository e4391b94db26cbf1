"""The focus pass's tabu search at the DP's count restarts from its own best while that improves
(qprune.solve.layerwise.harvest._settle_window), and benchmarks/scale.py's gamma-search reuse and scoring."""

from __future__ import annotations


import numpy as np
import pytest

from qprune.solve.layerwise.block_moves import greedy_curve, refine_curve
from qprune.solve.layerwise.blocks import Block, energies
from qprune.solve.layerwise.harvest import RESETTLE, _settle, _settle_window



def _block(seed: int, m: int = 300) -> Block:
    """Couplings strong enough (4 / sqrt(m)) that swap descent stops short of what tabu finds."""
    rng = np.random.default_rng(seed)
    h = rng.normal(0.0, 1.0, m) + 0.3
    A = np.abs(rng.normal(0.0, 1.0, (m, m)))
    M = (A + A.T) * 4.0 / np.sqrt(m)
    np.fill_diagonal(M, 0.0)
    return Block((0,), np.arange(m), h, M, np.zeros(m, np.int64), np.array([m]))


def test_restarted_tabu_is_never_worse_and_sometimes_better() -> None:
    gains = []
    for seed in range(6):
        b = _block(seed)
        E, X = greedy_curve(b)
        E, X = refine_curve(b, E, X)
        c0 = b.m // 3
        E1, X1 = E.copy(), X.copy()
        _settle(b, E1, X1, np.zeros(E.size, bool), np.zeros(E.size, bool), c0, 150)
        settled = np.zeros(E.size, bool)
        E2, X2 = _settle_window(b, E.copy(), X.copy(), settled, c0, 150, (c0 - 8, c0 + 8))
        assert int(X2[c0].sum()) == c0 and settled[c0]
        assert E2[c0] == pytest.approx(float(energies(X2[c0][None, :], b.h, b.M)[0]), abs=1e-9)
        assert E2[c0] <= E1[c0] + 1e-9
        assert np.all(E2[np.isfinite(E)] <= E[np.isfinite(E)] + 1e-9)  # nothing on the curve gets worse
        gains.append(E1[c0] - E2[c0])
    assert RESETTLE >= 2 and max(gains) > 1e-6  # a second search from the first one's best found more


def test_settled_count_is_not_searched_again() -> None:
    b = _block(2)
    E, X = greedy_curve(b)
    c0 = b.m // 3
    settled = np.zeros(E.size, bool)
    settled[c0] = True
    E2, X2 = _settle_window(b, E.copy(), X.copy(), settled, c0, 150, (c0 - 8, c0 + 8))
    assert E2[c0] == E[c0] and np.array_equal(X2[c0], X[c0])
