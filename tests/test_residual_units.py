"""Residual-branch units (issue 17): a conv whose output is added into a residual trunk loses
output channels of its own while the trunk stays whole; removed == gated, counts predicted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import qprune.problems as problems
from qprune.cli import main
from qprune.errors import QpruneError
from qprune.model.cut import ChannelCut
from qprune.model.masking import Gates, apply_mask, equivalence_error, prune_model, remove_gates
from qprune.model.recipe import apply_recipe, load_recipe, make_recipe
from qprune.model.residual import ChannelScatter, prune_branch
from qprune.model.signals import collect_signals
from qprune.model.space import build_space
from qprune.model.stats import count_macs, count_params
from qprune.model.units import FilterSpace
from test_masking import _realistic


def _halfunet(width: int) -> nn.Module:
    from qprune.problems.halfunet import HalfUNet

    torch.manual_seed(0)
    m = HalfUNet(width=width)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("beta", "gamma")):
                p.normal_(0.0, 0.5)  # a fresh NAF block is the identity: make every branch count
    return m.eval()




def _check_removal(model: nn.Module, space, mask: np.ndarray, x: torch.Tensor, atol: float) -> nn.Module:
    """Removed == gated (max abs), params and MACs as predicted; returns the removed model."""
    err, scale = equivalence_error(model, space, mask, x)
    assert scale > 0.05 and err < atol, (err, scale)
    pruned = prune_model(model, space, mask, x[:1])
    assert count_params(pruned) == space.predicted_params(mask)
    assert count_macs(pruned, x[:1]) == space.predicted_macs(mask)
    return pruned


def test_f64_halfunet_has_the_papers_16_layers_of_64_and_prunes_exactly_480() -> None:
    model = _halfunet(64)
    x = torch.rand(2, 3, 32, 32)
    full = build_space(model, x[:1], exclude=("ending",), residual_branches="auto", verify=False)
    assert int((full.layer_sizes == 64).sum()) >= 16  # 12 inside the blocks + 12 branch layers
    assert not build_space(model, x[:1], exclude=("ending",), verify=False).n_layers >= 16  # the default: none
    space = build_space(model, x[:1], exclude=("ending",), layers=16, residual_branches="auto")
    assert space.n_layers == 16 and np.all(space.layer_sizes == 64) and space.N == 1024
    assert space.layers[:4] == ["enc1.0.conv1", "enc1.0.conv3", "enc1.0.conv4", "enc1.0.conv5"]
    mask = space.random_mask(480, seed=3)
    assert mask.sum() == 480 and space.check_mask(mask).sum() == 480
    _check_removal(model, space, mask, x, atol=1e-5)


def test_halfunet_branch_units_remove_exactly_what_the_gates_zero() -> None:
    model = _halfunet(16)
    x = torch.rand(2, 3, 32, 32)
    space = build_space(model, x[:1], residual_branches="auto")
    branch = np.array([u.kind == "branch" for u in space.units])
    assert branch.sum() == 12 * 16 + 3 * 64
    for seed in range(2):
        mask = space.random_mask(0.4, seed=seed)
        pruned = _check_removal(model, space, mask, x, atol=1e-5)
    # the pruned conv keeps its kept filters only and scatters them back into the trunk's width
    conv3 = dict(pruned.named_modules())["enc1.0.conv3"]
    kept = 16 - int(mask[space.layer_units("enc1.0.conv3")].sum())
    assert isinstance(conv3, ChannelScatter) and conv3.weight.shape[0] == kept and conv3.full_channels == 16
    only = branch & space.random_mask(0.5, seed=7)  # branch units alone: the blocks' inner channels stay
    assert only.any()
    _check_removal(model, space, only, x, atol=1e-5)
    back = FilterSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert back == space and back.predicted_macs(only) == space.predicted_macs(only)


def test_batched_gates_and_cut_layers_on_branch_units() -> None:
    model = _halfunet(8)
    x = torch.rand(2, 3, 16, 16)
    space = build_space(model, x[:1], exclude=("ending",), residual_branches="auto")
    masks = np.stack([space.random_mask(0.3, seed=s) for s in range(3)])
    with torch.no_grad(), Gates(model, space) as gates:
        batched = gates.run(x, masks)
        for b, mk in enumerate(masks):
            gates.set(mk)
            assert torch.allclose(batched[b], model(x), atol=1e-6)
        gates.set(masks[0])
        gated = model(x)
    with torch.inference_mode(), ChannelCut(model, space) as cut:
        cut.set(masks[0])
        cut_out = model(x)
    assert float((cut_out - gated).abs().max()) < 1e-5
    assert all(type(m) is not ChannelScatter for m in model.modules())  # the model is as it was


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_resnet_block_last_convs_become_units_and_the_trunk_stays(arch: str) -> None:
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = _realistic(getattr(torchvision.models, arch)(), x, passes=2)
    with torch.no_grad():  # logits of order 1, so that float32's rounding stays below the absolute 1e-5
        model.fc.weight.mul_(2.0 / float(model(x).abs().max()))
        model.fc.bias.zero_()
    auto = build_space(model, x[:1], residual_branches="auto", verify=False)
    assert all(u.kind == "channel" for u in auto.units)  # a prunable trunk: "auto" adds nothing
    space = build_space(model, x[:1], residual_branches=True)
    last = "conv2" if arch == "resnet18" else "conv3"
    ends = [n for n in space.layers if n.endswith((last, "downsample.0"))]
    # every block's last conv + the downsamples: 3 in resnet18, 4 in resnet50 (its layer1 widens 64 -> 256)
    assert len(ends) == (8 + 3 if arch == "resnet18" else 16 + 4)
    if arch == "resnet18":  # the stem's output is the trunk itself (layer1 adds onto it)
        assert "residual trunk kept whole" in space.excluded["conv1"]
    else:  # resnet50's stem feeds layer1.0's conv1 and downsample: a plain prunable layer
        assert "conv1" in space.layers and "conv1" not in space.excluded
    u = space.units[space.labels.index(f"layer1.0.{last}:3")]
    assert u.kind == "branch" and u.outputs == ((f"layer1.0.bn{last[-1]}", 3),)  # gated after its BatchNorm
    mask = space.random_mask(0.3, seed=2)
    pruned = _check_removal(model, space, mask, x, atol=1e-5)
    bn = dict(pruned.named_modules())[f"layer1.0.bn{last[-1]}"]
    assert isinstance(bn, ChannelScatter) and bn.running_mean.numel() == bn.weight.numel() < bn.full_channels


class _Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 1)
        self.scale = nn.Parameter(torch.rand(1, 6, 1, 1) + 0.5)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.layer_norm(self.stem(x).permute(0, 2, 3, 1), (6,)).permute(0, 3, 1, 2)
        return self.head(t + self.b(torch.relu(self.a(t))) * self.scale)


def test_pruned_branch_exports_and_scripts_and_its_signals_are_gate_derivatives() -> None:
    torch.manual_seed(0)
    model = _Branch().double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    space = build_space(model, x[:1], residual_branches="auto")
    assert space.layers == ["a", "b"] and [space.units[i].kind for i in space.layer_units("b")] == ["branch"] * 6
    mask = np.zeros(space.N, dtype=bool)
    mask[space.layer_units("b")[[1, 4]]] = True
    pruned = prune_model(model, space, mask, x[:1])
    with torch.no_grad():
        want = pruned(x)
        assert torch.allclose(torch.jit.script(pruned)(x), want)
        assert torch.allclose(torch.export.export(pruned, (x,)).module()(x), want)
    # channel-Fisher of a branch unit: the derivative of the loss in its gate at the branch output
    target = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    sig = collect_signals(model, space, [(x, target)], F.mse_loss, progress=False)
    i, eps = int(space.layer_units("b")[4]), 1e-4  # gates hold float32: a larger step, a looser check
    soft = np.zeros(space.N)
    soft[i] = eps
    with torch.no_grad(), Gates(model, space) as gates:
        base = float(F.mse_loss(model(x), target))
        gates.set(soft)
        d = -(float(F.mse_loss(model(x), target)) - base) / eps
    # (qprune's convention: the gate derivative of the batch loss, averaged over the batch's samples)
    assert sig.channel_fisher[i] == pytest.approx((d / len(x)) ** 2, rel=1e-3)
    # Taylor: (sum over the branch filter's weights and bias of g * w)^2
    loss = F.mse_loss(model(x), target)
    gw, gb = torch.autograd.grad(loss, [model.b.weight, model.b.bias])
    t = float((gw[4] * model.b.weight[4]).sum() + gb[4] * model.b.bias[4])
    assert sig.taylor[i] == pytest.approx(t * t, rel=1e-9)
    apply_mask(model, space, mask, mode="gate")
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-10)
    remove_gates(model)


@pytest.mark.parametrize("kept", [1, 3, 12, 15])
def test_scatter_keeps_the_channels_last_layout_of_its_input(kept: int) -> None:
    """A pruned branch end behind a channels-last input returns channels-last, also with one kept
    channel (whose strides fit both layouts), through either scatter order (few or many kept)."""
    torch.manual_seed(kept)
    conv = nn.Conv2d(16, 16, 1).eval()
    x = torch.randn(2, 16, 8, 8).to(memory_format=torch.channels_last)
    pruned_idx = sorted(torch.randperm(16)[: 16 - kept].tolist())
    with torch.no_grad():
        gated = conv(x)
        gated[:, pruned_idx] = 0.0
    holder = nn.Sequential(conv)
    prune_branch(holder, "0", "0", pruned_idx, 16, 1)
    with torch.no_grad():
        out = holder(x)
        plain = holder(x.contiguous())
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert plain.is_contiguous()
    assert torch.allclose(out, gated, atol=1e-6) and torch.allclose(plain, gated, atol=1e-6)
    scripted = torch.jit.script(holder)
    assert torch.allclose(scripted(x), gated, atol=1e-6)


def test_cli_residual_branches_flag_builds_that_space_and_the_recipe_keeps_it(tmp_path) -> None:
    """``--residual-branches off`` prunes the space without branch units; its recipe records the
    option, so applying it on a fresh model rebuilds that space and removes the same channels."""
    recipes = {flag: tmp_path / f"{flag}.json" for flag in ("auto", "off")}
    for flag, path in recipes.items():
        assert main(["prune", "--problem", "denoise", "--sparsity", "0.3", "--method", "taylor-greedy",
                     "--residual-branches", flag, "--recipe", str(path), "-q"]) == 0
    auto, off = (load_recipe(recipes[f]) for f in ("auto", "off"))
    assert off["space_options"]["residual_branches"] is False and auto["space_options"]["residual_branches"] == "auto"
    assert not any(":" in lab and lab.split(":")[0].endswith(("conv3", "conv5")) for lab in off["labels"])
    assert off["units"] < auto["units"] and any(lab.startswith("enc1.0.conv3:") for lab in auto["labels"])
    problem, model = problems.load_pretrained("denoise")
    x = problem.example_inputs()
    pruned = apply_recipe(model, off, x)
    assert all(type(m) is not ChannelScatter for m in pruned.modules())
    assert count_params(pruned) < count_params(problems.load_pretrained("denoise")[1])


def test_a_version_1_recipe_rebuilds_the_space_with_branch_units() -> None:
    """Recipes of version 1 were written while ``residual_branches`` defaulted to ``"auto"`` and do
    not record it: they rebuild that space, not today's default one."""
    problem, model = problems.load_pretrained("denoise")
    x = problem.example_inputs()
    space = build_space(model, x, exclude=("ending",), residual_branches="auto", verify=False)
    mask = space.random_mask(0.3, seed=0)
    recipe = make_recipe(space, mask, space_options={"exclude": ["ending"], "verify": False})
    old = {**recipe, "version": 1}
    assert "residual_branches" not in old["space_options"]
    pruned = apply_recipe(problems.load_pretrained("denoise")[1], old, x)
    assert count_params(pruned) == space.predicted_params(mask)
    with pytest.raises(QpruneError, match="differs from the recipe"):  # as version 2: the default space
        apply_recipe(problems.load_pretrained("denoise")[1], recipe, x)
