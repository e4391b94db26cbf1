"""The one steepest-descent loop behind every local search of the solvers.

Each search keeps its energy in the form that suits it (a sparse QUBO's local field, a dense block,
the factored loss model, a table of per-block count curves) and knows its own neighbourhood (swaps
that keep the count, flips and swaps that keep a cost inside a window, one-step moves of block
counts); all of them then descend the same way: take the best move while it lowers the energy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["steepest"]

M = TypeVar("M")


def steepest(best: Callable[[], tuple[float, M] | None], apply: Callable[[M], None], limit: int,
             tol: float = 0.0) -> tuple[int, float]:
    """Apply ``best()``'s move while its energy change is below ``-tol``, at most ``limit`` moves.

    ``best()`` returns ``(energy change, move)`` for the best move of the current state, or None when
    there is none. Returns (moves made, energy gained, >= 0).
    """
    moves, gain = 0, 0.0
    while moves < limit:
        found = best()
        if found is None or not found[0] < -tol:
            break
        apply(found[1])
        moves += 1
        gain -= found[0]
    return moves, gain
