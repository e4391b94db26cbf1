"""Problem registry, checkpoints, the Half-UNet, the classification problem and `qprune train`."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from qprune import problems
from qprune.errors import QpruneError
from qprune.problems.classify import ClassifyProblem, ResNet, read_cifar10
from qprune.problems.denoise import DenoiseProblem
from qprune.problems.halfunet import HalfUNet, NAFBlock


# --------------------------------------------------------------------------- Half-UNet


def test_halfunet_shapes_names_and_size() -> None:
    model = HalfUNet(width=8)
    x = torch.rand(2, 3, 32, 48)
    assert model(x).shape == x.shape
    names = dict(model.named_modules())
    for name in ("intro", "enc1.0.conv1", "enc1.0.conv2", "enc1.0.sca.1", "enc1.0.conv3", "enc1.0.conv4",
                 "enc1.0.conv5", "enc3.1.norm2", "up3.conv", "up1.shuffle", "ending"):
        assert name in names, name
    assert sum(isinstance(m, NAFBlock) for m in model.modules()) == 6
    assert names["enc1.0.conv2"].groups == 16  # depthwise over the 2F expanded channels
    assert sum(p.numel() for p in HalfUNet(64).parameters()) == 237_379  # the paper's width


def test_halfunet_blocks_start_as_identity() -> None:
    block = NAFBlock(8)
    x = torch.randn(2, 8, 16, 16)
    assert torch.equal(block(x), x)  # beta = gamma = 0 at init
    torch.nn.init.normal_(block.beta)
    assert not torch.equal(block(x), x)


def test_halfunet_layernorm_matches_definition() -> None:
    from qprune.problems.halfunet import LayerNorm2d

    ln = LayerNorm2d(6)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    x = torch.randn(2, 6, 5, 7)
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    ref = ln.weight.view(1, -1, 1, 1) * (x - mu) / torch.sqrt(var + ln.eps) + ln.bias.view(1, -1, 1, 1)
    assert torch.allclose(ln(x), ref, atol=1e-5)


# --------------------------------------------------------------------------- registry and protocol


def test_registry_and_protocol() -> None:
    assert {"denoise", "classify"} <= set(problems.available())
    for name in ("denoise", "classify"):
        p = problems.get(name, width=4)
        assert isinstance(p, problems.Problem) and p.name == name
        model = p.build_model()
        assert model(p.example_inputs()).shape[0] == 1
        assert isinstance(p.prunable(model), dict)
    assert problems.get("denoise").prunable(HalfUNet(4)) == {"exclude": ("ending",)}
    with pytest.raises(QpruneError, match="unknown problem 'nope'; available: classify, denoise"):
        problems.get("nope")
    with pytest.raises(QpruneError, match=r"unknown denoise option\(s\) \['widht'\]"):
        problems.get("denoise", widht=4)
    with pytest.raises(QpruneError, match="even integer"):
        problems.get("denoise", width=5)


def test_fixed_batches_are_deterministic_and_counted() -> None:
    p = problems.get("classify", calib_batches=3, val_batches=2, test_batches=1, batch_size=32)
    calib = p.calibration_batches()
    assert len(calib) == 3 and len(p.validation_batches()) == 2 and len(p.test_batches()) == 1
    again = problems.get("classify", calib_batches=3, batch_size=32).calibration_batches()
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(calib, again))
    everything = problems.get("classify", test_batches=None, batch_size=32).test_batches()
    assert sum(len(y) for _, y in everything) == 180  # 10 % of 1797 digits


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    p = problems.get("denoise", width=4, patch=32, val_batches=2)
    model = p.build_model()
    torch.nn.init.normal_(model.enc1[0].beta)
    path = problems.save_checkpoint(tmp_path / "d.pt", p, model, meta={"epochs": 3, "test_metrics": {"psnr": 1.0}})
    ckpt = torch.load(path, weights_only=True)  # plain data only: safe to load
    assert ckpt["problem"] == "denoise" and ckpt["config"]["width"] == 4 and ckpt["meta"]["epochs"] == 3
    p2, m2 = problems.load_checkpoint(path)
    assert p2.config == p.config and not m2.training
    x = p.example_inputs()
    assert torch.equal(model.eval()(x), m2(x))
    assert p2.checkpoint_meta["epochs"] == 3
    p3, _ = problems.load_checkpoint(path, val_batches=1, data=None)  # None = keep the stored value
    assert p3.config["val_batches"] == 1 and p3.config["data"] == "bundled"


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(QpruneError, match="does not exist"):
        problems.load_checkpoint(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(QpruneError, match="is not a qprune checkpoint"):
        problems.load_checkpoint(text)
    plain = tmp_path / "plain.pt"
    torch.save(HalfUNet(4).state_dict(), plain)
    with pytest.raises(QpruneError, match="is not a qprune checkpoint"):
        problems.load_checkpoint(plain)
    p = problems.get("classify")
    good = problems.save_checkpoint(tmp_path / "c.pt", p, p.build_model())
    ckpt = torch.load(good, weights_only=True)
    ckpt["problem"] = "segment"
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(QpruneError, match="unknown problem 'segment'"):
        problems.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(QpruneError, match="weights do not fit"):
        problems.load_checkpoint(good, width=8)


# --------------------------------------------------------------------------- classification


def _write_fake_cifar(root: Path, per_batch: int = 4) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        batch = {b"batch_label": name.encode(), b"labels": [(i + k) % 10 for k in range(per_batch)],
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{k}.png".encode() for k in range(per_batch)]}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x"] * 10}))


def test_cifar_reader_on_torchvision_layout(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path)
    data = read_cifar10(tmp_path)
    x, y = data["train"]
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8 and y.tolist()[:4] == [0, 1, 2, 3]
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert np.array_equal(x[0, 1].ravel(), raw[b"data"][0, 1024:2048])  # channel-major rows, as documented
    assert data["test"][0].shape == (4, 3, 32, 32)
    assert read_cifar10(tmp_path / "cifar-10-batches-py")["test"][1].tolist() == [5, 6, 7, 8]
    p = ClassifyProblem(data=str(tmp_path), batch_size=8, split=[0.75, 0.25, 0.0])
    assert {k: len(v[1]) for k, v in p.splits().items()} == {"train": 15, "val": 5, "test": 4}
    xb, yb = next(p._train_epoch_batches(0, np.random.default_rng(0)))
    assert xb.shape == (8, 3, 32, 32) and yb.dtype == torch.int64
    assert p.build_model()(xb).shape == (8, 10)


def test_cifar_missing_files(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(QpruneError, match="lacks data_batch_3; expected CIFAR-10 python layout"):
        read_cifar10(tmp_path)
    with pytest.raises(QpruneError, match="not a directory"):
        read_cifar10(tmp_path / "nowhere")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(QpruneError, match="cannot read CIFAR batch"):
        read_cifar10(tmp_path)


def test_resnet_and_upsampled_digits() -> None:
    assert ResNet(1, 10, 8, 2)(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    p = ClassifyProblem(upsample=2, test_batches=1)
    x, _ = p.test_batches()[0]
    assert x.shape[1:] == (1, 16, 16) and p.example_inputs().shape == (1, 1, 16, 16)


# --------------------------------------------------------------------------- qprune train


def _train_cli(argv: list[str]) -> int:
    from qprune.commands import train

    parser = argparse.ArgumentParser(prog="qprune")
    train.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *argv])
    return args.func(args)


def test_train_command_classify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.pt"
    assert _train_cli(["--problem", "classify", "--width", "4", "--epochs", "1", "--seed", "3", "-q",
                       "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "majority-class accuracy" in text and "model accuracy" in text and f"saved {out}" in text
    problem, model = problems.load_checkpoint(out)
    meta = problem.checkpoint_meta
    assert meta["epochs"] == 1 and meta["seed"] == 3 and 0 <= meta["test_metrics"]["accuracy"] <= 1
    assert problem.evaluate(model)["accuracy"] == pytest.approx(meta["test_metrics"]["accuracy"])


def test_train_command_denoise_prints_noisy_vs_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.pt"
    argv = ["--problem", "denoise", "--width", "4", "--epochs", "1", "--patch", "32", "--limit", "4",
            "--config", '{"max_side": 128, "test_batches": 1}', "-q", "-o", str(out)]
    assert _train_cli(argv) == 0
    text = capsys.readouterr().out
    assert "noisy input PSNR" in text and "-> model PSNR" in text
    problem, _ = problems.load_checkpoint(out)
    assert problem.config["width"] == 4 and problem.config["patch"] == 32 and problem.config["limit"] == 4
    assert set(problem.checkpoint_meta["test_baseline_metrics"]) == {"psnr", "ssim"}


def test_train_command_errors(tmp_path: Path) -> None:
    with pytest.raises(QpruneError, match="--patch applies to --problem denoise only"):
        _train_cli(["--problem", "classify", "--patch", "32", "-o", str(tmp_path / "x.pt")])
    with pytest.raises(QpruneError, match="--config is not a JSON object"):
        _train_cli(["--problem", "denoise", "--config", "{", "-o", str(tmp_path / "x.pt")])
    with pytest.raises(QpruneError, match="unknown problem"):
        _train_cli(["--problem", "segment", "-o", str(tmp_path / "x.pt")])
    with pytest.raises(QpruneError, match="epochs must be >= 1"):
        _train_cli(["--problem", "classify", "--epochs", "0", "-o", str(tmp_path / "x.pt")])


def test_denoise_baseline_is_the_noisy_input() -> None:
    p = DenoiseProblem(width=4, limit=4, max_side=128, patch=32, test_batches=1)
    x, y = p.test_batches()[0]
    assert p.baseline_metrics([(x, y)])["psnr"] == pytest.approx(p.metrics(x, y)["psnr"])
