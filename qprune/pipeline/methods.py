"""The options a method run takes, and how a QUBO method turns signals into its formulation.

The methods themselves are one table, :data:`qprune.pipeline.catalog.METHODS` (re-exported here);
:class:`MethodOptions` holds everything that steers one run (backend, strategy, weights, seeds,
stages, refinement budget), so callers pass one checked object instead of loose keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import dimod
import numpy as np

from qprune.errors import QpruneError
from qprune.model.signals import Signals
from qprune.pipeline.catalog import DEFAULT_METHOD, METHODS, MethodSpec, method_spec
from qprune.model.units import FilterSpace
from qprune.qubo.formulation import Formulation, formulate
from qprune.qubo.presets import CAPACITY, DEFAULT_PRESET, FISHER_CHOICES, Weights, preset_terms, preset_weights
from qprune.qubo.providers import CAPACITY_REWARDS
from qprune.qubo.terms import compute_terms, term_requirements
from qprune.refine.scoring.scorer import PRECISIONS
from qprune.solve.strategies import DEFAULT_STRATEGY, get_strategy

REFINE_STAGES = ("tt",)
__all__ = ["DEFAULT_METHOD", "METHODS", "MethodOptions", "MethodSpec", "build_formulation", "check_signals",
           "method_needs", "method_spec", "method_steps", "method_weights"]


_SIGNALS = frozenset({"taylor", "weight_fisher", "channel_fisher", "activations", "gate_grads"})


def method_needs(spec: MethodSpec, fisher: str = "channel", weights: Weights | None = None) -> frozenset[str]:
    """The calibration signals a method reads (l1 comes from the weights and is always there)."""
    if spec.kind != "qubo":
        return spec.needs
    names = preset_terms(spec.preset or DEFAULT_PRESET, fisher, weights)
    return frozenset(term_requirements(names)) & _SIGNALS


def check_signals(spec: MethodSpec, options: MethodOptions, signals: Signals) -> None:
    """Refuse a method whose calibration signals ``prepare()`` did not collect (one line naming them)."""
    missing = signals.missing(method_needs(spec, options.fisher, options.weights))
    if missing:
        raise QpruneError(f"method {spec.name!r} needs signals {missing} that prepare() did not collect")


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
        steps: stages of a QUBO method (None: the method's own, :attr:`MethodSpec.steps`): stage t
            prunes to t/steps of the way, with the QUBO rebuilt from signals collected on the model
            that the earlier stages pruned (:mod:`qprune.pipeline.stepwise`); 1 = one QUBO, one pass.
        tt_budget: metric evaluations of the TT refinement.
        tt_precision: ``"float32"`` or ``"bfloat16"``: the arithmetic the TT's mask scorer runs in
            (:class:`qprune.refine.MaskScorer`); its winner is re-scored in float32 either way.
        tt_images: validation images the TT scores masks on (None: all of them).
        tt_crop: the TT scores only the central ``tt_crop x tt_crop`` pixels of those images (None: whole
            images; see :func:`qprune.refine.search_subset`).
        tt_journal: a directory for the TT's score journals (None: none): one file per seed mask, TT
            seed and scorer, so a stopped refinement started again resumes where it was. For one
            model and problem: the file names do not identify them.
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
    steps: int | None = None
    tt_budget: int = 2_000
    tt_precision: str = "float32"
    tt_images: int | None = None
    tt_crop: int | None = None
    tt_journal: str | None = None
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
        _check_positive_int("steps", self.steps, optional=True)
        _check_positive_int("tt_budget", self.tt_budget, optional=False)
        if self.tt_precision not in PRECISIONS:
            raise QpruneError(f"tt_precision must be one of {', '.join(PRECISIONS)}, got {self.tt_precision!r}")
        _check_positive_int("tt_images", self.tt_images, optional=True)
        _check_positive_int("tt_crop", self.tt_crop, optional=True)
        if self.weights is not None and not isinstance(self.weights, Weights):
            raise QpruneError(f"weights must be a qprune.Weights, got {type(self.weights).__name__}")


def _check_positive_int(name: str, value: Any, *, optional: bool) -> None:
    """Raise naming ``name`` unless ``value`` is a positive int (or None where ``optional``); a bool, a
    float or a string is refused rather than truncated, so ``tt_budget=2.5`` does not quietly run 2."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise QpruneError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")


def method_weights(spec: MethodSpec) -> tuple[str, ...]:
    """The :class:`~qprune.qubo.presets.Weights` fields a method reads (what a weight search tunes)."""
    return preset_weights(spec.preset or DEFAULT_PRESET) if spec.kind == "qubo" else ()


def method_steps(spec: MethodSpec, options: MethodOptions) -> int:
    """The stages a method runs with these options (1 for every method that is not a QUBO)."""
    steps = spec.steps if options.steps is None else int(options.steps)
    if steps > 1 and spec.kind != "qubo":
        raise QpruneError(f"method {spec.name!r} has no QUBO to rebuild; steps > 1 needs a *-qubo method")
    return steps if spec.kind == "qubo" else 1


def build_formulation(
    space: FilterSpace,
    signals: Signals,
    spec: MethodSpec | str,
    *,
    weights: Weights | None = None,
    fisher: str = "channel",
    capacity: str = "params",
    units: np.ndarray | None = None,
) -> Formulation:
    """Terms -> normalised QUBO for a QUBO method, from collected signals (``capacity``: see
    :class:`MethodOptions`); ``units`` (indices) restricts it to those units (None: all)."""
    spec = method_spec(spec) if isinstance(spec, str) else spec
    idx = np.arange(space.N) if units is None else np.asarray(units, dtype=np.int64)

    def take(v: np.ndarray | None) -> np.ndarray | None:
        return None if v is None else np.asarray(v)[..., idx]

    inputs = {
        "l1": take(signals.l1),
        "taylor": take(signals.taylor),
        "weight_fisher": take(signals.weight_fisher),
        "channel_fisher": take(signals.channel_fisher),
        "activations": _activation_rows(space, signals.activations, idx),
        "gate_grads": take(signals.gate_grads),
        "params": take(space.params),
        "layer_ids": take(space.layer_ids),
    }
    preset = spec.preset or DEFAULT_PRESET
    terms = compute_terms(list(preset_terms(preset, fisher, weights)), inputs,
                          options={CAPACITY: {"reward": capacity}})
    return formulate(
        terms, preset=preset, weights=weights or Weights(), fisher=fisher,
        labels=list(np.asarray(space.labels, dtype=object)[idx]), layer_ids=space.layer_ids[idx],
    )


def _activation_rows(space: FilterSpace, activations: Mapping[int, np.ndarray] | None,
                     idx: np.ndarray) -> dict[int, np.ndarray] | None:
    """The activation rows of the units ``idx`` (each layer's rows follow its units' order)."""
    if activations is None or idx.size == space.N:
        return None if activations is None else dict(activations)
    keep = np.zeros(space.N, dtype=bool)
    keep[idx] = True
    lids = space.layer_ids
    return {lid: rows[keep[lids == lid]] for lid, rows in activations.items()}


