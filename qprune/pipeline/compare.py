"""Methods side by side at exactly the same k: rows for the paper-style tables.

Signals are collected once per model and filter space (the union of what the methods need), so a
comparison of N methods costs one calibration pass, not N.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from qprune.atomic import atomic_open, write_json
from qprune.errors import QpruneError
from qprune.pipeline.budgeted import BudgetRequest
from qprune.model.masking import apply_mask
from qprune.pipeline.figures import typical_image, write_figure
from qprune.pipeline.methods import MethodOptions, method_spec, method_weights
from qprune.pipeline.run import Prepared, prepare, resolve_k, run_method, tune_weights
from qprune.pipeline.report import aggregate, compare_markdown, machine_info, pivot_markdown, plot_metric_vs_sparsity
from qprune.qubo.presets import Weights
from qprune.solve.budgets.budget import CostModel


@dataclass(frozen=True)
class FinetuneOptions:
    """Recovery fine-tuning of every pruned model in a comparison, with the problem's own loop.

    The problem must have a ``finetune`` method (:meth:`qprune.problems.BaseProblem.finetune`);
    with ``distill`` the unpruned model is the teacher.
    """

    epochs: int
    lr: float = 1e-4
    distill: bool = False
    distill_weight: float = 0.5


def _finetuned(problem: Any, teacher: Any, pruned: Any, ft: FinetuneOptions, seed: int) -> dict[str, Any]:
    """The row entries of one fine-tuned model: ``<metric>_ft`` on the test split and the time it took."""
    done = problem.finetune(pruned, epochs=ft.epochs, lr=ft.lr, seed=seed, teacher=teacher if ft.distill else None,
                            distill_weight=ft.distill_weight, progress=False)
    return {**{f"{k}_ft": v for k, v in done.after.items()}, "finetune_seconds": done.meta["seconds"]}


def compare_rows(
    model: Any,
    problem: Any,
    *,
    methods: Sequence[str],
    sparsities: Sequence[float],
    seeds: Sequence[int] = (0,),
    layers: int | Sequence[str] | None = None,
    min_keep: int = 1,
    residual_branches: bool | str = False,
    setting: str | None = None,
    remove: bool = True,
    tune: int = 0,
    progress: bool = True,
    options: MethodOptions | None = None,
    finetune: FinetuneOptions | None = None,
    budgets: Sequence[BudgetRequest] = (),
    draws: Callable[[int], Any] | None = None,
    weights: Mapping[str, Weights] | None = None,
) -> list[dict[str, Any]]:
    """One row per (sparsity, method, seed): metrics after pruning, params, MACs, latency, time.

    With ``budgets`` (then ``sparsities`` must be empty) the rows are per (budget, method, seed):
    every method prunes to the same budget (:func:`qprune.pipeline.budgeted.select_budget_mask`),
    each row with its own count ``k`` and ``sparsity`` = k / N.

    ``residual_branches`` is :func:`qprune.model.space.build_space`'s. ``options`` steer every run
    (its seed is replaced by each of ``seeds``). With ``tune > 0`` each method with weights (the
    paper's QUBOs) first has them searched for ``tune`` trials on the VALIDATION split at that k or
    budget (the paper's procedure); the rows report test-split metrics. With ``finetune`` every
    pruned model is also fine-tuned and the rows get ``<metric>_ft`` (a greedy mask, the same for
    every seed, is fine-tuned once, with the first seed). Every row holds its mask (``mask``, hex
    of the packed bits in the space's unit order), its count per layer (``pruned_per_layer``) and the
    MACs and params it kept (``*_kept``).

    ``draws``: per-seed calibration, ``seed -> problem`` whose calibration split that seed's masks
    are chosen on (e.g. a seeded subset of the training split), so the spread over seeds includes
    the calibration data; every seed then has its own calibration pass (greedy methods too).
    ``weights``: per-method QUBO weights (a method not named keeps ``options.weights``).
    """
    return _compare(model, problem, methods=methods, sparsities=sparsities, seeds=seeds, layers=layers,
                    min_keep=min_keep, residual_branches=residual_branches, setting=setting, remove=remove,
                    tune=tune, progress=progress, options=options, finetune=finetune, budgets=budgets,
                    draws=draws, weights=weights)[0]


def _compare(model: Any, problem: Any, *, methods: Sequence[str], sparsities: Sequence[float], seeds: Sequence[int],
             layers: Any, min_keep: int, residual_branches: bool | str, setting: str | None, remove: bool, tune: int,
             progress: bool, options: MethodOptions | None, finetune: FinetuneOptions | None,
             budgets: Sequence[BudgetRequest], draws: Callable[[int], Any] | None = None,
             weights: Mapping[str, Weights] | None = None) -> tuple[list[dict[str, Any]], Prepared]:
    """:func:`compare_rows`, and the prepared model the rows were pruned from (the first seed's)."""
    options = options or MethodOptions()
    _check(problem, methods, sparsities, budgets, finetune)
    targets: list[float | BudgetRequest] = list(budgets) or list(sparsities)
    preps: dict[Any, Prepared] = {}

    def prep_of(seed: int) -> Prepared:
        key = seed if draws is not None else None
        if key not in preps:
            preps[key] = prepare(model, problem if draws is None else draws(seed), methods=methods, layers=layers,
                                 min_keep=min_keep, residual_branches=residual_branches, fisher=options.fisher,
                                 weights=options.weights, progress=progress)
        return preps[key]

    first = prep_of(seeds[0])
    setting = setting or (f"{layers} layers" if layers is not None else "full model")
    costs = {kind: CostModel.build(first.space, kind) for kind in ("params", "macs")}
    rows: list[dict[str, Any]] = []
    # deterministic methods give the same mask for every seed of one calibration: run them once, reuse the row
    done: dict[tuple[Any, str], dict[str, Any]] = {}
    tuned: dict[tuple[Any, str], tuple[Any, float]] = {}
    bar = tqdm([(s, m, seed) for s in targets for m in methods for seed in seeds], desc="compare",
               disable=not progress)
    for target, method, seed in bar:
        budget = target if isinstance(target, BudgetRequest) else None
        bar.set_postfix_str(f"{method} {budget.budget.text if budget else f's={target:g}'} seed={seed}")
        if method_spec(method).kind == "greedy" and draws is None and (target, method) in done:
            rows.append(dict(done[(target, method)], seed=seed))
            continue
        prep = prep_of(seed)
        run_options = replace(options, seed=seed)
        if weights and method in weights:
            run_options = replace(run_options, weights=weights[method])
        tune_seconds = None
        if tune > 0 and method_weights(method_spec(method)):
            if (target, method) not in tuned:
                t0 = time.perf_counter()
                goal = budget if budget else resolve_k(prep.space.N, target)
                found = tune_weights(prep, method, goal, replace(options, seed=seeds[0]), n_trials=tune, progress=False)
                tuned[(target, method)] = (found.best_weights, time.perf_counter() - t0)
            tuned_weights, tune_seconds = tuned[(target, method)]
            run_options = replace(run_options, weights=tuned_weights)
        t0 = time.perf_counter()
        result = run_method(prep, method, sparsity=None if budget else target, options=run_options,
                            remove=remove or finetune is not None, budget=budget)
        row = _row(result, prep, setting, target, seed, time.perf_counter() - t0, tune_seconds, run_options, costs)
        if finetune is not None:
            row.update(_finetuned(problem, model, result.pruned_model, finetune, seed))
        rows.append(row)
        done[(target, method)] = row
    return rows, first


def _check(problem: Any, methods: Sequence[str], sparsities: Sequence[float], budgets: Sequence[BudgetRequest],
           finetune: FinetuneOptions | None) -> None:
    if finetune is not None and not callable(getattr(problem, "finetune", None)):
        raise QpruneError(f"finetune: problem {getattr(problem, 'name', problem)!r} has no finetune method "
                          "(a qprune.problems.BaseProblem has one)")
    for m in methods:
        method_spec(m)
    if not methods:
        raise QpruneError("give at least one method")
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise QpruneError(f"sparsity={s} must be a fraction in [0, 1)")
    if budgets and sparsities:
        raise QpruneError("compare at budgets: give budgets or sparsities, not both")


def _row(result: Any, prep: Prepared, setting: str, target: Any, seed: int, seconds: float,
         tune_seconds: float | None, options: MethodOptions, costs: Mapping[str, CostModel]) -> dict[str, Any]:
    """The table row of one pruned model. ``method_seconds``: choosing the mask (the shared
    calibration pass is ``signals_seconds``); ``run_seconds``: that plus evaluating and measuring."""
    budget = target if isinstance(target, BudgetRequest) else None
    row: dict[str, Any] = {
        "setting": setting, "method": result.method, "seed": seed, "k": result.k,
        "sparsity": result.k / prep.space.N if budget else target,
        **({"budget": budget.budget.text} if budget else {}),
        "units": prep.space.N, "energy": result.energy, "gamma": result.gamma,
        "method_seconds": result.timings.get("solve", 0.0) + result.timings.get("refine", 0.0),
        "run_seconds": seconds, "signals_seconds": prep.timings.get("signals"),
        "tune_seconds": tune_seconds,
        "weights": asdict(options.weights) if options.weights is not None else None,
        "mask": np.packbits(np.asarray(result.mask, dtype=bool)).tobytes().hex(),
        "pruned_per_layer": np.bincount(prep.space.layer_ids[np.asarray(result.mask, dtype=bool)],
                                        minlength=prep.space.n_layers).tolist(),
    }
    row.update({f"{name}": v for name, v in result.metrics_after.items()})
    row.update({f"{name}_before": v for name, v in result.metrics_before.items()})
    row.update({f"{name}": v for name, v in result.stats_after.items()})
    row.update({f"{name}_before": v for name, v in result.stats_before.items()})
    for kind, cost in costs.items():  # exact (the physically pruned model's count, checked in the tests)
        row[f"{kind}_kept"] = cost.of_mask(result.mask) / cost.full()
        row.setdefault(kind, row[f"{kind}_before"] * row[f"{kind}_kept"])
    return row


def unpack_mask(hex_mask: str, n: int) -> np.ndarray:
    """A row's ``mask`` back as bool [n]."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_mask), dtype=np.uint8))[:n].astype(bool)


def compare_methods(
    model: Any,
    problem: Any,
    *,
    methods: Sequence[str],
    sparsities: Sequence[float],
    seeds: Sequence[int] = (0,),
    out_dir: Path | None = None,
    extra: Mapping[str, Any] | None = None,
    figure: bool = False,
    **kwargs: Any,
) -> str:
    """Run :func:`compare_rows`, write compare.{md,json,png} to ``out_dir`` and return the table.

    The table and the plot start from the unpruned model (its metric, params, MACs and latency).
    ``figure``: also ``figure.png`` (:func:`qprune.pipeline.figures.write_figure`), one test image as
    noisy / unpruned / the best QUBO method's model / the best greedy method's / clean, at the most
    pruned target, each with its PSNR (image-to-image problems only).
    """
    defaults = {"layers": None, "min_keep": 1, "residual_branches": False, "setting": None, "remove": True,
                "tune": 0, "progress": True, "options": None, "finetune": None, "budgets": ()}
    rows, prep = _compare(model, problem, methods=methods, sparsities=sparsities, seeds=seeds,
                          **{**defaults, **kwargs})
    budgets = [b.budget.text for b in kwargs.get("budgets", ())]
    metric_keys = [k for k in _METRIC_ORDER if k in rows[0]]
    metric_keys += [f"{k}_ft" for k in metric_keys if f"{k}_ft" in rows[0]]
    keys = metric_keys + [k for k in ("params", "macs", "macs_kept", "params_kept", "latency_ms", "method_seconds")
                          if k in rows[0]]
    agg = [unpruned_row(rows[0], keys)] + aggregate(rows, keys)
    title = (f"qprune compare: {getattr(problem, 'name', 'model')}, "
             + (f"budget {', '.join(budgets)}" if budgets else f"sparsity {', '.join(map(str, sparsities))}"))
    table = compare_markdown(agg, keys, title=title)
    if metric_keys:
        table = table.replace("\n\n", "\n\n" + pivot_markdown(agg, metric_keys[0]) + "\n", 1)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(out_dir / "compare.md") as fh:
            fh.write(table)
        payload = {"problem": getattr(problem, "name", None), "methods": list(methods), "sparsities": list(sparsities),
                   "budgets": budgets, "seeds": list(seeds), "rows": rows, "aggregate": agg,
                   "machine": machine_info(), **(extra or {})}
        if figure:
            payload["figure"] = _figure(prep, rows, out_dir / "figure.png", metric_keys[0])
        write_json(out_dir / "compare.json", payload)
        if metric_keys:
            kind = f"{budgets[0].split('=', 1)[0]} budgets" if budgets else "sparsities"
            plot_metric_vs_sparsity(rows, metric_keys[0], out_dir / "compare.png",
                                    title=f"{getattr(problem, 'name', 'model')}: methods at equal {kind}",
                                    x="macs_kept" if budgets else "sparsity", reference=agg[0].get(metric_keys[0]))
    return table


def unpruned_row(row: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The unpruned model as an aggregate row (from a pruned row's ``*_before`` values)."""
    out: dict[str, Any] = {"setting": row.get("setting"), "method": "unpruned", "seeds": [row.get("seed")], "k": 0,
                           "target": None}
    for key in keys:
        before = row.get(f"{key}_before")
        out[key] = 1.0 if key.endswith("_kept") else (before if key != "method_seconds" else None)
        out[key + "_std"] = 0.0
    return out


def _figure(prep: Prepared, rows: list[dict[str, Any]], path: Path, metric: str) -> dict[str, Any]:
    """figure.png at the most pruned target: the best QUBO and the best greedy method of the first seed,
    on the test image where the QUBO's lead is its median lead."""
    last = rows[-1]["budget"] if "budget" in rows[-1] else rows[-1]["sparsity"]
    at = [r for r in rows if r.get("budget", r["sparsity"]) == last and r["seed"] == rows[0]["seed"]]
    columns = [("unpruned", prep.model)]
    for kind in ("qubo", "greedy"):
        mine = [r for r in at if method_spec(r["method"]).kind == kind]
        if mine:
            best = max(mine, key=lambda r: r[metric])
            gated = apply_mask(copy.deepcopy(prep.model), prep.space, unpack_mask(best["mask"], prep.space.N),
                               mode="gate")
            columns.append((best["method"], gated))
    title = f"pruned at {last}" if isinstance(last, str) else f"{last:.0%} of the units pruned"
    test = prep.work.test if len(columns) < 3 else typical_image(columns[1][1], columns[2][1], prep.work.test)
    info = write_figure(path, columns, test, images=1, panel_px=240, title=title)
    return {**info, "target": last}


_METRIC_ORDER = ("psnr", "ssim", "accuracy", "metric")
