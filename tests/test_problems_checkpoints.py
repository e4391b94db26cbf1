"""The checkpoints shipped in problems/checkpoints/ load and do their job on the held-out split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qprune import problems
from qprune.problems.training import convergence
from qprune.errors import QpruneError


def test_shipped_denoiser_beats_the_noisy_input() -> None:
    problem, model = problems.load_pretrained("denoise")
    assert problem.config["data"] == "bundled" and problem.config["width"] == 16
    batches = problem.test_batches()  # the whole held-out split: two photographs never seen in training
    noisy = problem.baseline_metrics(batches)
    with torch.no_grad():
        denoised = problem.evaluate(model, batches)
    print(f"noisy input PSNR {noisy['psnr']:.2f} dB -> model {denoised['psnr']:.2f} dB")
    assert denoised["psnr"] > noisy["psnr"] + 3.0
    assert denoised["ssim"] > noisy["ssim"] + 0.05
    # The numbers recorded at training time reproduce: same data, noise and split from the config.
    meta = problem.checkpoint_meta
    assert denoised["psnr"] == pytest.approx(meta["test_metrics"]["psnr"], abs=0.05)
    assert noisy["psnr"] == pytest.approx(meta["test_baseline_metrics"]["psnr"], abs=0.05)


def test_shipped_classifier_beats_95_percent_on_digits() -> None:
    problem, model = problems.load_pretrained("classify")
    assert problem.config["data"] == "digits"
    acc = problem.evaluate(model, problem.test_batches())["accuracy"]
    assert sum(len(y) for _, y in problem.test_batches()) == 180
    assert acc > 0.95
    assert acc == pytest.approx(problem.checkpoint_meta["test_metrics"]["accuracy"])


def test_shipped_checkpoints_are_small_and_documented() -> None:
    readme = (problems.CHECKPOINT_DIR / "README.md").read_text()
    for name in ("denoise", "classify"):
        path = problems.pretrained_path(name)
        assert path.stat().st_size < 5_000_000
        assert path.name in readme and "qprune train" in readme
    with pytest.raises(QpruneError, match="no shipped checkpoint"):
        problems.pretrained_path("segment")


def test_training_summary_flags_a_short_run_from_the_checkpoint_record() -> None:
    from qprune.pipeline.report import training_summary

    problem, _ = problems.load_pretrained("denoise")
    text = training_summary(problem.checkpoint_meta)
    meta = problem.checkpoint_meta
    assert f"{meta['epochs']} epochs" in text and meta["command"] in text
    assert "the paper trains 100 epochs; this model had 12" in text
    assert "(the paper trains" not in training_summary({**meta, "epochs": 100})
    assert training_summary({}) == "the checkpoint carries no training record"


SIDD_CKPT = problems.CHECKPOINT_DIR / "denoise_sidd_f64.pt"
SIDD_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sidd_small_256"


def test_sidd_checkpoint_loads_weights_only_and_its_history_converged() -> None:
    raw = torch.load(SIDD_CKPT, weights_only=True)
    meta = raw["meta"]
    assert raw["problem"] == "denoise" and raw["config"]["width"] == 64
    assert SIDD_CKPT.stat().st_size < 5_000_000 and SIDD_CKPT.name in (problems.CHECKPOINT_DIR / "README.md").read_text()
    history = meta["history"]
    assert [r["epoch"] for r in history] == list(range(1, meta["epochs"] + 1))
    verdict = convergence(history)  # < 0.05 dB validation gain over the last 10 % of >= 20 epochs
    assert verdict["converged"], verdict
    assert meta["command"].startswith("qprune train --problem denoise --width 64")
    assert meta["test_metrics"]["psnr"] > meta["test_baseline_metrics"]["psnr"] + 3.0


@pytest.mark.skipif(not SIDD_DATA.is_dir(), reason=f"the SIDD-Small folder {SIDD_DATA} is absent")
def test_sidd_checkpoint_test_metrics_reproduce() -> None:
    torch.set_num_threads(2)
    problem, model = problems.load_checkpoint(SIDD_CKPT, data=str(SIDD_DATA))
    batches = problem.test_batches()
    assert sum(len(y) for _, y in batches) == problem.checkpoint_meta["test_samples"]
    with torch.no_grad():
        measured = problem.evaluate(model, batches)
    noisy = problem.baseline_metrics(batches)
    recorded = problem.checkpoint_meta
    print(f"SIDD test split: noisy {noisy['psnr']:.3f} dB -> model {measured['psnr']:.3f} dB / {measured['ssim']:.4f}")
    assert measured["psnr"] == pytest.approx(recorded["test_metrics"]["psnr"], abs=0.01)
    assert measured["ssim"] == pytest.approx(recorded["test_metrics"]["ssim"], abs=1e-3)
    assert noisy["psnr"] == pytest.approx(recorded["test_baseline_metrics"]["psnr"], abs=0.01)
