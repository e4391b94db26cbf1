"""Recovery fine-tuning: `qprune finetune`, `prune --finetune [--distill]`, `compare --finetune`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import qprune
from qprune import problems
from qprune.cli import main
from qprune.errors import QpruneError
from qprune.model.fileio import load_pruned
from qprune.pipeline.compare import FinetuneOptions, compare_rows
from qprune.problems import training


@pytest.fixture(scope="module")
def pruned_digits():
    """The shipped digits classifier with half its units removed by Taylor greedy: accuracy drops a lot."""
    problem, model = problems.load_pretrained("classify")
    result = qprune.prune(model, problem, sparsity=0.5, method="taylor-greedy", seed=0, progress=False)
    assert result.metrics_after["accuracy"] < result.metrics_before["accuracy"] - 0.2
    return problem, model, result


def _accuracy(module, problem) -> float:
    """Test accuracy of a loaded program (a torch.export module has no eval(): it is frozen already)."""
    with torch.no_grad():
        hits = [(module(x).argmax(1) == y).float().sum() for x, y in problem.test_batches()]
    return float(sum(hits)) / sum(int(y.shape[0]) for _, y in problem.test_batches())


class _Stop(Exception):
    pass


def _stop_after_first_epoch(line: str) -> None:
    if line.startswith("epoch=1 "):
        raise _Stop


def test_finetune_improves_a_pruned_digits_model(pruned_digits) -> None:
    problem, model, result = pruned_digits
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    ft = problem.finetune(copy.deepcopy(result.pruned_model), epochs=2, lr=1e-3, teacher=model, progress=False)
    assert ft.before["accuracy"] == pytest.approx(result.metrics_after["accuracy"])
    assert ft.after["accuracy"] > ft.before["accuracy"] + 0.2
    assert ft.after == problem.evaluate(ft.model)
    assert ft.to_dict()["gain"]["accuracy"] == pytest.approx(ft.after["accuracy"] - ft.before["accuracy"])
    assert len(ft.history) == 2 and ft.meta["distill_weight"] == 0.5
    # the teacher (the unpruned model) is left exactly as it was
    assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())


def test_distillation_changes_the_run_and_its_loss_is_the_softened_kl(pruned_digits) -> None:
    problem, model, result = pruned_digits
    logits = torch.randn(5, 10)
    assert float(problem.distill_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(problem.distill_loss(logits, -logits)) > 0.1
    plain = problem.finetune(copy.deepcopy(result.pruned_model), epochs=1, progress=False)
    taught = problem.finetune(copy.deepcopy(result.pruned_model), epochs=1, teacher=model, distill_weight=1.0,
                              progress=False)
    assert plain.history[0]["train_loss"] != taught.history[0]["train_loss"]
    with pytest.raises(QpruneError, match=r"distillation weight must be in \[0, 1\], got 1.5"):
        problem.finetune(copy.deepcopy(result.pruned_model), epochs=1, teacher=model, distill_weight=1.5,
                         progress=False)


def test_stopped_and_resumed_finetune_ends_as_an_uninterrupted_one(pruned_digits, tmp_path: Path) -> None:
    problem, model, result = pruned_digits
    full = problem.finetune(copy.deepcopy(result.pruned_model), epochs=2, teacher=model, progress=False)
    state = tmp_path / "ft.state.pt"
    with pytest.raises(_Stop):
        problem.finetune(copy.deepcopy(result.pruned_model), epochs=2, teacher=model, state=state, progress=False,
                         log=_stop_after_first_epoch)
    with pytest.raises(QpruneError, match="another distill"):  # the state knows it was distilled
        problem.finetune(copy.deepcopy(result.pruned_model), epochs=2, state=state, resume=True, progress=False)
    resumed = problem.finetune(copy.deepcopy(result.pruned_model), epochs=2, teacher=model, state=state,
                               resume=True, progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert resumed.after == full.after
    with pytest.raises(QpruneError, match="its model does not fit this one"):  # another pruned architecture
        problem.finetune(problems.load_pretrained("classify")[1], epochs=2, teacher=model, state=state,
                         resume=True, progress=False)


def test_prune_and_finetune_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe, out, report = tmp_path / "r.json", tmp_path / "p.pt2", tmp_path / "p.json"
    assert main(["prune", "--problem", "classify", "--sparsity", "0.5", "--method", "taylor-greedy", "--quiet",
                 "--recipe", str(recipe), "-o", str(out), "--report", str(report),
                 "--finetune", "2", "--distill", "--finetune-lr", "1e-3"]) == 0
    assert "## Recovery fine-tuning" in capsys.readouterr().out
    ft = json.loads(report.read_text())["finetune"]
    assert ft["after"]["accuracy"] > ft["before"]["accuracy"] and ft["distill_weight"] == 0.5
    problem = problems.get("classify")
    saved = load_pruned(out)  # the file holds the fine-tuned weights, not the merely pruned ones
    assert _accuracy(saved, problem) == pytest.approx(ft["after"]["accuracy"], abs=1e-6)

    out2, report2 = tmp_path / "ft.pt2", tmp_path / "ft.md"
    assert main(["finetune", "--recipe", str(recipe), "--epochs", "2", "--lr", "1e-3", "--quiet",
                 "-o", str(out2), "--report", str(report2)]) == 0
    text = report2.read_text()
    assert "| metric | unpruned | pruned | fine-tuned | gain |" in text and "no distillation" in text
    assert not (tmp_path / "ft.state.pt").exists()  # finished: nothing left to resume
    assert _accuracy(load_pruned(out2), problem) > 0.9


def test_finetune_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "--recipe", str(tmp_path / "none.json"), "-o", str(tmp_path / "x.pt2")]) == 2
    assert "recipe file" in capsys.readouterr().err
    assert main(["finetune", "--recipe", "r.json", "--epochs", "0", "-o", str(tmp_path / "x.pt2")]) == 2
    assert "--epochs 0 must be >= 1" in capsys.readouterr().err
    assert main(["finetune", "--recipe", "r.json", "-o", str(tmp_path / "x.bin")]) == 2
    assert not list(tmp_path.iterdir())


def test_compare_rows_with_finetune(pruned_digits) -> None:
    problem, model, _ = pruned_digits
    rows = compare_rows(model, problem, methods=["random", "taylor-greedy"], sparsities=[0.5], progress=False,
                        finetune=FinetuneOptions(epochs=1, lr=1e-3))
    for row in rows:
        assert row["accuracy_ft"] > row["accuracy"] and row["finetune_seconds"] > 0
    with pytest.raises(QpruneError, match="has no finetune method"):
        compare_rows(model, [(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long))], methods=["random"],
                     sparsities=[0.5], progress=False, finetune=FinetuneOptions(epochs=1))


def test_distillation_settings_are_checked() -> None:
    with pytest.raises(QpruneError, match="got -0.1"):
        training.Distillation(torch.nn.Identity(), -0.1).check()
