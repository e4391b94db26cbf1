"""The README stays honest: its commands and its Python example run as written.

``make test`` (CI) runs this file; ``make demo``'s recipe is checked by running its qprune command.
"""

from __future__ import annotations

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
    for name in ("digits.pt", "pruned.pt", "report.md", "qubo.lp", "qubo.json", "sample.json",
                 "applied.md", "cmp/compare.md", "cmp/compare.png", "weights.json", "study.db"):
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
    out = argv[argv.index("--out") + 1]
    assert (tmp_path / out / "compare.md").is_file()
