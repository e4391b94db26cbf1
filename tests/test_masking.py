"""Gates and physical removal: the removed model equals the gated one; batched gates; save/load."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model.masking import GateHook, Gates, apply_mask, isolated, remove_gates
from qprune.model.modes import eval_mode
from qprune.model.space import build_space




def _realistic(m: nn.Module, x: torch.Tensor, passes: int = 3) -> nn.Module:
    """Random init, but BN statistics from data and non-trivial BN affine parameters.

    Fresh BNs (mean 0, var 1, gamma 1, beta 0) are nearly the identity and some nets then output
    ~1e-10; with real statistics and a non-zero beta, gating a conv's raw output instead of the
    consumer's input would be caught.
    """
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.2)
        m.train()
        for _ in range(passes):
            m(x + 0.1 * torch.randn_like(x))
    return m.eval()


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18()


def _vgg11_bn() -> nn.Module:
    import torchvision

    return torchvision.models.vgg11_bn()


def _mobilenet_v2() -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v2()


def _halfunet() -> nn.Module:
    from qprune.problems.halfunet import HalfUNet

    m = HalfUNet(width=16)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("beta", "gamma")):
                p.normal_(0.0, 0.5)  # a fresh NAF block is the identity: make the pruned branches count
    return m


ARCHS = {
    "resnet18": (_resnet18, (2, 3, 64, 64)),
    "vgg11_bn": (_vgg11_bn, (2, 3, 64, 64)),
    "mobilenet_v2": (_mobilenet_v2, (2, 3, 64, 64)),
    "halfunet": (_halfunet, (2, 3, 32, 32)),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_removed_model_equals_gated_model(arch: str) -> None:
    build, shape = ARCHS[arch]
    torch.manual_seed(0)
    x = torch.rand(shape) if arch == "halfunet" else torch.randn(shape)
    model = _realistic(build(), x)
    space = build_space(model, x[:1])
    mask = space.random_mask(0.3, seed=1)
    assert mask.sum() == round(0.3 * space.N)
    counts = np.bincount(space.layer_ids[mask], minlength=space.n_layers)
    assert np.all(counts <= space.max_pruned_per_layer)

    pruned = apply_mask(model, space, mask, mode="remove", example_inputs=x[:1])
    assert sum(p.numel() for p in pruned.parameters()) == space.predicted_params(mask)
    assert sum(p.numel() for p in pruned.parameters()) < space.total_params - 0.1 * space.params[mask].sum()
    with torch.no_grad():
        ref = model(x)
        out_removed = pruned(x)
        gated = apply_mask(model, space, mask, mode="gate")
        out_gated = gated(x)
        remove_gates(model)
        again = model(x)
    assert out_removed.shape == ref.shape
    assert float(out_gated.abs().max()) > 0.05  # a meaningful comparison, not two tiny numbers
    assert float((out_removed - out_gated).abs().max()) < 1e-5
    assert float((out_gated - ref).abs().max()) > 1e-3  # pruning did change the function
    assert torch.equal(again, ref)  # gates came off


def test_batched_gates_equal_separate_forwards() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = _realistic(_resnet18(), x)
    space = build_space(model, x[:1], verify=False)
    masks = np.stack([space.random_mask(0.2, seed=s) for s in range(3)] + [np.zeros(space.N, dtype=bool)])
    with torch.no_grad(), Gates(model, space) as gates:
        batched = gates.run(x, masks)  # [4, 2, 1000] in ONE forward over 8 samples
        singles = [gates.run(x, m) for m in masks]
        gates.clear()
        ref = model(x)
    assert batched.shape == (4, 2, 1000)
    for b in range(4):
        assert float((batched[b] - singles[b]).abs().max()) < 1e-5
    assert float((batched[3] - ref).abs().max()) < 1e-5
    assert float((batched[0] - batched[1]).abs().max()) > 1e-3
    assert not any(isinstance(h, GateHook) for mod in model.modules() for h in mod._forward_pre_hooks.values())
    with pytest.raises(QpruneError, match="not a multiple"), Gates(model, space) as g2, torch.no_grad():
        g2.set(masks[:3])
        model(x)  # batch 2 cannot carry 3 masks


def test_gate_mode_validation_and_copies() -> None:
    torch.manual_seed(0)
    model = _halfunet().eval()
    x = torch.rand(1, 3, 16, 16)
    space = build_space(model, x, min_keep=2)
    too_many = np.zeros(space.N, dtype=bool)
    too_many[space.layer_units(0)[:-1]] = True
    with pytest.raises(QpruneError, match="min_keep=2"):
        apply_mask(model, space, too_many)
    with pytest.raises(QpruneError, match="mode"):
        apply_mask(model, space, np.zeros(space.N, dtype=bool), mode="zero")
    mask = space.random_mask(0.5, seed=3)
    with torch.no_grad():
        ref = model(x)
        gated = apply_mask(copy.deepcopy(model), space, mask)
        y = gated(x)
        copied = copy.deepcopy(gated)  # a copy of a gated model stays gated, independently
        remove_gates(gated)
        assert torch.equal(copied(x), y) and torch.equal(gated(x), ref)
        removed = apply_mask(copied, space, mask, mode="remove", example_inputs=x)  # gates are not copied
        assert float((removed(x) - y).abs().max()) < 1e-5
        by_label = apply_mask(copy.deepcopy(model), space, {space.labels[i]: 1 for i in np.flatnonzero(mask)})
        assert torch.equal(by_label(x), y)


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("export", marks=pytest.mark.slow)])
def test_saved_model_loads_without_qprune(tmp_path, fmt: str) -> None:
    from qprune.model.fileio import load_meta, save_pruned

    torch.manual_seed(0)
    model = _halfunet().eval()
    x = torch.rand(1, 3, 32, 32)
    space = build_space(model, x)
    pruned = apply_mask(model, space, space.random_mask(0.36, seed=0), mode="remove", example_inputs=x)
    path = tmp_path / ("pruned.pt" if fmt == "torchscript" else "pruned.pt2")
    save_pruned(pruned, path, example_inputs=x, meta={"k": 7}, format=fmt)
    probe = torch.rand(2, 3, 40, 48)  # another batch and size than the example
    with torch.no_grad():
        torch.save({"x": probe, "y": pruned(probe)}, tmp_path / "io.pt")
    load = "torch.jit.load(p)" if fmt == "torchscript" else "torch.export.load(p).module()"
    code = textwrap.dedent(f"""
        import sys, torch
        p = {str(path)!r}
        m = {load}
        io = torch.load({str(tmp_path / 'io.pt')!r})
        with torch.no_grad():
            err = float((m(io["x"]) - io["y"]).abs().max())
        assert not [k for k in sys.modules if k.split(".")[0] == "qprune"], "qprune was imported"
        print("ERR", err)
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.split("ERR")[-1]) < 1e-5
    meta = load_meta(path)
    assert meta["meta"] == {"k": 7} and meta["format"] == fmt
    assert meta["params"] == sum(p.numel() for p in pruned.parameters())


def test_stats_before_after() -> None:
    from qprune.model.stats import compare_stats, count_params, measure_latency, model_stats

    torch.manual_seed(0)
    model = _halfunet().eval()
    x = torch.rand(1, 3, 32, 32)
    space = build_space(model, x)
    mask = space.random_mask(0.5, seed=0)
    pruned = apply_mask(model, space, mask, mode="remove", example_inputs=x)
    before = model_stats(model, x, repeats=3, warmup=1)
    after = model_stats(pruned, x, repeats=3, warmup=1)
    assert before["params"] == count_params(model) == space.total_params
    assert after["params"] == space.predicted_params(mask)
    assert after["flops"] == 2 * after["macs"] and 0.3 < after["macs"] / before["macs"] < 0.9
    ratios = compare_stats(before, after)
    assert set(ratios) >= {"params_ratio", "macs_ratio", "latency_ms_ratio"}
    lat = measure_latency(pruned, x, repeats=3, warmup=0, threads=1)
    assert lat["median_ms"] > 0 and lat["min_ms"] <= lat["median_ms"] and lat["threads"] == 1
    assert torch.get_num_threads() == 1  # restored to the fixture's setting


def test_eval_mode_puts_the_model_back_whatever_the_block_raises() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    net.train()
    seen: list[int] = []
    hook = net[0].register_forward_hook(lambda *a: seen.append(1))
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(net, (hook,)):
            assert not net.training
            net(torch.zeros(1, 3))
            raise RuntimeError("boom")
    assert net.training and seen == [1]
    net(torch.zeros(1, 3))
    assert seen == [1], "the hook was left on the model"


def test_isolated_switches_off_every_gate_already_on_the_model_and_back() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    space = build_space(net, torch.randn(1, 1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    plain = net(x).detach()
    apply_mask(net, space, np.eye(space.N, dtype=np.int8)[0], mode="gate")
    gated = net(x).detach()
    assert not torch.allclose(plain, gated)
    with isolated(net):
        assert torch.allclose(net(x), plain)
    hooks = [h for m in net.modules() for h in m._forward_pre_hooks.values() if isinstance(h, GateHook)]
    assert hooks and all(h.gates.enabled for h in hooks)
    assert torch.allclose(net(x), gated)
