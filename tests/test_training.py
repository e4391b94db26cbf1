"""The shared training loop: precision choice, resumable state, the `qprune train --resume` command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qprune import problems
from qprune.errors import QpruneError
from qprune.problems import training
from qprune.problems.denoise import DenoiseProblem
from test_problems import _train_cli


def _tiny() -> DenoiseProblem:
    return DenoiseProblem(width=4, limit=4, max_side=128, patch=32, test_batches=1, val_batches=1,
                          calib_batches=1)


class _Stop(Exception):
    pass


def _stop_after(epoch: int):
    def log(line: str) -> None:
        if line.startswith(f"epoch={epoch} "):
            raise _Stop
    return log


def _no_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("memory", [True, False])
def test_stopped_and_resumed_run_ends_as_an_uninterrupted_one(tmp_path: Path, memory: bool) -> None:
    full = _tiny().train(epochs=3, seed=5, channels_last=memory, progress=False)
    state = tmp_path / "run.state.pt"
    with pytest.raises(_Stop):
        _tiny().train(epochs=3, seed=5, channels_last=memory, state=state, progress=False, log=_stop_after(2))
    saved = torch.load(state, weights_only=True)
    assert [row["epoch"] for row in saved["history"]] == [1, 2]
    torch.manual_seed(999)  # the resumed run must restore torch's RNG itself
    lines: list[str] = []
    resumed = _tiny().train(epochs=3, seed=5, channels_last=memory, state=state, resume=True, progress=False,
                            log=lines.append)
    assert lines[0].startswith(f"resumed from {state} after epoch 2 of 3")
    assert _no_time(resumed.history) == _no_time(full.history)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.meta["test_metrics"] == full.meta["test_metrics"]


def test_history_rows_hold_train_and_validation_curves() -> None:
    result = _tiny().train(epochs=2, progress=False)
    row = result.history[-1]
    assert {"epoch", "lr", "train_loss", "train_psnr", "train_ssim", "val_psnr", "val_ssim", "seconds"} <= set(row)
    assert result.history[0]["lr"] == pytest.approx(1e-3)  # the rate the epoch started with
    assert result.meta["precision"] in ("fp32", "bf16") and result.meta["channels_last"] is True
    assert next(result.model.parameters()).is_contiguous()  # returned in NCHW


def test_a_state_from_other_options_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s.state.pt"
    with pytest.raises(_Stop):
        _tiny().train(epochs=2, state=state, progress=False, log=_stop_after(1))
    with pytest.raises(QpruneError, match="pass --resume to continue"):
        _tiny().train(epochs=2, state=state, progress=False)
    with pytest.raises(QpruneError, match=r"it holds a run of another setting \(lr: saved 0.001, now 0.002\)"):
        _tiny().train(epochs=2, lr=2e-3, state=state, resume=True, progress=False)
    with pytest.raises(QpruneError, match="it holds a run of another config .*width: saved 4, now 6"):
        DenoiseProblem(width=6, limit=4, max_side=128, patch=32, test_batches=1, val_batches=1,
                       calib_batches=1).train(epochs=2, state=state, resume=True, progress=False)
    bad = tmp_path / "bad.state.pt"
    bad.write_bytes(b"not a state")
    with pytest.raises(QpruneError, match="is not a qprune training state"):
        _tiny().train(epochs=2, state=bad, resume=True, progress=False)


def test_precision_choice() -> None:
    assert training.resolve_precision("fp32", "cpu") == "fp32"
    assert training.resolve_precision("bf16", "cpu") == "bf16"
    assert training.resolve_precision("auto", "cpu") == ("bf16" if training.native_bf16() else "fp32")
    with pytest.raises(QpruneError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        training.resolve_precision("fp16", "cpu")
    with pytest.raises(QpruneError, match="device must be cpu, cuda"):
        training.resolve_device("tpu")


def test_bf16_training_keeps_float32_weights_and_metrics() -> None:
    result = _tiny().train(epochs=1, precision="bf16", progress=False)
    assert result.meta["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))


def test_state_path_sits_beside_the_output() -> None:
    assert training.state_path("a/b/model.pt") == Path("a/b/model.state.pt")
    assert training.state_path("model") == Path("model.state.pt")


def test_train_command_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.pt"
    argv = ["--problem", "denoise", "--width", "4", "--epochs", "2", "--patch", "32", "--limit", "4",
            "--config", '{"max_side": 128, "test_batches": 1, "val_batches": 1, "calib_batches": 1}',
            "-q", "-o", str(out), "--resume"]
    assert _train_cli(argv) == 0  # --resume without a state starts fresh
    assert out.is_file() and not training.state_path(out).exists()  # the state goes once finished
    first = problems.read_checkpoint(out)["meta"]["history"]
    assert len(first) == 2
    capsys.readouterr()
    assert _train_cli(argv) == 0
    curves = tmp_path / "d_curves.png"
    assert _train_cli([*argv, "--curves", str(curves)]) == 0
    assert "already trained (2 epochs); nothing to resume" in capsys.readouterr().out
    assert curves.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(QpruneError, match="is a finished checkpoint of a different run"):
        _train_cli([*argv[:5], "3", *argv[6:]])


def test_convergence_rule() -> None:
    rows = [{"val_psnr": 30 + min(e, 25) * 0.1} for e in range(30)]  # flat over the last 5 epochs
    c = training.convergence(rows)
    assert c["window"] == 3 and c["gain"] == pytest.approx(0.0) and c["converged"]
    rising = [{"val_psnr": 30 + e * 0.1} for e in range(30)]
    c = training.convergence(rising)
    assert c["gain"] == pytest.approx(0.3) and not c["converged"]
    assert not training.convergence(rows[:10])["converged"]  # too short to count
    assert training.convergence(rows[:1])["gain"] is None


def test_training_curve_figure(tmp_path: Path) -> None:
    from qprune.pipeline.report import plot_training

    history = _tiny().train(epochs=2, progress=False).history
    path = tmp_path / "curves.png"
    plot_training(history, path, title="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="empty"):
        plot_training([], path)
