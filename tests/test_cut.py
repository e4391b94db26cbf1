"""ChannelCut: one mask's layers cut in place compute what the physically pruned copy computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qprune.model.cut import ChannelCut
from qprune.errors import QpruneError
from qprune.model.masking import Gates, prune_model
from qprune.model.space import build_space


class BNNet(nn.Module):
    """Conv + affine BatchNorm (running statistics must follow the cut), a depthwise conv
    (its ``groups`` must follow), a consumer conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c2 = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(torch.relu(self.dw(torch.relu(self.b1(self.c1(x))))))


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _models():
    from qprune.problems.halfunet import HalfUNet

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    unet = _randomised(HalfUNet(width=8), 1)
    bn = _randomised(BNNet(), 2)
    return [(unet, build_space(unet, x[:1], exclude=("ending",)), x),
            (bn, build_space(bn, x[:1], exclude=("c2",)), x)]


@pytest.mark.parametrize("which", [0, 1], ids=["halfunet", "bn-depthwise"])
def test_cut_equals_the_pruned_copy_and_everything_is_put_back(which: int) -> None:
    model, space, x = _models()[which]
    before = {n: (t, t.detach().clone()) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    groups = {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    rng = np.random.default_rng(which)
    masks = [space.random_mask(max(1, space.N // 3), seed=int(rng.integers(1 << 30))) for _ in range(4)]
    pruned = [prune_model(model, space, m, x[:1]).eval() for m in masks]  # before any cut
    with torch.inference_mode(), ChannelCut(model, space) as cut:
        for mask, ref in zip(masks, pruned):
            cut.set(mask)
            shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
            assert shapes == {n: tuple(p.shape) for n, p in ref.named_parameters()}
            torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
        cut.set(np.zeros(space.N, dtype=np.int8))  # nothing pruned: the original tensors again
        assert all(torch.equal(t, saved) for t, saved in before.values())
    for n, (t, saved) in before.items():
        assert dict([*model.named_parameters(), *model.named_buffers()])[n] is t
        assert torch.equal(t, saved)
    assert groups == {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_cut_equals_the_gated_model_in_channels_last_layout() -> None:
    model, space, x = _models()[0]
    mask = space.random_mask(space.N // 3, seed=5)
    with torch.inference_mode():
        with Gates(model, space) as gates:
            gates.set(mask)
            ref = model(x)
        saved = [(p, p.data) for p in model.parameters() if p.dim() == 4]
        for p, data in saved:
            p.data = data.contiguous(memory_format=torch.channels_last)
        try:
            with ChannelCut(model, space) as cut:
                cut.set(mask)
                cut4d = [p for p in model.parameters() if p.dim() == 4 and p.shape[0] > 1]
                assert all(p.is_contiguous(memory_format=torch.channels_last) for p in cut4d)
                out = model(x.contiguous(memory_format=torch.channels_last))
        finally:
            for p, data in saved:
                p.data = data
    torch.testing.assert_close(out.contiguous(), ref, rtol=1e-5, atol=1e-5)


def test_cut_refuses_misuse() -> None:
    model, space, _ = _models()[1]
    cut = ChannelCut(model, space)
    with pytest.raises(RuntimeError, match="outside its context"):
        cut.set(np.zeros(space.N))
    with cut, pytest.raises(QpruneError, match=rf"mask must have shape \[{space.N}\], got \[3\]"):
        cut.set(np.zeros(3))


def test_a_cut_branch_end_keeps_the_trunk_width_with_its_pruned_rows_zero() -> None:
    from qprune.problems.halfunet import HalfUNet

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = _randomised(HalfUNet(width=8), 3)
    space = build_space(model, x[:1], exclude=("ending",), residual_branches=True)
    assert space.producer_channels  # the trunk's channels are units: branch ends exist
    conv3 = dict(model.named_modules())["enc1.0.conv3"]
    mask = space.random_mask(space.N // 3, seed=7)
    mask[[u for u, unit in enumerate(space.units) if any(p == "enc1.0.conv3" for p, _ in unit.outputs)][:2]] = 1
    out_units = {c: u for u, unit in enumerate(space.units) for p, c in unit.outputs if p == "enc1.0.conv3"}
    pruned_rows = [c for c, u in out_units.items() if mask[u]]

    def while_cut() -> None:
        assert conv3.weight.shape[0] == 8  # the trunk's width: added to it, not scattered back
        assert pruned_rows and not conv3.weight[pruned_rows].any() and not conv3.bias[pruned_rows].any()

    _cut_matches_gates(model, space, mask, x, while_cut)


class BNBranch(nn.Module):
    """A ResNet-style branch: conv -> BatchNorm, the BatchNorm's result added to the trunk, so a
    branch unit owns rows of both the conv and the BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(h + self.bn(self.c2(torch.relu(self.c1(h)))))


def test_a_branch_ending_in_a_batchnorm_keeps_its_width_through_the_conv_before_it() -> None:
    model = _randomised(BNBranch(), 4)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    space = build_space(model, x[:1], exclude=("head",), residual_branches=True)
    branch = [u for u, unit in enumerate(space.units) if unit.kind == "branch"]
    assert space.producer_channels == {"bn": 8} and len(branch) == 8
    mask = np.zeros(space.N, dtype=np.int8)
    mask[branch[:3]] = 1
    mask[space.random_mask(2, seed=0).astype(bool) & ~np.isin(np.arange(space.N), branch)] = 1

    def while_cut() -> None:
        assert model.c2.weight.shape[0] == model.bn.weight.shape[0] == 8
        assert not model.bn.weight[:3].any() and not model.bn.bias[:3].any()

    _cut_matches_gates(model, space, mask, x, while_cut)


def _cut_matches_gates(model: nn.Module, space, mask: np.ndarray, x: torch.Tensor, while_cut) -> None:
    """The cut model's output equals the gated one's for ``mask``; ``while_cut`` checks the cut tensors."""
    with torch.inference_mode():
        with Gates(model, space) as gates:
            gates.set(mask)
            ref = model(x)
        with ChannelCut(model, space) as cut:
            cut.set(mask)
            while_cut()
            out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
