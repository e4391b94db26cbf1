"""Model inputs and outputs as plain tensor structures.

A model's example inputs may be one tensor or a tuple of them, and its output any nesting of
tensors in tuples, lists and dicts. These helpers give every module of :mod:`qprune.model` one way
to call a model and to walk what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from qprune.errors import QpruneError

__all__ = ["as_tuple", "iter_tensors", "map_tensors"]


def as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """The example inputs as the tuple ``model(*inputs)`` takes.

    torch-pruning calls ``model(*inputs)`` itself: a bare ``[1, C, H, W]`` tensor would be unpacked
    into an unbatched ``[C, H, W]`` call that convs accept silently, so a tensor becomes ``(tensor,)``.

    Raises:
        QpruneError: ``example_inputs`` is neither a tensor nor a list/tuple.
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise QpruneError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def map_tensors(out: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor of a (nested tuple / list / dict) module output."""
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, (list, tuple)):
        return type(out)(map_tensors(o, fn) for o in out)
    if isinstance(out, Mapping):
        return {k: map_tensors(v, fn) for k, v in out.items()}
    return out


def iter_tensors(out: Any) -> Iterator[torch.Tensor]:
    """Every tensor of a (nested tuple / list / dict) module output, depth first, in order."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (list, tuple)):
        for o in out:
            yield from iter_tensors(o)
    elif isinstance(out, Mapping):
        for o in out.values():
            yield from iter_tensors(o)
