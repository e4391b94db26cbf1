"""Running a model for a look inside: eval mode for the block, then the model as it was.

Every probe of the package (discovery, signal collection, MAC counting, the dependency trace,
verification, metric evaluation, figures) runs the user's model with hooks of its own attached.
:func:`eval_mode` is the one place that restores what it changed, whatever the block raises: the
model's training flag, and the hooks it was handed (removed on exit).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module, hooks: Iterable[Any] = (), *, train: bool = False) -> Iterator[nn.Module]:
    """``model`` in eval mode (``train=True``: training mode) for the block; on exit its training flag
    is what it was and every handle in ``hooks`` is removed."""
    was_training = model.training
    try:
        model.train(train)
        yield model
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
