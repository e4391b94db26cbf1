"""Random but realistic pruning instances for tests and benchmarks (no network, no data needed).

:func:`synthetic_instance` returns ``compute_terms`` inputs shaped like the full Half-UNet (about
4,000 prunable units in layers of 64 or 128, dense within a layer); :func:`random_formulation`
returns a small random :class:`~qprune.qubo.formulation.Formulation` with arbitrary signs, for testing
solvers and file formats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse

from qprune.errors import QpruneError
from qprune.qubo.formulation import Formulation


def synthetic_instance(
    n_units: int = 4000,
    layer_sizes: Sequence[int] = (64, 128),
    seed: int = 0,
    *,
    n_samples: int = 256,
) -> dict[str, Any]:
    """Inputs for :func:`qprune.qubo.terms.compute_terms` plus ``labels``.

    Layers get sizes drawn from ``layer_sizes`` (the last one is cut to reach ``n_units``). Per unit:
    ``params`` = C_in K^2 + 1 with C_in the previous layer's width and K in {1, 3}; ``l1`` near the
    He-init scale of the layer; heavy-tailed ``taylor``; ``weight_fisher``/``channel_fisher``
    correlated with it; ``activations[layer]`` [units, n_samples] from a few latent factors plus
    noise, with some near-duplicate units (strong positive correlation) and the odd dead unit.
    """
    if n_units < 1:
        raise QpruneError(f"n_units must be >= 1, got {n_units}")
    if not layer_sizes or min(layer_sizes) < 1:
        raise QpruneError(f"layer_sizes must be positive, got {tuple(layer_sizes)}")
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < n_units:
        sizes.append(int(rng.choice(layer_sizes)))
    sizes[-1] -= sum(sizes) - n_units
    if sizes[-1] < 2 and len(sizes) > 1:  # a 1-unit layer has no pairs: fold it into its neighbour
        last = sizes.pop()  # pop first: `sizes[-2] += sizes.pop()` indexes the shrunk list
        sizes[-1] += last

    labels: list[str] = []
    layer_ids = np.repeat(np.arange(len(sizes)), sizes)
    params = np.empty(n_units)
    l1 = np.empty(n_units)
    taylor = np.empty(n_units)
    activations: dict[int, np.ndarray] = {}
    c_in, start = 3, 0
    for layer, m in enumerate(sizes):
        k = 3 if rng.random() < 0.6 else 1
        sl = slice(start, start + m)
        labels += [f"body.{layer}.conv:{c}" for c in range(m)]
        params[sl] = c_in * k * k + 1
        l1[sl] = np.sqrt(2.0 / (c_in * k * k)) * 0.8 * rng.lognormal(0.0, 0.35, m)
        taylor[sl] = rng.lognormal(-12.0 + rng.normal(0.0, 1.0), 1.5, m)
        activations[layer] = _activations(rng, m, n_samples)
        c_in, start = m, start + m
    noise = rng.lognormal(0.0, 0.5, (2, n_units))
    return {
        "labels": labels,
        "layer_ids": layer_ids,
        "params": params,
        "l1": l1,
        "taylor": taylor,
        "weight_fisher": taylor**0.8 * noise[0] * 1e-2,
        "channel_fisher": taylor**0.6 * noise[1] * 1e-3,
        "activations": activations,
    }


def _activations(rng: np.random.Generator, m: int, n_samples: int) -> np.ndarray:
    rank = max(2, m // 8)
    latent = rng.standard_normal((rank, n_samples))
    loadings = rng.standard_normal((m, rank)) * rng.lognormal(0.0, 0.5, (m, 1))
    act = loadings @ latent + rng.standard_normal((m, n_samples)) * rng.uniform(0.3, 2.0, (m, 1))
    dup = rng.choice(m, size=(max(1, m // 16), 2), replace=True)
    act[dup[:, 0]] = act[dup[:, 1]] * rng.uniform(0.5, 2.0, (len(dup), 1)) + 0.05 * rng.standard_normal(
        (len(dup), n_samples)
    )
    act += rng.uniform(0.0, 3.0, (m, 1))  # responses are mean activations: offsets do not matter
    if m > 8:
        act[rng.integers(m)] = 0.0  # a dead filter
    return act


def random_formulation(
    layer_sizes: Sequence[int] = (3, 4, 5),
    seed: int = 0,
    *,
    cross_pairs: int = 0,
    offset: float = 0.0,
    density: float = 1.0,
) -> Formulation:
    """A small random Formulation: N(0, 1) linear and couplings, positive reward summing to 1.

    ``cross_pairs`` adds that many couplings between different layers; ``density`` < 1 zeroes a
    share of the within-layer couplings. Labels look like real ones (``"layer<l>.conv:<c>"``).
    """
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in layer_sizes]
    if not sizes or min(sizes) < 1:
        raise QpruneError(f"layer_sizes must be positive, got {tuple(layer_sizes)}")
    n = sum(sizes)
    layer_ids = np.repeat(np.arange(len(sizes)), sizes)
    labels = [f"layer{lid}.conv:{c}" for lid, m in enumerate(sizes) for c in range(m)]
    blocks = []
    start = 0
    for m in sizes:
        U = np.triu(rng.standard_normal((m, m)) * (rng.random((m, m)) < density), 1)
        blocks.append((np.arange(start, start + m), U + U.T))
        start += m
    cross = None
    if cross_pairs:
        r = rng.integers(0, n, 4 * cross_pairs)
        c = rng.integers(0, n, 4 * cross_pairs)
        ok = layer_ids[r] != layer_ids[c]
        r, c = r[ok][:cross_pairs], c[ok][:cross_pairs]
        cross = scipy.sparse.coo_matrix(
            (rng.standard_normal(r.size), (np.minimum(r, c), np.maximum(r, c))), shape=(n, n)
        )
        cross.sum_duplicates()
    reward = rng.uniform(0.5, 1.5, n)
    return Formulation(labels, layer_ids, rng.standard_normal(n), blocks, cross, reward / reward.sum(), offset)
