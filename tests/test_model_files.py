"""Pruned models in the formats their runtimes load: .pt2 (torch.export), .onnx (onnxruntime), .pt."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from qprune.errors import QpruneError
from qprune.model.fileio import FORMATS, format_for, load_meta, load_pruned, runtime_latency, save_pruned
from qprune.model.masking import apply_mask
from qprune.model.space import build_space
from qprune.problems.halfunet import HalfUNet

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


@pytest.fixture(scope="module")
def pruned() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = HalfUNet(width=4).eval()
    x = torch.rand(1, 3, 32, 32)
    space = build_space(model, x, exclude=("ending",))
    small = apply_mask(model, space, space.random_mask(0.36, seed=0), mode="remove", example_inputs=x).eval()
    return small, x


def _formats() -> list:
    onnx = pytest.param("onnx", marks=pytest.mark.skipif(not HAVE_ONNX, reason="onnx/onnxruntime/onnxscript "
                                                                               "not installed (qprune[onnx])"))
    return ["export", onnx, "torchscript"]


@pytest.mark.parametrize("fmt", _formats())
def test_saved_file_equals_the_pruned_model_at_other_sizes(tmp_path: Path, pruned, fmt: str) -> None:
    model, x = pruned
    suffix = {v: k for k, v in FORMATS.items()}[fmt]
    path = save_pruned(model, tmp_path / f"m{suffix}", example_inputs=x, meta={"k": 3})
    loaded = load_pruned(path)
    # other batches and sizes than the example, odd ones too (the Half-UNet takes any size)
    for shape in ((1, 3, 32, 32), (2, 3, 40, 48), (1, 3, 64, 24), (1, 3, 241, 187), (2, 3, 9, 13)):
        probe = torch.rand(shape)
        with torch.no_grad():
            want, got = model(probe), loaded(probe)
        assert got.shape == probe.shape and float((want - got).abs().max()) < 1e-4, shape
    meta = load_meta(path)
    assert meta["format"] == fmt and meta["meta"] == {"k": 3}
    assert meta["params"] == sum(p.numel() for p in model.parameters())
    assert runtime_latency(path, x, warmup=1, repeats=2) > 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_format_follows_the_suffix() -> None:
    assert format_for("a/b.pt2") == "export" and format_for("m.ONNX") == "onnx" and format_for("m.pt") == "torchscript"
    assert format_for("m.bin", "onnx") == "onnx"
    with pytest.raises(QpruneError, match=r"cannot tell the model format from 'm.bin'"):
        format_for("m.bin")
    with pytest.raises(QpruneError, match="format must be one of"):
        format_for("m.pt", "tflite")


def test_bad_requests_write_nothing(tmp_path: Path, pruned) -> None:
    model, _ = pruned
    with pytest.raises(QpruneError, match=r"writing export \(.pt2\) needs example_inputs"):
        save_pruned(model, tmp_path / "m.pt2")
    with pytest.raises(QpruneError, match="does not exist"):
        save_pruned(model, tmp_path / "missing" / "m.pt")
    with pytest.raises(QpruneError, match="does not exist"):
        load_pruned(tmp_path / "nope.pt2")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(QpruneError, match="not a saved model"):
        load_pruned(tmp_path / "junk.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt"]


def test_a_file_that_differs_from_the_model_is_not_kept(tmp_path: Path, monkeypatch, pruned) -> None:
    from qprune.model import fileio

    model, x = pruned
    real = fileio.load_pruned

    def broken(path, map_location="cpu"):
        m = real(path, map_location)
        return lambda *xs: m(*xs) + 1.0  # a runtime that computes something else

    monkeypatch.setattr(fileio, "load_pruned", broken)
    with pytest.raises(QpruneError, match="differs from the torch model"):
        save_pruned(model, tmp_path / "m.pt", example_inputs=x)
    assert list(tmp_path.iterdir()) == []


def test_the_denoiser_takes_any_image_size(pruned) -> None:
    """Odd sides: the unpruned, gated and pruned models give an output of the input's shape, and at
    multiples of 8 the crop changes nothing (the same function as a plain Half-UNet)."""
    torch.manual_seed(1)
    model = HalfUNet(width=4).eval()
    x = torch.rand(1, 3, 32, 32)
    space = build_space(model, x, exclude=("ending",))
    mask = space.random_mask(0.36, seed=1)
    gated = apply_mask(HalfUNet(width=4).eval().requires_grad_(False), space, mask, mode="gate")
    gated.load_state_dict(model.state_dict())
    small = apply_mask(model, space, mask, mode="remove", example_inputs=x).eval()
    odd = torch.rand(2, 3, 241, 187)
    with torch.no_grad():
        for m in (model, gated, small):
            assert m(odd).shape == odd.shape
        assert float((gated(odd) - small(odd)).abs().max()) < 1e-5
        # a crop-free reference at a multiple of 8: the pooling and crop are no-ops there
        s1 = model.enc1(model.intro(x))
        s2 = model.enc2(torch.nn.functional.max_pool2d(s1, 2))
        s3 = model.enc3(torch.nn.functional.max_pool2d(s2, 2))
        d3 = model.up3(torch.nn.functional.max_pool2d(s3, 2)) + s3
        ref = x + model.ending(model.up1(model.up2(d3) + s2) + s1)
        assert torch.equal(model(x), ref)
