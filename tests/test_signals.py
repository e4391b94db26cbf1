"""Calibration signals against brute force computed with plain autograd on a tiny network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qprune.errors import QpruneError
from qprune.model.signals import collect_signals
from qprune.model.space import build_space
from qprune.qubo.providers import pearson




class Tiny(nn.Module):
    """conv1 (8) -> depthwise -> SimpleGate (4) -> conv2 (6) -> BN -> ReLU -> conv3 (3, output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 3, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.dw(self.conv1(x)).chunk(2, dim=1)
        g = a * b  # input of conv2: where conv1's units are gated
        h = torch.relu(self.bn(self.conv2(g)))  # input of conv3: where conv2's units are gated
        return g, h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.features(x)[1])


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    m = Tiny().double()
    with torch.no_grad():
        m.bn.running_mean.normal_(0, 0.1)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(0.5, 1.0)  # keep every ReLU channel alive on these tiny inputs
    m.eval()
    batches = [(torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.randn(4, 3, 6, 6, dtype=torch.float64))
               for _ in range(3)]
    space = build_space(m, batches[0][0][:1])
    return m, space, batches


MEMBERS = {  # unit -> [(param prefix, output channel)] by hand
    **{f"conv1:{j}": [("conv1", j), ("conv1", j + 4), ("dw", j), ("dw", j + 4)] for j in range(4)},
    **{f"conv2:{c}": [("conv2", c)] for c in range(6)},
}


def _brute(m: Tiny, batches, decay: float | None = None, fisher_space: str = "sum"):
    """Per-batch Taylor, g² per weight and channel-Fisher derivatives by plain autograd."""
    names = [f"{p}.{w}" for p in ("conv1", "dw", "conv2") for w in ("weight", "bias")]
    params = {n: p.detach() for n, p in m.named_parameters()}
    live = dict(m.named_parameters())
    taylor, fisher, cf = [], [], []
    for x, y in batches:
        g, h = m.features(x)
        loss = F.mse_loss(m.conv3(h), y)
        *pg, dg, dh = torch.autograd.grad(loss, [live[n] for n in names] + [g, h])
        g, h = g.detach(), h.detach()
        grads = dict(zip(names, [v.detach() for v in pg]))
        t = {}
        for label, members in MEMBERS.items():
            s = 0.0
            for prefix, c in members:
                s += float((grads[f"{prefix}.weight"][c] * params[f"{prefix}.weight"][c]).sum())
                s += float(grads[f"{prefix}.bias"][c] * params[f"{prefix}.bias"][c])
            t[label] = s
        taylor.append(t)
        fisher.append({n: grads[n] ** 2 for n in names})
        # channel Fisher: dL/dm for a gate m on the consumer's input channel, mean over the batch
        # (and over space with fisher_space="mean")
        n_hw = x.shape[0] * (x.shape[2] * x.shape[3] if fisher_space == "mean" else 1)
        d = {f"conv1:{j}": float((g * dg)[:, j].sum()) / n_hw for j in range(4)}
        d.update({f"conv2:{c}": float((h * dh)[:, c].sum()) / n_hw for c in range(6)})
        cf.append(d)

    def avg(values: list[float]) -> float:
        acc = values[0]
        for i, v in enumerate(values[1:], start=2):
            acc = acc + (v - acc) / i if decay is None else decay * acc + (1 - decay) * v
        return acc

    out_t = {lab: avg([t[lab] ** 2 for t in taylor]) for lab in MEMBERS}
    out_abs = {lab: avg([abs(t[lab]) for t in taylor]) for lab in MEMBERS}
    F_w = {n: avg([f[n] for f in fisher]) for n in names}
    out_wf = {}
    for label, members in MEMBERS.items():
        out_wf[label] = sum(float((F_w[f"{p}.weight"][c] * params[f"{p}.weight"][c] ** 2).sum())
                            + float(F_w[f"{p}.bias"][c] * params[f"{p}.bias"][c] ** 2) for p, c in members)
    out_cf = {lab: avg([d[lab] ** 2 for d in cf]) for lab in MEMBERS}
    return out_t, out_abs, out_wf, out_cf


def _vec(space, d):
    return np.array([d[lab] for lab in space.labels])


@pytest.mark.parametrize("decay, fisher_space", [(None, "sum"), (0.6, "sum"), (None, "mean")])
def test_signals_match_brute_force(decay, fisher_space):
    m, space, batches = _setup()
    assert space.labels == [f"conv1:{j}" for j in range(4)] + [f"conv2:{c}" for c in range(6)]
    assert "model output" in space.excluded["conv3"]
    sig = collect_signals(m, space, batches, F.mse_loss, ema=decay, fisher_space=fisher_space, progress=False)
    t, t_abs, wf, cf = _brute(m, batches, decay, fisher_space)
    assert sig.n_batches == 3
    np.testing.assert_allclose(sig.taylor, _vec(space, t), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(sig.weight_fisher, _vec(space, wf), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(sig.channel_fisher, _vec(space, cf), rtol=1e-9, atol=1e-15)
    assert np.all(sig.taylor > 0) and np.all(sig.channel_fisher > 0)
    sig_abs = collect_signals(m, space, batches, F.mse_loss, ema=decay, taylor_abs=True,
                              needs={"taylor"}, progress=False)
    np.testing.assert_allclose(sig_abs.taylor, _vec(space, t_abs), rtol=1e-9)


def test_l1_and_only_what_is_needed():
    m, space, batches = _setup()
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    m.conv2.weight.requires_grad_(False)  # a frozen member still gets its gradient, and stays frozen
    sig = collect_signals(m, space, batches, F.mse_loss, needs={"taylor"}, progress=False)
    assert sig.weight_fisher is None and sig.channel_fisher is None and sig.activations is None
    assert sig.taylor is not None and sig.loss is not None
    assert not m.conv2.weight.requires_grad and all(p.grad is None for p in m.parameters())
    assert not m.training
    m.conv2.weight.requires_grad_(flags["conv2.weight"])
    w1, wd = m.conv1.weight.detach(), m.dw.weight.detach()
    j = 2
    by_hand = (w1[j].abs().sum() + w1[j + 4].abs().sum() + wd[j].abs().sum() + wd[j + 4].abs().sum()) / (27 + 27 + 9 + 9)
    assert sig.l1[j] == pytest.approx(float(by_hand), rel=1e-12)
    assert sig.l1[4 + 5] == pytest.approx(float(m.conv2.weight.detach()[5].abs().mean()), rel=1e-12)
    no_data = collect_signals(m, space, [], F.mse_loss, needs={"l1"}, progress=False)  # no pass at all
    assert no_data.n_batches == 0 and np.array_equal(no_data.l1, sig.l1)
    with pytest.raises(QpruneError, match="unknown signals"):
        collect_signals(m, space, batches, F.mse_loss, needs={"hessian"})
    with pytest.raises(QpruneError, match="ema"):
        collect_signals(m, space, batches, F.mse_loss, ema=1.0)
    with pytest.raises(QpruneError, match="no calibration batches"):
        collect_signals(m, space, [], F.mse_loss, needs={"taylor"}, progress=False)


def test_identical_channels_have_similarity_one():
    m, space, batches = _setup(seed=1)
    with torch.no_grad():  # conv2 filters 0 and 1 (and their BN channels) made identical
        for t in (m.conv2.weight, m.conv2.bias, m.bn.weight, m.bn.bias, m.bn.running_mean, m.bn.running_var):
            t[1] = t[0]
    sig = collect_signals(m, space, batches, F.mse_loss, needs={"activations"}, max_activation_samples=40,
                          activation_pool=4, progress=False)
    acts = sig.activations
    assert set(acts) == {0, 1} and acts[0].shape == (4, 40) and acts[1].shape == (6, 40)
    S = np.asarray(pearson(acts[1]))
    assert S[0, 1] == pytest.approx(1.0, abs=1e-9)
    assert np.all(np.abs(S[0, 2:]) < 1 - 1e-3)
    # the site of a conv1 unit is conv2's input: 4 images x 4x4 pooled = 16 columns per image
    g, _ = m.features(batches[0][0])
    pooled = F.adaptive_avg_pool2d(g, 4).permute(1, 0, 2, 3).reshape(4, -1).detach().numpy()
    np.testing.assert_allclose(acts[0][:, :40], pooled[:, :40], rtol=1e-12)


def test_signals_on_real_networks_are_finite():
    import torchvision
    from qprune.problems.halfunet import HalfUNet

    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    space = build_space(net, torch.randn(1, 3, 32, 32), verify=False)
    batches = [(torch.randn(2, 3, 32, 32), torch.randint(0, 1000, (2,))) for _ in range(2)]
    sig = collect_signals(net, space, batches, F.cross_entropy, ema=0.9, progress=False)
    for v in (sig.l1, sig.taylor, sig.weight_fisher, sig.channel_fisher):
        assert v.shape == (space.N,) and np.all(np.isfinite(v)) and np.all(v >= 0)
    assert sum(a.shape[0] for a in sig.activations.values()) == space.N
    unet = HalfUNet(width=8).eval()
    uspace = build_space(unet, torch.rand(1, 3, 16, 16))
    ubatches = [(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))]
    usig = collect_signals(unet, uspace, ubatches, F.mse_loss, progress=False)
    assert np.all(np.isfinite(usig.channel_fisher)) and usig.activations[0].shape == (8, 32)


def test_linear_units_and_flattened_sites():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(96, 16), nn.ReLU(), nn.Linear(16, 5)).double().eval()
    space = build_space(net, torch.randn(1, 3, 8, 8, dtype=torch.float64), include_linear=True)
    assert space.layers == ["0", "4"]
    batches = [(torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (3,)))]
    sig = collect_signals(net, space, batches, F.cross_entropy, activation_pool=2, progress=False)
    # conv units: 16 flattened features per channel pooled to 4 bins per image; linear units: 1 per image
    assert sig.activations[0].shape == (6, 12) and sig.activations[1].shape == (16, 3)
    h = net[:4](batches[0][0]).reshape(3, 6, 16)
    pooled = F.adaptive_avg_pool1d(h, 4).permute(1, 0, 2).reshape(6, 12).detach().numpy()
    np.testing.assert_allclose(sig.activations[0], pooled, rtol=1e-12)
    # channel Fisher on a flattened site: mean over the batch, sum over the channel's 16 features
    x, y = batches[0]
    h = net[:4](x)
    dh, = torch.autograd.grad(F.cross_entropy(net[4:](h), y), [h])
    d = (h * dh).detach().reshape(3, 6, 16).sum(dim=(0, 2)) / 3
    np.testing.assert_allclose(sig.channel_fisher[:6], (d ** 2).numpy(), rtol=1e-9)
