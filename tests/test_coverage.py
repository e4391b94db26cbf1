"""Coverage of the common architecture families (issue 18): MLP hidden units, attention heads,
grouped convs by group, GroupNorm groups and residual-branch units, each removed exactly as gated,
with parameter and MAC counts as predicted."""

from __future__ import annotations

import importlib.util
import time
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qprune.model.masking import Gates, equivalence_error, prune_model
from qprune.model.signals import collect_signals
from qprune.model.space import build_space
from qprune.model.stats import count_macs, count_params
from test_masking import _realistic

HAVE_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAVE_TIMM, reason="timm is not installed (pip install timm --no-deps)")


def _lively(m: nn.Module, x: torch.Tensor) -> nn.Module:
    """Random weights that make every unit count: BN statistics from data with non-trivial affine
    parameters, layer scales of order one (torchvision/timm start them at 1e-6), a classifier
    that is not all zeros (torchvision's ViT starts it at 0)."""
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "layer_scale" in n or n.endswith(("ls1.gamma", "ls2.gamma")) or n.split(".")[-1] == "gamma":
                p.uniform_(0.2, 0.6)
            if n.startswith("head") and p.dim() == 2 and float(p.abs().max()) == 0:
                p.normal_(0.0, 0.02)
    return _realistic(m, x, passes=2)


def _build(arch: str) -> nn.Module:
    if arch.startswith("timm:"):
        import timm

        name = arch[len("timm:"):]
        return timm.create_model(name, pretrained=False, **({"img_size": 32} if "vit" in name else {}))
    import torchvision

    if arch.startswith("vit"):
        return getattr(torchvision.models, arch)(image_size=32)  # 2x2 patches of 16 + the class token
    return getattr(torchvision.models, arch)()


# architecture -> unit kinds its space must hold (with residual-branch units where the trunk is not pruned)
ARCHS = {
    "resnet18": {"channel"},
    "mobilenet_v3_small": {"channel"},
    "regnet_x_400mf": {"channel"},
    "convnext_tiny": {"channel", "branch"},
    "vit_b_16": {"channel", "branch", "head"},
    "resnet50": {"channel"},
    "efficientnet_b0": {"channel"},
    "swin_t": {"channel", "branch", "head"},
    "timm:vit_tiny_patch16_224": {"channel", "branch", "head"},
    "timm:convnext_atto": {"channel", "branch"},
}
SLOW = {"resnet50", "efficientnet_b0", "swin_t"}  # 5-20 s each on a loaded 2-core machine


def _params(arch: str) -> object:
    marks = [pytest.mark.slow] if arch in SLOW else []
    if arch.startswith("timm:"):
        marks.append(needs_timm)
    return pytest.param(arch, marks=marks, id=arch)


@pytest.mark.parametrize("arch", [_params(a) for a in ARCHS])
def test_architecture_removed_equals_gated_and_counts_are_predicted(arch: str) -> None:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = _lively(_build(arch), x)
    # the check below is the verification, at 30 %
    space = build_space(model, x[:1], residual_branches="auto", verify=False)
    kinds = Counter(u.kind for u in space.units)
    assert set(kinds) == ARCHS[arch], kinds
    assert all(why for why in space.excluded.values())  # every layer left out says why
    mask = space.random_mask(0.3, seed=1)
    pruned = prune_model(model, space, mask, x[:1]).eval()
    with torch.no_grad(), Gates(model, space) as gates:
        gated = model(x) if gates.set(mask) else None
        removed = pruned(x)
    err, scale = float((gated - removed).abs().max()), float(gated.abs().max())
    assert scale > 0.05 and err / scale < 1e-4, (err, scale)
    assert count_params(pruned) == space.predicted_params(mask) < space.total_params
    assert count_macs(pruned, x[:1]) == space.predicted_macs(mask) < count_macs(model, x[:1])
    print(f"{arch}: {space.N} units {dict(kinds)} in {space.n_layers} layers, rel err {err / scale:.1e}, "
          f"params {count_params(pruned)}, MACs {count_macs(pruned, x[:1])}, {time.perf_counter() - t0:.1f} s")


def test_regnet_grouped_convs_lose_whole_groups() -> None:
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = _lively(torchvision.models.regnet_x_400mf(), x)
    space = build_space(model, x[:1], verify=False)
    b = "trunk_output.block1.block1-0.f.b.0"
    conv = dict(model.named_modules())[b]
    width = conv.in_channels // conv.groups
    u = space.units[space.labels.index("trunk_output.block1.block1-0.f.a.0:0")]
    assert {c for n, c in u.members if n == b} == set(range(width))  # one whole group of the grouped conv
    assert {c for n, c in u.members if n.endswith("f.a.0")} == set(range(width))
    mask = np.zeros(space.N, dtype=bool)
    mask[space.labels.index("trunk_output.block1.block1-0.f.a.0:0")] = True
    pruned = prune_model(model, space, mask, x[:1])
    assert dict(pruned.named_modules())[b].groups == conv.groups - 1


class _Attn(nn.Module):
    """A sequence model with ``nn.MultiheadAttention`` (sequence-first) and an MLP block."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 16)
        self.attn = nn.MultiheadAttention(16, 4)
        self.fc1, self.fc2 = nn.Linear(16, 24), nn.Linear(24, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.attn(h, h, h)
        h = F.layer_norm(h + a, (16,))
        return self.out(F.layer_norm(h + self.fc2(F.gelu(self.fc1(h))), (16,)))


def test_multihead_attention_heads_and_mlp_units() -> None:
    torch.manual_seed(0)
    model = _Attn().eval()
    x = torch.randn(7, 2, 5)  # [sequence, batch, features]
    space = build_space(model, x[:, :1], residual_branches="auto")
    assert space.layers == ["attn", "fc1", "fc2"]
    assert [space.units[i].kind for i in space.layer_units("attn")] == ["head"] * 4
    h = space.units[space.labels.index("attn:1")]
    assert h.inputs == tuple(("attn.out_proj", c) for c in range(4, 8))
    assert h.params == 3 * 4 * 16 + 3 * 4 + 16 * 4  # q/k/v rows with their biases + out_proj columns
    assert space.attention == {"attn": "mha"} and "model output" in space.excluded["out"]
    mask = np.zeros(space.N, dtype=bool)
    mask[[space.labels.index("attn:1"), space.labels.index("attn:2"), space.labels.index("fc1:5")]] = True
    err, scale = equivalence_error(model, space, mask, torch.cat([x, x.flip(1)], 1))
    assert err < 1e-5 * max(1.0, scale)
    pruned = prune_model(model, space, mask, x[:, :1])
    assert pruned.attn.num_heads == 2 and count_params(pruned) == space.predicted_params(mask)
    assert count_macs(pruned, x[:, :1]) == space.predicted_macs(mask)
    with torch.no_grad():
        scripted = torch.jit.trace(pruned, (x,))
        assert torch.allclose(scripted(x), pruned(x))
    assert all("forward" not in m.__dict__ for m in model.modules())  # the routed forward came off


def test_head_signals_are_gate_derivatives() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                              mlp_dim=12, num_classes=3).double().eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0.0, 0.5)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    space = build_space(model, x[:1])
    heads = space.layer_units("encoder.layers.encoder_layer_0.self_attention")
    assert len(heads) == 2
    sig = collect_signals(model, space, [(x, y)], F.cross_entropy, progress=False)
    i, eps = int(heads[1]), 1e-4
    soft = np.zeros(space.N)
    soft[i] = eps
    with torch.no_grad(), Gates(model, space) as gates:
        base = float(F.cross_entropy(model(x), y))
        gates.set(soft)
        d = -(float(F.cross_entropy(model(x), y)) - base) / eps
    assert sig.channel_fisher[i] == pytest.approx((d / len(x)) ** 2, rel=1e-3)
    attn = model.encoder.layers[0].self_attention
    gw, gb = torch.autograd.grad(F.cross_entropy(model(x), y), [attn.in_proj_weight, attn.in_proj_bias])
    rows = [s * 8 + 4 + j for s in range(3) for j in range(4)]  # head 1's q, k and v rows
    t = float((gw[rows] * attn.in_proj_weight[rows]).sum() + (gb[rows] * attn.in_proj_bias[rows]).sum())
    assert sig.taylor[i] == pytest.approx(t * t, rel=1e-9)
    assert sig.activations[space.layer_ids[i]].shape[0] == 2 and np.isfinite(sig.l1).all()


class _Norms(nn.Module):
    """a: under a LayerNorm over (H, W) only (channel-wise); b: under a GroupNorm of 2 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.ln = nn.LayerNorm([8, 8])
        self.b = nn.Conv2d(6, 8, 1)
        self.gn = nn.GroupNorm(2, 8)
        self.c = nn.Conv2d(8, 4, 1)
        self.d = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.gn(self.b(self.ln(self.a(x)))))
        return self.d(F.layer_norm(self.c(h).permute(0, 2, 3, 1), (4,)).permute(0, 3, 1, 2))


def test_channels_under_norms_that_leave_them_alone_are_units() -> None:
    torch.manual_seed(0)
    model = _Norms().eval()
    x = torch.randn(2, 3, 8, 8)
    space = build_space(model, x[:1])
    assert space.layers == ["a", "b"]  # c: its LayerNorm normalises over the channels
    assert space.layer_sizes.tolist() == [6, 2]  # a LayerNorm over (H, W): per channel; GroupNorm: per group
    assert "normalised together" in space.excluded["c"] or "layout change" in space.excluded["c"]
    mask = np.zeros(space.N, dtype=bool)
    mask[[1, 4, 6]] = True
    err, scale = equivalence_error(model, space, mask, x)
    assert err < 1e-6 * max(1.0, scale)
    pruned = prune_model(model, space, mask, x[:1])
    assert pruned.gn.num_groups == 1 and pruned.ln.normalized_shape == (8, 8)
    assert count_params(pruned) == space.predicted_params(mask)


class _AllKinds(nn.Module):
    """One unit of every kind in a small model: conv channels under a LayerNorm over (H, W);
    whole GroupNorm groups feeding a grouped conv (groups=2); patch tokens through
    ``nn.MultiheadAttention`` (heads) and an MLP (hidden units; fc2's outputs are branch units of
    a normalised trunk)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.ln = nn.LayerNorm([8, 8])
        self.b = nn.Conv2d(6, 8, 1)
        self.gn = nn.GroupNorm(2, 8)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 16, 2, stride=2)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(16, 24), nn.Linear(24, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.gn(self.b(torch.relu(self.ln(self.a(x))))))
        t = self.c(torch.relu(self.bn(self.g(h)))).flatten(2).transpose(1, 2)  # [B, 16 tokens, 16]
        t = F.layer_norm(t + self.attn(t, t, t, need_weights=False)[0], (16,))
        t = F.layer_norm(t + self.fc2(F.gelu(self.fc1(t))), (16,))
        return self.head(t.mean(1))


@pytest.fixture(scope="module")
def all_kinds() -> tuple[nn.Module, object, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    model = _lively(_AllKinds().double(), x)
    with torch.no_grad():
        for mod in (model.gn, model.ln):
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.normal_(0.0, 0.3)
    return model, build_space(model, x[:1], residual_branches="auto"), x, torch.tensor([0, 2, 1, 2])


def test_every_unit_kind_in_one_model_is_removed_as_gated(all_kinds) -> None:
    model, space, x, _ = all_kinds
    assert space.layers == ["a", "b", "attn", "fc1", "fc2"]
    kinds = {lay: space.units[int(space.layer_units(lay)[0])].kind for lay in space.layers}
    assert kinds == {"a": "channel", "b": "channel", "attn": "head", "fc1": "channel", "fc2": "branch"}
    assert space.layer_sizes.tolist() == [6, 2, 4, 24, 16]  # b: one unit per GroupNorm group
    g0 = space.units[space.labels.index("b:0")]
    assert {(n, c) for n, c in g0.members if n == "g"} == {("g", c) for c in range(4)}  # the grouped conv's group
    assert "normalised together" in space.excluded["c"] and "include_linear=True" in space.excluded["head"]
    assert all(why for why in space.excluded.values())
    mask = np.zeros(space.N, dtype=bool)
    mask[[space.labels.index(lab) for lab in ("a:1", "b:4", "attn:2", "fc1:5", "fc1:7", "fc2:3")]] = True
    err, scale = equivalence_error(model, space, mask, x)
    assert scale > 0.05 and err < 1e-10 * scale, (err, scale)
    pruned = prune_model(model, space, mask, x[:1])
    assert pruned.gn.num_groups == 1 and pruned.g.groups == 1 and pruned.attn.num_heads == 3
    assert count_params(pruned) == space.predicted_params(mask) < space.total_params
    assert count_macs(pruned, x[:1]) == space.predicted_macs(mask) < count_macs(model, x[:1])


def test_signals_are_defined_alike_for_every_unit_kind(all_kinds) -> None:
    """Taylor = (sum of g*w over the unit's own filters)^2, weight-Fisher = sum of g^2 w^2 over
    them, channel-Fisher = (the gate derivative / batch)^2 and an activation row: for channels,
    grouped/GroupNorm groups, MLP hidden units, branch outputs and heads alike."""
    model, space, x, y = all_kinds
    sig = collect_signals(model, space, [(x, y)], F.cross_entropy, progress=False)
    named = dict(model.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(F.cross_entropy(model(x), y), list(named.values()))))
    taylor, fisher = np.zeros(space.N), np.zeros(space.N)
    for i, u in enumerate(space.units):
        assert u.filters, u.label
        for p, d, ix in u.filters:
            gw = (grads[p] * named[p]).detach().index_select(d, torch.tensor(ix))
            taylor[i] += float(gw.sum())
            fisher[i] += float(gw.pow(2).sum())
    taylor *= taylor
    # a channel under a LayerNorm over (H, W) is scale invariant: its Taylor sum is ~0 (rounding)
    np.testing.assert_allclose(sig.taylor, taylor, rtol=1e-7, atol=1e-12 * taylor.max())
    np.testing.assert_allclose(sig.weight_fisher, fisher, rtol=1e-9)
    eps = 2.0 ** -16  # 1 +- eps is exact in the gates' float32; small enough for the curvature under the norms
    with torch.no_grad(), Gates(model, space) as gates:
        for lay in space.layers:
            for i in space.layer_units(lay)[:3].tolist():
                losses = []
                for s in (eps, -eps):
                    soft = np.zeros(space.N)
                    soft[i] = s
                    gates.set(soft)
                    losses.append(float(F.cross_entropy(model(x), y)))
                d = (losses[1] - losses[0]) / (2 * eps)  # d loss / d gate (gate = 1 - soft)
                assert sig.channel_fisher[i] == pytest.approx((d / len(x)) ** 2, rel=1e-4), space.labels[i]
                assert sig.channel_fisher[i] > 0
    for lid, lay in enumerate(space.layers):
        rows = sig.activations[lid]
        assert rows.shape[0] == len(space.layer_units(lay)) and np.isfinite(rows).all() and rows.std(1).min() > 0, lay
