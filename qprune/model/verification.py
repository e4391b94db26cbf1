"""Verification: a layer stays in the space only if gating its units equals removing them.

The gate of a unit (:mod:`qprune.model.masking`) zeroes its channels at the *consumers' inputs*
(``Unit.inputs``), i.e. after BatchNorm, activation, pooling, residual adds — exactly where
physical removal takes the channel away. That makes the gated network equal to the physically
pruned one whenever every path of the channel ends in a consumer and nothing on the way mixes
channels (:mod:`qprune.model.discovery` excludes the layers where that is known not to hold).
:func:`verified` is the safety net for architectures nobody here has seen: it prunes one unit of
each layer, compares the gated and removed networks on the example inputs and drops the layers
that differ (it catches e.g. a residual add with the raw model input).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from qprune.model.masking import equivalence_error, failure_line
from qprune.model.units import FilterSpace

__all__ = ["RTOL", "verified", "without_layers"]

RTOL = 1e-4  #: gated and removed outputs may differ by this much, relative to max(1, output scale)


def verified(model: nn.Module, space: FilterSpace, inputs: tuple[Any, ...]) -> FilterSpace:
    """``space`` without the layers whose gated and removed networks differ with one of their units pruned.

    All layers are probed together first (one removal); only when that fails is each layer probed
    alone. If every layer passes alone but not together, all are dropped: refuse rather than guess.
    """
    def probe(lids: Sequence[int]) -> str | None:
        return _probe(model, space, inputs, lids)

    if probe(range(space.n_layers)) is None:
        return space
    bad = {}
    for lid in range(space.n_layers):
        why = probe([lid])
        if why:
            bad[space.layers[lid]] = why
    if not bad:  # only the combination fails: refuse rather than guess
        bad = {name: "gate != removal when layers are pruned together" for name in space.layers}
    return without_layers(space, bad)


def without_layers(space: FilterSpace, reasons: Mapping[str, str]) -> FilterSpace:
    """A copy of ``space`` without the layers in ``reasons``, which join ``excluded`` with their reason."""
    keep = [n for n in space.layers if n not in reasons]
    units = [u for u in space.units if u.layer not in reasons]
    excluded = dict(space.excluded)
    excluded.update(reasons)
    return FilterSpace(
        units=units, layers=keep, min_keep=space.min_keep, excluded=excluded, total_params=space.total_params,
        param_shapes={p: space.param_shapes[p] for u in units for p, _, _ in u.slices},
        consumer_channels={n: space.consumer_channels[n] for n in {p for u in units for p, _ in u.inputs}},
        input_specs=space.input_specs,
        producer_channels={n: space.producer_channels[n] for n in {p for u in units for p, _ in u.outputs}},
        attention={p: k for p, k in space.attention.items() if p in keep},
        mac_terms=list(space.mac_terms),
    )


def _probe(model: nn.Module, space: FilterSpace, inputs: tuple[Any, ...], lids: Sequence[int]) -> str | None:
    """Prune the middle unit, then the first, of each layer in ``lids``: None if gate == removal
    both times, else why not (a grouped conv's unit is a whole group: the first and the last
    group of one can fail apart)."""
    for pick in (lambda n: n // 2, lambda n: 0):
        why = _probe_mask(model, space, inputs, lids, pick)
        if why:
            return why
    return None


def _probe_mask(model: nn.Module, space: FilterSpace, inputs: tuple[Any, ...], lids: Sequence[int],
                pick: Any) -> str | None:
    mask = np.zeros(space.N, dtype=bool)
    for lid in lids:
        idx = space.layer_units(lid)
        mask[idx[pick(len(idx))]] = True
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", RuntimeWarning)
            err, scale = equivalence_error(model, space, mask, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure of the removed model is a verdict
        return failure_line("physical removal fails: ", exc)
    size = [str(w.message) for w in seen if str(w.message).startswith("pruned model has")]
    if size:  # the cut removed other parameters than the space's units account for
        return f"physical removal is not what the space predicts: {size[0]}"
    if not err <= RTOL * max(1.0, scale):
        return f"gated and removed models differ by {err:.3g} (output scale {scale:.3g})"
    return None
