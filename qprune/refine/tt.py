"""Tensor-train refinement (PROTES): a generic post-solver stage over a black-box objective.

The stage takes a seed mask with exactly ``k`` ones (normally the QUBO solution) and searches for a
better mask with exactly ``k`` ones against the real metric, which is any callable mapping a batch of
masks ``[B, N]`` (0/1) to ``B`` floats to MAXIMISE (PSNR, accuracy, minus a BQM's energy, ...).

Engine. The search distribution is a PROTES tensor train over ``{0,1}^N`` (``d = N``, ``n = 2``).
``protes.protes()`` has no ``x0``, no way to repair proposals and counts cached re-evaluations as
budget, so this module drives the loop itself and reuses the package's own TT building blocks:
``_sample`` (sampling from the TT), ``_likelihood`` + ``_interface_matrices`` (log-likelihood of
the elites) and an ``optax.adam`` step, exactly as ``protes()`` composes them. Only the loop
around them is ours: what goes into each batch, the cardinality handling, the cache and the
budget. ``protes`` imports ``matplotlib.pyplot`` and edits rcParams at import, so it is imported
lazily, inside :func:`matplotlib.rc_context`, which puts rcParams back.

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

Feasibility: exactly ``k`` ones and, with ``max_per_group``, at most ``cap[g]`` ones in group
``g`` (the per-layer ``min_keep`` limit); exploration, mutations and repairs all stay feasible.

Guarantees: the result has exactly ``k`` ones; the seed is evaluated first and kept unless an
evaluated mask scores strictly higher, so the result never scores below the seed (for a noisy
objective: below the seed's recorded value); a repeated mask is never re-evaluated (bit-pattern
cache), and the budget counts objective evaluations, not proposals; the same ``seed`` (and a
deterministic objective) gives the same result.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from qprune.errors import BackendUnavailable, QpruneError

Objective = Callable[[np.ndarray], Any]
"""Maps masks ``int8 [B, N]`` (1 = pruned) to ``B`` floats, higher is better."""

__all__ = [
    "Objective",
    "RefineResult",
    "layer_groups",
    "refine",
    "refine_chunked",
    "refine_mask",
]


# --------------------------------------------------------------------------------------------
# result


@dataclass
class RefineResult:
    """Outcome of :func:`refine` / :func:`refine_chunked`.

    ``x`` has exactly ``k`` ones and ``value >= seed_value``. ``trace`` lists ``(evaluations,
    best value)`` each time the best improved (the first entry is the seed), so a plot of the best
    value against the evaluation count is ``zip(*trace)``.
    """

    x: np.ndarray  # int8 [N], exactly k ones (1 = pruned)
    value: float  # objective(x) as evaluated
    seed_value: float  # objective(seed) as evaluated
    k: int
    evaluations: int  # objective evaluations (distinct masks) used, seed included
    proposals: int  # masks proposed, cache hits included
    iterations: int
    time: float  # seconds
    trace: list[tuple[int, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def improved(self) -> bool:
        """True when the search found a mask strictly better than the seed."""
        return self.value > self.seed_value

    @property
    def gain(self) -> float:
        """``value - seed_value`` (never negative)."""
        return self.value - self.seed_value

    def summary(self) -> dict[str, Any]:
        """JSON-friendly digest (no arrays) for reports and solver info."""
        return {
            "value": self.value, "seed_value": self.seed_value, "gain": self.gain,
            "improved": self.improved, "k": self.k, "evaluations": self.evaluations,
            "proposals": self.proposals, "iterations": self.iterations, "time": self.time,
            "trace": [[int(m), float(v)] for m, v in self.trace],
            **{key: val for key, val in self.info.items() if key != "stages"},
        }

    def sample(self, labels: Sequence[str]) -> dict[str, int]:
        """The mask as a ``{label: 0/1}`` sample (dimod style)."""
        if len(labels) != self.x.size:
            raise QpruneError(f"{len(labels)} labels for a mask of {self.x.size} variables")
        return {str(lab): int(v) for lab, v in zip(labels, self.x)}


# --------------------------------------------------------------------------------------------
# the protes engine (lazy)


class _Engine:
    """protes' TT building blocks, jitted once per process."""

    def __init__(self) -> None:
        try:
            import matplotlib
        except ImportError:  # protes' own import will then fail with a clear message below
            matplotlib = None
        guard = matplotlib.rc_context() if matplotlib is not None else nullcontext()
        try:
            with guard:  # protes imports pyplot and edits rcParams: put them back
                pp = importlib.import_module("protes.protes")  # the module, not the function
                import jax
                import jax.numpy as jnp
                import optax
        except ImportError as exc:
            raise BackendUnavailable(
                f"TT refinement needs the 'protes' package ({exc}); install it with "
                "pip install 'qprune[tt]'"
            ) from exc
        missing = [n for n in ("_sample", "_likelihood", "_interface_matrices") if not hasattr(pp, n)]
        if missing:
            version = getattr(importlib.import_module("protes"), "__version__", "?")
            raise BackendUnavailable(
                f"protes {version} lacks {', '.join(missing)}; qprune's TT stage is written against "
                "protes 0.3.x (pip install 'protes>=0.3.12,<0.4')"
            )
        self.jax, self.jnp, self.optax, self.pp = jax, jnp, optax, pp
        self._interface = jax.jit(pp._interface_matrices)
        self._sample = jax.jit(jax.vmap(pp._sample, (None, None, None, None, 0)))
        self._likelihood = jax.vmap(pp._likelihood, (None, None, None, None, 0))
        self._steps: dict[float, tuple[Any, Callable]] = {}

    def draw(self, P: list, key: Any, m: int) -> np.ndarray:
        """``m`` samples from the TT distribution ``P`` (protes' own sampler)."""
        Pl, Pm, Pr = P
        Zm = self._interface(Pm, Pr)
        keys = self.jax.random.split(key, m)
        return np.asarray(self._sample(Pl, Pm, Pr, Zm, keys), dtype=np.int8)

    def optimizer(self, lr: float) -> tuple[Any, Callable]:
        """``(optax.adam(lr), step)`` where ``step(state, P, I) -> (state, P)`` is protes' update:
        one Adam step on the mean negative log-likelihood of the rows of ``I``."""
        if lr not in self._steps:
            jax, jnp, pp = self.jax, self.jnp, self.pp
            optim = self.optax.adam(lr)
            likelihood = self._likelihood

            def loss(P: list, I: Any) -> Any:
                Pl, Pm, Pr = P
                Zm = pp._interface_matrices(Pm, Pr)
                return jnp.mean(-likelihood(Pl, Pm, Pr, Zm, I))

            grad = jax.grad(loss)

            @jax.jit
            def step(state: Any, P: list, I: Any) -> tuple[Any, list]:
                updates, state = optim.update(grad(P, I), state)
                return state, jax.tree_util.tree_map(lambda p, u: p + u, P, updates)

            self._steps[lr] = (optim, step)
        return self._steps[lr]

    def peaked(
        self, x0: np.ndarray, rank: int, eps: float, rng: np.random.Generator, scale: float = 1.0
    ) -> list:
        """A TT in protes' layout ``[Yl (1,2,r), Ym (d-2,r,2,r), Yr (r,2,1)]`` whose samples are
        ``x0`` with each coordinate flipped with probability about ``eps / (1 + eps)``."""
        d, r = x0.size, rank
        # weight 1 on the seed's value, eps on the other; the noise breaks the symmetry between the
        # rank channels (identical channels would get identical gradients forever)
        base = np.where(np.eye(2, dtype=bool)[x0], 1.0, eps)  # [d, 2]
        Y = scale * base[:, None, :, None] * (1.0 + 0.1 * rng.uniform(-1.0, 1.0, size=(d, r, 2, r)))
        Yl = Y[0, :1, :, :]  # (1, 2, r)
        Ym = Y[1:-1]  # (d-2, r, 2, r)
        Yr = Y[-1, :, :, :1]  # (r, 2, 1)
        f32 = self.jnp.float32
        return [self.jnp.asarray(Yl, f32), self.jnp.asarray(Ym, f32), self.jnp.asarray(Yr, f32)]


_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


# --------------------------------------------------------------------------------------------
# evaluation bookkeeping


class _Evaluator:
    """Wraps the objective: bit-pattern cache, budget, best feasible mask, trace, progress bar."""

    def __init__(
        self, objective: Objective, feasible: _Feasible, budget: int, progress: bool, desc: str
    ) -> None:
        self.objective, self.feasible, self.budget = objective, feasible, budget
        self.cache: dict[bytes, float] = {}
        self.evaluations = 0
        self.proposals = 0
        self.best_x: np.ndarray | None = None
        self.best_value = -math.inf
        self.trace: list[tuple[int, float]] = []
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=budget, desc=desc, unit="eval", leave=False)

    @property
    def left(self) -> int:
        return self.budget - self.evaluations

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Values of the rows of ``X``; new patterns are evaluated (as far as the budget allows),
        the rest come from the cache. Rows left unevaluated for lack of budget get NaN."""
        X = np.ascontiguousarray(X, dtype=np.int8)
        keys = [np.packbits(row).tobytes() for row in X]
        self.proposals += len(keys)
        new: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self.cache and key not in new and len(new) < self.left:
                new[key] = i
        if new:
            rows = np.fromiter(new.values(), dtype=np.int64)
            values = self._call(X[rows])
            self.evaluations += len(rows)
            ok = self.feasible.ok(X[rows])
            before = self.best_value
            for key, i, v, good in zip(new, rows, values, ok):
                self.cache[key] = v
                if good and v > self.best_value:
                    self.best_value, self.best_x = float(v), X[i].copy()
            if self.best_value > before:  # one point per objective call: (evaluations, best)
                self.trace.append((self.evaluations, self.best_value))
            if self.bar is not None:
                self.bar.update(len(rows))
                self.bar.set_postfix(best=f"{self.best_value:.6g}", refresh=False)
        return np.array([self.cache.get(key, np.nan) for key in keys], dtype=np.float64)

    def _call(self, X: np.ndarray) -> np.ndarray:
        out = np.asarray(self.objective(X.copy()), dtype=np.float64).reshape(-1)
        if out.shape[0] != X.shape[0]:
            raise QpruneError(
                f"the objective returned {out.shape[0]} values for {X.shape[0]} masks; it must map "
                "masks [B, N] to B floats"
            )
        # a NaN/inf score is a failed candidate, never a winner
        return np.where(np.isfinite(out) | (out == -np.inf), out, -np.inf)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------
# the feasible set and proposals on it


class _Feasible:
    """Masks with exactly ``k`` ones and, optionally, at most ``cap[g]`` ones in group ``g``
    (the per-layer ``min_keep`` limit: pruning a whole layer disconnects the network)."""

    def __init__(self, n: int, k: int, max_per_group: tuple[Any, Any] | None) -> None:
        self.n, self.k = n, k
        self.group: np.ndarray | None = None
        self.cap: np.ndarray | None = None
        if max_per_group is not None:
            group = np.asarray(max_per_group[0])
            cap = np.asarray(max_per_group[1], dtype=np.int64).reshape(-1)
            if group.shape != (n,) or not np.issubdtype(group.dtype, np.integer):
                raise QpruneError(
                    f"max_per_group: need one integer group id per variable ({n}), got {group.shape}"
                )
            if group.min() < 0 or group.max() >= cap.size:
                raise QpruneError(f"max_per_group: group ids must be in 0..{cap.size - 1} (one cap each)")
            self.group = group.astype(np.int64)
            self.cap = cap
            if int(np.minimum(cap, np.bincount(self.group, minlength=cap.size)).sum()) < k:
                raise QpruneError(f"k={k} exceeds what the per-group caps allow")

    def ok(self, X: np.ndarray) -> np.ndarray:
        """Row-wise feasibility of ``X [B, N]``."""
        good = X.sum(axis=1) == self.k
        if self.cap is not None:
            counts = np.stack([np.bincount(self.group, weights=row, minlength=self.cap.size) for row in X])
            good &= np.all(counts <= self.cap[None, :], axis=1)
        return good

    def random(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """``m`` uniform random feasible masks (uniform over ``k``-subsets when uncapped)."""
        order = np.argsort(rng.random((m, self.n)), axis=1)
        X = np.zeros((m, self.n), dtype=np.int8)
        if self.cap is None:
            np.put_along_axis(X, order[:, : self.k], 1, axis=1)
            return X
        for row, perm in zip(X, order):
            room = self.cap.copy()
            taken = 0
            for i in perm:  # first-fit in random order: respects the caps
                if taken == self.k:
                    break
                if room[self.group[i]] > 0:
                    row[i] = 1
                    room[self.group[i]] -= 1
                    taken += 1
        return X

    def mutate(self, rng: np.random.Generator, x: np.ndarray, m: int, exact_k: bool) -> np.ndarray:
        """``m`` one-move neighbours of ``x``: a swap of a one and a zero (feasible when ``x``
        is), or, without exact-k, a single flip (protes' ``k_rnd`` move)."""
        X = np.repeat(x[None, :], m, axis=0)
        if not exact_k:
            X[np.arange(m), rng.integers(0, self.n, m)] ^= 1
            return X
        ones, zeros = np.flatnonzero(x), np.flatnonzero(x == 0)
        if ones.size == 0 or zeros.size == 0:
            return X
        if self.cap is None:
            rows = np.arange(m)
            X[rows, rng.choice(ones, m)] = 0
            X[rows, rng.choice(zeros, m)] = 1
            return X
        counts = np.bincount(self.group, weights=x, minlength=self.cap.size).astype(np.int64)
        for row in X:
            i = rng.choice(ones)
            room = self.cap - counts
            room[self.group[i]] += 1
            allowed = zeros[room[self.group[zeros]] > 0]
            if allowed.size:
                row[i], row[rng.choice(allowed)] = 0, 1
        return X

    def repair(self, X: np.ndarray, p1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Make every row feasible with few flips: clear the ones the TT is least sure of
        (lowest marginal ``p1``) where there are too many, set the zeros it is most sure of where
        there are too few. A balanced deviation from the TT's mode (a swap) is left as it is."""
        X = X.copy()
        # tiny noise breaks ties (many marginals are equal early on) without overriding real order
        key = p1[None, :] + 1e-6 * rng.random(X.shape)
        if self.cap is None:
            s = X.sum(axis=1, dtype=np.int64)
            over, under = s - self.k, self.k - s
            if np.any(over > 0):
                K = np.where(X == 1, key, np.inf)
                rank = np.argsort(np.argsort(K, axis=1, kind="stable"), axis=1, kind="stable")
                X[(rank < over[:, None]) & (X == 1)] = 0
            if np.any(under > 0):
                K = np.where(X == 0, -key, np.inf)
                rank = np.argsort(np.argsort(K, axis=1, kind="stable"), axis=1, kind="stable")
                X[(rank < under[:, None]) & (X == 0)] = 1
            return X
        for row, kr in zip(X, key):
            counts = np.bincount(self.group, weights=row, minlength=self.cap.size).astype(np.int64)
            # 1. groups over their cap shed their least likely ones
            for g in np.flatnonzero(counts > self.cap):
                members = np.flatnonzero((self.group == g) & (row == 1))
                drop = members[np.argsort(kr[members], kind="stable")[: counts[g] - self.cap[g]]]
                row[drop] = 0
                counts[g] = self.cap[g]
            # 2. the global count: clear the least likely ones, or set the most likely zeros
            # that still fit their group
            s = int(counts.sum())
            if s > self.k:
                ones = np.flatnonzero(row == 1)
                row[ones[np.argsort(kr[ones], kind="stable")[: s - self.k]]] = 0
            elif s < self.k:
                zeros = np.flatnonzero(row == 0)
                for i in zeros[np.argsort(-kr[zeros], kind="stable")]:
                    if s == self.k:
                        break
                    if counts[self.group[i]] < self.cap[self.group[i]]:
                        row[i] = 1
                        counts[self.group[i]] += 1
                        s += 1
        return X

    def enumerate(self) -> np.ndarray:
        """Every feasible mask (only called when there are few)."""
        X = np.zeros((math.comb(self.n, self.k), self.n), dtype=np.int8)
        for row, ones in enumerate(combinations(range(self.n), self.k)):
            X[row, list(ones)] = 1
        return X[self.ok(X)]


# --------------------------------------------------------------------------------------------
# the stage


def _as_mask(seed_sample: Any, labels: Sequence[str] | None) -> np.ndarray:
    if isinstance(seed_sample, Mapping):
        keys = list(labels) if labels is not None else list(seed_sample)
        try:
            values = [seed_sample[key] for key in keys]
        except KeyError as exc:
            raise QpruneError(f"seed sample has no value for label {exc.args[0]!r}") from exc
        x = np.asarray(values)
    else:
        x = np.asarray(seed_sample)
    if x.ndim != 1 or x.size == 0:
        raise QpruneError(f"seed mask must be a non-empty 1-D 0/1 vector, got shape {x.shape}")
    if not np.all((x == 0) | (x == 1)):
        raise QpruneError("seed mask must contain only 0 and 1 (1 = pruned)")
    return x.astype(np.int8)


def _check(k: int, n: int, x0: np.ndarray, budget: int, batch: int, elites: int) -> None:
    if not 0 <= k <= n:
        raise QpruneError(f"k={k} is outside 0..{n}")
    if int(x0.sum()) != k:
        raise QpruneError(f"seed mask has {int(x0.sum())} ones, expected exactly k={k}")
    if budget < 1:
        raise QpruneError(f"budget must be >= 1 evaluation, got {budget}")
    if batch < 2:
        raise QpruneError(f"batch must be >= 2, got {batch}")
    if not 1 <= elites <= batch:
        raise QpruneError(f"elites must be in 1..batch={batch}, got {elites}")


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
    max_per_group: tuple[Any, Any] | None = None,
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
        max_per_group: ``(group id per variable, max ones per group)``, e.g. ``(layer_ids,
            space.max_pruned_per_layer)``; the seed must respect it and so does the result.
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
    x0 = _as_mask(seed_sample, labels)
    n = x0.size
    _check(k, n, x0, budget, batch, elites)
    if rho < 0 or not 0 <= explore < 1 or not 0 <= mutations < 1 or explore + mutations >= 1:
        raise QpruneError(
            f"need rho >= 0, explore and mutations in [0, 1) with explore + mutations < 1; got "
            f"rho={rho}, explore={explore}, mutations={mutations}"
        )
    if rank < 1 or lr <= 0 or spread <= 0 or seed_iters < 0:
        raise QpruneError(
            f"need rank >= 1, lr > 0, spread > 0, seed_iters >= 0; got {rank}, {lr}, {spread}, "
            f"{seed_iters}"
        )
    feasible = _Feasible(n, k, max_per_group)
    if not feasible.ok(x0[None, :])[0]:
        raise QpruneError("seed mask breaks max_per_group (too many pruned units in a group)")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))

    ev = _Evaluator(objective, feasible, budget, progress, "tt-refine")
    info: dict[str, Any] = {"mode": "exact_k" if exact_k else "penalty", "engine": "protes", "seed": seed}
    iterations = 0
    try:
        seed_value = float(ev(x0[None, :])[0])
        if ev.best_x is None:  # the seed scored -inf/NaN: still the fallback answer
            ev.best_x, ev.best_value = x0.copy(), seed_value
            ev.trace.append((ev.evaluations, seed_value))
        n_subsets = math.comb(n, k)
        if ev.left <= 0 or n_subsets == 1:
            info["stopped"] = "budget" if n_subsets > 1 else "nothing to search"
        elif n < 3 or n_subsets <= batch:
            # too small for a TT (protes needs d >= 3) or cheaper to enumerate: exact answer
            info["engine"] = "enumeration"
            X = feasible.enumerate()
            ev(X)
            iterations = 1
            info["stopped"] = "enumerated" if len(ev.cache) >= len(X) else "budget"
        else:
            iterations = _search(
                ev, x0, feasible, batch=batch, elites=elites, lr=lr, rank=rank,
                seed_iters=seed_iters, rho=rho, exact_k=exact_k, explore=explore,
                mutations=mutations, spread=spread,
                deadline=None if time_limit is None else t0 + time_limit, seed=seed, info=info,
            )
    finally:
        ev.close()

    assert ev.best_x is not None and int(ev.best_x.sum()) == k
    return RefineResult(
        x=ev.best_x, value=ev.best_value, seed_value=seed_value, k=k, evaluations=ev.evaluations,
        proposals=ev.proposals, iterations=iterations, time=time.perf_counter() - t0,
        trace=ev.trace, info=info,
    )


def _search(
    ev: _Evaluator, x0: np.ndarray, feasible: _Feasible, *, batch: int, elites: int, lr: float,
    rank: int, seed_iters: int, rho: float, exact_k: bool, explore: float, mutations: float,
    spread: float, deadline: float | None, seed: int, info: dict[str, Any],
) -> int:
    """The PROTES loop; returns the number of iterations. Results live in ``ev``."""
    eng = _engine()
    jax = eng.jax
    n, k = x0.size, feasible.k
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    eps = spread / max(n - spread, 1e-9)  # P(flip) = eps / (1 + eps) -> `spread` flips on average
    # Adam moves every core entry by about lr in its first steps, whatever the gradient, and
    # |entry| is what protes samples from: on cores of scale 1 one step gives each coordinate a
    # flip probability ~lr (34 flips per sample for N = 768, measured, vs 2 before) and the TT
    # forgets the seed. Scaling the cores keeps that burst at ~4 * spread flips.
    scale = max(1.0, n * lr / (4.0 * spread))
    P = eng.peaked(x0, rank, eps, rng, scale=scale)
    optim, step = eng.optimizer(lr)
    state = optim.init(P)

    n_explore = round(explore * batch)
    n_mut = round(mutations * batch)
    # every batch needs TT samples, or the TT never sees its own proposals ranked
    n_tt_base = max(1, batch - n_explore - n_mut)
    # a batch of cache hits costs no evaluation: bound the loop in case the TT has collapsed
    max_stall = 200
    stall, it = 0, 0
    info["stopped"] = "budget"
    while ev.left > 0:
        if stall >= max_stall:
            info["stopped"] = f"converged ({max_stall} batches without a new mask)"
            break
        if deadline is not None and time.perf_counter() >= deadline:
            info["stopped"] = "time limit"
            break
        with_seed = it < seed_iters
        key, sub = jax.random.split(key)
        I = eng.draw(P, sub, n_tt_base)  # one shape for every batch: jit compiles once
        if with_seed and n_tt_base > 1:
            I = I[:-1]  # the seed takes this sample's place
        if exact_k:
            I = feasible.repair(I, I.mean(axis=0), rng)
        parts = [I]
        if with_seed:
            parts.append(x0[None, :])
        if n_explore:
            parts.append(feasible.random(rng, n_explore))
        if n_mut:
            parts.append(feasible.mutate(rng, ev.best_x, n_mut, exact_k))
        X = np.concatenate(parts, axis=0)

        before = ev.evaluations
        y = ev(X)
        stall = stall + 1 if ev.evaluations == before else 0
        it += 1
        if ev.left <= 0:
            break  # the last batch may be only partly evaluated: no update on NaNs
        f = y if exact_k else y - rho * np.abs(X.sum(axis=1) - k)
        top = np.argsort(-f, kind="stable")[:elites]
        state, P = step(state, P, eng.jnp.asarray(X[top], dtype=eng.jnp.int32))
    return it


# --------------------------------------------------------------------------------------------
# chunked / hierarchical refinement for the full network


def layer_groups(layer_ids: np.ndarray, size: int = 128) -> list[np.ndarray]:
    """Whole consecutive layers (in first-seen order) cut into ``round(N / size)`` groups of
    about equal unit counts (at least one group). A group that spans several layers lets the
    pruned count move between them, which a one-layer chunk with a fixed count cannot."""
    layer_ids = np.asarray(layer_ids)
    if layer_ids.ndim != 1 or layer_ids.size == 0:
        raise QpruneError("layer_ids must be a non-empty 1-D array")
    if size < 1:
        raise QpruneError(f"group size must be >= 1, got {size}")
    layers = [np.flatnonzero(layer_ids == lid) for lid in dict.fromkeys(layer_ids.tolist())]
    n_groups = max(1, min(len(layers), round(layer_ids.size / size)))
    target = layer_ids.size / n_groups
    groups: list[list[int]] = [[]]
    done = 0
    for idx in layers:
        # start a new group once this one has its share (and groups are left to fill)
        if groups[-1] and done >= target * len(groups) - idx.size / 2 and len(groups) < n_groups:
            groups.append([])
        groups[-1].extend(idx.tolist())
        done += idx.size
    return [np.asarray(g, dtype=np.int64) for g in groups]


def refine_chunked(
    seed_sample: np.ndarray | Mapping[str, int],
    objective: Objective,
    k: int,
    groups: Sequence[Sequence[int] | np.ndarray],
    *,
    budget: int = 20_000,
    rounds: int = 1,
    max_per_group: tuple[Any, Any] | None = None,
    labels: Sequence[str] | None = None,
    seed: int | None = 0,
    progress: bool = True,
    **options: Any,
) -> RefineResult:
    """Refine a large mask chunk by chunk with :func:`refine`, the other variables fixed.

    Each chunk (``groups[i]``, indices into the mask) keeps its current number of ones, so the
    global count stays exactly ``k``; chunks spanning several layers (see :func:`layer_groups`)
    let counts move between those layers. The budget is spread over ``rounds`` passes over the
    chunks in proportion to chunk size (what one stage leaves unused goes to the next). Every
    stage starts from the best mask so far and full masks are cached across stages, so the
    result never scores below the seed. ``options`` go to :func:`refine` (batch, elites, lr,
    rank, exact_k, ...); ``max_per_group`` is enforced on the whole mask.
    """
    t0 = time.perf_counter()
    x = _as_mask(seed_sample, labels)
    n = x.size
    if not 0 <= k <= n or int(x.sum()) != k:
        raise QpruneError(f"seed mask has {int(x.sum())} ones, expected exactly k={k}")
    idx_groups = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups]
    if not idx_groups or any(g.size == 0 for g in idx_groups):
        raise QpruneError("groups must be a non-empty list of non-empty index lists")
    flat = np.concatenate(idx_groups)
    if flat.min() < 0 or flat.max() >= n or np.unique(flat).size != flat.size:
        raise QpruneError(f"groups must be disjoint indices in 0..{n - 1}")
    if rounds < 1 or budget < 1:
        raise QpruneError(f"need rounds >= 1 and budget >= 1, got {rounds}, {budget}")
    full = _Feasible(n, k, max_per_group)
    if not full.ok(x[None, :])[0]:
        raise QpruneError("seed mask breaks max_per_group (too many pruned units in a group)")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))

    cache: dict[bytes, float] = {}
    used = 0

    def full_objective(X: np.ndarray) -> np.ndarray:
        # a full mask can come back in another chunk's stage: one cache for all stages
        nonlocal used
        keys = [np.packbits(row).tobytes() for row in X]
        todo = [i for i, key in enumerate(keys) if key not in cache]
        if todo:
            vals = np.asarray(objective(X[todo].copy()), dtype=np.float64).reshape(-1)
            if vals.shape[0] != len(todo):
                raise QpruneError(f"the objective returned {vals.shape[0]} values for {len(todo)} masks")
            used += len(todo)
            for i, v in zip(todo, vals):
                cache[keys[i]] = float(v)
        return np.array([cache[key] for key in keys])

    seed_value = float(full_objective(x[None, :])[0])
    best_value = seed_value
    trace: list[tuple[int, float]] = [(used, seed_value)]
    stages: list[dict[str, Any]] = []
    plan = [(rnd, gi) for rnd in range(rounds) for gi in range(len(idx_groups))]
    iterations, proposals = 0, 1
    for pos, (rnd, gi) in enumerate(plan):
        left = budget - used
        if left <= 0:
            break
        idx = idx_groups[gi]
        rest = sum(idx_groups[g].size for _, g in plan[pos:])
        sub_budget = int(min(left, max(2, round(left * idx.size / rest))))
        base = x.copy()
        sub_caps = None
        if full.cap is not None:
            outside = np.bincount(full.group, weights=base, minlength=full.cap.size)
            outside -= np.bincount(full.group[idx], weights=base[idx], minlength=full.cap.size)
            sub_caps = (full.group[idx], (full.cap - outside.astype(np.int64)))

        def sub_objective(S: np.ndarray, idx: np.ndarray = idx, base: np.ndarray = base) -> np.ndarray:
            X = np.repeat(base[None, :], S.shape[0], axis=0)
            X[:, idx] = S
            return full_objective(X)

        before = used
        res = refine(
            base[idx], sub_objective, int(base[idx].sum()), budget=sub_budget,
            max_per_group=_compact(sub_caps), seed=seed + 7919 * pos, progress=progress, **options,
        )
        iterations += res.iterations
        proposals += res.proposals
        stages.append({
            "round": rnd, "chunk": gi, "size": int(idx.size), "k": int(base[idx].sum()),
            "budget": sub_budget, "evaluations": used - before, "seed_value": res.seed_value,
            "value": res.value, "engine": res.info.get("engine"),
        })
        if res.value > best_value:
            # the stage's own trace, in global evaluation counts (its seed came from the cache)
            trace += [(before + m - 1, v) for m, v in res.trace[1:] if v > best_value]
            x = base.copy()
            x[idx] = res.x
            best_value = res.value
    assert int(x.sum()) == k and full.ok(x[None, :])[0]
    return RefineResult(
        x=x, value=best_value, seed_value=seed_value, k=k, evaluations=used,
        proposals=proposals, iterations=iterations, time=time.perf_counter() - t0, trace=trace,
        info={"mode": "chunked", "chunks": len(idx_groups), "rounds": rounds, "seed": seed,
              "stages": stages},
    )


def _compact(caps: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Renumber the groups present in a chunk 0..G-1 and keep their caps."""
    if caps is None:
        return None
    group, cap = caps
    present, local = np.unique(group, return_inverse=True)
    return local, cap[present]


# --------------------------------------------------------------------------------------------
# pipeline / CLI hook


def refine_mask(
    model: Any,
    space: Any,
    problem: Any,
    seed_mask: np.ndarray | Mapping[str, int],
    k: int,
    budget: int = 20_000,
    seed: int | None = 0,
    chunked: bool = False,
    *,
    batches: Sequence[Any] | None = None,
    metric: Callable[[Any, Any], float] | None = None,
    group_size: int = 128,
    progress: bool = True,
    scorer_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> RefineResult:
    """Refine ``seed_mask`` against the real validation metric of a model.

    ``problem`` is a :class:`qprune.problems.Problem` (``validation_batches()``, ``metric``) or
    the pipeline's ``Workload`` (``validation``, ``metrics`` + ``primary``); ``batches`` /
    ``metric`` override what it provides. A :class:`qprune.refine.scoring.MaskScorer` (batched, exact,
    cached) scores the masks; the per-layer limit ``space.max_pruned_per_layer`` (when the space
    has one) is kept. ``chunked=True`` runs :func:`refine_chunked` over consecutive-layer chunks
    of about ``group_size`` units (:func:`layer_groups`); otherwise :func:`refine` on the whole
    mask. ``options`` go
    to the stage; ``result.info["scorer"]`` holds the scorer's statistics.
    """
    from qprune.refine.scoring import MaskScorer

    val_batches, metric_fn = _validation_of(problem, batches, metric)
    x0 = _as_mask(seed_mask, list(space.labels) if isinstance(seed_mask, Mapping) else None)
    if x0.size != space.N:
        raise QpruneError(f"seed mask has {x0.size} entries, the filter space {space.N}")
    caps = getattr(space, "max_pruned_per_layer", None)
    if caps is not None and "max_per_group" not in options:
        options["max_per_group"] = (np.asarray(space.layer_ids), np.asarray(caps))
    scorer = MaskScorer(model, space, val_batches, metric_fn, progress=False, **dict(scorer_options or {}))
    try:
        if chunked:
            groups = layer_groups(np.asarray(space.layer_ids), size=group_size)
            result = refine_chunked(x0, scorer, k, groups, budget=budget, seed=seed, progress=progress, **options)
        else:
            result = refine(x0, scorer, k, budget=budget, seed=seed, progress=progress, **options)
    finally:
        scorer.close()
    result.info["scorer"] = scorer.stats()
    return result


def _validation_of(
    problem: Any, batches: Sequence[Any] | None, metric: Callable[[Any, Any], float] | None
) -> tuple[list[Any], Callable[[Any, Any], float]]:
    """Validation batches and a scalar metric from a Problem or the pipeline's Workload."""
    if batches is None:
        if hasattr(problem, "validation_batches"):
            batches = problem.validation_batches()
        elif hasattr(problem, "validation"):
            batches = problem.validation
        else:
            raise QpruneError("refinement needs validation batches: pass a Problem or batches=")
    batches = list(batches)
    if not batches:
        raise QpruneError("refinement needs at least one validation batch")
    if metric is None:
        if callable(getattr(problem, "metric", None)):
            metric = problem.metric
        elif callable(getattr(problem, "metrics", None)):
            metrics, primary = problem.metrics, getattr(problem, "primary", None)

            def metric(out: Any, target: Any) -> float:
                values = metrics(out, target)
                if primary is not None:
                    return float(values[primary])
                if len(values) != 1:
                    raise QpruneError(f"several metrics {sorted(values)} and no primary one to refine on")
                return float(next(iter(values.values())))
        else:
            raise QpruneError("refinement needs a metric (higher is better): pass a Problem or metric=")
    return batches, metric
