"""How qprune's cost grows with the number of units, stage by stage, beside torch-pruning.

Every row is one torchvision architecture with random weights (``torch.manual_seed(0)``), 64x64
inputs, 8 calibration images (random, class targets), pruned by ``qprune.prune()`` at 30 % of its
units with ``hybrid-qubo`` on ``neal`` and the default strategy (``--strategy`` to change it); for the
``--loss-model`` models (default: efficientnet_b0 and resnet50) also with ``fisher-qubo``.
Stages, from ``PruneResult.timings``: space, signals, formulate, solve (the strategy alone:
``timings["solve"]`` minus formulate, which it contains), remove; ``total`` is the wall time of the
whole ``prune()`` call (it also evaluates and measures both models). Right after, in the same run,
with the same batches and thread count: torch-pruning's global Taylor pruning at 30 % (its version
is recorded)
(``MetaPruner`` + ``GroupTaylorImportance``, ``global_pruning=True``, the final classifier ignored),
timed from the dependency graph to the pruned model (graph, one forward/backward, step).

``--gamma-on``: for these models the gamma search (the strategy before issue 18's change) runs on
the SAME formulation, and both masks are scored on the same BQMs: at the gamma search's final gamma
(its own QUBO) and at the default strategy's gamma; the layerwise strategy is also run with that
gamma given. Both masks are scored by the same function (``Formulation.energy``) and "no worse"
allows 1e-12 relative (the rounding of two summation orders). The gamma search's mask is stored
(``x_hex``), and ``--gamma-from OLD.json`` takes the gamma search's figures from an earlier run
instead of repeating it (28 min on efficientnet_b0), when this run's formulation is that run's
(the default strategy's first-pass gamma, a function of the formulation alone, must be equal); the
rest is measured anew and the reuse is recorded. ``--sparsify``: for these models, what keeping only each unit's strongest couplings
costs (energy on the dense QUBO at the same gamma, agreement of the pruned model's outputs with the
unpruned one's on 8 other images) and what it saves a sampler (one neal call on the largest layer).

Slopes: least squares of log(time) on log(units) per stage over the rows. Figures come from a
shared machine: every row records the load average before and after it.

    .venv/bin/python benchmarks/scale.py [--quick] [--models resnet18,resnet50] [--threads 1]

Writes ``benchmarks/results/scale.{json,md,png}`` (``--out`` for another stem).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# helper module beside this script (benchmarks/)
from common import BRANCHES, RESULTS, save_png

FULL = ("regnet_x_400mf", "mobilenet_v2", "resnet18", "resnet34", "efficientnet_b0", "resnet50",
        "efficientnet_b2", "wide_resnet50_2", "resnet101")
QUICK = ("regnet_x_400mf", "resnet18")
MUST = ("resnet50", "efficientnet_b0")  # issue 18's targets: total <= 30 s, solve <= 10 s
TARGET_TOTAL_S, TARGET_SOLVE_S = 30.0, 10.0
STAGES = ("space", "signals", "formulate", "solve", "remove")
SPARSE_KEEPS = (4, 16, 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"two small models ({', '.join(QUICK)})")
    ap.add_argument("--models", default=None, help=f"comma-separated torchvision names (default: {','.join(FULL)})")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every row")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--strategy", default=None, help="exact-k strategy (default: prune()'s default)")
    ap.add_argument("--gamma-on", default=None, help="models that also get the gamma search (default: "
                    f"{','.join(MUST)}; --quick: the first model; 'none' for none)")
    ap.add_argument("--sparsify", default=None, help="models that get the sparse-coupling measurement "
                    "(default: resnet50; --quick: the first model; 'none' for none)")
    ap.add_argument("--gamma-from", type=Path, default=None, help="an earlier scale JSON whose gamma-search "
                    "figures are reused for the --gamma-on models (checked against this run's formulation)")
    ap.add_argument("--loss-model", default=None, help="models that also get a fisher-qubo prune() row (default: "
                    f"{','.join(MUST)}; --quick: the first model; 'none' for none)")
    ap.add_argument("--no-torch-pruning", action="store_true", help="skip the torch-pruning column")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.images < 1 or args.size < 16 or not 0 < args.sparsity < 1:
        ap.error("--threads and --images must be >= 1, --size >= 16, --sparsity in (0, 1)")
    if args.gamma_from is not None and not args.gamma_from.is_file():
        ap.error(f"--gamma-from {args.gamma_from}: no such file")
    models = QUICK if args.quick and args.models is None else tuple((args.models or ",".join(FULL)).split(","))
    args.model_list = models
    args.gamma_list = _names(args.gamma_on, models[:1] if args.quick else MUST)
    args.sparse_list = _names(args.sparsify, models[:1] if args.quick else ("resnet50",))
    args.loss_model_list = _names(args.loss_model, models[:1] if args.quick else MUST)
    args.keeps = SPARSE_KEEPS[:1] if args.quick else SPARSE_KEEPS
    return args


def _names(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return tuple(default)
    return () if value == "none" else tuple(value.split(","))


def _model(name: str) -> torch.nn.Module:
    from qprune.torchvision_compat import prepare_torchvision

    prepare_torchvision()
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval()


def _data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.images, 3, args.size, args.size, generator=gen)
    y = torch.randint(0, 1000, (args.images,), generator=gen)
    held_out = torch.randn(args.images, 3, args.size, args.size, generator=gen)
    return x, y, held_out


@torch.no_grad()
def fidelity(reference: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """How close a pruned model's outputs stay to the unpruned ones (random weights: no accuracy to
    speak of): top-1 agreement and the relative L2 error of the logits."""
    a, b = reference(x), model(x)
    return {"top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
            "rel_logit_error": float((a - b).norm() / a.norm().clamp_min(1e-30))}


def torch_pruning_row(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, sparsity: float,
                      held_out: torch.Tensor) -> dict[str, Any]:
    """torch-pruning's global Taylor pruning, timed from the dependency graph to the pruned model."""
    import torch_pruning as tp

    reference = model
    model = copy.deepcopy(model)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=tp.importance.GroupTaylorImportance(),
                                  global_pruning=True, pruning_ratio=sparsity, ignored_layers=[last])
    t1 = time.perf_counter()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    t2 = time.perf_counter()
    pruner.step()
    t3 = time.perf_counter()
    model.zero_grad()
    return {"total_s": t3 - t0, "graph_s": t1 - t0, "gradient_s": t2 - t1, "step_s": t3 - t2,
            "params": int(sum(p.numel() for p in model.parameters())), **fidelity(reference, model.eval(), held_out)}


def qprune_row(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, held_out: torch.Tensor,
               args: argparse.Namespace, method: str = "hybrid-qubo") -> tuple[dict[str, Any], Any]:
    """One ``prune()`` call: stage times, energy, the pruned model's size and fidelity."""
    import qprune

    options = qprune.MethodOptions() if args.strategy is None else qprune.MethodOptions(strategy=args.strategy)
    t0 = time.perf_counter()
    res = qprune.prune(model, [(x, y)], sparsity=args.sparsity, method=method, backend="neal", options=options,
                       space=qprune.SpaceOptions(residual_branches=BRANCHES), loss_fn=F.cross_entropy, progress=False)
    total = time.perf_counter() - t0
    t = res.timings
    stages = {"space": t["space"], "signals": t["signals"], "formulate": t["formulate"],
              "solve": t["solve"] - t["formulate"], "remove": t.get("remove", 0.0)}
    info = res.solver_info
    row = {"model": name, "method": method, "units": int(res.space.N), "layers": len(res.space.layers), "k": int(res.k),
           "stages_s": stages, "evaluate_s": t.get("evaluate", 0.0), "total_s": total,
           "solve_stage_s": t["solve"], "strategy": info.get("strategy", "gamma"),
           "strategy_times": info.get("times", {"total_s": info.get("total_time_s")}),
           "energy": res.energy, "gamma": res.gamma, "params_before": res.stats_before.get("params"),
           "params_after": res.stats_after.get("params"), **fidelity(model, res.gated_model, held_out)}
    return row, res


NO_WORSE_RTOL = 1e-12  # two summation orders of the same state's energy differ by ~1e-11 at |E| ~ 2,000


def no_worse(a: float, b: float) -> bool:
    """Energy ``a`` is at most ``b`` up to rounding."""
    return bool(a <= b + NO_WORSE_RTOL * (1.0 + abs(b)))


def _pack(x: np.ndarray) -> str:
    return np.packbits(np.asarray(x, np.uint8)).tobytes().hex()


def _unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(np.int8)


def _gamma_search(res: Any, con: Any, old: dict[str, Any] | None) -> tuple[dict[str, Any], np.ndarray | None]:
    """The gamma search's figures and mask: run now, or taken from ``old`` (an earlier run's entry,
    used only when its default gamma is this run's: the same formulation)."""
    from qprune.solve.strategies import get_strategy

    if old is not None:
        if old["default"]["gamma"] != res.gamma:
            raise SystemExit(f"--gamma-from: its default gamma {old['default']['gamma']!r} is not this run's "
                             f"{res.gamma!r}: another formulation, run the gamma search again")
        g = dict(old["gamma_search"])
        g["at_default_gamma"] = old["at_default_gamma"]["gamma_search"]
        x = _unpack(g["x_hex"], res.space.N) if "x_hex" in g else None
        return g, x
    t0 = time.perf_counter()
    r = get_strategy("gamma").solve(res.formulation, int(res.k), "neal", 0, constraint=con)
    g = {"time_s": time.perf_counter() - t0, "gamma": r.gamma, "energy": r.energy, "solves": r.info.get("solves"),
         "x_hex": _pack(r.x)}
    return g, np.asarray(r.x, np.int8)


def gamma_comparison(res: Any, args: argparse.Namespace, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gamma search and the default strategy on the same formulation, scored on the same BQMs
    (``old``: an earlier run's entry for this model whose gamma search is reused)."""
    from qprune.pipeline.run import constraint_of
    from qprune.solve.strategies import get_strategy

    form, k = res.formulation, int(res.k)
    con = constraint_of(res.space, k)
    load = list(os.getloadavg())
    g, gx = _gamma_search(res, con, old)
    t0 = time.perf_counter()
    given = get_strategy("layerwise").solve(form, k, "neal", 0, constraint=con, options={"gamma": g["gamma"]})
    t_given = time.perf_counter() - t0
    mask = np.asarray(res.mask, np.int8)
    # every mask scored by Formulation.energy when the gamma search's mask is known (its own figure
    # stays in gamma_search.energy); a reused run without a stored mask keeps its recorded figures
    g_at_default = g.pop("at_default_gamma", None)
    g_at_own = g["energy"] if gx is None else float(form.energy(gx, g["gamma"]))
    g_at_default = g_at_default if gx is None else float(form.energy(gx, res.gamma))
    at_g = {"gamma_search": g_at_own, "default": float(form.energy(mask, g["gamma"])),
            "layerwise_given_that_gamma": given.energy, "layerwise_given_time_s": t_given}
    at_d = {"gamma_search": g_at_default, "default": res.energy}
    return {
        "gamma_search": g,
        "gamma_search_reused_from": None if old is None else (old.get("gamma_search_reused_from") or str(args.gamma_from)),
        "default": {"strategy": res.solver_info.get("strategy", "gamma"), "gamma": res.gamma, "energy": res.energy},
        "at_gamma_search_gamma": at_g,  # the same QUBO: the gamma search's final BQM
        "at_default_gamma": at_d,  # and the default strategy's BQM
        "default_no_worse": {"at_gamma_search_gamma": no_worse(at_g["default"], at_g["gamma_search"]),
                             "layerwise_given": no_worse(at_g["layerwise_given_that_gamma"], at_g["gamma_search"]),
                             "at_default_gamma": no_worse(at_d["default"], at_d["gamma_search"])},
        "load_before": load, "load_after": list(os.getloadavg()),
    }


def sparsify_measure(model: torch.nn.Module, res: Any, held_out: torch.Tensor, keeps: tuple[int, ...],
                     ) -> dict[str, Any]:
    """Energy (dense QUBO, same gamma) and fidelity of the masks solved on sparsified couplings, and one
    neal call on the largest layer dense vs sparse."""
    from dwave.samplers import SimulatedAnnealingSampler

    from qprune.model.masking import apply_mask
    from qprune.pipeline.run import constraint_of
    from qprune.solve.sparsify import sparsify, sparsify_block
    from qprune.solve.strategies import get_strategy

    form, k, gamma = res.formulation, int(res.k), float(res.gamma)
    con = constraint_of(res.space, k)
    dense = get_strategy("layerwise").solve(form, k, "neal", 0, constraint=con, options={"gamma": gamma})
    idx, M = max(form.blocks, key=lambda b: b[0].size)
    h = form.linear[idx] - gamma * form.reward[idx]
    rows = [{"keep": "all", "energy_dense": dense.energy, "nnz_fraction": 1.0,
             **fidelity(model, apply_mask(copy.deepcopy(model), res.space, dense.x.astype(bool)), held_out),
             "neal_largest_layer_s": _neal_time(SimulatedAnnealingSampler(), h, M)}]
    total_nnz = sum(int(np.count_nonzero(b)) for _, b in form.blocks)
    for keep in keeps:
        sf = sparsify(form, keep)
        s = get_strategy("layerwise").solve(sf, k, "neal", 0, constraint=con, options={"gamma": gamma})
        gated = apply_mask(copy.deepcopy(model), res.space, s.x.astype(bool))
        rows.append({"keep": keep, "energy_dense": float(form.energy(s.x, gamma)),
                     "nnz_fraction": sum(int(np.count_nonzero(b)) for _, b in sf.blocks) / max(1, total_nnz),
                     **fidelity(model, gated, held_out),
                     "neal_largest_layer_s": _neal_time(SimulatedAnnealingSampler(), h, sparsify_block(M, keep))})
    return {"gamma": gamma, "largest_layer_units": int(idx.size), "rows": rows}


def _neal_time(sampler: Any, h: np.ndarray, M: np.ndarray) -> float:
    import dimod

    iu, ju = np.triu_indices(M.shape[0], 1)
    v = M[iu, ju]
    nz = v != 0
    bqm = dimod.BinaryQuadraticModel.from_numpy_vectors(h, (iu[nz], ju[nz], v[nz]), 0.0, dimod.BINARY)
    t0 = time.perf_counter()
    sampler.sample(bqm, num_reads=5, seed=0)
    return time.perf_counter() - t0


def slopes(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Least-squares slope of log(time) on log(units), per stage, the total and torch-pruning."""
    n = np.log([r["units"] for r in rows])
    series = {s: [r["stages_s"][s] for r in rows] for s in STAGES}
    series["total"] = [r["total_s"] for r in rows]
    if all("torch_pruning" in r for r in rows):
        series["torch_pruning"] = [r["torch_pruning"]["total_s"] for r in rows]
    out: dict[str, float | None] = {}
    for name, ts in series.items():
        ok = np.array(ts) > 0
        out[name] = float(np.polyfit(n[ok], np.log(np.array(ts)[ok]), 1)[0]) if ok.sum() >= 2 and np.ptp(n[ok]) > 0 else None
    return out


def plot(rows: list[dict[str, Any]], path: Path, fitted: dict[str, float | None]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["units"])
    n = [r["units"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for s in STAGES:
        ax.plot(n, [max(r["stages_s"][s], 1e-4) for r in rows], "o-", label=f"{s} (slope {_fmt(fitted.get(s))})")
    ax.plot(n, [r["total_s"] for r in rows], "k^-", lw=2, label=f"qprune total (slope {_fmt(fitted.get('total'))})")
    if "torch_pruning" in fitted:
        ax.plot(n, [r["torch_pruning"]["total_s"] for r in rows], "s--", color="gray",
                label=f"torch-pruning Taylor (slope {_fmt(fitted.get('torch_pruning'))})")
    ax.axhline(TARGET_TOTAL_S, color="red", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("prunable units")
    ax.set_ylabel("seconds (wall)")
    ax.set_title("qprune.prune() stages vs units (hybrid-qubo, neal, 30 %)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    lines = [f"# qprune stages vs units ({payload['settings']['strategy']} strategy)", "",
             f"`{payload['command']}`; torch threads {payload['settings']['threads']}, "
             f"{payload['settings']['images']} images of {payload['settings']['size']}x{payload['settings']['size']}, "
             f"{payload['settings']['sparsity']:.0%} of units; torch-pruning {payload['settings'].get('torch_pruning')}; "
             "shared machine (load average 1/5/15 min per row).", "",
             "| model | units | k | space s | signals s | formulate s | solve s | remove s | prune() total s "
             "| torch-pruning s | energy | top-1 agree (qprune / tp) | load before -> after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st, tp = r["stages_s"], r.get("torch_pruning", {})
        lines.append(f"| {r['model']} | {r['units']} | {r['k']} | " + " | ".join(f"{st[s]:.2f}" for s in STAGES)
                     + f" | {r['total_s']:.2f} | {_fmt(tp.get('total_s'))} | {r['energy']:.6f} | "
                     f"{r['top1_agreement']:.2f} / {_fmt(tp.get('top1_agreement'))} | "
                     f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f} |")
    lines += ["", "Slope of log(time) on log(units): " + ", ".join(f"{k} {_fmt(v)}" for k, v in payload["slopes"].items()),
              "", "solve = the strategy alone (`timings['solve']` minus formulate, which it contains).", ""]
    lines += _targets_md(payload)
    lines += _loss_model_md(payload)
    lines += _gamma_md(payload)
    lines += _sparse_md(payload)
    return "\n".join(lines) + "\n"


def _loss_model_md(payload: dict[str, Any]) -> list[str]:
    rows = payload.get("loss_model") or []
    if not rows:
        return []
    out = ["## The loss model (fisher-qubo, 4 stages): prune() beside torch-pruning", "",
           "| model | units | prune() total s | signals s | formulate s | solve s | torch-pruning s | x torch-pruning |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tp = r.get("torch_pruning_s")
        st = r["stages_s"]
        out.append(f"| {r['model']} | {r['units']} | {r['total_s']:.2f} | {st['signals']:.2f} | {st['formulate']:.2f} | "
                   f"{st['solve']:.2f} | {_fmt(tp)} | {_fmt(None if not tp else r['total_s'] / tp, '.1f')} |")
    return out + ["", "signals: the first calibration pass; each later stage's pass is inside solve.", ""]


def _targets_md(payload: dict[str, Any]) -> list[str]:
    out = [f"## Issue 18 targets: prune() <= {TARGET_TOTAL_S:.0f} s, solve <= {TARGET_SOLVE_S:.0f} s", "",
           "| model | prune() total s | solve s (strategy) | timings['solve'] s (with formulate) | met |", "|---|---|---|---|---|"]
    for r in payload["rows"]:
        if r["model"] in MUST:
            out.append(f"| {r['model']} | {r['total_s']:.2f} | {r['stages_s']['solve']:.2f} | {r['solve_stage_s']:.2f} "
                       f"| {'yes' if r['meets_targets'] else 'NO'} |")
    return out + [""]


def _gamma_md(payload: dict[str, Any]) -> list[str]:
    comp = payload.get("gamma_comparison") or {}
    if not comp:
        return []
    out = ["## Same formulation: gamma search vs the default strategy (energy, lower is better)", "",
           "| model | gamma search s | default solve s | at gamma search's gamma: gamma / default / layerwise(given) "
           "| at default's gamma: gamma / default | default no worse (both gammas, given) | load |",
           "|---|---|---|---|---|---|---|"]
    notes = []
    for name, c in comp.items():
        a, b = c["at_gamma_search_gamma"], c["at_default_gamma"]
        ok = c.get("default_no_worse", {})
        flags = " / ".join("yes" if ok.get(key) else "NO" for key in
                           ("at_gamma_search_gamma", "at_default_gamma", "layerwise_given")) if ok else "-"
        solve_s = next(r["stages_s"]["solve"] for r in payload["rows"] if r["model"] == name)
        out.append(f"| {name} | {c['gamma_search']['time_s']:.1f} | {solve_s:.2f} | {a['gamma_search']:.6f} / "
                   f"{a['default']:.6f} / {a['layerwise_given_that_gamma']:.6f} | {b['gamma_search']:.6f} / "
                   f"{b['default']:.6f} | {flags} | {c['load_before'][0]:.1f} -> {c['load_after'][0]:.1f} |")
        if c.get("gamma_search_reused_from"):
            notes.append(f"{name}: the gamma search's figures (time, gamma, energies) are those of the run in "
                         f"`{c['gamma_search_reused_from']}` (same formulation: equal default gamma); the rest of "
                         "the row is this run's.")
        diffs = (a["default"] - a["gamma_search"], a["layerwise_given_that_gamma"] - a["gamma_search"],
                 b["default"] - b["gamma_search"])
        notes.append(f"{name}: default minus gamma search: {diffs[0]:.3g} at its gamma, {diffs[2]:.3g} at the "
                     f"default's; layerwise given its gamma: {diffs[1]:.3g}.")
    return out + ["", f"No worse: at most the gamma search's energy + {NO_WORSE_RTOL:g} x (1 + |E|) (rounding of "
                  "two summation orders of one state's energy).", "", *[f"* {n}" for n in notes], ""]


def _sparse_md(payload: dict[str, Any]) -> list[str]:
    sp = payload.get("sparsify") or {}
    out = []
    for name, s in sp.items():
        out += [f"## Sparse couplings on {name} (layerwise at gamma {s['gamma']:.6g}; largest layer "
                f"{s['largest_layer_units']} units)", "",
                "| couplings kept per unit | nonzero fraction | energy on the dense QUBO | top-1 agreement "
                "| rel. logit error | one neal call on the largest layer s |", "|---|---|---|---|---|---|"]
        for r in s["rows"]:
            out.append(f"| {r['keep']} | {r['nnz_fraction']:.3f} | {r['energy_dense']:.6f} | {r['top1_agreement']:.2f} "
                       f"| {r['rel_logit_error']:.4f} | {r['neal_largest_layer_s']:.2f} |")
        out.append("")
    return out


def _tp_version() -> str | None:
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    return str(getattr(tp, "__version__", "unknown"))


def warm_up(args: argparse.Namespace) -> None:
    """Imports and first calls (torch-pruning, neal, the hooks) before anything is timed."""
    import qprune

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 10)).eval()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    qprune.prune(net, [(x, y)], sparsity=0.25, loss_fn=F.cross_entropy, progress=False)
    if not args.no_torch_pruning:
        torch_pruning_row(net, x, y, 0.25, x)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from qprune.pipeline.report import machine_info

    warm_up(args)
    rows, gamma_comp, sparse, loss_rows = [], {}, {}, []
    reuse = {} if args.gamma_from is None else json.loads(args.gamma_from.read_text()).get("gamma_comparison", {})
    for name in args.model_list:
        model = _model(name)
        x, y, held_out = _data(args)
        load0 = list(os.getloadavg())
        row, res = qprune_row(name, model, x, y, held_out, args)
        if not args.no_torch_pruning:
            row["torch_pruning"] = torch_pruning_row(model, x, y, args.sparsity, held_out)
        row["load_before"], row["load_after"] = load0, list(os.getloadavg())
        row["meets_targets"] = bool(row["total_s"] <= TARGET_TOTAL_S and row["stages_s"]["solve"] <= TARGET_SOLVE_S)
        rows.append(row)
        print(f"{name}: {row['units']} units, total {row['total_s']:.2f} s, "
              + ", ".join(f"{s} {row['stages_s'][s]:.2f}" for s in STAGES)
              + f", torch-pruning {_fmt(row.get('torch_pruning', {}).get('total_s'))} s, load {load0[0]:.1f}", flush=True)
        if name in args.gamma_list:
            gamma_comp[name] = gamma_comparison(res, args, reuse.get(name))
            print(f"  gamma search {gamma_comp[name]['gamma_search']['time_s']:.1f} s; at its gamma: "
                  f"{gamma_comp[name]['at_gamma_search_gamma']}", flush=True)
        if name in args.sparse_list:
            sparse[name] = sparsify_measure(model, res, held_out, args.keeps)
        del res
        if name in args.loss_model_list:
            loss_rows.append(qprune_row(name, model, x, y, held_out, args, "fisher-qubo")[0])
            loss_rows[-1]["torch_pruning_s"] = row.get("torch_pruning", {}).get("total_s")
            print(f"  fisher-qubo: total {loss_rows[-1]['total_s']:.2f} s", flush=True)
    rows.sort(key=lambda r: r["units"])
    fitted = slopes(rows) if len(rows) >= 2 else {}
    payload = {"benchmark": "scale", "command": " ".join(["scale.py", *(argv if argv is not None else sys.argv[1:])]),
               "settings": {"threads": args.threads, "size": args.size, "images": args.images,
                            "sparsity": args.sparsity, "strategy": rows[0]["strategy"] if rows else None,
                            "method": "hybrid-qubo", "backend": "neal", "torch_pruning": _tp_version()},
               "machine": machine_info(), "rows": rows, "slopes": fitted,
               "targets": {"total_s": TARGET_TOTAL_S, "solve_s": TARGET_SOLVE_S, "models": list(MUST)},
               "gamma_comparison": gamma_comp, "sparsify": sparse, "loss_model": loss_rows}
    payload["machine"]["loadavg_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from qprune.atomic import write_json

    write_json(args.out.with_suffix(".json"), payload)
    args.out.with_suffix(".md").write_text(markdown(payload))
    if len(rows) >= 1:
        plot(rows, args.out.with_suffix(".png"), fitted)
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
