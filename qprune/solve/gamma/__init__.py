"""The gamma search: exactly k ones from a QUBO by searching the reward gamma on the count.

* :mod:`~qprune.solve.gamma.exact_k` — :func:`solve_exact_k`: the search,
  then k-preserving repair and swap polish.
* :mod:`~qprune.solve.gamma.search` — :class:`GammaSearch`, the loop over gamma (the paper
  bisects it; here a bracket, then Illinois regula falsi on the count the backend's reads reach).
* :mod:`~qprune.solve.gamma.library` — per-component states kept across gammas and recombined into
  an exact-k state with the curves core's DP (:mod:`qprune.solve.dp`).
"""

from qprune.solve.gamma.exact_k import solve_exact_k
from qprune.solve.gamma.search import GammaOptions

__all__ = ["GammaOptions", "solve_exact_k"]
