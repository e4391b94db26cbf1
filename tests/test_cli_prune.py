"""The pruning CLI: export -> solve -> apply round trip, prune/compare outputs, bad input."""

from __future__ import annotations

import json

import pytest

import qprune.problems as problems
from qprune.qubo import fileio as qubo_io
from qprune.cli import main
from qprune.pipeline.run import as_workload, finish
from qprune.model.space import build_space


def test_export_solve_apply_round_trip_matches_in_process(tmp_path, capsys):
    qfile, sfile, report = tmp_path / "q.json", tmp_path / "s.json", tmp_path / "r.json"
    assert main(["export", "--problem", "classify", "--sparsity", "0.3", "--method", "hybrid-qubo",
                 "--constrained", "-o", str(qfile), "-q"]) == 0
    assert main(["solve", str(qfile), "--backend", "neal", "--seed", "1", "--out", str(sfile)]) == 0
    assert main(["apply", "--problem", "classify", "--sample", str(sfile), "--report", str(report)]) == 0
    via_cli = json.loads(report.read_text())

    # in process, with the same sample
    problem, model = problems.load_pretrained("classify")
    work = as_workload(model, problem)
    space = build_space(model, problem.example_inputs(), **work.space_kwargs)
    mask = qubo_io.load_sample(sfile, space.labels).astype(bool)
    in_process = finish(model, space, mask, work, remove=False)
    assert via_cli["k"] == int(mask.sum()) == qubo_io.load_bqm(qfile).k
    assert via_cli["metrics_after"]["accuracy"] == pytest.approx(in_process.metrics_after["accuracy"], abs=1e-9)


def test_prune_writes_model_and_report(tmp_path):
    out, report = tmp_path / "pruned.pt", tmp_path / "report.md"
    assert main(["prune", "--problem", "classify", "--sparsity", "0.25", "--method", "taylor-greedy",
                 "-o", str(out), "--report", str(report), "-q"]) == 0
    text = report.read_text()
    assert "taylor-greedy" in text and "| accuracy |" in text and "## Per layer" in text
    import torch

    loaded = torch.jit.load(str(out))
    problem, _ = problems.load_pretrained("classify")
    assert loaded(problem.example_inputs()).shape[-1] == 10


def test_compare_writes_table_json_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--problem", "classify", "--sparsity", "0.2,0.4", "--methods",
                 "random,taylor-greedy,hybrid-qubo", "--out", str(out), "-q"]) == 0
    data = json.loads((out / "compare.json").read_text())
    ks = {(r["sparsity"], r["method"]): r["k"] for r in data["rows"]}
    assert len(ks) == 6
    assert ks[(0.2, "random")] == ks[(0.2, "taylor-greedy")] == ks[(0.2, "hybrid-qubo")]
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "compare.md").read_text()
    # one table row per (method, sparsity): sparsities are never averaged together
    assert sum(line.startswith("| full model | `hybrid-qubo` |") for line in table.splitlines()) == 2
    assert f"| `hybrid-qubo` | 0.4 | {ks[(0.4, 'hybrid-qubo')]} |" in table
    agg = {(a["method"], a["target"]): a for a in data["aggregate"]}
    assert agg[("taylor-greedy", 0.4)]["k"] == ks[(0.4, "taylor-greedy")]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["prune", "--problem", "classify", "--sparsity", "1.0"], "sparsity"),
        (["prune", "--problem", "classify", "--sparsity", "-0.2"], "sparsity"),
        (["prune", "--problem", "classify", "--sparsity", "0.3", "--method", "nope"], "unknown method"),
        (["prune", "--problem", "denoise", "--checkpoint", "CLASSIFY", "--sparsity", "0.3"], "not 'denoise'"),
        (["prune", "--checkpoint", "missing.pt", "--sparsity", "0.3"], "does not exist"),
        (["apply", "--problem", "classify", "--sample", "missing.json"], "missing.json"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, match):
    argv = [str(problems.pretrained_path("classify")) if a == "CLASSIFY" else a for a in argv]
    out = tmp_path / "o.pt"
    code = main(argv + ["-o", str(out)] if argv[0] == "prune" else argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("qprune: error:") and match in err
    assert not out.exists()
