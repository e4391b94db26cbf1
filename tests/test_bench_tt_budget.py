"""``benchmarks/tt_budget.py`` on the shipped F = 64 model: a short run, then a longer one that resumes
from the first one's journal (slow: ``make test-slow``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/tt_budget.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=1500)


@pytest.mark.slow
def test_a_stopped_budget_run_resumes_from_its_journal(shared_data: Path, tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    common = ("--search-images", "8", "--search-crop", "64", "--journal", str(journal), "--out", str(tmp_path))
    first = _run("--budget", "12", *common)
    assert first.returncode == 0, first.stderr[-2000:]
    r1 = json.loads((tmp_path / "tt_budget.json").read_text())
    assert r1["evaluations"] == 12 and r1["complete"] and len(journal.read_text().splitlines()) == 13
    second = _run("--budget", "20", *common)
    assert second.returncode == 0, second.stderr[-2000:]
    r2 = json.loads((tmp_path / "tt_budget.json").read_text())
    assert r2["evaluations"] == 20 and "8 new evaluations (12 replayed from the journal)" in r2["timing"]
    assert [p["evaluations"] for p in r2["points"]] == [1, 20]
    seed = r2["points"][0]
    assert seed["val_gain"] == 0.0 and seed["swaps_from_seed"] == 0
    assert r2["points"][-1]["search"] >= seed["search"]
    assert (tmp_path / "tt_budget.png").stat().st_size > 0
    assert r2["search_crop"] == 64 and "8 validation images, their central 64x64 pixels" in (
        tmp_path / "tt_budget.md").read_text()
    bad = _run("--budget", "0", "--out", str(tmp_path / "never"))
    assert bad.returncode == 2 and "--budget must be positive, got 0" in bad.stderr
