"""``benchmarks/peers.py``: torch-pruning's criteria beside ours at equal k (quick mode is slow: ``make test-slow``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CRITERIA = ("tp-magnitude", "tp-taylor", "tp-hessian", "tp-lamp", "tp-fpgm")


@pytest.mark.slow
def test_peers_quick_prunes_exactly_k_in_every_row(tmp_path: Path) -> None:
    stem = tmp_path / "peers"
    run = subprocess.run(
        [sys.executable, "benchmarks/peers.py", "--quick", "--out", str(stem),
         "--weights", json.dumps({"alpha": 2.0, "lam": 0.5})],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(stem.with_suffix(".json").read_text())
    k, n = res["k"], res["N"]
    assert k == round(0.36 * n) and res["criteria"] == list(CRITERIA)
    methods = [r["method"] for r in res["rows"]]
    assert set(methods) == {"taylor-greedy", "hybrid-qubo", "hybrid-qubo (--weights)", *CRITERIA}
    assert len(methods) == len(set(methods))
    for r in res["rows"]:
        assert r["k"] == k, r["method"]
        assert sum(r["pruned_by_kind"].values()) == k
        assert 0 < r["params"] < res["unpruned"]["params"] and 0 < r["macs"] < res["unpruned"]["macs"]
        assert r["psnr"] > 0 and 0 < r["ssim"] <= 1
    # every unit is scored by exactly one scope; own-group scopes are the channel layers
    assert sum(s["units"] for s in res["scopes"]) == n
    assert {s["kind"] for s in res["scopes"]} == {"own group", "branch filters"}
    own = sum(s["units"] for s in res["scopes"] if s["kind"] == "own group")
    assert own == res["channel_units"] and res["k_c"] == round(0.36 * own)
    assert [c["method"] for c in res["metapruner"]] == list(CRITERIA)
    for c in res["metapruner"]:
        assert c["ours"]["k"] == res["k_c"]
        assert 0 < c["metapruner"]["units_removed"] == c["metapruner"]["k"]
        assert 0 < c["metapruner"]["params"] < res["unpruned"]["params"]
        if c["masks_differ"] == 0:  # the same units removed: the same network, two routes
            assert c["metapruner"]["params"] == c["ours"]["params"]
            assert c["metapruner"]["macs"] == c["ours"]["macs"]
            assert c["metapruner"]["psnr"] == pytest.approx(c["ours"]["psnr"], abs=1e-3)
    text = stem.with_suffix(".md").read_text()
    assert f"k = round(0.36 N) = **{k}**" in text and "MetaPruner" in text
    assert all(f"`{m}`" in text for m in methods)


def test_peers_refuses_an_unknown_criterion_and_writes_nothing(tmp_path: Path) -> None:
    stem = tmp_path / "never"
    run = subprocess.run([sys.executable, "benchmarks/peers.py", "--quick", "--criteria", "tp-bogus",
                          "--out", str(stem)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "'tp-bogus'" in run.stderr
    assert run.stderr.strip().count("\n") == 0  # one line
    assert list(tmp_path.iterdir()) == []
