"""Which autograd operations mix channels, so that zeroing a channel is not removing it.

torch-pruning treats every operation it has no special node for as element-wise. For the gate of a
unit to equal its removal, nothing between the unit's producer and its consumers may combine one
channel with others: normalisation over channels, reductions over the channel dimension, layout
changes and matrix products do. :func:`op_mixing_reason` reads the operation's autograd node (name
and saved dims) and says why it mixes, or returns None.
"""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["op_base", "op_mixing_reason"]

_REDUCTIONS = {
    "mean", "sum", "nansum", "var", "std", "varmean", "stdmean", "amax", "amin", "max", "min", "prod",
    "logsumexp", "softmax", "logsoftmax", "norm", "linalgvectornorm", "cumsum", "cumprod", "median",
    "nanmedian", "sort", "topk", "kthvalue", "mode", "cummax", "cummin", "select", "index", "indexselect",
    "gather", "take", "unbind",
}
_NORM_WORDS = ("layernorm", "groupnorm", "rmsnorm")
_LAYOUT = ("permute", "transpose", "channelshuffle", "pixelshuffle", "pixelunshuffle")
_MATMUL = ("mm", "bmm", "addmm", "addbmm", "baddbmm", "matmul", "einsum", "addmv", "mv", "dot")


def op_mixing_reason(g: Any, op_name: str) -> str | None:
    """Why an autograd op (torch-pruning treats it as element-wise) mixes channels, or None."""
    if g is None or not hasattr(g, "name"):
        return f"unknown operation {op_name!r}"
    base = _op_base(g.name())
    if any(w in base for w in _NORM_WORDS):
        return f"channels normalised together ({g.name()})"
    if any(w in base for w in _LAYOUT):
        return f"layout change or functional shuffle over channels ({g.name()})"
    if base in _MATMUL:
        return f"matrix product outside nn.Linear ({g.name()})"
    if base in _REDUCTIONS:
        return _reduction_reason(g)
    return None


def _reduction_reason(g: Any) -> str | None:
    """A reduction mixes channels when one of its dims is (or may be) the channel dimension."""
    dims = getattr(g, "_saved_dim", None)
    if dims is None:
        return f"reduction over all dimensions ({g.name()})"
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims:
        return f"reduction over all dimensions ({g.name()})"
    ndim = _grad_fn_ndim(g)
    for d in map(_signed, dims):
        if ndim is None:
            if d == 1 or d < 0:
                return f"reduction over a possible channel dimension ({g.name()}, dim={d})"
            continue
        d = d % ndim
        # a 3-d tensor is [N, C, L] after a conv1d or [N, L, C] before a linear
        channel_dims = {1} if ndim != 3 else {1, 2}
        if d in channel_dims:
            return f"reduction over the channel dimension ({g.name()}, dim={d})"
    return None


def op_base(name: str) -> str:
    """An autograd node's name without ``Backward<n>``, lower case (``AddBackward0`` -> ``add``)."""
    return re.sub(r"backward\d*$", "", name.lower())


_op_base = op_base


def _signed(d: int) -> int:
    # autograd saves dims as unsigned 64-bit integers: -1 comes back as 2**64 - 1
    d = int(d)
    return d - (1 << 64) if d >= (1 << 63) else d


def _grad_fn_ndim(g: Any) -> int | None:
    """Rank of the reduced tensor, from whatever the autograd node saved (None if nothing)."""
    for attr in ("_saved_self_sym_sizes", "_saved_self_sizes", "_saved_sizes"):
        sizes = getattr(g, attr, None)
        if isinstance(sizes, (tuple, list)):
            return len(sizes)
    for attr in ("_saved_self", "_saved_result"):
        try:
            t = getattr(g, attr, None)
        except RuntimeError:  # freed saved tensor
            t = None
        if isinstance(t, torch.Tensor):
            return t.dim()
    return None
