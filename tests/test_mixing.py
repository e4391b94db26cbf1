"""Which autograd operations mix channels: read from real autograd nodes."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from qprune.model.mixing import op_mixing_reason


def _node(fn):
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    return fn(x).grad_fn


@pytest.mark.parametrize(("fn", "words"), [
    (lambda x: x.mean(1), "channel dimension"),
    (lambda x: x.sum(dim=(1, 2)), "channel dimension"),
    (lambda x: torch.softmax(x, dim=1), "channel dimension"),
    (lambda x: x.sum(), "all dimensions"),
    (lambda x: F.layer_norm(x, x.shape[1:]), "normalised together"),
    (lambda x: F.group_norm(x, 2), "normalised together"),
    (lambda x: x.permute(0, 2, 3, 1), "layout change"),
    (lambda x: x.flatten(1) @ torch.randn(36, 5), "matrix product"),
])
def test_channel_mixing_ops(fn, words: str) -> None:
    why = op_mixing_reason(_node(fn), "op")
    assert why is not None and words in why


@pytest.mark.parametrize("fn", [
    lambda x: x.mean(2),
    lambda x: torch.softmax(x, dim=-1),
    lambda x: torch.relu(x) * 2.0 + 1.0,
    lambda x: x.amax(dim=(2, 3)),
])
def test_per_channel_ops_do_not_mix(fn) -> None:
    assert op_mixing_reason(_node(fn), "op") is None


def test_unknown_operation() -> None:
    assert op_mixing_reason(None, "Thing") == "unknown operation 'Thing'"
