"""Does fisher-qubo's lead survive fine-tuning? (``make bench-finetune``; a benchmark, not a test)

On the trained SIDD F = 64 Half-UNet at half its MACs (``--budget``), for every seed: the seed's
calibration draw (``common.Draw``), each method's mask within the budget, the physically pruned
model, then ``--epochs`` epochs of the problem's own recovery fine-tuning (Adam 1e-4, cosine, the
same seed); the test-split PSNR before and after. ``fisher-qubo`` minus ``taylor-greedy`` per seed
with the paired t-test. Every fine-tuning run keeps a resumable state and the JSON is written after
each, so a stopped run continues. Output: ``benchmarks/results/finetune_quality.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats

from qprune.atomic import write_json
from qprune.errors import QpruneError
from qprune.pipeline.budgeted import BudgetRequest
from qprune.pipeline.methods import MethodOptions
from qprune.pipeline.report import machine_info
from qprune.pipeline.run import prepare, run_method

# helper module beside this script (benchmarks/)
from common import RESULTS, Draw, load_model, logger, write_lines

log = logger("finetune", clock=True)
METHODS = ("taylor-greedy", "fisher-qubo")


def one(problem: Any, model: torch.nn.Module, seed: int, budget: str, epochs: int, state: Path) -> list[dict]:
    """Both methods' rows of one seed."""
    prep = prepare(model, Draw(problem, seed), methods=list(METHODS), progress=False)
    rows = []
    for method in METHODS:
        t0 = time.perf_counter()
        result = run_method(prep, method, budget=BudgetRequest.of(budget), options=MethodOptions(seed=seed))
        select_s = time.perf_counter() - t0
        done = problem.finetune(result.pruned_model, epochs=epochs, seed=seed, progress=False,
                                state=state.with_name(f"{state.name}.{method}.{seed}.pt"), resume=True)
        rows.append({"seed": seed, "method": method, "budget": budget, "epochs": epochs,
                     "macs_kept": result.stats_after["macs"] / result.stats_before["macs"],
                     "before": done.before, "after": done.after, "select_s": select_s,
                     "finetune_s": done.meta["seconds"]})
        key = problem.primary_metric
        log(f"seed {seed} {method}: {key} {done.before[key]:.4f} -> {done.after[key]:.4f}")
    return rows


def summary(rows: list[dict], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for when in ("before", "after"):
        by = {m: {r["seed"]: r[when][key] for r in rows if r["method"] == m} for m in METHODS}
        seeds = sorted(set(by[METHODS[0]]) & set(by[METHODS[1]]))
        d = np.array([by["fisher-qubo"][s] - by["taylor-greedy"][s] for s in seeds])
        out[when] = {"mean": {m: float(np.mean(list(v.values()))) for m, v in by.items() if v},
                     "diff": [float(v) for v in d], "diff_mean": float(d.mean()) if d.size else None,
                     "t_p": float(stats.ttest_1samp(d, 0.0).pvalue) if d.size > 1 and d.std() > 0 else None}
    return out


def write_md(res: dict[str, Any], path: Path) -> None:
    key = res["metric"]
    lines = ["# Does the lead survive fine-tuning?", "",
             f"`{res['command']}`: {res['model']} at {res['budget']}, {res['epochs']} epoch(s) of recovery fine-tuning "
             f"(Adam 1e-4, cosine), each seed its own calibration draw and fine-tuning order; test-split {key}.", "",
             "| seed | method | MACs kept | before | after |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['seed']} | {r['method']} | {r['macs_kept']:.3f} | {r['before'][key]:.4f} | "
                     f"{r['after'][key]:.4f} |")
    s = res["summary"]
    for when in ("before", "after"):
        p = s[when]["t_p"]
        lines.append(f"\nfisher-qubo − taylor-greedy {when} fine-tuning: "
                     f"{s[when]['diff_mean']:+.4f} (per seed {', '.join(f'{v:+.3f}' for v in s[when]['diff'])}; "
                     f"paired t p = {'–' if p is None else f'{p:.2g}'})")
    write_lines(path, lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sidd-f64", help="sidd-f64 (default), denoise or classify (quick checks)")
    ap.add_argument("--budget", default="macs=0.5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default=str(RESULTS / "finetune_quality"), help="output stem")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stem = Path(args.out)
    res: dict[str, Any] = {"rows": []}
    if stem.with_suffix(".json").is_file():
        res = json.loads(stem.with_suffix(".json").read_text())
    res.update(command="python benchmarks/finetune_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
               machine=machine_info(), budget=args.budget, epochs=args.epochs, model=args.model)
    try:
        problem, model = load_model(args.model)
        res["metric"] = problem.primary_metric
        for seed in [int(s) for s in args.seeds.split(",")]:
            if any(r["seed"] == seed for r in res["rows"]):
                continue
            res["rows"] += one(problem, model, seed, args.budget, args.epochs, stem)
            res["summary"] = summary(res["rows"], res["metric"])
            write_json(stem.with_suffix(".json"), res)
    except QpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_md(res, stem.with_suffix(".md"))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
