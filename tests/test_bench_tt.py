"""``benchmarks/tt_refine.py --quick`` runs end to end (slow: ``make test-slow``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tt_refine_quick_on_the_shipped_checkpoint(tmp_path: Path) -> None:
    ckpt = ROOT / "problems" / "checkpoints" / "denoise_bundled_f16.pt"
    run = subprocess.run(
        [sys.executable, "benchmarks/tt_refine.py", "--quick", "--checkpoint", str(ckpt),
         "--out", str(tmp_path), "--out-name", "tt"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "tt.json").read_text())
    assert report["scores_equal"] is True
    for label in ("subproblem", "chunked"):
        sp = report["speed"][label]
        assert sp["masks"] == 60 and sp["max_abs_diff_db"] <= 1e-4
        assert sp["tree_stats"]["evaluated"] == 60 and sp["plain_stats"]["evaluated"] == 60
        assert sp["tree_stats"]["images_per_pass"] and sp["prepare_s"]["tree"] > 0
    for section, refined in (("subproblem", "tt_refined"), ("full", "tt_chunked")):
        s = report[section]
        assert s["refine"]["value"] >= s["refine"]["seed_value"]  # never worse than the seed
        assert set(s["test"]) == {"unpruned", "qubo_seed", refined}
    text = (tmp_path / "tt.md").read_text()
    assert "Scoring speed" in text and "Masks scored on: cpu" in text


def test_make_bench_tt_passes_the_scoring_device() -> None:
    import torch

    dry = subprocess.run(["make", "-n", "bench-tt", "TT_DEVICE=auto"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    line = next(ln for ln in dry.splitlines() if "benchmarks/tt_refine.py" in ln)
    assert line.split()[-2:] == ["--device", "auto"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tt_refine
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert tt_refine.scoring_device("auto").type == want
    assert tt_refine.scoring_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            tt_refine.scoring_device("cuda")
    with pytest.raises(ValueError, match="'tpu0'"):
        tt_refine.scoring_device("tpu0")
    bad = subprocess.run([sys.executable, "benchmarks/tt_refine.py", "--device", "tpu0", "--out",
                          str(ROOT / "never-written")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--device 'tpu0'" in bad.stderr
    assert not (ROOT / "never-written").exists()
