"""CLI: command discovery, `qprune backends`, `qprune solve`, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dimod
import pytest

import qprune.commands
from qprune.qubo import fileio as qubo_io
from qprune.cli import main
from qprune.instances.synthetic import random_formulation


@pytest.fixture(scope="module")
def form():
    return random_formulation((5, 6, 4), seed=1)


@pytest.fixture
def plain_file(tmp_path: Path, form) -> Path:
    return qubo_io.export_bqm(form.objective_bqm(), tmp_path / "plain.coo")


@pytest.fixture
def constrained_file(tmp_path: Path, form) -> Path:
    return qubo_io.export_constrained(form.objective_bqm(), 6, tmp_path / "constrained.json")


def one_line_error(capsys: pytest.CaptureFixture[str], rc: int, match: str) -> None:
    _, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qprune: error: ")
    assert match in lines[0], lines[0]
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# parser and discovery


def test_no_command_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(capsys, main([]), "no command given")
    assert main(["--version"]) == 0
    assert "qprune" in capsys.readouterr().out


def test_help_lists_the_discovered_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "backends" in out and "solve" in out


def test_argparse_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(capsys, main(["solve"]), "the following arguments are required: file")
    one_line_error(capsys, main(["frobnicate"]), "invalid choice")
    one_line_error(capsys, main(["solve", "x.coo", "--k", "three"]), "invalid int value")


def test_discovery_survives_broken_and_helper_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "zzhello.py").write_text(textwrap.dedent("""
        def register(subparsers):
            p = subparsers.add_parser("zzhello", help="say hello")
            p.add_argument("--name", default="world")
            p.set_defaults(func=run)

        def run(args):
            print(f"hello {args.name}")
            return 0
    """))
    (tmp_path / "zzbroken.py").write_text("import no_such_module_for_qprune_tests\n")
    (tmp_path / "zzhelper.py").write_text("VALUE = 1\n")
    (tmp_path / "_zzprivate.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.setattr(qprune.commands, "__path__", [*qprune.commands.__path__, str(tmp_path)])
    for name in ("zzhello", "zzbroken", "zzhelper", "_zzprivate"):
        monkeypatch.delitem(sys.modules, f"qprune.commands.{name}", raising=False)
    try:
        assert main(["zzhello", "--name", "qubo"]) == 0
        assert capsys.readouterr().out == "hello qubo\n"
        one_line_error(capsys, main(["zzbroken"]), "command 'zzbroken' is unavailable: ModuleNotFoundError")
        one_line_error(capsys, main(["zzhelper"]), "invalid choice")
        assert main(["backends"]) == 0  # the others still work
    finally:
        for name in ("zzhello", "zzbroken", "zzhelper"):
            sys.modules.pop(f"qprune.commands.{name}", None)


# --------------------------------------------------------------------------------------------------
# qprune backends


def test_backends_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["name", "installed", "token", "extra"]
    neal = next(line for line in out if line.startswith("neal "))
    assert neal.split()[1:4] == ["yes", "no", "-"]
    assert main(["backends", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert {"neal", "tabu", "greedy", "exact"} <= set(by_name)
    assert by_name["exact"]["max_variables"] == 24
    assert set(by_name["neal"]) == {"name", "installed", "needs_token", "extra", "max_variables", "description"}


# --------------------------------------------------------------------------------------------------
# qprune solve


def test_solve_plain_file_with_k(plain_file: Path, tmp_path: Path, form, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res" / "sample.json"
    rc = main(["solve", str(plain_file), "--backend", "neal", "--k", "5", "--seed", "3", "--reads", "20",
               "--out", str(out)])
    assert rc == 0
    summary = capsys.readouterr().out
    assert "exact k=5 (--k)" in summary and str(out) in summary
    data = json.loads(out.read_text())
    assert set(data) == {"sample", "energy", "info"}
    assert sum(data["sample"].values()) == 5 and set(data["sample"]) == set(form.labels)
    bqm = form.objective_bqm()
    assert data["energy"] == pytest.approx(bqm.energy(data["sample"]))
    assert data["info"]["k_source"] == "--k" and data["info"]["count"] == 5
    assert data["info"]["iterations"][-1]["reads"] == 20
    # the sample reads back with the project's own sample reader
    x = qubo_io.load_sample(out, bqm)
    assert x.sum() == 5


def test_solve_constrained_file_uses_its_k(constrained_file: Path, tmp_path: Path, form,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.json"
    assert main(["solve", str(constrained_file), "-b", "greedy", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert sum(data["sample"].values()) == 6 and data["info"]["k_source"] == "file"
    # --k overrides the file's k
    assert main(["solve", str(constrained_file), "-b", "greedy", "--k", "2", "--out", str(out)]) == 0
    assert sum(json.loads(out.read_text())["sample"].values()) == 2


def test_solve_without_k_samples_the_bqm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bqm = random_formulation((4, 5), seed=2).bqm(0.5)
    path = qubo_io.export_bqm(bqm, tmp_path / "p.npz")
    out = tmp_path / "s.json"
    assert main(["solve", str(path), "--backend", "neal", "--reads", "30", "--out", str(out)]) == 0
    assert "plain sampling" in capsys.readouterr().out
    data = json.loads(out.read_text())
    ground = dimod.ExactSolver().sample(bqm).first.energy
    assert data["energy"] == pytest.approx(ground)
    assert data["energy"] == pytest.approx(bqm.energy(data["sample"]))
    assert data["info"]["num_reads"] == 30


def test_solve_to_stdout_and_backend_params(plain_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["solve", str(plain_file), "--k", "4", "-b", "tabu", "-p", "timeout=2", "--out", "-"]) == 0
    out, err = capsys.readouterr()
    assert "exact k=4" in err
    assert sum(json.loads(out)["sample"].values()) == 4


def test_solve_same_seed_same_output(plain_file: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        assert main(["solve", str(plain_file), "--k", "7", "--seed", "5", "--reads", "10", "--out", str(out)]) == 0
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    assert da["sample"] == db["sample"] and da["energy"] == db["energy"]


@pytest.mark.parametrize("case", ["missing", "corrupt", "k_too_big", "k_negative", "unknown_backend",
                                  "bad_param", "unknown_param", "bad_reads", "out_parent_is_file"])
def test_solve_bad_input(case: str, plain_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never.json"
    corrupt = tmp_path / "corrupt.coo"
    corrupt.write_text("this is not a QUBO\n1 2\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    args, match = {
        "missing": ([str(tmp_path / "missing.coo")], "does not exist"),
        "corrupt": ([str(corrupt)], "corrupt.coo"),
        "k_too_big": ([str(plain_file), "--k", "16"], "k=16 is out of range"),
        "k_negative": ([str(plain_file), "--k", "-1"], "k=-1 is out of range"),
        "unknown_backend": ([str(plain_file), "--backend", "nope"], "unknown backend 'nope'"),
        "bad_param": ([str(plain_file), "-p", "num_sweeps"], "is not KEY=VALUE"),
        "unknown_param": ([str(plain_file), "--k", "3", "-p", "num_sweepz=10"], "does not accept"),
        "bad_reads": ([str(plain_file), "--reads", "0"], "--reads must be >= 1"),
        "out_parent_is_file": ([str(plain_file), "--k", "3"], "is not a directory"),
    }[case]
    target = blocker / "x.json" if case == "out_parent_is_file" else out
    one_line_error(capsys, main(["solve", *args, "--out", str(target)]), match)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["plain.coo", "corrupt.coo", "blocker"])


def test_console_entry_point_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "qprune.cli", "solve", str(tmp_path / "nope.bqm")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"qprune: error: QUBO file {str(tmp_path / 'nope.bqm')!r} does not exist"]
    assert proc.stdout == ""


def test_solve_counts_past_int8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = qubo_io.export_bqm(random_formulation((100, 100, 100), seed=3).objective_bqm(), tmp_path / "big.npz")
    out = tmp_path / "big.json"
    assert main(["solve", str(path), "--k", "200", "-b", "greedy", "--reads", "5", "--out", str(out)]) == 0
    assert "200 ones" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["info"]["count"] == 200 == sum(data["sample"].values())
