"""How fast the TT refinement scores a mask, old scorer against new (``make bench-tt``; not a test).

One run, one model (the shipped F = 64 SIDD denoiser), the paper's 16-layer sub-problem (the first
16 prunable layers, k = 480/1024 of their units). The masks are the ones a real TT search asks for:
a TT run from the taylor-greedy mask, scored with the fast scorer, records the distinct masks it
evaluates (``--masks``, at least 200). Those masks are then scored again, from a cold start, by each
scorer of :data:`SCORERS`, one after the other:

* ``old``: what the TT ran before: with ``--old-code DIR`` (``make bench-tt`` unpacks the commit
  ``TT_OLD_REF`` there), that version's own scorer and defaults, run by ``old_scorer.py`` in a
  subprocess on the same masks; without it, this tree's :class:`qprune.refine.MaskScorer` in
  float32 on the whole validation split with the metric read from ``problem.metrics()`` (PSNR and
  SSIM computed, SSIM dropped), which already has this version's exact speed-ups. Timed on the
  first ``--old-masks`` masks (its scores equal ``exact``'s up to float rounding).
* ``exact``: float32, the whole split, PSNR alone: the reference every other scorer's ranking is
  compared with (Spearman's rho over all the masks, and over the masks within ``NEAR`` swaps of
  the seed, where the TT spends most of its budget).
* ``bf16``: the same under bfloat16 autocast, with the prefix tree and without (is the tree still
  worth its code?); ``bf16-N``: bfloat16 on ``N`` validation images spread over the split
  (:func:`qprune.refine.search_subset`); ``bf16-N@C``: the central ``C x C`` pixels of ``N`` images
  (``--crops``): the same pixel count from more photos.

The goal: a scorer at least ``GOAL`` x faster per evaluation than ``old`` whose ranking keeps
rho >= ``RHO_GOAL``. Output: ``benchmarks/results/tt_scorer.{json,md}`` (``--out-name``).
``--quick``: the small shipped model and a few masks (a pipeline check).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

import qprune
from qprune.atomic import atomic_open, write_json
from qprune.pipeline.report import machine_info
from qprune.pipeline.run import prepare, select_mask
from qprune.refine import MaskScorer, refine, search_subset
from qprune.solve.constraint import ExactK

# helper module beside this script (benchmarks/)
from common import (BRANCHES, QUICK_CKPT, RESULTS, ROOT, SIDD_CKPT, SIDD_DATA, load_checkpoint, load_sidd, logger,
                    scoring_device)
from scorer_timing import timed_scores

GOAL = 10.0
RHO_GOAL = 0.99
NEAR = 4  # swaps from the seed: the masks the TT mostly proposes
LAYERS, COUNT, FILTERS = 16, 480, 1024  # the paper's 16-layer setting: 480 of 16 x 64 filters

log = logger("tt_scorer", clock=True)


def scorers(images: list[int], crops: list[tuple[int, int]],
            f32_crops: list[tuple[int, int]] = ()) -> list[dict[str, Any]]:
    """The scorers compared: name, precision, validation images (None: all), central crop (None:
    whole images), prefix tree, metric."""
    out = [dict(name="old", precision="float32", images=None, crop=None, prefix=True, metric="metrics"),
           dict(name="exact", precision="float32", images=None, crop=None, prefix=True, metric="metric"),
           dict(name="bf16", precision="bfloat16", images=None, crop=None, prefix=True, metric="metric")]
    for n in images:
        out.append(dict(name=f"bf16-{n}", precision="bfloat16", images=n, crop=None, prefix=True, metric="metric"))
    for n, c in crops:
        out.append(dict(name=f"bf16-{n}@{c}", precision="bfloat16", images=n, crop=c, prefix=True, metric="metric"))
    for n, c in f32_crops:  # where bfloat16 is emulated (no AMX / AVX512-BF16), crops alone may be the faster way
        out.append(dict(name=f"f32-{n}@{c}", precision="float32", images=n, crop=c, prefix=True, metric="metric"))
    out.append(dict(name="bf16, no tree", precision="bfloat16", images=None, crop=None, prefix=False,
                    metric="metric"))
    return out


class Recorder:
    """An objective that keeps every mask it is asked to score (in order)."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.masks = fn, []

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.masks.extend(np.asarray(X, dtype=np.int8))
        return self.fn(X)


def tt_masks(prep: Any, k: int, val: list, metric: Any, count: int, images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed (taylor-greedy) and the first ``count`` distinct masks a TT search evaluates."""
    x0, _ = select_mask(prep, "taylor-greedy", k)
    fast = MaskScorer(prep.model, prep.space, search_subset(val, images), metric, progress=False,
                      precision="bfloat16")
    rec = Recorder(fast)
    refine(x0, rec, k, budget=count, seed=seed, progress=True,
           constraint=ExactK.for_space(prep.space, k))
    return np.asarray(x0, dtype=np.int8), np.stack(rec.masks)


def run_scorer(spec: dict[str, Any], prep: Any, problem: Any, val: list, M: np.ndarray) -> dict[str, Any]:
    """Score ``M`` with a fresh scorer of ``spec``: its scores, seconds per mask, set-up seconds."""
    whole = spec["images"] is None and spec["crop"] is None
    batches = val if whole else search_subset(val, spec["images"], spec["crop"])
    if spec["metric"] == "metrics":
        def metric(out: Any, target: Any) -> float:
            return problem.metrics(out, target)[problem.primary_metric]
    else:
        metric = problem.metric
    sc = MaskScorer(prep.model, prep.space, batches, metric, progress=False, precision=spec["precision"],
                    prefix=spec["prefix"])
    scores, setup, seconds = timed_scores(sc, M)
    st = sc.stats()
    return {**spec, "masks": int(len(M)), "s_per_eval": seconds / len(M), "setup_s": setup,
            "scores": scores.tolist(), "channels_last": st.get("channels_last"),
            "images_per_pass": st.get("images_per_pass"), "work_vs_naive": st.get("work_vs_naive")}


def run_old_code(code: Path, spec: dict[str, Any], prep: Any, M: np.ndarray, ckpt: Path, data: str | None,
                 threads: int, device: torch.device) -> dict[str, Any]:
    """Score ``M`` with the qprune source tree ``code`` (``old_scorer.py`` in a subprocess)."""
    with tempfile.TemporaryDirectory() as tmp:
        masks, out = Path(tmp) / "masks.npz", Path(tmp) / "old.json"
        np.savez(masks, masks=M, labels=np.asarray(list(prep.space.labels)))
        cmd = [sys.executable, str(Path(__file__).with_name("old_scorer.py")), "--masks", str(masks),
               "--checkpoint", str(ckpt), "--layers", str(LAYERS), "--branches", str(BRANCHES),
               "--threads", str(threads), "--device", str(device), "--out", str(out)]
        env = dict(os.environ, PYTHONPATH=str(code.resolve()))
        run = subprocess.run(cmd + (["--data", data] if data else []), env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"tt_scorer: the old scorer in {code} failed:\n{run.stderr[-3000:]}")
        got = json.loads(out.read_text())
    return {**spec, "masks": int(len(M)), "s_per_eval": got["seconds"] / len(M), "setup_s": got["setup_s"],
            "scores": got["scores"], "code": got["qprune"]}


def ranks(rows: list[dict[str, Any]], near: np.ndarray) -> None:
    """Spearman's rho of every row's scores with the exact ones (all masks, and the near ones)."""
    ref = np.asarray(next(r for r in rows if r["name"] == "exact")["scores"])
    for r in rows:
        s = np.asarray(r["scores"])
        m = len(s)
        r["rho"] = float(spearmanr(ref[:m], s).correlation)
        r["rho_near"] = float(spearmanr(ref[:m][near[:m]], s[near[:m]]).correlation)
        r["max_abs_diff_db"] = float(np.max(np.abs(ref[:m] - s)))


def markdown(r: dict[str, Any]) -> str:
    old = next(x for x in r["rows"] if x["name"] == "old")["s_per_eval"]
    lines = [
        "# TT mask scoring: old scorer vs new (`make bench-tt`)", "",
        f"Model `{r['checkpoint']}`; the paper's 16-layer sub-problem: {r['units']} units in {r['layers']} layers, "
        f"k = {r['k']}. Masks: the {r['masks']} distinct masks a TT search (seed: taylor-greedy, TT seed {r['seed']}) "
        f"evaluated, {r['near']} of them within {NEAR} swaps of the seed. Validation split: {r['val_images']} "
        f"images of {r['patch']}x{r['patch']}. Scored on {r['device']}; torch {r['machine'].get('torch')}, {r['threads']} thread(s); load "
        f"average {r['load_start']} at the start, {r['load_end']} at the end. Wall time {r['wall_s']:.0f} s.", "",
        "| scorer | precision | images | pixels | prefix tree | s / evaluation | speed-up vs old | Spearman rho (all) "
        "| rho (near seed) | largest |diff| dB | masks timed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['name']} | {x['precision']} | {x['images'] or r['val_images']} "
            f"| {'x'.join([str(x.get('crop') or r['patch'])] * 2)} | {'yes' if x['prefix'] else 'no'} "
            f"| {x['s_per_eval']:.3f} | x{old / x['s_per_eval']:.2f} | {x['rho']:.4f} | {x['rho_near']:.4f} "
            f"| {x['max_abs_diff_db']:.4f} | {x['masks']} |")
    best = r["verdict"]
    lines += ["", f"**Goal: x{GOAL:.0f} per evaluation with rho >= {RHO_GOAL} (all masks). " + best + "**", "",
              (f"* `old` is the scorer the TT ran before, run from the earlier source tree `{r['old_code']}` (its "
               "code and defaults: float32, the whole split, its metric computing PSNR and SSIM) in a subprocess; "
               if r.get("old_code") else
               "* `old` is this tree's scorer with the TT's former settings (float32, the whole split, the metric "
               "read through `problem.metrics()`: PSNR and SSIM computed, SSIM thrown away), so it already has this "
               "version's exact speed-ups; ")
              + "every other row computes PSNR alone (`problem.metric`). `old` is timed on the first "
              f"{r['old_masks']} masks; its scores equal `exact`'s up to float rounding.",
              "* `near seed`: masks within 4 swaps of the seed, where the TT spends most of its budget and the "
              "score differences are smallest.",
              "* A search on a reduced scorer keeps its winner only if it beats the seed when both are scored "
              "again in float32 on the whole split (`refine_mask` does this)."]
    if "native_bfloat16" in r["machine"]:  # files written before the machine record had it
        lines.append(f"* CPU: {r['machine']['cpu_capability']} kernels, bfloat16 "
                     + ("native (AVX512-BF16 or AMX)." if r["machine"]["native_bfloat16"] else
                        "emulated (neither AVX512-BF16 nor AMX): the bfloat16 rows run slower than they would "
                        "on a CPU that has it, and can be slower than float32."))
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict[str, Any]]) -> tuple[str, str | None]:
    old = next(x for x in rows if x["name"] == "old")["s_per_eval"]
    ok = [x for x in rows if x["rho"] >= RHO_GOAL and old / x["s_per_eval"] >= GOAL]
    if ok:
        best = min(ok, key=lambda x: x["s_per_eval"])
        return (f"Met by `{best['name']}`: x{old / best['s_per_eval']:.1f}, rho {best['rho']:.4f}.", best["name"])
    fast = [x for x in rows if x["rho"] >= RHO_GOAL]
    best = min(fast, key=lambda x: x["s_per_eval"]) if fast else None
    if best is None:
        return "Not met: no reduced scorer kept rho >= 0.99.", None
    return (f"Not met: the fastest scorer that keeps rho >= {RHO_GOAL} is `{best['name']}` at "
            f"x{old / best['s_per_eval']:.2f} (rho {best['rho']:.4f}).", best["name"])


def crop_pairs(ap: argparse.ArgumentParser, flag: str, text: str) -> list[tuple[int, int]]:
    """``"40@80,36@80"`` as ``[(40, 80), (36, 80)]``; a usage error naming ``flag`` otherwise."""
    try:
        return [(int(n), int(c)) for n, c in (s.split("@") for s in text.split(",") if s.strip())]
    except ValueError:
        ap.error(f"{flag} {text!r}: give N@C pairs such as 40@80")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="denoise checkpoint (default: the shipped F = 64 SIDD model)")
    ap.add_argument("--data", help="dataset folder, when it is no longer where the checkpoint was trained")
    ap.add_argument("--masks", type=int, default=220, help="distinct TT masks scored (>= 200 for the rank check)")
    ap.add_argument("--old-masks", type=int, default=60, help="masks the old scorer is timed on")
    ap.add_argument("--images", default="32,16,8", help="validation image counts of the bf16-N rows")
    ap.add_argument("--crops", default="64@64,40@80,36@80,32@80",
                    help="N@C pairs of the bf16-N@C rows: the central C x C pixels of N images ('' for none)")
    ap.add_argument("--f32-crops", default="36@80",
                    help="N@C pairs of the f32-N@C rows: the same crops scored in float32 ('' for none)")
    ap.add_argument("--old-code", metavar="DIR",
                    help="an earlier qprune source tree whose scorer is the old row (make bench-tt: TT_OLD_REF)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared box)")
    ap.add_argument("--device", default="cpu", help="where masks are scored: cpu, cuda[:i], or auto (CUDA if seen)")
    ap.add_argument("--quick", action="store_true", help="small model, few masks: a smoke run")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--out-name", default="tt_scorer")
    args = ap.parse_args(argv)
    images = [int(s) for s in args.images.split(",") if s.strip()]
    crops, f32_crops = crop_pairs(ap, "--crops", args.crops), crop_pairs(ap, "--f32-crops", args.f32_crops)
    try:
        device = scoring_device(args.device)
    except ValueError as exc:
        ap.error(str(exc))
    if args.masks < 2 or not images or min(images) < 1:
        ap.error("--masks must be >= 2 and --images positive counts")
    torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint) if args.checkpoint else (QUICK_CKPT if args.quick else SIDD_CKPT)
    if not ckpt.is_file():
        ap.error(f"checkpoint {ckpt} does not exist (make train-sidd makes the F = 64 one)")
    t_start, load_start = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
    if args.old_code and not (Path(args.old_code) / "qprune" / "__init__.py").is_file():
        ap.error(f"--old-code {args.old_code}: not a qprune source tree (no qprune/__init__.py)")
    if args.data and not Path(args.data).is_dir():
        ap.error(f"--data {args.data} is not a folder")
    problem, model = (load_sidd() if ckpt == SIDD_CKPT and not args.data
                      else load_checkpoint(ckpt, data=args.data))
    val = problem.validation_batches()
    n_val = sum(int(x.shape[0]) for x, _ in val)
    if max(images) > n_val:
        ap.error(f"--images {max(images)}: the validation split has {n_val} images")
    side = min(int(val[0][0].shape[-1]), int(val[0][0].shape[-2]))
    for flag, text, pairs in (("--crops", args.crops, crops), ("--f32-crops", args.f32_crops, f32_crops)):
        if any(not (1 <= n <= n_val and 1 <= c <= side) for n, c in pairs):
            ap.error(f"{flag} {text!r}: the validation split has {n_val} images of {side}x{side} pixels")
    prep = prepare(model, problem, methods=("taylor-greedy",), layers=LAYERS, residual_branches=BRANCHES,
                   progress=False)
    prep.model.to(device)  # the calibration pass ran on the CPU; the scoring runs here
    val = [(x.to(device), y.to(device)) for x, y in val]
    k = round(COUNT / FILTERS * prep.space.N)
    log(f"{prep.space.N} units in {len(prep.space.layers)} layers, k = {k}; {n_val} validation images")
    x0, M = tt_masks(prep, k, val, problem.metric, args.masks, images[-1], args.seed)
    near = (np.abs(M - x0[None, :]).sum(axis=1) // 2) <= NEAR
    log(f"{len(M)} TT masks, {int(near.sum())} within {NEAR} swaps of the seed")
    rows = []
    for spec in scorers(images, crops, f32_crops):
        masks = M[:args.old_masks] if spec["name"] == "old" else M
        if spec["name"] == "old" and args.old_code:
            data = args.data or (str(SIDD_DATA) if ckpt == SIDD_CKPT else None)
            rows.append(run_old_code(Path(args.old_code), spec, prep, masks, ckpt, data, args.threads, device))
        else:
            rows.append(run_scorer(spec, prep, problem, val, masks))
        log(f"{spec['name']}: {rows[-1]['s_per_eval']:.3f} s per evaluation")
    ranks(rows, near)
    text, best = verdict(rows)
    result = {
        "checkpoint": str(ckpt.resolve().relative_to(ROOT) if ckpt.resolve().is_relative_to(ROOT) else ckpt), "units": int(prep.space.N), "layers": len(prep.space.layers), "k": k,
        "masks": int(len(M)), "near": int(near.sum()), "old_masks": min(args.old_masks, len(M)), "seed": args.seed,
        "val_images": n_val, "patch": int(val[0][0].shape[-1]), "threads": args.threads, "device": str(device),
        "qprune_from": str(Path(qprune.__file__).resolve().parent),
        "machine": machine_info(), "load_start": load_start,
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "wall_s": time.perf_counter() - t_start, "rows": rows, "verdict": text, "best": best,
        "goal": GOAL, "rho_goal": RHO_GOAL, "quick": args.quick, "old_code": args.old_code,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{args.out_name}.json", result)
    with atomic_open(out / f"{args.out_name}.md") as fh:
        fh.write(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
