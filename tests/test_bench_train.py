"""benchmarks/train_speed.py runs end to end in its quick mode and writes what it promises."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_speed_quick(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_speed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "ts"
    assert train_speed.main(["--quick", "--width", "8", "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    assert [r["setting"] for r in payload["speed"]] == list(train_speed.SETTINGS)
    assert all(r["median_step_s"] > 0 and r["steps"] == 2 for r in payload["speed"])
    q = payload["quality"]
    assert q["difference_db"] == pytest.approx(q["bf16"]["val_psnr"] - q["fp32"]["val_psnr"])
    assert "vs NCHW fp32" in out.with_suffix(".md").read_text()


def test_train_speed_rejects_bad_counts() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_speed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    with pytest.raises(SystemExit) as exc:
        train_speed.parse_args(["--steps", "0"])
    assert exc.value.code == 2
