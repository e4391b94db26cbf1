"""Tensor-train refinement (PROTES): a generic post-solver stage over a black-box objective.

The stage takes a seed mask with exactly ``k`` ones (normally the QUBO solution) and searches for a
better mask with exactly ``k`` ones against the real metric, which is any callable mapping a batch of
masks ``[B, N]`` (0/1) to ``B`` floats to MAXIMISE (PSNR, accuracy, minus a BQM's energy, ...).

Engine. The search distribution is a PROTES tensor train over ``{0,1}^N`` (``d = N``, ``n = 2``),
driven through protes' own building blocks (:mod:`qprune.refine.engine`, imported lazily). Only
the loop around them is ours (this module): what goes into each batch, the cardinality handling,
the cache and the budget (:mod:`qprune.refine.evaluator`).

One iteration (batch ``B``):

* the seed mask, for the first ``seed_iters`` iterations (so the elites pull the TT towards it
  while the TT is still learning); it costs no evaluation after the first, thanks to the cache;
* ``round(explore * B)`` uniform random masks with exactly ``k`` ones (exploration);
* ``round(mutations * B)`` 1-move mutations of the best mask so far (a swap of one pruned and one
  kept unit in exact-``k`` mode, a single flip otherwise -- protes' ``k_rnd`` idea);
* the rest sampled from the TT. In exact-``k`` mode each TT sample is repaired to exactly ``k``
  ones with the fewest flips, choosing the flipped coordinates by the current marginals (estimated
  from this batch's TT samples): surplus ones are cleared where the TT is least sure of a one,
  missing ones are set where it is most sure. Balanced deviations (a swap) survive untouched.
  Without exact-``k`` the paper's penalty ``f(x) = obj(x) - rho |sum(x) - k|`` ranks the batch.

The ``elites`` best masks of the batch (by ``f``) get one Adam step on their mean negative
log-likelihood. The TT starts peaked at the seed: every core puts weight ``s`` on the seed's
value and ``s * eps`` on the other, times ``1 + 0.1 U(-1, 1)`` noise so the rank-``r`` channels
are not identical; ``eps`` is chosen so that a first TT sample differs from the seed in
``spread`` coordinates on average, and ``s = max(1, N lr / (4 spread))`` keeps Adam's first
steps (about ``lr`` per entry whatever the gradient) from scattering the samples: with ``s = 1``
and N = 768 the samples were 34 flips from the seed after one step and the TT alone never beat a
good seed; scaled, it did (toy QUBO with a proxy-optimal seed, 3,000 evaluations).

Feasibility: the :class:`qprune.solve.constraint.ExactK` constraint -- exactly ``k`` ones and, with
group caps, at most ``cap[g]`` ones in group ``g`` (the per-layer ``min_keep`` limit);
exploration, mutations and repairs all stay feasible.

Guarantees: the result has exactly ``k`` ones; the seed is evaluated first and kept unless an
evaluated mask scores strictly higher, so the result never scores below the seed (for a noisy
objective: below the seed's recorded value); a repeated mask is never re-evaluated (bit-pattern
cache), and the budget counts objective evaluations, not proposals; the same ``seed`` (and a
deterministic objective) gives the same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qprune.errors import QpruneError
from qprune.refine.engine import engine
from qprune.refine.evaluator import Evaluator
from qprune.refine.result import Objective, RefineResult, as_mask
from qprune.solve.constraint import ExactK

__all__ = ["Objective", "RefineResult", "Settings", "refine"]

MAX_STALL = 200  # batches of cache hits only (no evaluation) before the search counts as converged


@dataclass(frozen=True)
class Settings:
    """The search's knobs (see :func:`refine` for their meaning)."""

    batch: int = 100
    elites: int = 10
    lr: float = 5e-2
    rank: int = 5
    seed_iters: int = 10
    rho: float = 1.0
    exact_k: bool = True
    explore: float = 0.05
    mutations: float = 0.1
    spread: float = 2.0

    def check(self) -> None:
        if self.batch < 2:
            raise QpruneError(f"batch must be >= 2, got {self.batch}")
        if not 1 <= self.elites <= self.batch:
            raise QpruneError(f"elites must be in 1..batch={self.batch}, got {self.elites}")
        if (self.rho < 0 or not 0 <= self.explore < 1 or not 0 <= self.mutations < 1
                or self.explore + self.mutations >= 1):
            raise QpruneError(
                f"need rho >= 0, explore and mutations in [0, 1) with explore + mutations < 1; got "
                f"rho={self.rho}, explore={self.explore}, mutations={self.mutations}"
            )
        if self.rank < 1 or self.lr <= 0 or self.spread <= 0 or self.seed_iters < 0:
            raise QpruneError(
                f"need rank >= 1, lr > 0, spread > 0, seed_iters >= 0; got {self.rank}, {self.lr}, "
                f"{self.spread}, {self.seed_iters}"
            )


def _check(k: int, n: int, x0: np.ndarray, budget: int) -> None:
    if not 0 <= k <= n:
        raise QpruneError(f"k={k} is outside 0..{n}")
    if int(x0.sum()) != k:
        raise QpruneError(f"seed mask has {int(x0.sum())} ones, expected exactly k={k}")
    if budget < 1:
        raise QpruneError(f"budget must be >= 1 evaluation, got {budget}")


def feasible_seed(x0: np.ndarray, k: int, constraint: ExactK | None) -> ExactK:
    """The constraint (None: exactly k, no caps), checked on the seed."""
    con = ExactK.coerce(x0.size, k, constraint)
    if not con.ok(x0):
        raise QpruneError("seed mask breaks the constraint's caps (too many pruned units in a group)")
    return con


def fresh_seed(seed: int | None) -> int:
    """``seed``, or a fresh one drawn from the OS when it is None."""
    return int(np.random.SeedSequence().entropy % (2**31)) if seed is None else seed


def refine(
    seed_sample: np.ndarray | Mapping[str, int],
    objective: Objective,
    k: int,
    *,
    budget: int = 20_000,
    batch: int = 100,
    elites: int = 10,
    lr: float = 5e-2,
    rank: int = 5,
    seed_iters: int = 10,
    rho: float = 1.0,
    exact_k: bool = True,
    explore: float = 0.05,
    mutations: float = 0.1,
    spread: float = 2.0,
    constraint: ExactK | None = None,
    labels: Sequence[str] | None = None,
    time_limit: float | None = None,
    seed: int | None = 0,
    progress: bool = True,
) -> RefineResult:
    """Refine a mask with exactly ``k`` ones by PROTES tensor-train search on ``objective``.

    Args:
        seed_sample: the starting mask (1 = pruned), a 0/1 vector or a ``{label: 0/1}`` sample
            (ordered by ``labels`` when given); it must have exactly ``k`` ones.
        objective: ``f(masks int8 [B, N]) -> B floats``, MAXIMISED. Called with new masks only.
        k: number of ones (pruned units) every returned mask has.
        budget: objective evaluations (distinct masks, the seed included).
        batch, elites, lr, rank: PROTES' ``k``, ``k_top``, Adam learning rate and TT rank.
        seed_iters: iterations that carry the seed mask in their batch.
        rho: penalty per unit of ``|sum(x) - k|``, in objective units (``exact_k=False`` only).
        exact_k: propose only feasible masks (TT samples are repaired); otherwise rank proposals
            by ``objective - rho |sum(x) - k|`` as the paper does (only feasible masks can win).
        explore: fraction of each batch drawn uniformly among feasible masks.
        mutations: fraction of each batch that are one-move mutations of the best mask so far.
        spread: mean number of coordinates in which a sample of the initial TT differs from the
            seed (sets how sharply the initial TT is peaked at the seed).
        constraint: the feasible set, an :class:`~qprune.solve.constraint.ExactK` for ``(N, k)``
            (exactly ``k`` ones, per-group caps; ``ExactK.for_space(space, k)`` for a filter space);
            the seed must respect it and so does the result.
        labels: variable order for a mapping ``seed_sample``.
        time_limit: stop after this many seconds (checked between batches).
        seed: randomness (TT sampling, exploration, mutations, repair tie-breaks); ``None`` draws
            a fresh one (recorded in ``info["seed"]``).
        progress: show a progress bar with the best value so far.

    Returns:
        :class:`RefineResult`; ``result.x`` is feasible (exactly ``k`` ones) and
        ``result.value >= result.seed_value``.
    """
    t0 = time.perf_counter()
    x0 = as_mask(seed_sample, labels)
    n = x0.size
    settings = Settings(batch, elites, lr, rank, seed_iters, rho, exact_k, explore, mutations, spread)
    _check(k, n, x0, budget)
    settings.check()
    con = feasible_seed(x0, k, constraint)
    seed = fresh_seed(seed)

    ev = Evaluator(objective, con, budget, progress, "tt-refine")
    info: dict[str, Any] = {"mode": "exact_k" if exact_k else "penalty", "engine": "protes", "seed": seed}
    iterations = 0
    try:
        seed_value = float(ev(x0[None, :])[0])
        if ev.best_x is None:  # the seed scored -inf/NaN: still the fallback answer
            ev.best_x, ev.best_value = x0.copy(), seed_value
            ev.trace.append((ev.evaluations, seed_value))
        deadline = None if time_limit is None else t0 + time_limit
        iterations = _run(ev, x0, con, settings, deadline, seed, info)
    finally:
        ev.close()

    assert ev.best_x is not None and int(ev.best_x.sum()) == k
    return RefineResult(
        x=ev.best_x, value=ev.best_value, seed_value=seed_value, k=k, evaluations=ev.evaluations,
        proposals=ev.proposals, iterations=iterations, time=time.perf_counter() - t0,
        trace=ev.trace, info=info,
    )


def _run(
    ev: Evaluator, x0: np.ndarray, con: ExactK, settings: Settings, deadline: float | None,
    seed: int, info: dict[str, Any],
) -> int:
    """Nothing to do, enumeration (small spaces) or the TT search; returns the iterations."""
    n, k = x0.size, con.k
    n_subsets = math.comb(n, k)
    if ev.left <= 0 or n_subsets == 1:
        info["stopped"] = "budget" if n_subsets > 1 else "nothing to search"
        return 0
    if n < 3 or n_subsets <= settings.batch:
        # too small for a TT (protes needs d >= 3) or cheaper to enumerate: exact answer
        info["engine"] = "enumeration"
        X = con.enumerate()
        ev(X)
        info["stopped"] = "enumerated" if len(ev.cache) >= len(X) else "budget"
        return 1
    return _search(ev, x0, con, settings, deadline, seed, info)


def _search(
    ev: Evaluator, x0: np.ndarray, con: ExactK, s: Settings, deadline: float | None, seed: int,
    info: dict[str, Any],
) -> int:
    """The PROTES loop; returns the number of iterations. Results live in ``ev``."""
    eng = engine()
    jax = eng.jax
    n, k = x0.size, con.k
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    eps = s.spread / max(n - s.spread, 1e-9)  # P(flip) = eps / (1 + eps) -> `spread` flips on average
    # Adam moves every core entry by about lr in its first steps, whatever the gradient, and
    # |entry| is what protes samples from: on cores of scale 1 one step gives each coordinate a
    # flip probability ~lr (34 flips per sample for N = 768, measured, vs 2 before) and the TT
    # forgets the seed. Scaling the cores keeps that burst at ~4 * spread flips.
    scale = max(1.0, n * s.lr / (4.0 * s.spread))
    P = eng.peaked(x0, s.rank, eps, rng, scale=scale)
    optim, step = eng.optimizer(s.lr)
    state = optim.init(P)

    n_explore = round(s.explore * s.batch)
    n_mut = round(s.mutations * s.batch)
    # every batch needs TT samples, or the TT never sees its own proposals ranked
    n_tt = max(1, s.batch - n_explore - n_mut)
    # a batch of cache hits costs no evaluation: bound the loop in case the TT has collapsed
    stall, it = 0, 0
    info["stopped"] = "budget"
    while ev.left > 0:
        if stall >= MAX_STALL:
            info["stopped"] = f"converged ({MAX_STALL} batches without a new mask)"
            break
        if deadline is not None and time.perf_counter() >= deadline:
            info["stopped"] = "time limit"
            break
        key, sub = jax.random.split(key)
        I = eng.draw(P, sub, n_tt)  # one shape for every batch: jit compiles once
        X = _proposals(I, x0, ev.best_x, con, s, rng, with_seed=it < s.seed_iters,
                       n_explore=n_explore, n_mut=n_mut)
        before = ev.evaluations
        y = ev(X)
        stall = stall + 1 if ev.evaluations == before else 0
        it += 1
        if ev.left <= 0:
            break  # the last batch may be only partly evaluated: no update on NaNs
        f = y if s.exact_k else y - s.rho * np.abs(X.sum(axis=1) - k)
        top = np.argsort(-f, kind="stable")[:s.elites]
        state, P = step(state, P, eng.jnp.asarray(X[top], dtype=eng.jnp.int32))
    return it


def _proposals(
    I: np.ndarray, x0: np.ndarray, best: np.ndarray, con: ExactK, s: Settings,
    rng: np.random.Generator, *, with_seed: bool, n_explore: int, n_mut: int,
) -> np.ndarray:
    """One batch: the TT samples ``I`` (repaired in exact-k mode), the seed while ``with_seed``,
    uniform feasible masks and one-move mutations of the best mask so far."""
    if with_seed and len(I) > 1:
        I = I[:-1]  # the seed takes this sample's place
    if s.exact_k:
        # tiny noise breaks ties (many marginals are equal early on) without overriding real order
        I = con.repair(I, I.mean(axis=0)[None, :] + 1e-6 * rng.random(I.shape))
    parts = [I]
    if with_seed:
        parts.append(x0[None, :])
    if n_explore:
        parts.append(con.random(rng, n_explore))
    if n_mut:
        parts.append(_mutations(con, rng, best, n_mut, s.exact_k))
    return np.concatenate(parts, axis=0)


def _mutations(con: ExactK, rng: np.random.Generator, x: np.ndarray, m: int, exact_k: bool) -> np.ndarray:
    """``m`` one-move neighbours of ``x``: a swap of a one and a zero within the caps
    (:meth:`ExactK.swaps`), or, without exact-k, a single flip (protes' ``k_rnd`` move)."""
    if exact_k:
        return con.swaps(rng, x, m)
    X = np.repeat(x[None, :], m, axis=0)
    X[np.arange(m), rng.integers(0, x.size, m)] ^= 1
    return X
