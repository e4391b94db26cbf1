"""The search on the capacity weight gamma: :class:`GammaSearch`.

``BQM(gamma) = objective - gamma * reward.x``; a larger gamma prunes more. Each solve samples
``BQM(gamma)`` once and folds every read into the component library; the search moves gamma by
Illinois regula falsi on ``count(gamma) - k`` from a rigorous bracket (all zeros / all ones provably
optimal) and a greedy estimate, and stops as soon as any read (or the recombined state) has k ones.
The library, not the last read, then supplies the answer (see :mod:`qprune.solve.gamma.exact_k`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dimod
import numpy as np

from qprune.errors import QpruneError
from qprune.solve.arrays import BuildFn, QuboArrays
from qprune.solve.constraint import ExactK
from qprune.solve.gamma.library import ComponentLibrary
from qprune.solve.sampling import SamplerCall

__all__ = ["BqmCache", "GammaOptions", "GammaSearch", "as_binary", "greedy_gamma"]


@dataclass(frozen=True)
class GammaOptions:
    """Knobs of the gamma search (``solve_exact_k``'s keyword arguments of the same names).

    max_iter: gamma iterations at most (paper: 20). tol: stop when the bracket is narrower than
    ``tol * |gamma|``. search_reads / final_reads: reads per search solve / for the final solve.
    polish: pair-swap local search on the final state. recombine: combine per-component states
    across reads and solves. warm_start: pass the previous best states as ``initial_states``.
    """

    max_iter: int = 20
    tol: float = 1e-4
    search_reads: int = 15
    final_reads: int = 100
    polish: bool = True
    recombine: bool = True
    warm_start: bool = True

    def check(self) -> None:
        for name in ("max_iter", "search_reads", "final_reads"):
            value = getattr(self, name)
            if int(value) < 0:
                raise QpruneError(f"{name} must be >= 0, got {value}")


def as_binary(bqm: Any) -> dimod.BinaryQuadraticModel:
    """``bqm`` in BINARY form; anything but a BQM is a QpruneError naming what ``build`` returned."""
    if not isinstance(bqm, dimod.BinaryQuadraticModel):
        raise QpruneError(f"build(gamma) must return a dimod.BinaryQuadraticModel, got {type(bqm).__name__}")
    return bqm if bqm.vartype is dimod.BINARY else bqm.change_vartype(dimod.BINARY, inplace=False)


class BqmCache:
    """``build(gamma)`` for the last few gammas; the first nonzero one is checked against the arrays."""

    def __init__(self, fn: BuildFn, arrs: QuboArrays, bqm0: dimod.BinaryQuadraticModel) -> None:
        self.fn, self.arrs = fn, arrs
        self.cache: dict[float, dimod.BinaryQuadraticModel] = {0.0: bqm0}
        self.checked = False

    def at(self, gamma: float) -> dimod.BinaryQuadraticModel:
        if gamma not in self.cache:
            b = as_binary(self.fn(gamma))
            if not self.checked and gamma != 0.0:
                _check_linear(b, self.arrs, gamma)
                self.checked = True
            if len(self.cache) > 4:
                self.cache.pop(next(k_ for k_ in self.cache if k_ != 0.0))
            self.cache[gamma] = b
        return self.cache[gamma]


def _check_linear(bqm: dimod.BinaryQuadraticModel, arrs: QuboArrays, gamma: float) -> None:
    lin = np.array([bqm.get_linear(v) for v in arrs.labels])
    want = arrs.h - gamma * arrs.reward
    if not np.allclose(lin, want, rtol=1e-7, atol=1e-9 * arrs.scale()):
        raise QpruneError(
            "build(gamma) is not build(0) - gamma * reward on the linear biases; pass the right "
            "reward= (a plain callable defaults to 1 per variable)"
        )


@dataclass
class _Scan:
    """What one solve's reads say: the best read, how many reads are feasible, the count range."""

    best_e: float
    best_x: np.ndarray
    n_exact: int
    cmin: int
    cmax: int
    cands: np.ndarray  # reads holding some component's best state


class GammaSearch:
    """One exact-k search: the arrays, the library, the sampler, the seed stream and the record."""

    def __init__(self, arrs: QuboArrays, bqms: BqmCache, k: int, constraint: ExactK, call: SamplerCall,
                 rng: np.random.Generator, options: GammaOptions, info: dict[str, Any]) -> None:
        self.arrs, self.bqms, self.k, self.con = arrs, bqms, k, constraint
        self.call, self.rng, self.options, self.info = call, rng, options, info
        self.lib = ComponentLibrary(arrs, constraint, options.recombine)
        self.warm: list[np.ndarray] = []  # the last solve's best read and recombined state

    def solve(self, gamma: float, reads: int, phase: str) -> tuple[int, int, bool]:
        """One sampler call at ``gamma``; returns (count of the best read, recombined count, any read with k)."""
        bqm = self.bqms.at(gamma)
        seed = int(self.rng.integers(0, 2**31 - 1))  # drawn whatever the backend: the stream stays aligned
        s = self.call(bqm, self.arrs.labels, reads=reads, seed=seed, initial_states=self._initial_states(reads))
        self.info["solves"] += 1
        self.info["solve_time_s"] += s.time_s
        scan = self._scan(s.X, gamma)
        rec = self.lib.recombined_best(scan.cands, gamma)
        self.info["iterations"].append({
            "phase": phase, "gamma": gamma, "reads": len(s.X), "time_s": s.time_s,
            "count_best": int(scan.best_x.sum()), "count_recombined": int(rec.sum()),
            "count_min": scan.cmin, "count_max": scan.cmax, "reads_with_k": scan.n_exact,
            "energy_best": scan.best_e,
        })
        self.warm[:] = [scan.best_x.copy(), rec]
        return int(scan.best_x.sum()), int(rec.sum()), scan.n_exact > 0

    def _initial_states(self, reads: int) -> tuple[np.ndarray, list] | None:
        """The most promising states (appended last) first; the sampler fills the other reads at random."""
        if not (self.options.warm_start and self.warm and self.call.accepts("initial_states")
                and self.call.accepts("num_reads")):
            return None
        seen: dict[bytes, np.ndarray] = {}
        for state in reversed(self.warm):
            seen.setdefault(np.asarray(state, dtype=np.int8).tobytes(), np.asarray(state, dtype=np.int8))
        init = np.array(list(seen.values())[: max(1, reads // 3)], dtype=np.int8)
        return init, self.arrs.labels

    def _scan(self, X_all: np.ndarray, gamma: float) -> _Scan:
        """Fold the reads into the library, in chunks that bound the memory when a backend returns
        very many rows (the exact solver: 2^N)."""
        arrs, n, k = self.arrs, self.arrs.n, self.k
        chunk = max(1, (1 << 22) // max(n, 1))
        best_e, best_x, n_exact = np.inf, X_all[0], 0
        cmin, cmax, cands = n, 0, []
        for s0 in range(0, len(X_all), chunk):
            X = X_all[s0:s0 + chunk]
            Xf = X.astype(np.float64)
            JX = (arrs.J @ Xf.T).T
            self.lib.update(X, JX, gamma)
            counts = X.sum(axis=1, dtype=np.int64)
            energy = arrs.offset + Xf @ (arrs.h - gamma * arrs.reward) + 0.5 * np.einsum("bn,bn->b", Xf, JX)
            b = int(np.argmin(energy))
            if energy[b] < best_e:
                best_e, best_x = float(energy[b]), X[b]
            exact = counts == k
            if self.con.capped and exact.any():
                exact[exact] = self.con.within_caps(X[exact])
            n_exact += int(exact.sum())
            cmin, cmax = min(cmin, int(counts.min())), max(cmax, int(counts.max()))
            cands.append(X[self.lib.component_best_rows(X, JX, gamma)])
        return _Scan(best_e, best_x, n_exact, cmin, cmax, np.concatenate(cands))

    def run(self, bracket: tuple[float, float], tick: Callable[[], Any]) -> tuple[float, bool]:
        """The search and the final solve; returns (final gamma, whether a solve landed on k)."""
        g_zero, g_full = bracket
        k, n, opt = self.k, self.arrs.n, self.options
        lo, hi = [g_zero, -float(k)], [g_full, float(n - k)]  # (gamma, count - k)
        gamma = gamma_final = min(max(greedy_gamma(self.arrs, k), g_zero), g_full)
        self.info["gamma_estimate"] = gamma
        last_side = 0
        hit = False
        history: list[tuple[float, int]] = []
        for _ in range(opt.max_iter):
            count_best, count_rec, any_k = self.solve(gamma, opt.search_reads, "search")
            tick()
            c = count_rec if opt.recombine else count_best
            history.append((gamma, c))
            if c == k or any_k:
                hit = True
                break
            # Illinois regula falsi on f = count - k: robust to the count curve's shape
            if c < k:
                lo = [gamma, float(c - k)]
                if last_side == -1:
                    hi[1] *= 0.5
                last_side = -1
            else:
                hi = [gamma, float(c - k)]
                if last_side == 1:
                    lo[1] *= 0.5
                last_side = 1
            width = hi[0] - lo[0]
            if width <= opt.tol * max(abs(lo[0]), abs(hi[0]), 1e-300):
                break
            t = -lo[1] / (hi[1] - lo[1]) if hi[1] != lo[1] else 0.5
            gamma = lo[0] + min(max(t, 0.02), 0.98) * width
        if history:
            gamma_final = gamma if hit else min(history, key=lambda p: (abs(p[1] - k), -p[0]))[0]
        if opt.final_reads:
            best_k = self.lib.best_k(k, gamma_final)
            if best_k is not None:
                self.warm.append(best_k)  # last = first in line for the initial states
            self.solve(gamma_final, opt.final_reads, "final")
            tick()
        return gamma_final, hit


def greedy_gamma(arrs: QuboArrays, k: int) -> float:
    """Gamma at which greedy additions (cheapest objective per reward first) would stop at k."""
    n = arrs.n
    x = np.zeros(n, dtype=bool)
    g = arrs.h.copy()
    J = arrs.J
    ratios = []
    for _ in range(min(k + 1, n)):
        ratio = np.where(x, np.inf, g / arrs.reward)
        j = int(np.argmin(ratio))
        ratios.append(float(ratio[j]))
        x[j] = True
        lo, hi = J.indptr[j], J.indptr[j + 1]
        g[J.indices[lo:hi]] += J.data[lo:hi]
    if k == 0:
        return ratios[0]
    if k >= n:
        return ratios[-1]
    return 0.5 * (ratios[k - 1] + ratios[k])
