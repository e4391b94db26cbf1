"""The term registry: providers by name, and :func:`compute_terms`, which runs and normalises them.

A term is named after the function that computes it (the built-in ones are in
:mod:`qprune.qubo.providers`; the :class:`~qprune.qubo.types.Term` type is in
:mod:`qprune.qubo.types`). Each registered provider states the input keys it reads, so a
calibration pass collects only what the chosen terms need (:func:`term_requirements`) and a
missing input is reported before anything runs.

========================  ==========================
name                      inputs
========================  ==========================
``l1_redundancy``         l1 (or weights), layer_ids
``taylor``                taylor, params
``weight_fisher``         weight_fisher, params
``channel_fisher``        channel_fisher, params
``activation_similarity`` activations, layer_ids
``capacity``              params
``gate_fisher``           gate_grads
========================  ==========================

:func:`compute_terms` runs providers by name and then normalises (see :mod:`qprune.qubo.scaling`);
a user adds a term with :func:`register_term` and gives it a weight through ``Weights.extra``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from qprune.errors import QpruneError
from qprune.qubo.fisher import gate_fisher
from qprune.qubo.providers import (
    activation_similarity,
    capacity,
    channel_fisher,
    l1_redundancy,
    l1_scores,
    pearson,
    taylor,
    weight_fisher,
)
from qprune.qubo.scaling import normalise_terms
from qprune.qubo.types import Block, Term, validate_term

__all__ = [
    "Block", "Provider", "Term", "TermProvider", "activation_similarity", "available_terms", "capacity",
    "channel_fisher", "compute_terms", "gate_fisher", "l1_redundancy", "l1_scores", "pearson", "register_term", "taylor",
    "term_requirements", "unregister_term", "validate_term", "weight_fisher",
]

Provider = Callable[..., Term | np.ndarray]


@dataclass(frozen=True)
class TermProvider:
    """A registered provider: ``fn(inputs, **options) -> Term | linear ndarray``."""

    name: str
    fn: Provider
    requires: tuple[str, ...] = ()
    description: str = ""


_PROVIDERS: dict[str, TermProvider] = {}


def register_term(
    name: str,
    fn: Provider,
    *,
    requires: Sequence[str] = (),
    description: str = "",
    replace: bool = False,
) -> TermProvider:
    """Register ``fn(inputs: Mapping[str, Any], **options) -> Term | np.ndarray`` under ``name``.

    ``requires`` lists the input keys ``fn`` reads, so a missing one is reported before it runs.
    A bare array returned by ``fn`` becomes the term's linear part.
    """
    if not name or not isinstance(name, str):
        raise QpruneError(f"term name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise QpruneError(f"term provider for {name!r} must be callable, got {fn!r}")
    if name in _PROVIDERS and not replace:
        raise QpruneError(f"term {name!r} is already registered (pass replace=True to override)")
    provider = TermProvider(name, fn, tuple(requires), description)
    _PROVIDERS[name] = provider
    return provider


def unregister_term(name: str) -> None:
    """Remove a registered term (tests and plugins that clean up after themselves)."""
    _PROVIDERS.pop(name, None)


def available_terms() -> list[TermProvider]:
    """Every registered provider, sorted by name."""
    return [_PROVIDERS[n] for n in sorted(_PROVIDERS)]


def term_requirements(names: Sequence[str]) -> set[str]:
    """The input keys the named terms need (what a calibration pass must collect)."""
    return {key for name in names for key in _provider(name).requires}


def compute_terms(
    names: Sequence[str],
    inputs: Mapping[str, Any],
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    scale: bool = True,
    spectral_cap: float | None = None,
    eps: float = 1e-12,
) -> dict[str, Term]:
    """Run the named providers on ``inputs`` and normalise the results.

    ``inputs`` keys: ``l1``, ``taylor``, ``weight_fisher``, ``channel_fisher``, ``activations``,
    ``params``, ``layer_ids`` (optionally ``weights`` in place of ``l1``) plus anything a user term
    reads. ``options[name]`` is passed to that provider as keyword arguments. With ``scale`` each
    term is brought to unit variance and then to unit energy spread
    (:func:`qprune.qubo.scaling.normalise_terms`; the capacity reward and the loss model keep their
    own scale); ``spectral_cap`` then bounds the redundancy matrix's spectral norm.
    """
    n = _num_units(inputs)
    terms = {name: _run(_provider(name), inputs, (options or {}).get(name, {}), n) for name in dict.fromkeys(names)}
    if scale:
        terms = normalise_terms(terms, spectral_cap=spectral_cap, eps=eps)
    elif spectral_cap is not None:
        terms = normalise_terms(terms, unit_variance=False, energy=False, spectral_cap=spectral_cap, eps=eps)
    return terms


def _run(provider: TermProvider, inputs: Mapping[str, Any], options: Mapping[str, Any], n: int | None) -> Term:
    """One provider's validated term, named after it; missing inputs and bad options are refused first."""
    name = provider.name
    missing = [k for k in provider.requires if not _has_input(inputs, k)]
    if missing:
        raise QpruneError(
            f"term {name!r} needs input(s) {', '.join(map(repr, missing))}, which were not "
            f"collected (given: {', '.join(sorted(k for k in inputs if inputs[k] is not None))})"
        )
    opts = dict(options)
    try:
        inspect.signature(provider.fn).bind(inputs, **opts)
    except TypeError as e:
        raise QpruneError(f"term {name!r}: bad options {opts!r} ({e})") from None
    except ValueError:  # builtins without a signature: let the call itself complain
        pass
    out = provider.fn(inputs, **opts)
    term = out if isinstance(out, Term) else Term(name, linear=np.asarray(out, dtype=np.float64))
    if term.name != name:
        term = replace(term, name=name)
    return validate_term(term, n)


def _has_input(inputs: Mapping[str, Any], key: str) -> bool:
    if key == "l1":  # the scores can be computed from the raw weights
        return inputs.get("l1") is not None or inputs.get("weights") is not None
    return inputs.get(key) is not None


def _num_units(inputs: Mapping[str, Any]) -> int | None:
    for key in ("layer_ids", "params", "l1"):
        if inputs.get(key) is not None:
            return len(inputs[key])
    return None


def _provider(name: str) -> TermProvider:
    try:
        return _PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(_PROVIDERS))
        raise QpruneError(f"unknown term {name!r}; known terms: {known}") from None


def _scores(inputs: Mapping[str, Any]) -> np.ndarray:
    if inputs.get("l1") is not None:
        return np.asarray(inputs["l1"], dtype=np.float64)
    return l1_scores(inputs["weights"])


register_term(
    "l1_redundancy",
    lambda inputs, network_wide=False: l1_redundancy(
        _scores(inputs), inputs["layer_ids"], network_wide=network_wide
    ),
    requires=("l1", "layer_ids"),
    description="A_ij = s_i s_j within a layer (L1 parameter redundancy)",
)
def _importance(provider: Callable[..., Term], signal: str) -> Callable[..., Term]:
    """A gradient-importance provider reading ``inputs[signal]``, divided by P_i unless told not to."""
    return lambda inputs, per_param=True: provider(inputs[signal], inputs.get("params"), per_param=per_param)


for _signal, _fn, _what in (("taylor", taylor, "first-order Taylor importance"),
                             ("weight_fisher", weight_fisher, "Weight-Fisher importance"),
                             ("channel_fisher", channel_fisher, "Channel-Fisher importance")):
    register_term(_signal, _importance(_fn, _signal), requires=(_signal, "params"), description=f"{_what} / P_i")
register_term(
    "activation_similarity",
    lambda inputs: activation_similarity(inputs["activations"], inputs["layer_ids"]),
    requires=("activations", "layer_ids"),
    description="max(0, Pearson correlation) of activations within a layer",
)
register_term(
    "capacity",
    lambda inputs, reward="params": capacity(inputs["params"], reward=reward),
    requires=("params",),
    description="D_i = P_i / sum P (reward='units': 1 / N), the reward that gamma multiplies",
)
register_term(
    "gate_fisher",
    lambda inputs, shrinkage="auto", first_order=False: gate_fisher(inputs["gate_grads"], shrinkage=shrinkage,
                                                                    first_order=first_order),
    requires=("gate_grads",),
    description="the gates' empirical Fisher (shrunk towards its diagonal): a second-order loss model",
)
