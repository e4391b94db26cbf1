"""The pruning methods, in one table, and the options a method run takes.

A method is either a baseline (random, greedy on one signal) or a QUBO preset solved exactly-k,
optionally refined by tensor-train search. :data:`METHODS` lists them all; :class:`MethodOptions`
holds everything that steers one run (backend, strategy, weights, seeds, refinement budget), so
callers pass one checked object instead of loose keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import dimod

from qprune.errors import QpruneError
from qprune.model.signals import Signals
from qprune.model.units import FilterSpace
from qprune.qubo.formulation import Formulation, formulate
from qprune.qubo.presets import CAPACITY, DEFAULT_PRESET, FISHER_CHOICES, Weights, preset_terms
from qprune.qubo.providers import CAPACITY_REWARDS
from qprune.qubo.terms import compute_terms, term_requirements
from qprune.solve.strategies import DEFAULT_STRATEGY, get_strategy

REFINE_STAGES = ("tt",)


@dataclass(frozen=True)
class MethodSpec:
    """How one named method picks its k units."""

    name: str
    kind: str  # "random" | "greedy" | "qubo"
    needs: frozenset[str] = frozenset()  # signals to collect
    score: str | None = None  # greedy: the Signals field ranked (lowest pruned first)
    preset: str | None = None  # qubo: formulation preset
    refine: bool = False  # "+tt" variants
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
    )
}
_SIGNALS = frozenset({"taylor", "weight_fisher", "channel_fisher", "activations"})


def method_needs(spec: MethodSpec, fisher: str = "channel", weights: Weights | None = None) -> frozenset[str]:
    """The calibration signals a method reads (l1 comes from the weights and is always there)."""
    if spec.kind != "qubo":
        return spec.needs
    names = preset_terms(spec.preset or DEFAULT_PRESET, fisher, weights)
    return frozenset(term_requirements(names)) & _SIGNALS


def check_signals(spec: MethodSpec, options: MethodOptions, signals: Signals) -> None:
    """Refuse a method whose calibration signals ``prepare()`` did not collect (one line naming them)."""
    missing = sorted(n for n in method_needs(spec, options.fisher, options.weights) if getattr(signals, n, None) is None)
    if missing:
        raise QpruneError(f"method {spec.name!r} needs signals {missing} that prepare() did not collect")


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` for ``name``; unknown names raise with the list of known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise QpruneError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None




@dataclass(frozen=True)
class MethodOptions:
    """How one method runs; every field is checked when the object is made.

    Attributes:
        backend: a registered backend name (``qprune.backends.available()``) or a dimod sampler.
        strategy: an exact-k strategy of :data:`qprune.solve.strategies.STRATEGIES`.
        refine: None or ``"tt"`` (PROTES refinement of a QUBO mask on the validation metric).
        weights: QUBO weights (None: all 1); gamma is searched.
        fisher: the Fisher term of the hybrid preset (taylor|weight|channel|both).
        capacity: what the reward gamma multiplies counts: ``"params"`` (the paper's D_i = P_i / sum P)
            or ``"units"`` (1 / N: a pure count reward, so units of unequal size are not preferred).
        seed: seeds every random step; the same seed gives the same mask.
        tt_budget: metric evaluations of the TT refinement.
        sampler_params: passed to the sampler (unknown names are an error).
        solver_options: the strategy's own options (its dataclass fields, checked by name).
    """

    backend: str | dimod.Sampler = "neal"
    strategy: str = DEFAULT_STRATEGY
    refine: str | None = None
    weights: Weights | None = None
    fisher: str = "channel"
    capacity: str = "params"
    seed: int | None = 0
    tt_budget: int = 2_000
    sampler_params: Mapping[str, Any] | None = None
    solver_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        get_strategy(self.strategy)
        if self.refine is not None and self.refine not in REFINE_STAGES:
            raise QpruneError(f"unknown refine stage {self.refine!r}; choose 'tt' or leave it out")
        if self.fisher not in FISHER_CHOICES:
            raise QpruneError(f"unknown fisher choice {self.fisher!r}; choose one of {', '.join(FISHER_CHOICES)}")
        if self.capacity not in CAPACITY_REWARDS:
            raise QpruneError(f"unknown capacity reward {self.capacity!r}; choose one of {', '.join(CAPACITY_REWARDS)}")
        if isinstance(self.tt_budget, bool) or int(self.tt_budget) < 1:
            raise QpruneError(f"tt_budget must be a positive integer, got {self.tt_budget!r}")
        if self.weights is not None and not isinstance(self.weights, Weights):
            raise QpruneError(f"weights must be a qprune.Weights, got {type(self.weights).__name__}")


def build_formulation(
    space: FilterSpace,
    signals: Signals,
    spec: MethodSpec | str,
    *,
    weights: Weights | None = None,
    fisher: str = "channel",
    capacity: str = "params",
) -> Formulation:
    """Terms -> normalised QUBO for a QUBO method, from collected signals (``capacity``: see
    :class:`MethodOptions`)."""
    spec = method_spec(spec) if isinstance(spec, str) else spec
    inputs = {
        "l1": signals.l1,
        "taylor": signals.taylor,
        "weight_fisher": signals.weight_fisher,
        "channel_fisher": signals.channel_fisher,
        "activations": signals.activations,
        "params": space.params,
        "layer_ids": space.layer_ids,
    }
    preset = spec.preset or DEFAULT_PRESET
    terms = compute_terms(list(preset_terms(preset, fisher, weights)), inputs,
                          options={CAPACITY: {"reward": capacity}})
    return formulate(
        terms, preset=preset, weights=weights or Weights(), fisher=fisher,
        labels=space.labels, layer_ids=space.layer_ids,
    )


