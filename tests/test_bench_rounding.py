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
    rows = res["models"][0]["rows"]
    assert {(r["method"], r["round_to"]) for r in rows} == {(m, t) for m in ("taylor-greedy", "hybrid-qubo")
                                                           for t in (1, 8)}
    for r in rows:
        assert 0.49 <= r["macs_kept"] <= 0.5 + 1e-9 and r["latency_ms"] > 0 and r["vs_unpruned"] > 0
        assert len(r["latency_rounds_ms"]) == 2
        if r["round_to"] == 8:  # every layer keeps a multiple of 8 (or all its units)
            assert r["layers_multiple_of_8"] == len(r["kept_per_layer"])
    assert "| channels_last |" in stem.with_suffix(".md").read_text()


def test_rounding_refuses_a_bad_channel_range(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "benchmarks/rounding.py", "--channels", "9:3", "--out", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--channels" in run.stderr
    assert not list(tmp_path.iterdir())
