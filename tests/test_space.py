"""FilterSpace discovery: coupling, exclusions, selection, parameter accounting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model.masking import apply_mask, equivalence_error
from qprune.model.space import FilterSpace, build_space
from qprune.model.verification import without_layers




def _halfunet(width: int = 8) -> nn.Module:
    from qprune.problems.halfunet import HalfUNet

    torch.manual_seed(0)
    m = HalfUNet(width=width)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("beta", "gamma")):
                p.normal_(0.0, 0.5)  # fresh blocks are the identity; make every branch count
    return m.eval()


@pytest.fixture(scope="module")
def resnet_space():
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.resnet18().eval()
    return m, build_space(m, torch.randn(1, 3, 32, 32), verify=False)


def test_resnet18_trunk_is_one_unit_across_convs(resnet_space):
    _, space = resnet_space
    u = space.units[space.labels.index("conv1:5")]
    assert ("conv1", 5) in u.members and ("layer1.0.conv2", 5) in u.members and ("layer1.1.conv2", 5) in u.members
    consumers = {p for p, _ in u.inputs}
    assert consumers == {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"}
    # layer1.0.conv1 is covered by the trunk group only as a consumer, so it is a layer of its own
    assert "layer1.0.conv1" in space.layers and "layer1.0.conv2" not in space.layers
    assert all(not lab.startswith("fc") for lab in space.labels)
    # hand count: 64x3x3 filter (no bias) + BN weight/bias + layer1.0.conv2's input slice 64x3x3
    v = space.units[space.labels.index("layer1.0.conv1:0")]
    assert v.params == 64 * 9 + 2 + 64 * 9 and v.filter_params == 64 * 9
    assert space.n_layers == 12 and space.N == sum(space.layer_sizes)
    assert np.array_equal(space.max_pruned_per_layer, space.layer_sizes - 1)


def test_mobilenet_depthwise_is_tied_to_its_producer():
    import torchvision

    m = torchvision.models.mobilenet_v2().eval()
    space = build_space(m, torch.randn(1, 3, 32, 32), verify=False)
    u = space.units[space.labels.index("features.2.conv.0.0:7")]
    assert ("features.2.conv.1.0", 7) in u.members  # the depthwise conv after the expansion
    assert u.inputs == (("features.2.conv.2", 7),)
    modules = dict(m.named_modules())
    assert not any(modules[name].groups > 1 for name in space.layers)  # no layer rooted at a depthwise conv
    assert "classifier.1" not in space.layers


def test_halfunet_units_gate_inside_naf_blocks_and_exclude_trunk():
    m = _halfunet(8)
    # without residual-branch units (the space before they existed): the channels inside the blocks
    space = build_space(m, torch.rand(1, 3, 32, 32), residual_branches=False)
    assert space.layers == [f"enc{s}.{b}.conv{c}" for s in (1, 2, 3) for b in (0, 1) for c in (1, 4)]
    u = space.units[space.labels.index("enc1.0.conv1:3")]
    # SimpleGate: channel j and j + C fall together, with the depthwise conv and the SCA conv
    assert set(u.members) == {("enc1.0.conv1", 3), ("enc1.0.conv1", 11), ("enc1.0.conv2", 3),
                              ("enc1.0.conv2", 11), ("enc1.0.sca.1", 3)}
    assert u.inputs[0] == ("enc1.0.conv3", 3)  # the full-resolution site comes first
    assert ("enc1.0.sca.1", 3) in u.inputs
    v = space.units[space.labels.index("enc2.1.conv4:0")]
    assert set(v.members) == {("enc2.1.conv4", 0), ("enc2.1.conv4", 8)} and v.inputs == (("enc2.1.conv5", 0),)
    # the residual trunk is normalised by LayerNorm2d: removing a trunk channel is not zeroing it
    assert "normalised" in space.excluded["intro"]
    assert "model output" in space.excluded["ending"]
    assert "up1.conv" in space.excluded or "up1.conv" not in space.layers


def test_halfunet_auto_adds_the_residual_branch_layers():
    """``residual_branches="auto"``: conv3/conv5 of every NAF block and the three upsample convs
    join the space as layers of their own; the trunk stays excluded. The default (``False``) is
    the space without them."""
    m = _halfunet(8)
    space = build_space(m, torch.rand(1, 3, 32, 32), residual_branches="auto")
    default = build_space(m, torch.rand(1, 3, 32, 32), verify=False)
    assert default.layers == [f"enc{s}.{b}.conv{c}" for s in (1, 2, 3) for b in (0, 1) for c in (1, 4)]
    blocks = [f"enc{s}.{b}" for s in (1, 2, 3) for b in (0, 1)]
    assert space.layers == [f"{blk}.conv{c}" for blk in blocks for c in (1, 3, 4, 5)] + [
        "up3.conv", "up2.conv", "up1.conv"]
    u = space.units[space.labels.index("enc1.0.conv3:2")]
    assert u.kind == "branch" and u.members == (("enc1.0.conv3", 2),) and u.outputs == (("enc1.0.conv3", 2),)
    assert u.inputs == () and u.params == 8 + 1  # one 1x1 filter of 8 inputs + its bias; beta stays
    assert space.layer_sizes[space.layers.index("up1.conv")] == 32  # one unit per conv filter (4F)
    assert "normalised" in space.excluded["intro"] and "model output" in space.excluded["ending"]


def test_layer_selection_by_count_name_and_pattern():
    m = _halfunet(8)
    x = torch.rand(1, 3, 16, 16)
    first = build_space(m, x, layers=3, verify=False, residual_branches=False)
    assert first.layers == ["enc1.0.conv1", "enc1.0.conv4", "enc1.1.conv1"]
    assert first.excluded["enc3.1.conv4"] == "not selected by layers="
    by_member = build_space(m, x, layers=["enc1.0.conv2"], verify=False)  # a member selects its layer
    assert by_member.layers == ["enc1.0.conv1"]
    with_branches = build_space(m, x, layers=3, verify=False, residual_branches="auto")
    assert with_branches.layers == ["enc1.0.conv1", "enc1.0.conv3", "enc1.0.conv4"]
    pattern = build_space(m, x, layers=["enc2.*"], verify=False, residual_branches=False)
    assert pattern.layers == ["enc2.0.conv1", "enc2.0.conv4", "enc2.1.conv1", "enc2.1.conv4"]
    with pytest.raises(QpruneError, match="matches no prunable layer"):
        build_space(m, x, layers=["nope"], verify=False)
    with pytest.raises(QpruneError, match="only 12 prunable layers .residual-branch units are off"):
        build_space(m, x, layers=13, verify=False, residual_branches=False)
    with pytest.raises(QpruneError, match="only 27 prunable layers"):
        build_space(m, x, layers=28, verify=False, residual_branches="auto")
    with pytest.raises(QpruneError, match="residual_branches"):
        build_space(m, x, residual_branches="yes")
    with pytest.raises(QpruneError, match="min_keep"):
        build_space(m, x, min_keep=0)


def test_exclude_min_keep_and_mask_checks():
    m = _halfunet(8)
    x = torch.rand(1, 3, 16, 16)
    space = build_space(m, x, exclude=("enc1.0.conv4", "enc3.*"), min_keep=3, verify=False, residual_branches=False)
    assert "enc1.0.conv4" not in space.layers and not any(n.startswith("enc3") for n in space.layers)
    assert "exclude=" in space.excluded["enc1.0.conv4"]
    assert np.all(space.max_pruned_per_layer == 8 - 3)
    mask = space.random_mask(space.N - 3 * space.n_layers, seed=4)
    assert np.all(np.bincount(space.layer_ids[mask], minlength=space.n_layers) == 5)
    bad = np.zeros(space.N, dtype=bool)
    bad[space.layer_units(0)[:6]] = True
    with pytest.raises(QpruneError, match="min_keep=3"):
        space.check_mask(bad)
    labels = {space.labels[0]: 1, space.labels[9]: 1}
    assert np.flatnonzero(space.to_mask(labels)).tolist() == [0, 9]
    with pytest.raises(QpruneError, match="not units"):
        space.to_mask({"enc9.conv:0": 1})
    with pytest.raises(QpruneError, match="shape"):
        space.to_mask(np.zeros(3))


def test_param_count_is_exact_pairwise(resnet_space):
    _, space = resnet_space
    O = space.param_overlap().toarray()
    P = space.params
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = space.random_mask(int(rng.integers(1, space.N // 2)), seed=int(rng.integers(1 << 30))).astype(np.int64)
        assert space.removed_params(x) == int(P @ x - x @ O @ x)
    # overlaps exist exactly between a conv's output rows and its input columns
    i, j = space.labels.index("layer1.0.conv1:0"), space.labels.index("conv1:0")
    # layer1.0.conv1.weight[0, 0] (trunk column x inner row) and layer1.0.conv2.weight[0, 0] (inner
    # column x trunk row: the trunk unit also removes conv2's output row): two 3x3 kernels
    assert O[min(i, j), max(i, j)] == 18


class _Shuffle(nn.Module):
    """conv -> PixelShuffle -> conv -> PixelUnshuffle -> conv, no channel mixing."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 1)
        self.up = nn.PixelShuffle(2)
        self.c = nn.Conv2d(4, 6, 3, padding=1)
        self.down = nn.PixelUnshuffle(2)
        self.d = nn.Conv2d(24, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = self.up(self.b(x))
        x = torch.relu(self.c(x))
        return self.d(self.down(x))


def test_pixel_shuffle_pruner_blocks_and_exactness():
    torch.manual_seed(0)
    m = _Shuffle().eval()
    x = torch.randn(2, 3, 8, 8)
    space = build_space(m, x)
    assert space.layers == ["a", "b", "c"]
    ub = space.units[space.labels.index("b:4")]
    assert ub.members == (("b", 4), ("b", 5), ("b", 6), ("b", 7)) and ub.inputs == (("c", 1),)
    assert space.labels[space.layer_units("b")[-1]] == "b:12"
    uc = space.units[space.labels.index("c:2")]
    assert uc.inputs == tuple(("d", k) for k in range(8, 12))  # one channel -> a block of 4 after unshuffle
    mask = space.random_mask(0.4, seed=2)
    pruned = apply_mask(m, space, mask, mode="remove", example_inputs=x)
    assert sum(p.numel() for p in pruned.parameters()) == space.predicted_params(mask)
    err, scale = equivalence_error(m, space, mask, x)
    assert err < 1e-5 and scale > 0.01


class _Mixers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)
        self.d = nn.Conv2d(4, 3, 1)
        self.e = nn.Conv2d(3, 3, 3, padding=1)
        self.f = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(self.gn(self.a(x)))  # a: GroupNorm over groups of channels
        h = self.c(torch.softmax(h, dim=1))  # b: softmax across channels
        h = self.d(h)  # c: plain, prunable
        h = self.e(h + x)  # d: added to the raw model input, which cannot shrink
        return self.f(torch.relu(h))  # e: plain; f: model output


def test_channel_mixing_and_unremovable_units_are_excluded():
    torch.manual_seed(0)
    m = _Mixers().eval()
    space = build_space(m, torch.randn(1, 3, 8, 8))
    # a: a GroupNorm of 2 groups follows, so a whole group (4 channels) is one unit: removing it
    # leaves the other group's statistics alone (GroupNorm(2, 8) -> GroupNorm(1, 4))
    assert space.layers == ["a", "c", "e"]
    assert [u.members for u in space.units[:2]] == [tuple(("a", c) for c in range(4)),
                                                     tuple(("a", c) for c in range(4, 8))]
    assert "Softmax" in space.excluded["b"]
    assert space.excluded["d"].startswith(("physical removal fails", "gated and removed"))
    assert "model output" in space.excluded["f"]


def test_to_dict_roundtrip(resnet_space):
    _, space = resnet_space
    back = FilterSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert back == space


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 4), 1)
        return self.fc2(torch.relu(self.fc1(h)))


def test_flatten_into_linear_and_linear_units():
    torch.manual_seed(0)
    m = _Head().eval()
    with torch.no_grad():
        m.bn.bias.normal_(0.0, 0.5)
    x = torch.randn(2, 3, 8, 8)
    assert build_space(m, x[:1]).layers == ["conv"]
    space = build_space(m, x[:1], include_linear=True)
    assert space.layers == ["conv", "fc1"] and "model output" in space.excluded["fc2"]
    u = space.units[space.labels.index("conv:2")]
    assert u.inputs == tuple(("fc1", k) for k in range(32, 48))  # channel 2 = 16 flattened features
    assert u.params == 27 + 1 + 2 + 16 * 16
    assert space.units[space.labels.index("fc1:3")].params == 96 + 1 + 5
    mask = space.random_mask(0.4, seed=0)
    pruned = apply_mask(m, space, mask, mode="remove", example_inputs=x[:1])
    assert sum(p.numel() for p in pruned.parameters()) == space.predicted_params(mask)
    err, scale = equivalence_error(m, space, mask, x)
    assert err < 1e-5 and scale > 0.05


def test_without_layers_keeps_the_rest_consistent(resnet_space):
    _, space = resnet_space
    drop = {space.layers[0]: "because", space.layers[3]: "also"}
    small = without_layers(space, drop)
    assert small.layers == [n for n in space.layers if n not in drop]
    assert small.N == space.N - int(space.layer_sizes[[0, 3]].sum())
    assert small.excluded[space.layers[0]] == "because" and small.excluded[space.layers[3]] == "also"
    assert set(small.consumer_channels) == {p for u in small.units for p, _ in u.inputs}
    assert set(small.param_shapes) == {p for u in small.units for p, _, _ in u.slices}
    assert small.total_params == space.total_params and space.N > small.N  # the original is untouched
