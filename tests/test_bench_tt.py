"""``benchmarks/tt_refine.py --quick`` runs end to end (slow: ``make test-slow``)."""

from __future__ import annotations

import json
import os
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
        assert set(sp["stats"]) == {"gated", "cut", "tree"}
        for key, st in sp["stats"].items():
            assert st["evaluated"] == 60 and st["images_per_pass"] and sp["prepare_s"][key] > 0
        assert sp["stats"]["gated"]["physical"] is False and sp["stats"]["tree"]["physical"] is True
    for section, refined in (("subproblem", "tt_refined"), ("full", "tt_chunked")):
        s = report[section]
        assert s["refine"]["value"] >= s["refine"]["seed_value"]  # never worse than the seed
        assert set(s["test"]) == {"unpruned", "qubo_seed", refined}
        c = sp["ceiling"]
        assert c["gemm_gflops"] > 0 and 0 < c["macs_kept_per_image"] < c["macs_per_image"]
        assert c["ceiling_every_proposal"] >= c["ceiling"] > 0
    text = (tmp_path / "tt.md").read_text()
    assert "Scoring speed" in text and "Masks scored on: cpu" in text
    assert "The 10x goal on this machine" in text


def _tt_refine_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tt_refine
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return tt_refine


def test_ceiling_is_naive_time_over_the_least_time_exact_fp32_could_take() -> None:
    ceiling = _tt_refine_module().ceiling
    # 10 masks in 20 s: 2 s per mask; 4 images of 1 GMAC, 0.5 GMAC left after removal, tree work
    # 0.5: 2 * 0.5e9 * 4 * 0.5 = 2e9 FLOP per mask, at 100 GFLOP/s 0.02 s -> x100
    sp = {"wall_s": {"naive": 20.0}, "masks": 10, "stats": {"tree": {"work_vs_naive": 0.5}},
          "proposals_per_distinct": 1.5}
    c = ceiling(sp, images=4, macs=10**9, macs_kept=5 * 10**8, peak=100.0)
    assert c["ceiling"] == pytest.approx(100.0) and c["ceiling_every_proposal"] == pytest.approx(150.0)
    assert c["naive_gflops"] == pytest.approx(4.0) and c["naive_share_of_gemm"] == pytest.approx(0.04)


def test_make_bench_tt_passes_the_scoring_device() -> None:
    import torch

    for target, script in (("bench-tt", "tt_scorer.py"), ("bench-tt-refine", "tt_refine.py")):
        dry = subprocess.run(["make", "-n", target, "TT_DEVICE=auto"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        line = next(ln for ln in dry.splitlines() if f"benchmarks/{script}" in ln)
        assert line.split()[-2:] == ["--device", "auto"]
    tt_refine = _tt_refine_module()
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


def test_tt_refine_rejects_a_data_folder_that_is_not_there(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "benchmarks/tt_refine.py", "--data", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "never")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--data" in bad.stderr and "nope" in bad.stderr
    assert not (tmp_path / "never").exists()
    crop = subprocess.run([sys.executable, "benchmarks/tt_scorer.py", "--quick", "--crops", "8@4096",
                           "--out", str(tmp_path / "never")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert crop.returncode == 2 and "--crops '8@4096': the validation split has 64 images of" in crop.stderr
    assert not (tmp_path / "never").exists()


def test_gpu_bundle_and_runner_refuse_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    for args, named in ((["--checkpoint", str(tmp_path / "missing.pt")], "missing.pt"),
                        (["--python", "three"], "'three'")):
        run = subprocess.run([sys.executable, "benchmarks/gpu_bundle.py", "--out", str(out), *args],
                             cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 2 and named in run.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-made
    usage = subprocess.run(["bash", "benchmarks/gpu_tt.sh", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    (out / "wheels").mkdir(parents=True)
    empty = subprocess.run(["bash", "benchmarks/gpu_tt.sh", str(out), str(tmp_path / "res")], cwd=ROOT,
                           capture_output=True, text=True)
    assert empty.returncode == 2 and "holds no wheels" in empty.stderr and "make gpu-bundle" in empty.stderr
    assert not (tmp_path / "res").exists()
    dry = subprocess.run(["make", "-n", "gpu-bundle", "GPU_PY=3.13"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "benchmarks/gpu_bundle.py --out .gpu --python 3.13" in dry


@pytest.mark.slow
def test_a_bundle_runs_the_tt_benchmark_from_its_own_wheel(tmp_path: Path) -> None:
    """What a GPU machine does with the bundle, on the CPU: qprune comes from the bundle's wheel."""
    ckpt = ROOT / "problems" / "checkpoints" / "denoise_bundled_f16.pt"
    bundle = tmp_path / "gpu"
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    made = subprocess.run([sys.executable, "benchmarks/gpu_bundle.py", "--out", str(bundle), "--python", ver,
                           "--checkpoint", str(ckpt), "--only-qprune"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert [w.split("-")[0] for w in manifest["wheels"]] == ["qprune"] and manifest["data"] is None
    assert (bundle / "checkpoint.pt").read_bytes() == ckpt.read_bytes()
    assert not (tmp_path / "gpu.partial").exists()
    res = tmp_path / "res"
    run = subprocess.run(["bash", "benchmarks/gpu_tt.sh", str(bundle), str(res), "--quick", "--out-name", "tt",
                          "--threads", "1", "--masks", "8", "--old-masks", "2", "--images", "8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu"})
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((res / "tt.json").read_text())
    assert report["device"] == "cpu" and report["masks"] == 8
    assert not report["qprune_from"].startswith(str(ROOT))  # the wheel, not this checkout
    assert report["checkpoint"] == str(bundle / "checkpoint.pt")
    assert report["threads"] == 1  # options after OUTDIR reach tt_scorer.py


def test_speed_masks_come_from_groups_spread_over_the_run() -> None:
    import numpy as np

    pick = _tt_refine_module().pick_groups
    groups = [np.full((10, 3), i, dtype=np.int8) for i in range(6)]  # six stages of 10 masks
    got = pick(groups, 30)
    assert sum(len(g) for g in got) == 30
    assert [int(g[0, 0]) for g in got] == [0, 2, 5]  # first, middle and last stage
    assert all(len(g) == 10 for g in got)  # whole groups
    assert len(pick(groups, 60)) == 6 and len(pick(groups, None)) == 6 and len(pick(groups, 1000)) == 6
    cut = pick(groups, 25)  # an equal share of each picked group
    assert [len(g) for g in cut] == [8, 8, 9] and [int(g[0, 0]) for g in cut] == [0, 2, 5]
    uneven = [np.full((n, 3), i, dtype=np.int8) for i, n in enumerate((40, 10, 10, 40))]
    assert [len(g) for g in pick(uneven, 50)] == [25, 25]  # the first and the last group
    shrinking = [np.full((n, 3), i, dtype=np.int8) for i, n in enumerate((60, 30, 10, 5, 5))]
    got = pick(shrinking, 60)  # small late groups give what they have, the others make up the rest
    assert sum(len(g) for g in got) == 60 and [int(g[0, 0]) for g in got] == [0, 2, 4]
    assert [len(g) for g in got] == [45, 10, 5]


def test_tt_scorer_quick_compares_old_and_new_scorers_on_the_same_masks(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "benchmarks/tt_scorer.py", "--quick", "--masks", "10", "--old-masks", "3",
                          "--images", "16,8", "--crops", "32@32", "--f32-crops", "32@32", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads((tmp_path / "tt_scorer.json").read_text())
    rows = {x["name"]: x for x in r["rows"]}
    assert list(rows) == ["old", "exact", "bf16", "bf16-16", "bf16-8", "bf16-32@32", "f32-32@32", "bf16, no tree"]
    assert rows["bf16-32@32"]["crop"] == 32 and rows["bf16-32@32"]["images"] == 32
    assert rows["f32-32@32"]["precision"] == "float32" and rows["f32-32@32"]["crop"] == 32
    # float32 on the same pixels: only the crop moves its scores, not rounding
    assert rows["f32-32@32"]["scores"] != pytest.approx(rows["bf16-32@32"]["scores"], abs=1e-6)
    assert r["masks"] == 10 and rows["old"]["masks"] == 3 and rows["exact"]["masks"] == 10
    # the old scorer reads the metric another way, not another value: its scores are the exact ones
    assert rows["old"]["scores"] == pytest.approx(rows["exact"]["scores"][:3], abs=1e-4)
    assert rows["exact"]["rho"] == pytest.approx(1.0) and rows["exact"]["max_abs_diff_db"] == 0.0
    assert rows["bf16"]["max_abs_diff_db"] > 0.0 and rows["bf16-8"]["images"] == 8
    assert all(x["s_per_eval"] > 0 for x in rows.values())
    md = (tmp_path / "tt_scorer.md").read_text()
    assert f"| old | float32 | 64 | {r['patch']}x{r['patch']} | yes |" in md and "**Goal: x10 per evaluation" in md
    assert "| bf16-32@32 | bfloat16 | 32 | 32x32 | yes |" in md and "| f32-32@32 | float32 | 32 | 32x32 | yes |" in md
    assert "* CPU: " in md and ("native (AVX512-BF16 or AMX)" in md) is r["machine"]["native_bfloat16"]
    bad = subprocess.run([sys.executable, "benchmarks/tt_scorer.py", "--quick", "--images", "65",
                          "--out", str(tmp_path / "never")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--images 65: the validation split has 64 images" in bad.stderr
    assert not (tmp_path / "never").exists()


def _make_old_tree(dest: Path) -> str:
    """The tree make bench-tt builds for its old row: TT_OLD_REF unpacked, its mapped packages linked."""
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "bench-tt"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    ref = next(ln for ln in dry.splitlines() if "git archive" in ln).split("git archive ")[1].split()[0]
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"this checkout has no commit {ref} (a shallow clone): {archive.stderr.decode()[-200:]}")
    dest.mkdir()
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    for pkg in ("backends", "problems"):
        (dest / "qprune" / pkg).symlink_to(Path("..") / pkg)
    return ref


@pytest.mark.slow
def test_tt_scorer_old_row_is_the_earlier_commits_scorer(tmp_path: Path) -> None:
    ref = _make_old_tree(tmp_path / "old")
    run = subprocess.run([sys.executable, "benchmarks/tt_scorer.py", "--quick", "--masks", "8", "--old-masks", "4",
                          "--images", "16", "--crops", "", "--f32-crops", "", "--old-code", str(tmp_path / "old"),
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads((tmp_path / "tt_scorer.json").read_text())
    rows = {x["name"]: x for x in r["rows"]}
    assert rows["old"]["code"] == str((tmp_path / "old" / "qprune").resolve()) and r["old_code"] == str(tmp_path / "old")
    # the same masks, the same metric value: the earlier scorer differs in speed, not in what it computes
    assert rows["old"]["scores"] == pytest.approx(rows["exact"]["scores"][:4], abs=1e-3)
    assert f"run from the earlier source tree `{tmp_path / 'old'}`" in (tmp_path / "tt_scorer.md").read_text()
    assert len(ref) >= 7
    bad = subprocess.run([sys.executable, "benchmarks/tt_scorer.py", "--quick", "--old-code", str(tmp_path),
                          "--out", str(tmp_path / "never")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and f"--old-code {tmp_path}: not a qprune source tree" in bad.stderr
    assert not (tmp_path / "never").exists()
