"""The README stays honest: its commands and its Python example run as written.

``make test`` (CI) runs this file; ``make demo``'s recipe is checked by running its qprune command.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from qprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    return [line[2:].strip() for line in README.splitlines() if line.startswith("$ qprune ")]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_the_two_setup_commands():
    setup = README.split("## Set-up", 1)[1].split("##", 1)[0]
    assert "make demo" in setup and "make test" in setup


def test_readme_commands_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = _commands()
    assert len(commands) >= 8
    for cmd in commands:
        argv = shlex.split(cmd)[1:]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, f"`{cmd}` exited {code}: {err.strip().splitlines()[-1:] }"
    # what the commands promise to write
    for name in ("digits.pt", "pruned.pt2", "recipe.json", "report.md", "qubo.json", "sample.json",
                 "applied.md", "finetuned.pt2", "finetuned.md", "cmp/compare.md", "cmp/compare.png", "weights.json", "study.db", "budget.cqm",
                 "budget_recipe.json", "budget_sample.json"):
        assert (tmp_path / name).is_file(), name


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks()
    assert blocks
    for code in blocks:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "pruned.pt").is_file()
    assert scope["result"].stats_after["params"] < scope["result"].stats_before["params"]


def test_make_demo_recipe_runs(tmp_path, monkeypatch, capsys):
    recipe = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    line = " ".join(part.strip().rstrip("\\") for part in recipe.splitlines()[1:])
    argv = shlex.split(line)
    assert argv[0].endswith("qprune")
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:] + ["--quiet"]) == 0
    out = tmp_path / argv[argv.index("--out") + 1]
    for name in ("compare.md", "compare.json", "compare.png", "figure.png"):
        assert (out / name).is_file(), name
    # the README's demo table is what this code's demo prints (selection times aside)
    shown, made = _demo_table(README), _demo_table((out / "compare.md").read_text())
    assert shown.keys() == made.keys() and len(shown) >= 5
    for method, values in made.items():
        assert shown[method][:-1] == pytest.approx(values[:-1], abs=0.02), method


def _demo_table(text: str) -> dict[str, list[float]]:
    """The first ``| psnr | ...`` pivot table in ``text``: method -> its numbers, the time last."""
    block = text.split("| psnr |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = [float(c) if c not in ("–", "-") else float("nan") for c in cells[1:]]
    return rows


def test_readme_shows_the_demo_pictures():
    for name in ("demo_curve.png", "demo_images.png"):
        assert f"docs/img/{name}" in README and (ROOT / "docs" / "img" / name).is_file(), name


def test_readme_make_targets_exist_and_bench_paper_uses_the_shipped_checkpoint():
    import subprocess
    import sys

    from qprune.cli import build_parser

    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"`make ([a-z][a-z-]*)", README))
    assert {"demo", "test", "bench-paper", "train-sidd"} <= targets
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"README names `make {target}`, not in Makefile"
    shipped = ROOT / "problems" / "checkpoints" / "denoise_sidd_f64.pt"
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "bench-paper"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert not [line for line in dry if "qprune train" in line], dry  # benchmarks never retrain
    tables = [line for line in dry if "benchmarks/paper_tables.py" in line]
    assert len(tables) == 1
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import paper_tables
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    tab = paper_tables.parse_args(shlex.split(tables[0])[2:])
    assert (ROOT / tab.checkpoint).resolve() == shipped and tab.vary_calibration
    # bench-paper-tt adds the TT rows to that table's file; the shipped file holds them for every seed
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "bench-paper-tt"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    tt = paper_tables.parse_args(shlex.split(next(line for line in dry if "paper_tables.py" in line))[2:])
    results = json.loads((ROOT / tt.tt_from).read_text())
    assert (ROOT / results["checkpoint"]).resolve() == shipped and results["complete"]
    metas = {m["setting"]: m for m in results["settings"]}
    for setting in tt.tt_settings.split(","):
        seeds = {r["seed"] for r in results["rows"] if r["setting"] == setting and r["method"] == "hybrid-qubo+tt"}
        assert seeds == set(results["seeds"]), setting
        assert paper_tables.tt_made(metas[setting], "hybrid-qubo+tt")["budget"] == tt.tt_budget, setting
    # train-sidd remakes that file, resumably, with the recipe the README states
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "train-sidd"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    train = [line for line in dry if "/qprune train " in line]
    assert len(train) == 1
    args = build_parser().parse_args(shlex.split(train[0])[1:])
    assert args.command == "train" and args.resume and (ROOT / args.output).resolve() == shipped
    assert args.width == 64 and args.schedule == "cosine"


def test_readme_names_resolve():
    import importlib

    names = set(re.findall(r"`(qprune(?:\.[A-Za-z_]+)+)", README))
    assert "qprune.model.build_space" in names
    for dotted in sorted(names):
        parts = dotted.split(".")
        obj = importlib.import_module(parts[0])
        for i, part in enumerate(parts[1:], start=1):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                obj = importlib.import_module(".".join(parts[:i + 1]))
        assert obj is not None, dotted
