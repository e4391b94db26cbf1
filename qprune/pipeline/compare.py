"""Methods side by side at exactly the same k: rows for the paper-style tables.

Signals are collected once per model and filter space (the union of what the methods need), so a
comparison of N methods costs one calibration pass, not N.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from qprune.atomic import atomic_open, write_json
from qprune.errors import QpruneError
from qprune.pipeline.budgeted import BudgetRequest
from qprune.pipeline.methods import MethodOptions, method_spec, method_weights
from qprune.pipeline.run import prepare, resolve_k, run_method, tune_weights
from qprune.pipeline.report import aggregate, compare_markdown, machine_info, plot_metric_vs_sparsity


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
) -> list[dict[str, Any]]:
    """One row per (sparsity, method, seed): metrics after pruning, params, MACs, latency, time.

    With ``budgets`` (then ``sparsities`` must be empty) the rows are per (budget, method, seed):
    every method prunes to the same budget (:func:`qprune.pipeline.budgeted.select_budget_mask`),
    each row with its own count ``k`` and ``sparsity`` = k / N.

    ``residual_branches`` is :func:`qprune.model.space.build_space`'s. ``options`` steer every run
    (its seed is replaced by each of ``seeds``). With ``tune > 0`` each method with weights (the
    paper's QUBOs) first has them searched for ``tune`` trials on the VALIDATION split at that k or
    budget (the paper's procedure); the rows report test-split metrics. With ``finetune`` every pruned model is also fine-tuned and the
    rows get ``<metric>_ft`` (a greedy mask, the same for every seed, is fine-tuned once, with the
    first seed).
    """
    options = options or MethodOptions()
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
    targets: list[float | BudgetRequest] = list(budgets) or list(sparsities)
    prep = prepare(model, problem, methods=methods, layers=layers, min_keep=min_keep,
                   residual_branches=residual_branches, fisher=options.fisher, weights=options.weights,
                   progress=progress)
    setting = setting or (f"{layers} layers" if layers is not None else "full model")
    rows: list[dict[str, Any]] = []
    jobs = [(s, m, seed) for s in targets for m in methods for seed in seeds]
    # deterministic methods give the same mask for every seed: run them once, reuse the row
    done: dict[tuple[Any, str], dict[str, Any]] = {}
    tuned: dict[tuple[Any, str], tuple[Any, float]] = {}
    bar = tqdm(jobs, desc="compare", disable=not progress)
    for target, method, seed in bar:
        budget = target if isinstance(target, BudgetRequest) else None
        bar.set_postfix_str(f"{method} {budget.budget.text if budget else f's={target:g}'} seed={seed}")
        spec = method_spec(method)
        if spec.kind == "greedy" and (target, method) in done:
            rows.append(dict(done[(target, method)], seed=seed))
            continue
        run_options = replace(options, seed=seed)
        tune_seconds = None
        if tune > 0 and method_weights(spec):
            if (target, method) not in tuned:
                t0 = time.perf_counter()
                goal = budget if budget else resolve_k(prep.space.N, target)
                found = tune_weights(prep, method, goal, replace(options, seed=seeds[0]), n_trials=tune, progress=False)
                tuned[(target, method)] = (found.best_weights, time.perf_counter() - t0)
            weights, tune_seconds = tuned[(target, method)]
            run_options = replace(run_options, weights=weights)
        t0 = time.perf_counter()
        result = run_method(prep, method, sparsity=None if budget else target, options=run_options,
                            remove=remove or finetune is not None, budget=budget)
        elapsed = time.perf_counter() - t0
        row: dict[str, Any] = {
            "setting": setting, "method": method, "seed": seed, "k": result.k,
            "sparsity": result.k / prep.space.N if budget else target,
            **({"budget": budget.budget.text} if budget else {}),
            "units": prep.space.N, "energy": result.energy, "gamma": result.gamma,
            "method_seconds": elapsed, "signals_seconds": prep.timings.get("signals"),
            "tune_seconds": tune_seconds,
            "weights": asdict(run_options.weights) if run_options.weights is not None else None,
        }
        row.update({f"{name}": v for name, v in result.metrics_after.items()})
        row.update({f"{name}_before": v for name, v in result.metrics_before.items()})
        row.update({f"{name}": v for name, v in result.stats_after.items()})
        row.update({f"{name}_before": v for name, v in result.stats_before.items()})
        if budget is not None and budget.budget.kind in ("params", "macs"):
            row[f"{budget.budget.kind}_kept"] = row[budget.budget.kind] / row[f"{budget.budget.kind}_before"]
        if finetune is not None:
            row.update(_finetuned(problem, model, result.pruned_model, finetune, seed))
        rows.append(row)
        done[(target, method)] = row
    return rows


def compare_methods(
    model: Any,
    problem: Any,
    *,
    methods: Sequence[str],
    sparsities: Sequence[float],
    seeds: Sequence[int] = (0,),
    out_dir: Path | None = None,
    extra: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> str:
    """Run :func:`compare_rows`, write compare.{md,json,png} to ``out_dir`` and return the table."""
    rows = compare_rows(model, problem, methods=methods, sparsities=sparsities, seeds=seeds, **kwargs)
    budgets = [b.budget.text for b in kwargs.get("budgets", ())]
    metric_keys = [k for k in _METRIC_ORDER if k in rows[0]]
    metric_keys += [f"{k}_ft" for k in metric_keys if f"{k}_ft" in rows[0]]
    keys = metric_keys + [k for k in ("params", "macs", "macs_kept", "params_kept", "latency_ms", "method_seconds")
                          if k in rows[0]]
    agg = aggregate(rows, keys)
    title = (f"qprune compare: {getattr(problem, 'name', 'model')}, "
             + (f"budget {', '.join(budgets)}" if budgets else f"sparsity {', '.join(map(str, sparsities))}"))
    table = compare_markdown(agg, keys, title=title)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(out_dir / "compare.md") as fh:
            fh.write(table)
        write_json(out_dir / "compare.json", {
            "problem": getattr(problem, "name", None), "methods": list(methods), "sparsities": list(sparsities),
            "budgets": budgets,
            "seeds": list(seeds), "rows": rows, "aggregate": agg, "machine": machine_info(), **(extra or {}),
        })
        if metric_keys:
            plot_metric_vs_sparsity(rows, metric_keys[0], out_dir / "compare.png", title=title,
                                    x="budget" if budgets else "sparsity")
    return table


_METRIC_ORDER = ("psnr", "ssim", "accuracy", "metric")
