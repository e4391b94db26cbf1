"""A recipe file re-applies a mask to a fresh instance of the model definition: the same pruned model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qprune import problems
from qprune.errors import QpruneError
from qprune.model.recipe import apply_recipe, load_recipe, make_recipe, save_recipe
from qprune.pipeline.run import prune


@pytest.fixture(scope="module")
def pruned_digits():
    problem, model = problems.load_pretrained("classify")
    result = prune(model, problem, sparsity=0.3, method="taylor-greedy", progress=False)
    return problem, model, result


def test_recipe_rebuilds_the_same_pruned_model(tmp_path: Path, pruned_digits) -> None:
    problem, model, result = pruned_digits
    path = save_recipe(tmp_path / "recipe.json", result.recipe({"note": "test"}))
    recipe = load_recipe(path)
    assert recipe["k"] == result.k and len(recipe["pruned"]) == result.k
    assert recipe["meta"]["method"] == "taylor-greedy" and recipe["meta"]["note"] == "test"
    assert sum(len(v) for v in recipe["kept_channels"].values()) == result.space.N - result.k
    fresh = problem.build_model()                     # the model definition, as a user has it
    fresh.load_state_dict(model.state_dict())         # with the trained weights
    rebuilt = apply_recipe(fresh, recipe, problem.example_inputs()).eval()
    x, _ = problem.test_batches()[0]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), result.pruned_model.eval()(x))
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in result.pruned_model.parameters())
    untrained = apply_recipe(problem.build_model(), recipe, problem.example_inputs())
    assert [p.shape for p in untrained.parameters()] == [p.shape for p in result.pruned_model.parameters()]


def test_recipe_refuses_another_model(tmp_path: Path, pruned_digits) -> None:
    problem, _, result = pruned_digits
    recipe = result.recipe()
    other = problems.get("classify", width=8).build_model()
    with pytest.raises(QpruneError, match="filter space differs from the recipe's"):
        apply_recipe(other, recipe, problem.example_inputs())
    with pytest.raises(QpruneError, match="unknown space option"):
        make_recipe(result.space, result.mask, space_options={"colour": "red"})
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(QpruneError, match="is not a qprune recipe"):
        load_recipe(tmp_path / "bad.json")
    with pytest.raises(QpruneError, match="does not exist"):
        load_recipe(tmp_path / "none.json")


def _cli(argv: list[str]) -> int:
    from qprune.cli import main

    return main(argv)


def test_prune_writes_a_recipe_that_apply_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe, model = tmp_path / "r.json", tmp_path / "pruned.pt"
    assert _cli(["prune", "--problem", "classify", "--sparsity", "0.3", "--method", "l1-greedy", "--quiet",
                 "--recipe", str(recipe), "-o", str(model), "--report", str(tmp_path / "rep.json")]) == 0
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["output"]["format"] == "torchscript" and report["output"]["runtime_latency_ms"] > 0
    capsys.readouterr()
    assert _cli(["apply", "--problem", "classify", "--recipe", str(recipe), "--report", str(tmp_path / "a.json")]) == 0
    applied = json.loads((tmp_path / "a.json").read_text())
    assert applied["metrics_after"] == report["metrics_after"] and applied["k"] == report["k"]
    assert _cli(["prune", "--problem", "classify", "--sparsity", "0.3", "-o", str(tmp_path / "m.bin")]) == 2
    assert "cannot tell the model format" in capsys.readouterr().err
