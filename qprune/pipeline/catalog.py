"""The pruning methods, in one table (cheap to import: the CLI reads its names).

A method is a baseline (random, greedy on one signal) or a QUBO preset solved under the count or
budget, optionally in stages (:mod:`qprune.pipeline.stepwise`) and refined by tensor-train search.
:data:`DEFAULT_METHOD` is what ``qprune.prune``, ``qprune prune`` and ``make demo`` use.
"""

from __future__ import annotations

from dataclasses import dataclass

from qprune.errors import QpruneError

__all__ = ["DEFAULT_METHOD", "METHODS", "MethodSpec", "method_spec"]


@dataclass(frozen=True)
class MethodSpec:
    """How one named method picks its k units."""

    name: str
    kind: str  # "random" | "greedy" | "qubo"
    needs: frozenset[str] = frozenset()  # signals to collect
    score: str | None = None  # greedy: the Signals field ranked (lowest pruned first)
    preset: str | None = None  # qubo: formulation preset
    refine: bool = False  # "+tt" variants
    steps: int = 1  # qubo: stages, the QUBO rebuilt at each stage's pruned model (pipeline.stepwise)
    description: str = ""


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("random", "random", description="uniformly random units (a floor)"),
        MethodSpec("l1-greedy", "greedy", score="l1", description="smallest mean |W| first"),
        MethodSpec("taylor-greedy", "greedy", frozenset({"taylor"}), score="taylor",
                   description="Molchanov et al. 2019: smallest Taylor importance first"),
        MethodSpec("fisher-greedy", "greedy", frozenset({"channel_fisher"}), score="channel_fisher",
                   description="smallest channel-Fisher importance first"),
        MethodSpec("l1-qubo", "qubo", preset="l1", description="Wang et al.: L1 redundancy QUBO"),
        MethodSpec("gradient-qubo", "qubo", preset="gradient", description="L1 redundancy + Taylor QUBO"),
        MethodSpec("hybrid-qubo", "qubo", preset="hybrid",
                   description="Taylor + Fisher + activation similarity QUBO (the paper's method)"),
        MethodSpec("hybrid-qubo+tt", "qubo", preset="hybrid", refine=True,
                   description="hybrid QUBO seed refined by tensor-train (PROTES) search on the validation metric"),
        MethodSpec("fisher-qubo", "qubo", preset="fisher", steps=4,
                   description="the gates' empirical Fisher over all units: a second-order estimate of the loss "
                               "increase, no weights; re-linearised over 4 stages"),
        MethodSpec("fisher-qubo+tt", "qubo", preset="fisher", steps=4, refine=True,
                   description="fisher-qubo's mask refined by tensor-train (PROTES) search on the validation metric"),
    )
}

#: the method a run uses when none is named: the loss-model QUBO, ahead of every greedy criterion and
#: of the paper's hybrid at equal MACs on all three shipped models (``benchmarks/results/quality.md``)
DEFAULT_METHOD = "fisher-qubo"


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` for ``name``; unknown names raise with the list of known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise QpruneError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None
