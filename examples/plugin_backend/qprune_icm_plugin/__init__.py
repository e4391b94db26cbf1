"""An example qprune backend written from scratch: iterated conditional modes (ICM) as a dimod.Sampler.

qprune finds it through the entry point ``icm = "qprune_icm_plugin:register"`` in the group
``qprune.backends`` (see ../pyproject.toml): installing this package is all it takes. The hook
calls :func:`qprune.backends.register`, which is also how a backend is added from a script.

ICM: from a random state, visit the variables in a random order and give each the value that is
best given all the others; repeat until a full sweep changes nothing (a local minimum).
"""

from __future__ import annotations

from typing import Any

import dimod
import numpy as np


class ICMSampler(dimod.Sampler):
    """``num_reads`` random starts, each swept to a local minimum by iterated conditional modes."""

    @property
    def parameters(self) -> dict[str, list]:
        # qprune passes only the parameters a sampler lists here (as dimod's own samplers do)
        return {"num_reads": [], "seed": [], "max_sweeps": []}

    @property
    def properties(self) -> dict[str, Any]:
        return {"description": "iterated conditional modes from random starts"}

    def sample(self, bqm: dimod.BinaryQuadraticModel, num_reads: int = 10, seed: int | None = None,
               max_sweeps: int = 100, **kwargs: Any) -> dimod.SampleSet:
        """Local minima of ``bqm`` (solved as a QUBO) from ``num_reads`` random states drawn with ``seed``."""
        qubo = bqm.change_vartype(dimod.BINARY, inplace=False)
        h, (row, col, quad), _, labels = qubo.to_numpy_vectors(return_labels=True)
        n = len(labels)
        J = np.zeros((n, n))
        np.add.at(J, (row, col), quad)
        J = J + J.T
        rng = np.random.default_rng(seed)
        X = rng.integers(0, 2, size=(int(num_reads), n)).astype(np.int8)
        for x in X:
            for _ in range(int(max_sweeps)):
                changed = False
                for i in rng.permutation(n):
                    best = 1 if h[i] + J[i] @ x < 0 else 0  # the energy change of x_i = 1, others fixed
                    changed |= bool(best != x[i])
                    x[i] = best
                if not changed:
                    break
        return dimod.SampleSet.from_samples_bqm((X, labels), qubo).change_vartype(bqm.vartype)


def register() -> None:
    """The entry-point hook: put the sampler into qprune's registry under ``icm``."""
    from qprune.backends import register as add

    add("icm", lambda **config: ICMSampler(), replace=True,
        description="example plug-in: iterated conditional modes (examples/plugin_backend)")
