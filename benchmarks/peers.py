"""Peers at equal k: torch-pruning 1.6.1's own importance criteria beside our Taylor and hybrid QUBO
(``make bench-peers``; issue 17 point 3; a benchmark, not a test).

Model: the trained F = 64 SIDD Half-UNet (``problems/checkpoints/denoise_sidd_f64.pt``), the space
``qprune.pipeline.run.prepare`` builds for it (27 layers, 2304 units) and the full-model paper setting
k = round(0.36 N). Every row prunes exactly k of THOSE units, with the space's per-layer caps
(``max_pruned_per_layer``), and is scored on the held-out test split (PSNR/SSIM, gate mode) and
measured physically removed (params, MACs: ``apply_mask(mode="remove")``).

Rows
    * ``tp-magnitude``, ``tp-taylor``, ``tp-hessian``, ``tp-lamp``, ``tp-fpgm``: torch-pruning's
      ``GroupMagnitudeImportance``, ``GroupTaylorImportance``, ``GroupHessianImportance``,
      ``LAMPImportance``, ``FPGMImportance`` at their defaults, each called on torch-pruning groups
      (``Importance(group)``), then ONE global ranking over all units (torch-pruning's
      ``global_pruning=True``: the per-group normalised scores are concatenated and the lowest go),
      within the per-layer caps.
    * ``taylor-greedy``, ``hybrid-qubo`` (default weights; ``hybrid-qubo (--weights)`` with a
      weights JSON): ours, through ``prepare`` + ``select_mask``.

Which groups score which units (torch-pruning's own groups where they match one of our layers,
one-item groups of the branch convs' filters otherwise) and how the Taylor and Hessian
gradients are accumulated: ``benchmarks/tp_importance.py``.

torch-pruning's own pruner
    ``tp.pruner.MetaPruner(global_pruning=True)`` on the units it can express: every group other
    than the ``own group`` ones goes to ``ignored_layers``. Those units are only the channel layers'
    (the branch units are not expressible), and k > what those layers may lose, so this comparison
    runs at k_c = round(0.36 N_c) of the N_c channel units: the pruning ratio is searched so that
    MetaPruner removes exactly k_c units (its ratio counts root channels, and one root channel can
    take a SimpleGate pair), the model is pruned by MetaPruner itself and measured. Beside it: our
    route with the same criterion restricted to the same layers at the same k_c. Masks, params,
    MACs and PSNR are compared.

Wall time per row: ``setup`` (dependency graph / space), ``signals`` (gradient pass or our
calibration pass), ``select`` (importance + ranking, or formulate + exact-k solve); evaluation is
not included. ``--quick``: the small shipped checkpoint ``denoise_bundled_f16.pt`` (a pipeline
check), writing ``peers_quick.{json,md}``; the full run writes ``benchmarks/results/peers.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
from importlib import metadata
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from qprune.atomic import atomic_open, write_json
from qprune.commands._common import parse_weights
from qprune.errors import QpruneError
from qprune.model.masking import apply_mask
from qprune.model.stats import count_macs, count_params
from qprune.model.units import FilterSpace
from qprune.pipeline.methods import MethodOptions
from qprune.pipeline.run import Prepared, constraint_of, evaluate, prepare, select_mask
from qprune.problems import load_checkpoint
from qprune.qubo.presets import Weights
from qprune.solve.baselines import greedy_prune

# helper modules beside this script (benchmarks/)
from common import BRANCHES, PAPER_FULL_SPARSITY, QUICK_CKPT, RESULTS, ROOT, SIDD_CKPT, SIDD_DATA, logger
from peers_report import markdown
from tp_importance import CRITERIA, Scope, gradient_pass, match_scopes, set_grads, unit_scores

log = logger("peers", clock=True)


# ------------------------------------------------------------------------ measuring a mask


def measure(prep: Prepared, mask: np.ndarray, example: torch.Tensor) -> dict[str, float]:
    """Test PSNR/SSIM of the gated model, params and MACs of the physically removed one."""
    gated = apply_mask(copy.deepcopy(prep.model), prep.space, mask.astype(bool), mode="gate")
    metrics = evaluate(gated, prep.work.test, prep.work.metrics)
    removed = apply_mask(prep.model, prep.space, mask.astype(bool), mode="remove", example_inputs=example)
    return {**{k: float(v) for k, v in metrics.items()}, "params": count_params(removed),
            "macs": count_macs(removed, example)}


def per_kind(space: FilterSpace, mask: np.ndarray) -> dict[str, int]:
    """Pruned units per unit kind (channel / branch)."""
    out: dict[str, int] = {}
    for i in np.flatnonzero(mask):
        out[space.units[i].kind] = out.get(space.units[i].kind, 0) + 1
    return out


# ------------------------------------------------------------------------ torch-pruning's own pruner


def _pruner_mask(groups: Sequence[Any], by_root: dict[str, Scope], names: dict[nn.Module, str], n: int) -> np.ndarray:
    """Our units that MetaPruner's pruning groups remove (root channels mapped to units)."""
    mask = np.zeros(n, dtype=bool)
    for g in groups:
        scope = by_root[names[g[0].dep.target.module]]
        mask[scope.root_to_unit[np.asarray(g[0].idxs, dtype=np.int64)]] = True
    return mask


def metapruner_run(model: nn.Module, example: torch.Tensor, importance: Any, ignored: list[nn.Module],
                   scopes: Sequence[Scope], k_c: int, n_units: int) -> tuple[nn.Module, np.ndarray, dict[str, Any]]:
    """MetaPruner (global) on the expressible units, at the ratio that removes exactly ``k_c`` units.

    The ratio counts root channels (``n_pruned = total - int(total (1 - ratio))``); one root
    channel can take a SimpleGate pair, so the integer ``n_pruned`` is searched on the number of
    units the interactive step would remove (``units_removed`` says when k_c was not reachable).
    Returns the pruned model, its mask and the details.
    """
    pruner = tp.pruner.MetaPruner(model, example, importance=importance, global_pruning=True, pruning_ratio=0.5,
                                  ignored_layers=ignored)
    names = {m: nm for nm, m in model.named_modules()}
    by_root = {s.root: s for s in scopes if s.kind == "own group"}
    total = int(pruner.initial_total_channels)

    def ratio_of(n: int) -> float:
        return (n - 0.5) / total  # int(total * (1 - ratio)) == total - n exactly

    def count(n: int) -> tuple[int, np.ndarray]:
        pruner.per_step_pruning_ratio = [0.0, ratio_of(n)]
        pruner.current_step = 0
        mask = _pruner_mask(list(pruner.step(interactive=True)), by_root, names, n_units)
        return int(mask.sum()), mask

    # each added root channel adds at most one unit, so jumping by the shortfall never passes the first
    # n that removes k_c units while the count rises; it can fall where torch-pruning drops a group that
    # would lose all its channels (check_pruning_group), so the closest count is kept
    n, tried = k_c, {}
    while n <= total:
        tried[n] = count(n)
        if tried[n][0] >= k_c:
            break
        n += k_c - tried[n][0]
    lo = min(tried, key=lambda m: (abs(tried[m][0] - k_c), m))
    got, mask = tried[lo]
    pruner.per_step_pruning_ratio = [0.0, ratio_of(lo)]
    pruner.current_step = 0
    pruner.step()
    return model, mask, {"pruning_ratio": ratio_of(lo), "root_channels_pruned": lo, "root_channels_total": total,
                         "units_removed": got}


# ------------------------------------------------------------------------ the rows


def criterion_rows(prep: Prepared, k: int, k_c: int, example: torch.Tensor, grads: dict[str, Any],
                   name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One torch-pruning criterion: the full-space row at ``k`` and the MetaPruner comparison at ``k_c``."""
    factory, need = CRITERIA[name]
    model = copy.deepcopy(prep.model)
    t0 = time.perf_counter()
    scopes, ignored = match_scopes(model, prep.space, example)
    setup = time.perf_counter() - t0
    signals = 0.0
    if need is not None:
        if need not in grads:
            t0 = time.perf_counter()
            grads[need] = gradient_pass(copy.deepcopy(prep.model), prep.work.calibration, prep.work.loss, need)
            grads[need + "_s"] = time.perf_counter() - t0
        signals = grads[need + "_s"]
        set_grads(model, grads[need])
    t0 = time.perf_counter()
    scores = unit_scores(scopes, factory(), prep.space.N)
    mask = greedy_prune(scores, k, constraint=constraint_of(prep.space, k)).astype(bool)
    select = time.perf_counter() - t0
    row = {"method": name, "k": int(mask.sum()), **measure(prep, mask, example), "pruned_by_kind": per_kind(prep.space, mask),
           "setup_s": setup, "signals_s": signals, "select_s": select}
    channel = np.array([prep.space.units[i].kind == "channel" for i in range(prep.space.N)]) & \
        np.array([s.kind == "own group" for s in scopes])[prep.space.layer_ids]
    restricted = np.where(channel, scores, np.nanmax(scores) + 1.0)
    ours_c = greedy_prune(restricted, k_c, constraint=constraint_of(prep.space, k_c)).astype(bool)
    t0 = time.perf_counter()
    pruned, tp_mask, info = metapruner_run(model, example, factory(), ignored, scopes, k_c, prep.space.N)
    tp_s = time.perf_counter() - t0
    tp_metrics = evaluate(pruned, prep.work.test, prep.work.metrics)
    ours = measure(prep, ours_c, example)
    cmp = {"method": name, "k_c": k_c, "ours": {**ours, "k": int(ours_c.sum())},
           "metapruner": {**{kk: float(v) for kk, v in tp_metrics.items()}, "params": count_params(pruned),
                          "macs": count_macs(pruned, example), "k": int(tp_mask.sum()), "time_s": tp_s, **info},
           "masks_differ": int((ours_c != tp_mask).sum())}
    return row, cmp


def our_rows(model: nn.Module, problem: Any, k_frac: float, example: torch.Tensor,
             weights: Weights | None) -> tuple[list[dict[str, Any]], Prepared, int]:
    """``taylor-greedy`` and ``hybrid-qubo`` (default weights, and ``weights`` when given), each with
    its own ``prepare`` (space + calibration pass for that method only) so the wall times are its own."""
    runs = [("taylor-greedy", "taylor-greedy", None), ("hybrid-qubo", "hybrid-qubo", None)]
    if weights is not None:
        runs.append(("hybrid-qubo (--weights)", "hybrid-qubo", weights))
    rows, prep_out, k = [], None, 0
    preps: dict[str, Prepared] = {}
    for label, method, w in runs:
        if method not in preps:
            preps[method] = prepare(model, problem, methods=[method], residual_branches=BRANCHES, progress=False)
        prep = preps[method]
        k = int(round(k_frac * prep.space.N))
        t0 = time.perf_counter()
        x, _ = select_mask(prep, method, k, MethodOptions(weights=w, seed=0))
        select = time.perf_counter() - t0
        mask = x.astype(bool)
        rows.append({"method": label, "k": int(mask.sum()), **measure(prep, mask, example),
                     "pruned_by_kind": per_kind(prep.space, mask), "setup_s": prep.timings["space"],
                     "signals_s": prep.timings["signals"], "select_s": select})
        log(f"{label}: {rows[-1]['psnr']:.3f} dB")
        prep_out = prep_out or prep
    assert prep_out is not None
    return rows, prep_out, k


# ------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help=f"model to prune (default {SIDD_CKPT.relative_to(ROOT)})")
    ap.add_argument("--quick", action="store_true", help="the small shipped checkpoint (pipeline check)")
    ap.add_argument("--weights", help="hybrid-qubo weights as JSON or a JSON file (adds a row)")
    ap.add_argument("--sparsity", type=float, default=PAPER_FULL_SPARSITY,
                    help="fraction of the units pruned (default 0.36)")
    ap.add_argument("--criteria", default=",".join(CRITERIA), help="torch-pruning criteria to run")
    ap.add_argument("--out", help="output stem (default benchmarks/results/peers or peers_quick)")
    return ap.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[Any, nn.Module, Path]:
    """The problem and trained model (exit 2 with one line when the checkpoint is missing)."""
    path = Path(args.checkpoint) if args.checkpoint else (QUICK_CKPT if args.quick else SIDD_CKPT)
    if not path.is_file():
        raise QpruneError(f"checkpoint {path} does not exist")
    kwargs = {}
    if not args.quick and SIDD_DATA.is_dir() and "sidd" in path.name:
        kwargs["data"] = str(SIDD_DATA)
    problem, model = load_checkpoint(str(path), **kwargs)
    return problem, model.eval(), path


def weights_search(path: str | None) -> dict[str, Any] | None:
    """How a weights file from ``qprune tune`` was found (trials, seconds, best validation value)."""
    if not path or not Path(path).is_file():
        return None
    raw = json.loads(Path(path).read_text())
    keys = ("n_trials", "seconds", "best_value")
    return {k: raw[k] for k in keys if k in raw} if isinstance(raw, dict) and "best_weights" in raw else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every row; the result dict that is written as JSON and Markdown."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    names = [c.strip() for c in args.criteria.split(",") if c.strip()]
    bad = [c for c in names if c not in CRITERIA]
    if bad:
        raise QpruneError(f"unknown criterion {bad[0]!r}; known: {', '.join(CRITERIA)}")
    if not 0 < args.sparsity < 1:
        raise QpruneError(f"--sparsity={args.sparsity} must be in (0, 1)")
    weights = parse_weights(args.weights)
    problem, model, path = load(args)
    t_start = time.perf_counter()
    example = problem.test_batches()[0][0][:1]
    log(f"model {path.name}: ours first (space + calibration pass per method)")
    rows, prep, k = our_rows(model, problem, args.sparsity, example, weights)
    unpruned = evaluate(prep.model, prep.work.test, prep.work.metrics)
    base = {"method": "unpruned", "k": 0, **unpruned, "params": count_params(prep.model),
            "macs": count_macs(prep.model, example)}
    channel_units = sum(u.kind == "channel" for u in prep.space.units)
    k_c = int(round(args.sparsity * channel_units))
    scopes, _ = match_scopes(copy.deepcopy(prep.model), prep.space, example)
    grads: dict[str, Any] = {}
    comparisons = []
    for name in names:
        row, cmp = criterion_rows(prep, k, k_c, example, grads, name)
        log(f"{name}: {row['psnr']:.3f} dB; MetaPruner at k_c={k_c}: {cmp['metapruner']['psnr']:.3f} dB, "
            f"ours {cmp['ours']['psnr']:.3f} dB, masks differ in {cmp['masks_differ']} units")
        rows.append(row)
        comparisons.append(cmp)
    for r in rows:
        if r["k"] != k:
            raise RuntimeError(f"{r['method']} pruned {r['k']} units, expected {k}")
    return {
        "checkpoint": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "quick": bool(args.quick), "sparsity": args.sparsity, "N": prep.space.N, "k": k,
        "layers": prep.space.n_layers, "channel_units": channel_units, "k_c": k_c,
        "test_patches": sum(int(x.shape[0]) for x, _ in prep.work.test),
        "calibration_patches": sum(int(x.shape[0]) for x, _ in prep.work.calibration),
        "weights": None if weights is None else vars(weights),
        "weights_file": args.weights if args.weights and Path(args.weights).is_file() else None,
        "weights_search": weights_search(args.weights),
        "unpruned": base, "rows": rows, "metapruner": comparisons,
        "scopes": [{"layer": s.layer, "kind": s.kind, "root": s.root, "units": len(set(s.root_to_unit.tolist()))}
                   for s in scopes],
        "criteria": names, "wall_s": time.perf_counter() - t_start,
        # the distribution's version (torch_pruning.__version__ of 1.6.1 still says "1.6.0")
        "torch_pruning": metadata.version("torch-pruning"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        res = run(args)
    except QpruneError as exc:
        print(f"peers: {exc}", file=sys.stderr)
        return 2
    stem = Path(args.out) if args.out else RESULTS / ("peers_quick" if args.quick else "peers")
    stem.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(res)
    write_json(str(stem.with_suffix(".json")), res)
    with atomic_open(str(stem.with_suffix(".md"))) as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
