"""``benchmarks/ablation.py --quick`` runs end to end (slow: ``make test-slow``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

ROOT = Path(__file__).resolve().parents[1]
ABLATION_ROWS = {"taylor", "taylor + fisher(weight)", "taylor + fisher(channel)", "taylor + fisher(both)",
                 "taylor + similarity", "taylor + l1 redundancy", "full hybrid", "full hybrid, gamma (units)"}
TERMS = {"hybrid_e0", "hybrid_e_gamma", "capacity_reward", "taylor", "channel_fisher", "weight_fisher",
         "activation_similarity", "l1_redundancy", "loss_model"}


@pytest.mark.slow
def test_ablation_quick_writes_exact_k_rows_and_the_proxy_study(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/ablation.py", "--quick", "--masks", "16", "--distances", "1,8",
         "--out-dir", str(tmp_path), "--out-name", "abl"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rep = json.loads((tmp_path / "abl.json").read_text())
    k, n = rep["k"], rep["units"]
    assert k == round(0.36 * n) and rep["quick"] is True
    names = {r["name"] for r in rep["rows"]}
    assert ABLATION_ROWS <= names
    penalty = [r for r in rep["rows"] if r["kind"] == "penalty"]
    assert len(penalty) == 1 and penalty[0]["lagrange_multiplier"] > 0 and penalty[0]["repair_flips"] >= 0
    assert penalty[0]["couplings"] >= n * (n - 1) // 2  # the equality penalty couples every pair
    for r in rep["rows"]:
        assert r["k"] == k, r["name"]
        assert 0.0 < r["ssim"] <= 1.0 and r["psnr"] > 0 and r["select_s"] >= 0
        assert isinstance(r["hybrid_e0"], float)
    proxy = rep["proxy"]
    assert proxy["masks"] == len(proxy["points"]) >= 16 and set(proxy["spearman"]) == TERMS
    assert {p["distance"] for p in proxy["points"]} == {0, 1, 8}
    assert all(-1.0 <= v["rho"] <= 1.0 for v in proxy["spearman"].values())
    assert set(proxy["spearman_by_base"]) == {"hybrid", "taylor", "fisher-qubo"}
    assert all(set(d) == TERMS and sum(v["n"] for v in d.values()) > 0 for d in proxy["spearman_by_base"].values())
    assert proxy["test_patches"] == 16  # --test-batches 1 of the bundled problem (batch 16)
    text = (tmp_path / "abl.md").read_text()
    assert "## Proxy vs truth" in text and "| full hybrid |" in text
    assert mpimg.imread(tmp_path / "abl.png").shape[2] in (3, 4)
