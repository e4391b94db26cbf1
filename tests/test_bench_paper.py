"""``benchmarks/paper_tables.py --quick`` and its ``--tt-from`` mode end to end (slow: ``make test-slow``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TT = "hybrid-qubo+tt"


def _tables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/paper_tables.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_tt_rows_are_added_to_a_finished_table_and_a_second_run_resumes(tmp_path: Path) -> None:
    first = _tables("--quick", "--tune", "0", "--methods", "taylor-greedy,hybrid-qubo",
                    "--out-dir", str(tmp_path), "--out-name", "pt")
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.loads((tmp_path / "pt.json").read_text())
    assert before["complete"] and not [r for r in before["rows"] if r["method"] == TT]

    journals = str(tmp_path / "journals")
    added = _tables("--quick", "--tt-from", str(tmp_path / "pt.json"), "--tt-settings", "4", "--tt-budget", "4",
                    "--tt-journal", journals, "--out-dir", str(tmp_path), "--out-name", "pt")
    assert added.returncode == 0, added.stderr[-2000:]
    after = json.loads((tmp_path / "pt.json").read_text())
    tt_rows = [r for r in after["rows"] if r["method"] == TT]
    assert [(r["setting"], r["seed"]) for r in tt_rows] == [("4", 0)]
    k4 = next(m["k"] for m in after["settings"] if m["setting"] == "4")
    assert tt_rows[0]["k"] == k4
    # every row of the first run is still there, unchanged; the first run's record stays its own
    assert after["rows"][: len(before["rows"])] == before["rows"]
    assert after["argv"] == before["argv"] and after["machine"] == before["machine"]
    assert after["tt_run"]["wall_s"] > 0 and after["tt_argv"][:1] == ["--quick"]
    assert any(p["a"] == TT and p["setting"] == "4" for p in after["paired"])
    md = (tmp_path / "pt.md").read_text()
    assert f"| `{TT}` |" in md and "a later run" in md

    assert next(m for m in after["settings"] if m["setting"] == "4")["tt"][TT]["made"] == {
        "budget": 4, "precision": "float32", "images": None}
    assert len(list((tmp_path / "journals").glob("tt-*.journal"))) == 1

    again = _tables("--quick", "--tt-from", str(tmp_path / "pt.json"), "--tt-settings", "4", "--tt-budget", "4",
                    "--tt-journal", journals, "--out-dir", str(tmp_path), "--out-name", "pt")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already holds" in again.stderr + again.stdout
    assert json.loads((tmp_path / "pt.json").read_text())["rows"] == after["rows"]

    # rows made with another budget or scorer are made again
    faster = _tables("--quick", "--tt-from", str(tmp_path / "pt.json"), "--tt-settings", "4", "--tt-budget", "6",
                     "--tt-precision", "bfloat16", "--tt-images", "8", "--tt-journal", journals,
                     "--out-dir", str(tmp_path), "--out-name", "pt")
    assert faster.returncode == 0, faster.stderr[-2000:]
    redone = json.loads((tmp_path / "pt.json").read_text())
    assert next(m for m in redone["settings"] if m["setting"] == "4")["tt"][TT]["made"] == {
        "budget": 6, "precision": "bfloat16", "images": 8}
    assert [(r["setting"], r["seed"]) for r in redone["rows"] if r["method"] == TT] == [("4", 0)]
    assert "bfloat16 on 8 of the validation images" in (tmp_path / "pt.md").read_text()

    # a recorded hybrid-qubo mask that today's code no longer solves to: the re-run's row replaces it, so the
    # TT row refines the mask its paired row reports; and a crop of the images is a scorer of its own
    moved = dict(redone, rows=[dict(r, mask_sha1="000000000000") if (r["setting"], r["method"]) == ("4", "hybrid-qubo")
                               else r for r in redone["rows"]])
    (tmp_path / "pt.json").write_text(json.dumps(moved))
    cropped = _tables("--quick", "--tt-from", str(tmp_path / "pt.json"), "--tt-settings", "4", "--tt-budget", "6",
                      "--tt-precision", "bfloat16", "--tt-images", "8", "--tt-crop", "32", "--tt-journal", journals,
                      "--out-dir", str(tmp_path), "--out-name", "pt")
    assert cropped.returncode == 0, cropped.stderr[-2000:]
    last = json.loads((tmp_path / "pt.json").read_text())
    meta4 = next(m for m in last["settings"] if m["setting"] == "4")
    assert meta4["tt"][TT]["made"] == {"budget": 6, "precision": "bfloat16", "images": 8, "crop": 32}
    hybrid = next(r for r in last["rows"] if (r["setting"], r["method"]) == ("4", "hybrid-qubo"))
    assert meta4["tt"][TT]["base_rerun"] == [{"seed": 0, "recorded": "000000000000", "now": hybrid["mask_sha1"],
                                      "psnr_recorded": hybrid["psnr"], "psnr_now": hybrid["psnr"]}]
    assert hybrid["mask_sha1"] != "000000000000"
    md = (tmp_path / "pt.md").read_text()
    assert "(their central 32x32 pixels)" in md and "except the hybrid-qubo rows of setting 4 (seeds 0)" in md
    assert last["complete"] and last["tt_pending"] == {}
    # a setting run beside this one (another --tt-from run of the same file) is taken from its results, not run
    (tmp_path / "src.json").write_text(json.dumps(before))
    taken = _tables("--quick", "--tt-from", str(tmp_path / "src.json"), "--tt-settings", "4", "--tt-budget", "6",
                    "--tt-precision", "bfloat16", "--tt-images", "8", "--tt-crop", "32",
                    "--tt-journal", str(tmp_path / "none"), "--tt-take", str(tmp_path / "pt.json"),
                    "--out-dir", str(tmp_path), "--out-name", "merged")
    assert taken.returncode == 0, taken.stderr[-2000:]
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert [r for r in merged["rows"] if r["setting"] == "4"] == [r for r in last["rows"] if r["setting"] == "4"]
    assert next(m for m in merged["settings"] if m["setting"] == "4") == dict(
        meta4, tt={TT: dict(meta4["tt"][TT], taken_from="pt.json")})
    assert not (tmp_path / "none").exists()  # nothing was scored
    assert "by the run that wrote `pt.json`" in (tmp_path / "merged.md").read_text()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import paper_tables
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # a --tt-from run between settings: the table is whole, and it says which TT rows are the earlier run's
    # and which settings have none yet
    pending = paper_tables.render_markdown(dict(last, tt_pending={TT: ["4", "8", "16"]}))
    assert f"the `{TT}` rows of setting(s) 4 are still the earlier run's" in pending
    assert f"setting(s) 8, 16 have no `{TT}` rows yet; the same `--tt-from` run makes them" in pending

    # the fisher-qubo+tt rows go beside them: fisher-qubo solved per seed (the table had no row of it), then
    # refined; the hybrid rows and their record stay as they were
    fisher = _tables("--quick", "--tt-from", str(tmp_path / "pt.json"), "--tt-base", "fisher-qubo",
                     "--tt-settings", "4", "--tt-budget", "4", "--tt-journal", journals,
                     "--out-dir", str(tmp_path), "--out-name", "pt")
    assert fisher.returncode == 0, fisher.stderr[-2000:]
    both = json.loads((tmp_path / "pt.json").read_text())
    assert [r for r in both["rows"] if not r["method"].startswith("fisher")] == last["rows"]
    assert {(r["setting"], r["method"], r["seed"]) for r in both["rows"] if r["method"].startswith("fisher")} == {
        ("4", "fisher-qubo", 0), ("4", "fisher-qubo+tt", 0)}
    meta4b = next(m for m in both["settings"] if m["setting"] == "4")
    assert meta4b["tt"][TT] == meta4["tt"][TT]
    assert meta4b["tt"]["fisher-qubo+tt"]["made"] == {"budget": 4, "precision": "float32", "images": None}
    assert [c["recorded"] for c in meta4b["tt"]["fisher-qubo+tt"]["base_rerun"]] == [None]
    assert both["methods"][-1] == "fisher-qubo+tt"
    assert {(p["a"], p["b"]) for p in both["paired"] if p["setting"] == "4"} >= {
        (TT, "hybrid-qubo"), ("fisher-qubo+tt", "fisher-qubo"), ("fisher-qubo", "hybrid-qubo")}
    md = (tmp_path / "pt.md").read_text()
    assert "| `fisher-qubo+tt` |" in md and "`fisher-qubo+tt`: 4 TT evaluations per run" in md
    assert "It added the fisher-qubo rows of setting 4 (seeds 0): the first run had none." in md


def test_tt_from_refuses_a_file_that_is_not_a_results_table(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    run = _tables("--tt-from", str(bad), "--out-dir", str(tmp_path))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"paper_tables: --tt-from {bad}")
    assert not list(tmp_path.glob("paper_tables*"))


def test_tt_take_needs_tt_from(tmp_path: Path) -> None:
    run = _tables("--tt-take", str(tmp_path / "other.json"), "--out-dir", str(tmp_path))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == ("paper_tables: --tt-take goes with --tt-from "
                                                   "(it takes TT rows made from the same file)")
    assert not list(tmp_path.glob("paper_tables*"))
