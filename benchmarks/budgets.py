"""Equal-MACs comparison under budgets (``make bench-budgets``; issue 19 point 4; a benchmark, not a test).

For every MACs budget f (kept fraction of the unpruned model's MACs) and problem, each row prunes
the model to at most f of its MACs and is scored on the held-out test split (gate mode), then
measured physically removed (params and MACs by ``qprune.model.stats``, CPU latency with one
thread, median of ``--repeats``):

* ``hybrid-qubo``: the paper's QUBO under the budget (layerwise curves + the Lagrange-multiplier
  search of ``qprune.solve.budgets.search``);
* ``taylor-greedy``, ``l1-greedy``: our greedy scores under the same budget search (count c of a
  layer prunes its c lowest-scored units);
* ``tp-magnitude``, ``tp-taylor``: torch-pruning 1.6.1's ``GroupMagnitudeImportance`` /
  ``GroupTaylorImportance`` on its own dependency groups (matched to our units by
  ``benchmarks/tp_importance.py``), ONE global ranking over all units (``global_pruning=True``: lowest
  normalised score first) within the per-layer caps, its pruning ratio (the count) searched by
  bisection to the largest count whose MACs stay at or under the budget (MetaPruner itself cannot
  express the residual-branch units: ``benchmarks/peers.py`` explains).

Problems: the digits classifier (``classify``, shipped checkpoint) and the trained F=64 SIDD Half-UNet
(``problems/checkpoints/denoise_sidd_f64.pt``; ``--quick``: the bundled F=16 denoiser and one budget).
Output: ``benchmarks/results/budgets.{json,md,png}`` (``budgets_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qprune.atomic import atomic_open, write_json  # noqa: E402
from qprune.errors import QpruneError  # noqa: E402
from qprune.model.masking import apply_mask  # noqa: E402
from qprune.model.stats import count_macs, count_params, measure_latency  # noqa: E402
from qprune.pipeline.budgeted import BudgetRequest, select_budget_mask  # noqa: E402
from qprune.pipeline.report import machine_info  # noqa: E402
from qprune.pipeline.run import Prepared, prepare  # noqa: E402
from qprune.pipeline.workload import evaluate  # noqa: E402
from qprune.problems import load_checkpoint, load_pretrained  # noqa: E402
from qprune.solve.budgets.budget import CostModel  # noqa: E402

# helper modules beside this script (benchmarks/)
from common import BRANCHES, RESULTS, SIDD_CKPT, SIDD_DATA, logger, save_png  # noqa: E402
from tp_importance import criterion_scores, ranking_under  # noqa: E402

OURS = ("hybrid-qubo", "taylor-greedy", "l1-greedy")
TP = ("tp-magnitude", "tp-taylor")
BUDGETS = (0.8, 0.6, 0.5, 0.4)

log = logger("budgets")


def measure(prep: Prepared, mask: np.ndarray, example: torch.Tensor, repeats: int) -> dict[str, float]:
    """Test metrics (gated), params / MACs / latency of the physically removed model."""
    gated = apply_mask(copy.deepcopy(prep.model), prep.space, mask.astype(bool), mode="gate")
    metrics = evaluate(gated, prep.work.test, prep.work.metrics)
    removed = apply_mask(prep.model, prep.space, mask.astype(bool), mode="remove", example_inputs=example)
    lat = measure_latency(removed, example, repeats=repeats, threads=1)["median_ms"]
    return {**{k: float(v) for k, v in metrics.items()}, "params": count_params(removed),
            "macs": count_macs(removed, example), "latency_ms": float(lat)}


def tp_mask(prep: Prepared, scores: np.ndarray, cost: CostModel, target: float) -> np.ndarray:
    """torch-pruning's global ranking, its count searched (bisection) to the most units under ``target``."""
    mask = ranking_under(prep.space, scores, cost, target)
    if mask is None:
        raise QpruneError(f"torch-pruning ranking cannot reach {target:.4g} MACs within the caps")
    return mask.astype(bool)


def problem_rows(name: str, problem: Any, model: torch.nn.Module, budgets: Sequence[float], repeats: int,
                 ) -> dict[str, Any]:
    """Every (budget, method) row of one problem."""
    t0 = time.perf_counter()
    prep = prepare(model, problem, methods=list(OURS), residual_branches=BRANCHES, progress=False)
    example = prep.work.test[0][0][:1]
    primary = prep.work.primary
    base = measure(prep, np.zeros(prep.space.N, bool), example, repeats)
    log(f"{name}: {prep.space.N} units in {prep.space.n_layers} layers, unpruned {primary}={base[primary]:.4f}, "
        f"prepare {time.perf_counter() - t0:.1f} s")
    cost = CostModel.build(prep.space, "macs")
    full = cost.full()
    tp_scores = criterion_scores(prep, TP, example)
    rows = []
    for f in budgets:
        for method in OURS + TP:
            t1 = time.perf_counter()
            if method in OURS:
                x, _ = select_budget_mask(prep.space, prep.signals, method, BudgetRequest.of({"macs": f}))
                mask = x.astype(bool)
            else:
                mask = tp_mask(prep, tp_scores[method], cost, f * full)
            select_s = time.perf_counter() - t1
            m = measure(prep, mask, example, repeats)
            rows.append({"budget": f, "method": method, "pruned": int(mask.sum()), **m,
                         "macs_fraction": m["macs"] / base["macs"], "params_fraction": m["params"] / base["params"],
                         "latency_fraction": m["latency_ms"] / base["latency_ms"], "select_s": select_s})
            log(f"{name} macs={f}: {method:14s} {primary}={m[primary]:.4f} macs {m['macs'] / base['macs']:.4f} "
                f"params {m['params'] / base['params']:.4f} latency {m['latency_ms']:.2f} ms")
    return {"problem": name, "primary": primary, "N": prep.space.N, "layers": prep.space.n_layers,
            "unpruned": base, "rows": rows, "wall_s": time.perf_counter() - t0}


def write_md(res: dict[str, Any], path: Path) -> None:
    lines = ["# Budgets: methods at equal MACs", "",
             f"Measured on {res['machine'].get('cpu', 'this machine')}, 1 torch thread; `{res['command']}`. "
             "Metric on the held-out test split (gated model); params/MACs/latency of the physically pruned "
             "model (latency: median of the repeats, ms). torch-pruning rows: its importance + global ranking on "
             "our units, count searched to the MACs budget.", ""]
    for p in res["problems"]:
        prim = p["primary"]
        u = p["unpruned"]
        lines += [f"## {p['problem']} ({p['N']} units, {p['layers']} layers)", "",
                  f"Unpruned: {prim} {u[prim]:.4f}, params {u['params']}, MACs {u['macs']}, "
                  f"latency {u['latency_ms']:.2f} ms", "",
                  f"| MACs budget | method | {prim} | MACs kept | params kept | latency ms | pruned units | select s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in p["rows"]:
            lines.append(f"| {r['budget']:g} | {r['method']} | {r[prim]:.4f} | {r['macs_fraction']:.4f} | "
                         f"{r['params_fraction']:.4f} | {r['latency_ms']:.2f} | {r['pruned']} | {r['select_s']:.2f} |")
        lines.append("")
    with atomic_open(path) as fh:
        fh.write("\n".join(lines))


def plot(res: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, len(res["problems"]), figsize=(6 * len(res["problems"]), 4), squeeze=False)
    for ax, p in zip(axes[0], res["problems"]):
        prim = p["primary"]
        for method in OURS + TP:
            rs = [r for r in p["rows"] if r["method"] == method]
            ax.plot([r["macs_fraction"] for r in rs], [r[prim] for r in rs], "o-" if method in OURS else "s--",
                    label=method)
        ax.axhline(p["unpruned"][prim], color="grey", lw=0.8, ls=":", label="unpruned")
        ax.set_xlabel("MACs kept (fraction, measured)")
        ax.set_ylabel(f"test {prim}")
        ax.set_title(p["problem"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="bundled F=16 denoiser + digits, one budget")
    ap.add_argument("--budgets", help=f"comma-separated MACs fractions (default {','.join(map(str, BUDGETS))})")
    ap.add_argument("--repeats", type=int, default=20, help="latency repeats (default 20)")
    ap.add_argument("--out", help="output stem (default benchmarks/results/budgets[_quick])")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else ([0.5] if args.quick else BUDGETS)
        t0 = time.perf_counter()
        problems = [("classify (digits)", *load_pretrained("classify"))]
        if args.quick:
            problems.append(("denoise (bundled F=16)", *load_pretrained("denoise")))
        else:
            if not SIDD_CKPT.is_file():
                raise QpruneError(f"checkpoint {SIDD_CKPT} does not exist")
            problems.append(("denoise (SIDD F=64)", *load_checkpoint(str(SIDD_CKPT), data=str(SIDD_DATA))))
        res = {"command": "python benchmarks/budgets.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": machine_info(), "budgets": budgets,
               "problems": [problem_rows(n, pr, m.eval(), budgets, args.repeats) for n, pr, m in problems]}
        res["wall_s"] = time.perf_counter() - t0
    except QpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stem = Path(args.out) if args.out else RESULTS / ("budgets_quick" if args.quick else "budgets")
    write_json(stem.with_suffix(".json"), res)
    write_md(res, stem.with_suffix(".md"))
    plot(res, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
