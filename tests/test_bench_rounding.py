"""``benchmarks/rounding.py --quick`` runs end to end (slow: ``make test-slow``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_rounding_quick_measures_kernels_and_round_to_8_models(tmp_path: Path) -> None:
    stem = tmp_path / "r"
    run = subprocess.run([sys.executable, "benchmarks/rounding.py", "--quick", "--repeats", "2", "--rounds", "2", "--out", str(stem)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(stem.with_suffix(".json").read_text())
    assert {(r["layout"], r["channels"]) for r in res["kernels"]} == {
        (layout, c) for layout in ("nchw", "channels_last") for c in range(14, 19)}
    for r in res["kernels"]:
        assert r["ms"] > 0 and (r["vs_next_multiple_of_8"] is None) == (r["channels"] > 16)
    model = res["models"][0]
    rows = model["rows"]
    done = {(r["budget"], r["method"], r["round_to"], r["branch_units"]) for r in rows}
    skipped = {(u["budget"], u["method"], u["round_to"], u["branch_units"]) for u in model["unreachable"]}
    assert done | skipped == {(b, m, t, br) for b in (0.5, 0.7) for m in ("taylor-greedy", "hybrid-qubo")
                              for t in (1, 8) for br in (True, False)} and not done & skipped
    assert all(u["branch_units"] is False and "cannot be met" in u["reason"] for u in model["unreachable"])
    assert {(r["budget"], r["branch_units"]) for r in rows} >= {(0.5, True), (0.7, True), (0.7, False)}
    for r in rows:
        assert r["budget"] - 0.01 <= r["macs_kept"] <= r["budget"] + 1e-9 and r["latency_ms"] > 0
        assert r["vs_unpruned"] > 0 and len(r["latency_rounds_ms"]) == 2
        if r["round_to"] == 8:  # every layer keeps a multiple of 8 (or all its units)
            assert r["layers_multiple_of_8"] == len(r["kept_per_layer"])
    assert "| channels_last |" in stem.with_suffix(".md").read_text()


def test_rounding_refuses_a_bad_channel_range(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "benchmarks/rounding.py", "--channels", "9:3", "--out", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--channels" in run.stderr
    assert not list(tmp_path.iterdir())
