"""The PROTES engine: protes' tensor-train building blocks, imported lazily and jitted once.

``protes.protes()`` has no ``x0``, no way to repair proposals and counts cached re-evaluations as
budget, so :mod:`qprune.refine.tt` drives the loop itself and reuses the package's own TT
building blocks: ``_sample`` (sampling from the TT), ``_likelihood`` + ``_interface_matrices``
(log-likelihood of the elites) and an ``optax.adam`` step, exactly as ``protes()`` composes them.
``protes`` is an optional extra that imports ``matplotlib.pyplot`` and edits rcParams at import,
so it is imported on first use, inside :func:`matplotlib.rc_context`, which puts rcParams back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np

from qprune.errors import BackendUnavailable

__all__ = ["Engine", "engine"]


class Engine:
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


_ENGINE: Engine | None = None


def engine() -> Engine:
    """The process-wide engine (protes is imported, and its functions jitted, on the first call)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Engine()
    return _ENGINE
