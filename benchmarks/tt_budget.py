"""TT refinement at the paper's budget: the gain against the number of evaluations (``make bench-tt-budget``).

One TT run of ``--budget`` evaluations (the paper's 20,000) on the paper's 16-layer sub-problem of
the shipped F = 64 SIDD model, from the hybrid-qubo mask of seed 0 with the weights the paper
tables chose (``benchmarks/results/paper_tables.json``; defaults when that file is absent). The
masks are scored by the fast scorer (``--precision``, ``--search-images``, ``--search-crop``: see
``make bench-tt``).

Every score goes to a journal (``--journal``, :class:`qprune.refine.ScoreJournal`): the run is
resumable (started again, it replays the journal and goes on), and the curve is read from it: at
each budget of :data:`BUDGETS` (those reached), the best mask among the first evaluations is
scored exactly (float32, the whole validation split) and on the test split, beside the seed.
``--report-only`` writes the curve from the journal as it stands (a run still going, or stopped).
Output: ``benchmarks/results/tt_budget.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qprune.atomic import atomic_open, write_json
from qprune.pipeline.methods import MethodOptions
from qprune.pipeline.report import machine_info
from qprune.pipeline.run import prepare, select_mask
from qprune.qubo.presets import Weights
from qprune.refine import MaskScorer, read_journal, refine_mask

# helper module beside this script (benchmarks/)
from common import BRANCHES, RESULTS, ROOT, load_sidd, logger

BUDGETS = (1, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
LAYERS, COUNT, FILTERS = 16, 480, 1024
METHOD = "hybrid-qubo"

log = logger("tt_budget", clock=True)


def paper_weights() -> tuple[Weights, str]:
    """The hybrid-qubo weights the paper tables chose for the 16-layer setting (else the defaults)."""
    path = RESULTS / "paper_tables.json"
    try:
        meta = next(m for m in json.loads(path.read_text())["settings"] if m["setting"] == "16")
        w = dict(meta["weights"][METHOD]["weights"])
    except (OSError, StopIteration, KeyError, ValueError):
        return Weights(), "defaults (no 16-layer hybrid-qubo weights in paper_tables.json)"
    w.pop("extra", None)
    return Weights(**w), "the weights paper_tables.json chose for the 16-layer setting"


def curve(prep: Any, problem: Any, journal: Path, x0: np.ndarray) -> list[dict[str, Any]]:
    """Per budget reached: the best mask so far, its search score, exact validation and test PSNR."""
    M, v = read_journal(journal, prep.space.N)
    exact = MaskScorer(prep.model, prep.space, problem.validation_batches(), problem.metric, progress=False)
    on_test = MaskScorer(prep.model, prep.space, problem.test_batches(), problem.metric, progress=False)

    def test_psnr(mask: np.ndarray) -> float:
        return float(on_test(mask[None, :])[0])

    base = {"val": float(exact(x0[None, :])[0]), "test": test_psnr(x0)}
    points, last = [], None
    for b in [b for b in BUDGETS if b <= len(v)] + ([len(v)] if len(v) not in BUDGETS else []):
        i = int(np.argmax(v[:b]))
        if last is None or i != last["index"]:
            val, test = float(exact(M[i][None, :])[0]), test_psnr(M[i])
        else:
            val, test = last["val"], last["test"]
        last = {"evaluations": b, "index": i, "search": float(v[i]), "val": val, "test": test,
                "val_gain": val - base["val"], "test_gain": test - base["test"],
                "swaps_from_seed": int(np.abs(M[i] - x0).sum() // 2)}
        points.append(last)
        log(f"{b} evaluations: search {v[i]:.4f}, val {val:.4f} ({val - base['val']:+.4f}), "
            f"test {test:.4f} ({test - base['test']:+.4f})")
    return [dict(p, seed_val=base["val"], seed_test=base["test"]) for p in points]


def markdown(r: dict[str, Any]) -> str:
    pts = r["points"]
    lines = [
        "# TT refinement at the paper's budget (`make bench-tt-budget`)", "",
        f"Model `{r['checkpoint']}`, the 16-layer sub-problem ({r['units']} units, k = {r['k']}); seed mask: "
        f"{METHOD} (seed 0, {r['weights_source']}). TT seed 0, budget {r['budget']}; masks scored by the fast "
        f"scorer ({r['precision']}, {r['search_images']} validation images"
        + (f", their central {r['search_crop']}x{r['search_crop']} pixels" if r.get("search_crop") else "")
        + "); evaluations done: "
        f"**{r['evaluations']} of {r['budget']}**{' (run complete)' if r['complete'] else ' (run not finished)'}.",
        f"Seed mask: validation {pts[0]['seed_val']:.4f} dB, test {pts[0]['seed_test']:.4f} dB (float32, whole splits).",
        "",
        "| evaluations | search score (dB) | validation PSNR | gain | test PSNR | gain | swaps from seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in pts:
        lines.append(f"| {p['evaluations']} | {p['search']:.4f} | {p['val']:.4f} | {p['val_gain']:+.4f} | "
                     f"{p['test']:.4f} | {p['test_gain']:+.4f} | {p['swaps_from_seed']} |")
    lines += ["", "The search score is the fast scorer's (its subset of the validation split); validation and test "
              "PSNR are float32 on the whole splits. Timing: " + r["timing"], ""]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = r["points"]
    e = [p["evaluations"] for p in pts]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(e, [p["val_gain"] for p in pts], "o-", label="validation (whole split)")
    ax.plot(e, [p["test_gain"] for p in pts], "s-", label="test")
    ax.set_xscale("log")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("TT evaluations")
    ax.set_ylabel("PSNR gain over the seed mask (dB)")
    ax.set_title(f"TT on the 16-layer problem ({r['evaluations']} of {r['budget']} evaluations)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=20000, help="TT evaluations (the paper's 20,000)")
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                    help="arithmetic of the search's scorer (default float32: exact, and on a CPU without native "
                         "bfloat16 the faster; bfloat16 pays only with AMX / AVX512-BF16 or on a GPU)")
    ap.add_argument("--search-images", type=int, default=36,
                    help="validation images the search scores on (default 36; with --search-crop 80 the fastest "
                         "scorer whose ranking kept rho >= 0.99 in make bench-tt)")
    ap.add_argument("--search-crop", type=int, default=80,
                    help="score the central C x C pixels of those images (default 80; 0: whole images)")
    ap.add_argument("--journal", help="score journal (resumes from it; default "
                                      "benchmarks/journals/tt_budget-PRECISION-IMAGES[@CROP].journal)")
    ap.add_argument("--report-only", action="store_true", help="write the curve from the journal as it stands")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--out-name", default="tt_budget")
    args = ap.parse_args(argv)
    if args.budget < 1:
        ap.error(f"--budget must be positive, got {args.budget}")
    args.search_crop = args.search_crop or None
    crop = f"@{args.search_crop}" if args.search_crop else ""
    journal = Path(args.journal or ROOT / "benchmarks" / "journals"
                   / f"tt_budget-{args.precision}-{args.search_images}{crop}.journal")
    if args.report_only and not journal.is_file():
        ap.error(f"--report-only: no journal at {journal}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    problem, model = load_sidd()
    weights, source = paper_weights()
    prep = prepare(model, problem, methods=(METHOD,), layers=LAYERS, residual_branches=BRANCHES, progress=False)
    k = round(COUNT / FILTERS * prep.space.N)
    x0, _ = select_mask(prep, METHOD, k, MethodOptions(weights=weights, seed=0))
    x0 = np.asarray(x0, dtype=np.int8)
    log(f"{prep.space.N} units, k = {k}; seed mask from {METHOD} ({time.perf_counter() - t0:.0f} s)")
    timing = "not measured (--report-only)"
    complete = False
    if not args.report_only:
        t1 = time.perf_counter()
        res = refine_mask(prep.model, prep.space, problem, x0, k, budget=args.budget, seed=0, progress=True,
                          precision=args.precision, search_images=args.search_images,
                          search_crop=args.search_crop, journal=journal)
        j = res.info["journal"]
        complete = True
        timing = (f"this run {time.perf_counter() - t1:.0f} s for {j['computed']} new evaluations "
                  f"({j['replayed']} replayed from the journal), {torch.get_num_threads()} thread(s)")
    points = curve(prep, problem, journal, x0)
    r = {"checkpoint": "problems/checkpoints/denoise_sidd_f64.pt", "units": int(prep.space.N), "k": k,
         "budget": args.budget, "precision": args.precision, "search_images": args.search_images,
         "search_crop": args.search_crop,
         "weights_source": source, "evaluations": int(points[-1]["evaluations"]),
         "complete": complete or points[-1]["evaluations"] >= args.budget, "points": points, "timing": timing,
         "machine": machine_info(), "load": [round(v, 2) for v in os.getloadavg()]}
    out = Path(args.out)
    write_json(out / f"{args.out_name}.json", r)
    with atomic_open(out / f"{args.out_name}.md") as fh:
        fh.write(markdown(r))
    plot(r, out / f"{args.out_name}.png")
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
