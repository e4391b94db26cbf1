"""Reports: one run as Markdown/JSON, and the paper-style comparison table with a plot."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from qprune.atomic import atomic_open, write_json


def machine_info() -> dict[str, Any]:
    """Where a figure was measured: written next to every benchmark and comparison."""
    import torch

    import dimod
    import scipy
    from dwave import samplers

    from qprune.refine.scoring.forward import native_bfloat16

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        # figures from a shared machine mean little without its load
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        # bfloat16 figures depend on it: emulated bfloat16 runs slower than float32
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bfloat16": native_bfloat16(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dimod": dimod.__version__,
        "dwave_samplers": samplers.__version__,
    }


def training_summary(meta: Mapping[str, Any]) -> str:
    """One sentence on how a checkpoint was trained, from the record ``qprune train`` stores in it.

    Benchmarks print it so that a model trained for fewer epochs than the paper's 100 is visible
    next to every figure measured on it.
    """
    if not meta:
        return "the checkpoint carries no training record"
    epochs = meta.get("epochs")
    secs = meta.get("train_seconds")
    text = f"{epochs} epochs, `{meta.get('schedule')}` schedule, lr {meta.get('lr')}"
    if secs is not None:
        text += f", {float(secs):.0f} s"
    if meta.get("command"):
        text += f", command `{meta['command']}`"
    if isinstance(epochs, int) and epochs < 100:
        text += f" (the paper trains 100 epochs; this model had {epochs})"
    return text


def summarize(result: Any, *, backend: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON-ready summary of a :class:`qprune.pipeline.run.PruneResult`."""
    info = {k: v for k, v in result.solver_info.items() if _jsonable(v)}
    out = {
        "method": result.method,
        "backend": backend,
        "k": result.k,
        "units": result.space.N,
        "seed": result.seed,
        "metrics_before": result.metrics_before,
        "metrics_after": result.metrics_after,
        "stats_before": result.stats_before,
        "stats_after": result.stats_after,
        "energy": result.energy,
        "gamma": result.gamma,
        "timings": result.timings,
        "per_layer": result.per_layer(),
        "solver_info": info,
    }
    if extra:
        out.update(extra)
    return out


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, dict, tuple))


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}g}"
    return str(v)


def render_markdown(summary: Mapping[str, Any], *, title: str = "qprune report") -> str:
    """Human-readable Markdown of :func:`summarize`'s output."""
    lines = [f"# {title}", ""]
    lines += [
        f"- method: `{summary['method']}`" + (f" on backend `{summary['backend']}`" if summary.get("backend") else ""),
        f"- pruned units: {summary['k']} of {summary['units']} "
        f"({100.0 * summary['k'] / max(summary['units'], 1):.1f} %), seed {summary['seed']}",
        f"- QUBO energy of the chosen mask: {_fmt(summary.get('energy'), 8)}; gamma: {_fmt(summary.get('gamma'), 6)}",
    ]
    if summary["solver_info"].get("repaired") is not None:
        lines.append(f"- k-preserving repair used: {summary['solver_info'].get('repaired')}")
    lines += ["", "## Quality and size", "", "| | before | after |", "|---|---|---|"]
    for name in summary["metrics_before"]:
        lines.append(f"| {name} | {_fmt(summary['metrics_before'][name])} | {_fmt(summary['metrics_after'].get(name))} |")
    for name in summary["stats_before"]:
        lines.append(f"| {name} | {_fmt(summary['stats_before'][name])} | {_fmt(summary['stats_after'].get(name))} |")
    if summary.get("finetune"):
        lines += _finetune_lines(summary["finetune"])
    if summary.get("figure"):
        fig = summary["figure"]
        lines += ["", f"## Test images ({', '.join(fig['columns'])}; before any fine-tuning)", "",
                  f"![{' | '.join(fig['columns'])}]({Path(fig['path']).name})", "",
                  f"`{fig['path']}`: PSNR (dB) of noisy / unpruned / pruned per image: "
                  + "; ".join(" / ".join(f"{v:.2f}" for v in row) for row in fig["psnr"])]
    lines += ["", "## Wall time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in summary["timings"].items()]
    lines += ["", "## Per layer", "", "| layer | units | pruned | kept |", "|---|---|---|---|"]
    lines += [f"| `{r['layer']}` | {r['units']} | {r['pruned']} | {r['kept']} |" for r in summary["per_layer"]]
    return "\n".join(lines) + "\n"


def _finetune_lines(ft: Mapping[str, Any]) -> list[str]:
    distill = ft.get("distill_weight")
    how = f"distilled from the unpruned model (weight {distill:g})" if distill is not None else "no distillation"
    lines = ["", "## Recovery fine-tuning", "",
             f"{ft['epochs']} epochs, lr {ft['lr']:g}, {how}, {ft['seconds']} s (held-out test split).", "",
             "| | pruned | fine-tuned | gain |", "|---|---|---|---|"]
    lines += [f"| {k} | {_fmt(v)} | {_fmt(ft['after'].get(k))} | {ft['gain'].get(k, 0.0):+.4g} |"
              for k, v in ft["before"].items()]
    return lines


def write_report(path: str | os.PathLike[str], summary: Mapping[str, Any], *, title: str = "qprune report",
                 render: Callable[[Mapping[str, Any]], str] | None = None) -> None:
    """Markdown to ``path`` (``.md``) or JSON (``.json``), atomically; ``render`` makes the Markdown
    of another command's summary (default: :func:`render_markdown` of a prune summary)."""
    if Path(path).suffix.lower() == ".json":
        write_json(path, dict(summary))
        return
    with atomic_open(path) as fh:
        fh.write(render(summary) if render is not None else render_markdown(summary, title=title))


# --------------------------------------------------------------------------- comparison tables


def _target(row: Mapping[str, Any]) -> Any:
    """What a row was pruned to: its budget (``"macs=0.5"``) or its sparsity."""
    return row.get("budget") if row.get("budget") is not None else row.get("sparsity")


def aggregate(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and spread (sample std) of ``keys`` per (setting, method, sparsity or budget) over seeds."""
    groups: dict[tuple[Any, str, Any], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("setting"), r["method"], _target(r)), []).append(r)
    out = []
    for (setting, method, target), rs in groups.items():
        ks = sorted({int(r["k"]) for r in rs})  # a budget may prune another count per seed
        agg: dict[str, Any] = {"setting": setting, "method": method, "seeds": [r.get("seed") for r in rs],
                               "k": ks[0] if len(ks) == 1 else f"{ks[0]}-{ks[-1]}", "target": target}
        for key in keys:
            vals = np.array([r[key] for r in rs if r.get(key) is not None], dtype=float)
            agg[key] = float(vals.mean()) if vals.size else None
            agg[key + "_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        out.append(agg)
    return out


def compare_markdown(agg: Sequence[Mapping[str, Any]], keys: Sequence[str], *, title: str) -> str:
    """The paper-style table: one row per (setting, method, target), mean ± std over seeds; kept
    fractions in percent, counts as integers, times in seconds."""
    budgets = any(isinstance(r.get("target"), str) for r in agg)
    head = ["setting", "method", "budget" if budgets else "sparsity", "k"] + [_HEADS.get(k, k) for k in keys]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in agg:
        target = r.get("target")
        cells = [str(r["setting"]), f"`{r['method']}`", "–" if target is None else f"{target:g}"
                 if isinstance(target, float) else str(target), str(r["k"])]
        for key in keys:
            v, s = r.get(key), r.get(key + "_std", 0.0)
            cells.append(_cell(key, v, s if len(r["seeds"]) > 1 else None))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_HEADS = {"macs_kept": "MACs kept", "params_kept": "params kept", "method_seconds": "time s"}


def pivot_markdown(agg: Sequence[Mapping[str, Any]], metric: str) -> str:
    """``metric`` by method (rows, the unpruned model first) and target (columns), with the seconds
    each method took to choose its masks over all targets: the table to read first."""
    targets = list(dict.fromkeys(r["target"] for r in agg if r["method"] != "unpruned"))
    methods = list(dict.fromkeys(r["method"] for r in agg))
    cell = {(r["method"], r["target"]): r for r in agg}
    names = [t if isinstance(t, str) else f"{100 * t:g} % of the units" for t in targets]
    lines = [f"| {metric} | " + " | ".join(names) + " | time s |", "|---|" + "---|" * (len(targets) + 1)]
    for m in methods:
        if m == "unpruned":
            base = next(r for r in agg if r["method"] == m)
            lines.append("| unpruned | " + " | ".join(_cell(metric, base.get(metric), None) for _ in targets) + " | – |")
            continue
        secs = [cell[(m, t)].get("method_seconds") for t in targets if (m, t) in cell]
        vals = [_cell(metric, cell[(m, t)].get(metric), None) if (m, t) in cell else "–" for t in targets]
        total = sum(v for v in secs if v is not None)
        lines.append(f"| {m} | " + " | ".join(vals) + f" | {total:.1f} |")
    return "\n".join(lines) + "\n"


def _cell(key: str, v: float | None, std: float | None) -> str:
    """One table value: ``50.0 %`` for kept fractions, ``12,860`` for counts, 4 digits otherwise."""
    if v is None:
        return "–"
    if key.endswith("_kept"):
        text, spread = f"{100 * v:.1f} %", None if std is None else f"{100 * std:.1f}"
    elif key in ("params", "macs", "flops"):
        text, spread = f"{v:,.0f}", None if std is None else f"{std:,.0f}"
    elif key.endswith("seconds"):
        text, spread = f"{v:.1f}", None if std is None else f"{std:.1f}"
    else:
        text, spread = f"{v:.4g}", None if std is None else f"{std:.2g}"
    return text if spread is None else f"{text} ± {spread}"


def _target_fraction(row: Mapping[str, Any]) -> float:
    """The budget fraction of a budget row (``"macs=0.5"`` -> 0.5): rows of one budget share a point."""
    return float(str(row["budget"]).split("=", 1)[1])


def plot_metric_vs_sparsity(
    rows: Sequence[Mapping[str, Any]], metric: str, path: str | os.PathLike[str], *, title: str = "",
    x: str = "sparsity", reference: float | None = None,
) -> None:
    """PNG of ``metric`` against ``x``, one line per method (mean over seeds, std as error bars):
    ``"sparsity"``; ``"budget"``, the kept fraction a budget row asked for; or ``"macs_kept"``, the
    fraction of the MACs each pruned model really kept. ``reference``: the unpruned model's metric,
    drawn as a dashed line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_method: dict[str, dict[float, list[tuple[float, float]]]] = {}
    for r in rows:
        if r.get(metric) is None:
            continue
        key = float(r["sparsity"]) if x == "sparsity" else _target_fraction(r)
        at = float(r["macs_kept"]) if x == "macs_kept" else key
        by_method.setdefault(r["method"], {}).setdefault(key, []).append((at, float(r[metric])))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, points in sorted(by_method.items()):
        keys = sorted(points)
        xs = [100 * float(np.mean([p[0] for p in points[k]])) for k in keys]
        means = [float(np.mean([p[1] for p in points[k]])) for k in keys]
        errs = [float(np.std([p[1] for p in points[k]], ddof=1)) if len(points[k]) > 1 else 0.0 for k in keys]
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=method)
    if reference is not None:
        ax.axhline(reference, color="0.3", ls="--", lw=1, label="unpruned")
    kind = str(rows[0].get("budget", "")).split("=", 1)[0] if rows else ""
    ax.set_xlabel({"sparsity": "pruned units (%)", "macs_kept": "MACs kept (% of the unpruned model)"}.get(
        x, f"{kind} kept: budget (% of the unpruned model)"))
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs {x}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


def plot_training(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = "") -> None:
    """PNG of a training history, as the paper's Figure 4: loss, then each metric, train and validation.

    ``history`` rows are what ``qprune train`` records (``epoch``, ``train_loss``, ``train_<m>``,
    ``val_<m>``). The validation loss panel shows the metric's negative where the loss is -PSNR.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("the training history is empty: nothing to plot")
    epochs = [int(r["epoch"]) for r in history]
    metrics = [k[len("val_"):] for k in history[0] if k.startswith("val_")]
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.2 * (1 + len(metrics)), 3.6), dpi=120)
    axes = np.atleast_1d(axes)
    axes[0].plot(epochs, [r["train_loss"] for r in history], marker=".", label="train")
    axes[0].set_title("loss")
    for ax, m in zip(axes[1:], metrics):
        for split in ("train", "val"):
            if f"{split}_{m}" in history[0]:
                ax.plot(epochs, [r[f"{split}_{m}"] for r in history], marker=".",
                        label="validation" if split == "val" else "train (fixed subset)")
        ax.set_title(m.upper() if m in ("psnr", "ssim") else m)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
