"""The paper's Figure 5 for a denoise run: noisy, unpruned, pruned, clean side by side."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

import qprune.problems as problems
from qprune.cli import main
from qprune.errors import QpruneError
from qprune.pipeline.figures import COLUMNS, TITLE_PX, typical_image, write_comparison_figure
from qprune.problems.metrics import psnr


def test_prune_writes_the_four_panel_figure_on_the_bundled_denoiser(tmp_path):
    fig, report = tmp_path / "fig.png", tmp_path / "report.md"
    assert main(["prune", "--problem", "denoise", "--sparsity", "0.3", "--method", "taylor-greedy",
                 "--report", str(report), "--figure", str(fig), "--figure-images", "2", "-q"]) == 0
    img = mpimg.imread(fig)
    panel = 192
    assert img.shape[:2] == (2 * (panel + TITLE_PX), len(COLUMNS) * panel)
    text = report.read_text()
    assert "## Test images (noisy, unpruned, pruned, clean" in text and "](fig.png)" in text
    # the panels hold the images: the clean panel of the first row is the first clean test image, resized
    problem, _ = problems.load_pretrained("denoise")
    clean0 = problem.test_batches()[0][1][0].permute(1, 2, 0).numpy()
    top = TITLE_PX
    shown = img[top:top + panel, 3 * panel:4 * panel, :3]
    step = panel / clean0.shape[0]
    sample = shown[int(step / 2)::int(round(step)), int(step / 2)::int(round(step))][:clean0.shape[0], :clean0.shape[1]]
    assert np.abs(sample - clean0[:sample.shape[0], :sample.shape[1]]).mean() < 0.02


def test_figure_psnr_of_unpruned_is_the_models_and_bad_input_is_refused(tmp_path):
    problem, model = problems.load_pretrained("denoise")
    batches = problem.test_batches()[:1]
    info = write_comparison_figure(tmp_path / "f.png", model, model, batches, images=1, panel_px=64)
    x, y = batches[0][0][:1], batches[0][1][:1]
    with torch.inference_mode():
        expect = psnr(model.eval()(x), y)
    assert info["psnr"][0][1] == pytest.approx(expect, abs=1e-6) == pytest.approx(info["psnr"][0][2], abs=1e-6)
    assert mpimg.imread(tmp_path / "f.png").shape[:2] == (64 + TITLE_PX, 4 * 64)
    with pytest.raises(QpruneError, match="image-to-image"):
        write_comparison_figure(tmp_path / "g.png", model, model, [(x, torch.zeros(1, 10))])
    with pytest.raises(QpruneError, match=r"\.png"):
        write_comparison_figure(tmp_path / "g.jpg", model, model, batches)
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "g.jpg").exists()


def test_prune_figure_on_a_classifier_fails_before_pruning(tmp_path, capsys):
    fig = tmp_path / "fig.png"
    assert main(["prune", "--problem", "classify", "--sparsity", "0.3", "--figure", str(fig), "-q"]) == 2
    assert "image-to-image" in capsys.readouterr().err and not fig.exists()


class _Scale(torch.nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def test_typical_image_is_the_one_with_the_median_lead():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(5, 3, 16, 16, generator=g) * 0.5 + 0.25
    # each image gets its own brightness error, so the two models' PSNR gap differs per image
    x = torch.stack([y[i] * (1.0 + 0.02 * (i + 1)) for i in range(5)])
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]
    a, b = torch.nn.Identity(), _Scale(0.9)
    gaps = [psnr(x[i:i + 1], y[i:i + 1]) - psnr((0.9 * x[i:i + 1]).clamp(0, 1), y[i:i + 1]) for i in range(5)]
    want = int(np.argsort(gaps)[2])
    (xi, yi), = typical_image(a, b, batches)
    assert torch.equal(xi, x[want:want + 1]) and torch.equal(yi, y[want:want + 1])
