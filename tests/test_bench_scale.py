"""benchmarks/scale.py runs end to end in its quick mode and writes what it promises."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _scale():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import scale
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return scale


@pytest.mark.slow
def test_scale_quick(tmp_path: Path) -> None:
    scale = _scale()
    out = tmp_path / "scale"
    assert scale.main(["--quick", "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    rows = payload["rows"]
    assert sorted(r["model"] for r in rows) == sorted(scale.QUICK)
    for r in rows:
        assert set(r["stages_s"]) == set(scale.STAGES) and all(v >= 0 for v in r["stages_s"].values())
        assert r["total_s"] >= sum(r["stages_s"].values()) and r["torch_pruning"]["total_s"] > 0
        assert 0 < r["k"] < r["units"] and len(r["load_before"]) == 3
    assert set(payload["slopes"]) == {*scale.STAGES, "total", "torch_pruning"}
    comp = payload["gamma_comparison"][scale.QUICK[0]]
    assert comp["at_gamma_search_gamma"]["gamma_search"] == pytest.approx(comp["gamma_search"]["energy"])
    sparse = payload["sparsify"][scale.QUICK[0]]["rows"]
    assert [r["keep"] for r in sparse] == ["all", 4]
    assert 0 < sparse[1]["nnz_fraction"] < 1 and all(0 <= r["top1_agreement"] <= 1 for r in sparse)
    assert out.with_suffix(".png").stat().st_size > 0
    assert "Slope of log(time)" in out.with_suffix(".md").read_text()


def test_scale_rejects_bad_arguments() -> None:
    scale = _scale()
    with pytest.raises(SystemExit) as exc:
        scale.parse_args(["--threads", "0"])
    assert exc.value.code == 2
    args = scale.parse_args(["--quick", "--gamma-on", "none"])
    assert args.model_list == scale.QUICK and args.gamma_list == () and args.sparse_list == scale.QUICK[:1]


def test_scale_mask_packing_and_no_worse() -> None:
    scale = _scale()
    x = (np.random.default_rng(0).random(11_404) < 0.3).astype(np.int8)
    assert np.array_equal(scale._unpack(scale._pack(x), x.size), x)
    assert scale.no_worse(-1988.3010903017735, -1988.3010903017823)  # one state, two summation orders
    assert not scale.no_worse(-1988.301041, -1988.301090)  # the 4.9e-5 gap issue 18 had
    assert scale.no_worse(-2.0, -1.0)


def test_scale_gamma_reuse_checks_the_formulation(tmp_path: Path) -> None:
    scale = _scale()
    with pytest.raises(SystemExit) as exc:
        scale.parse_args(["--gamma-from", str(tmp_path / "missing.json")])
    assert exc.value.code == 2
    x = np.array([1, 0, 1, 1, 0], np.int8)
    old = {"default": {"gamma": 2.5}, "gamma_search": {"time_s": 9.0, "gamma": 3.0, "energy": -4.0,
                                                       "x_hex": scale._pack(x)},
           "at_default_gamma": {"gamma_search": -3.5}}
    res = SimpleNamespace(gamma=2.5, space=SimpleNamespace(N=5))
    g, gx = scale._gamma_search(res, None, old)
    assert g["time_s"] == 9.0 and g["at_default_gamma"] == -3.5 and np.array_equal(gx, x)
    with pytest.raises(SystemExit, match="another formulation"):
        scale._gamma_search(SimpleNamespace(gamma=2.6, space=res.space), None, old)
