"""Which method picks the better filters at equal cost? (``make bench-quality``; a benchmark, not a test)

For every model, calibration draw and target, each method prunes the model and the gated model is
scored on the held-out test split:

* targets: MACs budgets 0.8 / 0.6 / 0.5 / 0.4 (the pruned model keeps at most that fraction of the
  MACs, within 1 % below) and 36 % of the units (an exact count; the MACs each method keeps are
  reported beside it);
* methods: ``random``, ``taylor-greedy``, ``fisher-greedy``, torch-pruning 1.6.1's own Taylor and
  Hessian importances (``tp-taylor``, ``tp-hessian``: its scores on our units, one global ranking,
  the count searched to the budget, as in ``benchmarks/budgets.py``; both through
  ``benchmarks/tp_importance.py``), ``hybrid-qubo`` with its default weights, ``hybrid-qubo`` with
  weights tuned per draw and target (``hybrid-qubo-tuned``: TPE, ``--trials`` trials on the
  validation split) and ``fisher-qubo`` with its defaults;
* models: the trained SIDD F = 64 Half-UNet in the default space and with residual-branch units
  (``--residual-branches auto``), the bundled F = 16 denoiser and the digits classifier;
* draws: every draw is another seeded calibration subset of the training split (and the seed of
  every random step), so the spread is over calibration data as a user would see it.

The table gives mean ± std over the draws, ``fisher-qubo`` minus the best other untuned row per draw
(the best by mean in that cell) with Wilcoxon's signed-rank test (two-sided; with 5 draws its
smallest p is 0.0625) and the paired t-test, and ``fisher-qubo`` minus the tuned hybrid. Output:
``benchmarks/results/quality.{json,md,png}``; the JSON is written after every (model, draw) and a
rerun skips what it holds (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib
import numpy as np
import torch
from scipy import stats

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qprune.atomic import atomic_open, write_json  # noqa: E402
from qprune.errors import QpruneError  # noqa: E402
from qprune.model.masking import apply_mask  # noqa: E402
from qprune.pipeline.budgeted import BudgetRequest  # noqa: E402
from qprune.pipeline.methods import MethodOptions  # noqa: E402
from qprune.pipeline.report import machine_info  # noqa: E402
from qprune.pipeline.run import Prepared, constraint_of, prepare, run_method, tune_weights  # noqa: E402
from qprune.pipeline.workload import evaluate  # noqa: E402
from qprune.problems import load_pretrained  # noqa: E402
from qprune.solve.baselines import greedy_prune  # noqa: E402
from qprune.solve.budgets.budget import CostModel  # noqa: E402

# helper modules beside this script (benchmarks/)
from common import PAPER_FULL_SPARSITY, RESULTS, Draw, load_sidd, logger, save_png  # noqa: E402
from tp_importance import criterion_scores, ranking_under  # noqa: E402

TARGETS = ("macs=0.8", "macs=0.6", "macs=0.5", "macs=0.4", "units=36%")
SPARSITY = PAPER_FULL_SPARSITY
NEW = "fisher-qubo"
TUNED = "hybrid-qubo-tuned"
OURS = ("random", "taylor-greedy", "fisher-greedy", "hybrid-qubo", NEW)
TP = ("tp-taylor", "tp-hessian")
METHODS = ("random", "taylor-greedy", "fisher-greedy", *TP, "hybrid-qubo", TUNED, NEW)
NEEDS = ("taylor-greedy", "fisher-greedy", "hybrid-qubo", NEW)


log = logger("quality")


def models(names: Sequence[str]) -> list[tuple[str, Callable[[], tuple[Any, torch.nn.Module]], Any]]:
    """(name, loader, residual_branches) of each model asked for."""
    table = {
        "sidd-f64": (load_sidd, False),
        "sidd-f64-branches": (load_sidd, "auto"),
        "bundled-f16": (lambda: load_pretrained("denoise"), False),
        "digits": (lambda: load_pretrained("classify"), False),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise QpruneError(f"unknown model(s) {unknown}; choose from {sorted(table)}")
    return [(n, *table[n]) for n in names]


def tp_scores(prep: Prepared) -> dict[str, np.ndarray]:
    """torch-pruning's Taylor and Hessian importances on our units, from this draw's calibration."""
    return criterion_scores(prep, TP, prep.work.calibration[0][0][:1])


def score_mask(prep: Prepared, scores: np.ndarray, target: str, cost: CostModel) -> np.ndarray:
    """A global ranking (lowest first) at the target: the count within the caps for a unit count,
    the most units whose MACs fit for a budget (bisection over the count)."""
    if target.startswith("units"):
        k = int(round(SPARSITY * prep.space.N))
        return greedy_prune(scores, k, constraint=constraint_of(prep.space, k))
    mask = ranking_under(prep.space, scores, cost, float(target.split("=")[1]) * cost.full())
    if mask is None:
        raise QpruneError(f"a global ranking cannot reach {target} within the caps")
    return mask


def method_mask(prep: Prepared, method: str, target: str, seed: int, trials: int,
                tp: dict[str, np.ndarray], cost: CostModel) -> tuple[np.ndarray, dict[str, Any]]:
    """One method's mask at one target, and what to record beside it."""
    if method in TP:
        return score_mask(prep, tp[method], target, cost), {}
    opts = MethodOptions(seed=seed)
    extra: dict[str, Any] = {}
    name = method
    goal: int | BudgetRequest = int(round(SPARSITY * prep.space.N)) if target.startswith("units") \
        else BudgetRequest.of(target)
    if method == TUNED:
        name = "hybrid-qubo"
        found = tune_weights(prep, name, goal, opts, n_trials=trials, progress=False, sampler_seed=seed,
                             study_name=f"quality-{target}-{seed}")
        opts = replace(opts, weights=found.best_weights)
        extra = {"weights": {k: v for k, v in vars(found.best_weights).items() if k != "extra"},
                 "validation": found.best_value}
    result = run_method(prep, name, options=opts, remove=False,
                        **({"k": goal} if isinstance(goal, int) else {"budget": goal}))
    return result.mask.astype(np.int8), extra


def draw_rows(name: str, problem: Any, model: torch.nn.Module, branches: Any, seed: int, targets: Sequence[str],
              methods: Sequence[str], trials: int, done: set[tuple]) -> list[dict[str, Any]]:
    """Every (target, method) row of one model and calibration draw not in ``done``."""
    todo = [(t, m) for t in targets for m in methods if (name, seed, t, m) not in done]
    if not todo:
        return []
    t0 = time.perf_counter()
    prep = prepare(model, Draw(problem, seed), methods=list(NEEDS), residual_branches=branches, progress=False)
    tp = tp_scores(prep) if any(m in TP for _, m in todo) else {}
    log(f"{name} draw {seed}: {prep.space.N} units, prepare + tp scores {time.perf_counter() - t0:.0f} s")
    macs, params = CostModel.build(prep.space, "macs"), CostModel.build(prep.space, "params")
    primary = prep.work.primary
    rows = []
    for target, method in todo:
        t1 = time.perf_counter()
        x, extra = method_mask(prep, method, target, seed, trials, tp, macs)
        select_s = time.perf_counter() - t1
        gated = apply_mask(copy.deepcopy(prep.model), prep.space, x.astype(bool), mode="gate")
        metrics = evaluate(gated, prep.work.test, prep.work.metrics)
        rows.append({"model": name, "draw": seed, "target": target, "method": method, "metric": primary,
                     "value": float(metrics[primary]), "metrics": metrics, "pruned": int(x.sum()),
                     "macs_kept": macs.of_mask(x) / macs.full(), "params_kept": params.of_mask(x) / params.full(),
                     "select_s": select_s, **extra})
        log(f"{name} draw {seed} {target:9s} {method:18s} {primary}={metrics[primary]:.4f} "
            f"macs {rows[-1]['macs_kept']:.3f} ({select_s:.1f} s)")
    return rows


def unpruned(problem: Any, model: torch.nn.Module) -> float:
    batches = problem.test_batches()
    return float(evaluate(model, batches, problem.metrics)[problem.primary_metric])


# ------------------------------------------------------------------------------------ summary


def cells(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[int, float]]]:
    """(model, target) -> method -> draw -> value."""
    out: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for r in rows:
        out.setdefault((r["model"], r["target"]), {}).setdefault(r["method"], {})[r["draw"]] = r["value"]
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """new - other per shared draw, with Wilcoxon's and the paired t-test's two-sided p."""
    draws = sorted(set(a) & set(b))
    if len(draws) < 2:
        return None
    d = np.array([a[s] - b[s] for s in draws])
    wil = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    tt = float(stats.ttest_1samp(d, 0.0).pvalue) if np.std(d) > 0 else (0.0 if d.mean() else 1.0)
    return {"mean": float(d.mean()), "std": float(d.std()), "wins": int((d > 0).sum()), "n": len(draws),
            "wilcoxon_p": wil, "t_p": tt, "per_draw": [float(v) for v in d]}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (model, target): means, stds, and the paired comparisons of the new method."""
    out = []
    for (model, target), by in cells(rows).items():
        means = {m: float(np.mean(list(v.values()))) for m, v in by.items()}
        stds = {m: float(np.std(list(v.values()))) for m, v in by.items()}
        others = [m for m in means if m not in (NEW, TUNED)]
        best = max(others, key=lambda m: means[m]) if others else None
        rec = {"model": model, "target": target, "mean": means, "std": stds, "best_other": best,
               "macs_kept": {m: float(np.mean([r["macs_kept"] for r in rows if r["model"] == model
                                               and r["target"] == target and r["method"] == m])) for m in means}}
        if NEW in by and best:
            rec["new_minus_best"] = paired(by[NEW], by[best])
        if NEW in by and TUNED in by:
            rec["new_minus_tuned"] = paired(by[NEW], by[TUNED])
        out.append(rec)
    return out


def _fmt_diff(p: dict[str, Any] | None) -> str:
    if not p:
        return "–"
    return f"{p['mean']:+.3f} ({p['wins']} of {p['n']}; {p['wilcoxon_p']:.3g} / {p['t_p']:.2g})"


def write_md(res: dict[str, Any], path: Path) -> None:
    lines = ["# Quality: methods at equal cost", "",
             f"`{res['command']}` on {res['machine'].get('cpu', 'this machine')}. Test-split metric of the gated model, "
             f"mean ± std over {res['draws']} calibration draws (each also the seed of every random step); "
             "`units=36%` prunes exactly 36 % of the units (MACs kept in the last table). "
             f"`new − best`: {NEW} minus the best other untuned row of that cell (by mean), per draw; "
             f"in brackets the draws where {NEW} is ahead, then Wilcoxon's signed-rank p (two-sided; with 5 draws "
             "the smallest possible is 0.0625) / the paired t-test's p. "
             f"`new − tuned`: the same against hybrid-qubo with weights tuned by {res['trials']} TPE trials per draw "
             "and target on the validation split. **Bold**: the best mean of the row; _italic_: the best other "
             "untuned row (the reference of `new − best`) where it is not the best.", ""]
    summary = res["summary"]
    for model in dict.fromkeys(s["model"] for s in summary):
        ss = [s for s in summary if s["model"] == model]
        present = [m for m in METHODS if any(m in s["mean"] for s in ss)]
        base = res["unpruned"].get(model)
        lines += [f"## {model}" + (f" (unpruned {base:.4f})" if base is not None else ""), "",
                  "| target | " + " | ".join(present) + " | new − best | new − tuned |",
                  "|---|" + "---|" * (len(present) + 2)]
        for s in ss:
            cellv = [f"{s['mean'][m]:.3f} ± {s['std'][m]:.3f}" if m in s["mean"] else "–" for m in present]
            best, top = s["best_other"], max(s["mean"], key=s["mean"].get)
            cellv = [f"**{c}**" if m == top else (f"_{c}_" if m == best else c) for m, c in zip(present, cellv)]
            lines.append(f"| {s['target']} | " + " | ".join(cellv) + f" | {_fmt_diff(s.get('new_minus_best'))} "
                         f"(vs {best}) | {_fmt_diff(s.get('new_minus_tuned'))} |")
        kept = [s for s in ss if s["target"].startswith("units")]
        if kept:
            lines += ["", "MACs kept at 36 % of the units: " + ", ".join(
                f"{m} {kept[0]['macs_kept'][m]:.3f}" for m in present if m in kept[0]["macs_kept"])]
        lines.append("")
    with atomic_open(path) as fh:
        fh.write("\n".join(lines))


def plot(res: dict[str, Any], path: Path) -> None:
    models_ = list(dict.fromkeys(r["model"] for r in res["rows"]))
    fig, axes = plt.subplots(1, len(models_), figsize=(5.5 * len(models_), 4), squeeze=False)
    for ax, model in zip(axes[0], models_):
        for method in METHODS:
            rs = [r for r in res["rows"] if r["model"] == model and r["method"] == method
                  and r["target"].startswith("macs")]
            if not rs:
                continue
            xs = sorted({r["target"] for r in rs})
            f = [float(t.split("=")[1]) for t in xs]
            m = [np.mean([r["value"] for r in rs if r["target"] == t]) for t in xs]
            ax.plot(f, m, "o-" if method in OURS else "s--", lw=2.2 if method == NEW else 1.0, label=method)
        if model in res["unpruned"]:
            ax.axhline(res["unpruned"][model], color="grey", lw=0.8, ls=":", label="unpruned")
        ax.set_xlabel("MACs budget (kept fraction)")
        metric = next(r["metric"] for r in res["rows"] if r["model"] == model)
        ax.set_ylabel("test PSNR (dB)" if metric == "psnr" else f"test {metric}")
        ax.set_title(model)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="digits,bundled-f16,sidd-f64,sidd-f64-branches")
    ap.add_argument("--draws", type=int, default=5, help="calibration draws 0..N-1 (default 5)")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--trials", type=int, default=12, help="TPE trials of the tuned hybrid (default 12)")
    ap.add_argument("--out", default=str(RESULTS / "quality"), help="output stem")
    ap.add_argument("--fresh", action="store_true", help="ignore rows an earlier run wrote")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only-draw", type=int, help="run this one calibration draw (another process can run another "
                                                  "into its own --out; --merge then joins them)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="add the rows of other runs' JSON files to --out's "
                                                                "(rows it holds win) and rewrite its table and plot")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stem = Path(args.out)
    try:
        chosen = models(args.models.split(","))
        targets = args.targets.split(",")
        methods = args.methods.split(",")
        for m in methods:
            if m not in METHODS:
                raise QpruneError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if args.only_draw is not None and args.only_draw < 0:
            raise QpruneError(f"--only-draw {args.only_draw}: a draw is a number from 0")
        res = _resume(stem, args)
        done = {(r["model"], r["draw"], r["target"], r["method"]) for r in res["rows"]}
        if args.merge:
            return _merge(res, done, args.merge, stem)
        for name, loader, branches in chosen:
            problem, model = loader()
            res["unpruned"][name] = unpruned(problem, model.eval())
            for seed in range(args.draws) if args.only_draw is None else [args.only_draw]:
                res["rows"] += draw_rows(name, problem, model, branches, seed, targets, methods, args.trials, done)
                res["summary"] = summarise(res["rows"])
                write_json(stem.with_suffix(".json"), res)
        write_md(res, stem.with_suffix(".md"))
        plot(res, stem.with_suffix(".png"))
    except QpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(stem.with_suffix(".md").read_text())
    return 0


def _merge(res: dict[str, Any], done: set[tuple], others: Sequence[str], stem: Path) -> int:
    """``res`` with the rows of the ``others`` (JSON files of this script) it does not hold, written out."""
    for path in others:
        try:
            other = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise QpruneError(f"--merge {path}: not a results file of this script ({exc})") from exc
        new = [r for r in other.get("rows", []) if (r["model"], r["draw"], r["target"], r["method"]) not in done]
        res["rows"] += new
        res["unpruned"].update(other.get("unpruned", {}))
        done |= {(r["model"], r["draw"], r["target"], r["method"]) for r in new}
        log(f"merged {len(new)} rows from {path}")
    res["summary"] = summarise(res["rows"])
    write_json(stem.with_suffix(".json"), res)
    write_md(res, stem.with_suffix(".md"))
    plot(res, stem.with_suffix(".png"))
    return 0


def _resume(stem: Path, args: argparse.Namespace) -> dict[str, Any]:
    path = stem.with_suffix(".json")
    res: dict[str, Any] = {"rows": [], "unpruned": {}}
    if path.is_file() and not args.fresh:
        res = json.loads(path.read_text())
        log(f"resuming: {len(res['rows'])} rows in {path}")
    if not args.merge:  # a merge keeps the record of the run it adds to
        res.update(command="python benchmarks/quality.py " + " ".join(sys.argv[1:]), machine=machine_info(),
                   draws=args.draws, trials=args.trials)
    return res


if __name__ == "__main__":
    raise SystemExit(main())
