"""What the referee asked for (issue 17, point 4; ``make bench-ablation``; not a test).

On the trained F = 64 SIDD denoiser (``problems/checkpoints/denoise_sidd_f64.pt``), at 36 % of the
prunable units (k = round(0.36 N), N = 2304), every row prunes exactly the same k:

* **Ablation** of the hybrid QUBO: the Taylor term alone, Taylor + Fisher (``fisher=`` weight /
  channel / both), Taylor + activation similarity, Taylor + L1 redundancy, Taylor + channel-Fisher
  + similarity, and the full hybrid (its default weights, ``fisher=channel``). Each variant is the
  hybrid preset with the weights of the left-out terms at 0 (the others 1), solved exactly-k by
  ``--strategy`` (default ``gamma``, the paper's bisection on the capacity weight).
  ``taylor-greedy`` and ``l1-qubo`` are reference rows; ``fisher-qubo`` (the loss model, its
  layerwise default, in 4 stages and in one) is the method that is not the paper's.
* **gamma search vs a quadratic penalty**: the full hybrid objective E0 (no capacity reward) plus
  ``P (sum(x) - k)^2`` added with dimod's ``BinaryQuadraticModel.add_linear_equality_constraint``,
  solved with neal (``--penalty-reads`` reads x ``--penalty-sweeps`` sweeps) for each multiplier
  ``P = s * c`` (``--penalty-scales`` s; c = the mean over units of |h_i| + sum_j |J_ij|, the typical
  largest energy change of one flip), then repaired to exactly k by the cheapest k-preserving flips
  (:func:`qprune.solve.local.repair_to_k`; the row says how many flips). Because the paper's reward
  D_i = P_i / sum P is not constant at fixed k, the gamma search with ``capacity=params`` minimises
  E0 - gamma D.x, a different objective; the row ``hybrid gamma (units)`` (D_i = 1/N) minimises E0
  subject to sum x = k exactly as the penalty rows do, so those two compare like with like.

  Every row reports its own QUBO energy at its final gamma (``energy``), the full hybrid's
  objective E0 (``hybrid_e0``, comparable across rows), wall time of the mask choice and PSNR/SSIM
  of the gated model on the test batches.
* **Proxy vs truth**: ``--masks`` exact-k masks made by ``d`` random k-preserving swaps (a pruned
  unit kept, a kept unit pruned, per-layer caps respected) from the hybrid and the Taylor masks,
  ``d`` in ``--distances``; their test PSNR on the first ``--test-batches`` test batches (gate
  mode, scored with :class:`qprune.refine.MaskScorer`, which equals one gated pass per mask) against
  the hybrid energy, each term's energy alone and the loss model's (``loss_model``: fisher-qubo's
  one-stage QUBO over every unit; masks also around the fisher-qubo mask); Spearman's rho (scipy.stats.spearmanr) over all
  masks, over the near ones (the smaller half of the distances) and around each base alone (the
  all-masks rho is dominated by the gap between the two clusters). Lower energy should mean higher
  PSNR, so a useful proxy has rho < 0. A scatter plot goes to the PNG. ``--test-images N`` keeps
  only the first N patches of those batches (the issue-17 run: 8, for the 2-core machine).

``--quick``: the small shipped checkpoint (``problems/checkpoints/denoise_bundled_f16.pt``), few
masks, short anneals; a pipeline check written to ``ablation_quick.*``, not a result.
Outputs: ``benchmarks/results/<out-name>.{json,md,png}`` (default ``ablation``), written atomically;
``--replot JSON`` recomputes the correlations from a written JSON's points and rewrites all three.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from qprune.atomic import atomic_open, write_json  # noqa: E402
from qprune.backends import get as get_sampler  # noqa: E402
from qprune.errors import QpruneError  # noqa: E402
from qprune.pipeline.methods import MethodOptions, build_formulation  # noqa: E402
from qprune.pipeline.report import machine_info, training_summary  # noqa: E402
from qprune.pipeline.run import Prepared, constraint_of, prepare, select_mask  # noqa: E402
from qprune.problems import load_checkpoint  # noqa: E402
from qprune.problems.metrics import psnr  # noqa: E402
from qprune.qubo.formulation import Formulation, Weights  # noqa: E402
from qprune.refine import MaskScorer  # noqa: E402
from qprune.solve.arrays import QuboArrays  # noqa: E402
from qprune.solve.local import repair_to_k  # noqa: E402

# helper modules beside this script (benchmarks/)
from common import (  # noqa: E402
    BRANCHES, PAPER_FULL_SPARSITY, QUICK_CKPT, RESULTS, ROOT, SIDD_CKPT, data_override, logger, save_png, test_metrics,
)

ZERO = Weights(alpha=0.0, alpha_f=0.0, beta_diag=0.0, beta_off=0.0, lam=0.0)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ablation row: the hybrid preset with some weights at 0 (or a named method)."""

    name: str
    weights: Weights | None
    fisher: str = "channel"
    method: str = "hybrid-qubo"
    capacity: str = "params"
    strategy: str | None = None  # None: --strategy
    steps: int | None = None


def variants() -> list[Variant]:
    taylor = dataclasses.replace(ZERO, alpha=1.0)
    tf = dataclasses.replace(taylor, alpha_f=1.0)
    return [
        Variant("taylor-greedy (reference)", None, method="taylor-greedy"),
        Variant("l1-qubo (reference)", None, method="l1-qubo"),
        Variant("taylor", taylor),
        Variant("taylor + fisher(weight)", tf, fisher="weight"),
        Variant("taylor + fisher(channel)", tf, fisher="channel"),
        Variant("taylor + fisher(both)", tf, fisher="both"),
        Variant("taylor + similarity", dataclasses.replace(taylor, lam=1.0)),
        Variant("taylor + l1 redundancy", dataclasses.replace(taylor, beta_diag=1.0, beta_off=1.0)),
        Variant("taylor + fisher(channel) + similarity", dataclasses.replace(tf, lam=1.0)),
        Variant("full hybrid", Weights()),
        Variant("full hybrid, gamma (units)", Weights(), capacity="units"),
        Variant("fisher-qubo", None, method="fisher-qubo", strategy="layerwise"),
        Variant("fisher-qubo, one stage", None, method="fisher-qubo", strategy="layerwise", steps=1),
    ]


#: the hybrid's terms one at a time (name, weights, fisher) for the proxy study
SINGLE_TERMS = (
    ("taylor", dataclasses.replace(ZERO, alpha=1.0), "channel"),
    ("channel_fisher", dataclasses.replace(ZERO, alpha_f=1.0), "channel"),
    ("weight_fisher", dataclasses.replace(ZERO, alpha_f=1.0), "weight"),
    ("activation_similarity", dataclasses.replace(ZERO, lam=1.0), "channel"),
    ("l1_redundancy", dataclasses.replace(ZERO, beta_diag=1.0, beta_off=1.0), "channel"),
)


log = logger("ablation", clock=True)


# ------------------------------------------------------------------------------------ rows


def hybrid_formulation(prep: Prepared, capacity: str = "params") -> Formulation:
    return build_formulation(prep.space, prep.signals, "hybrid-qubo", weights=Weights(), fisher="channel",
                             capacity=capacity)


def row_of(prep: Prepared, name: str, x: np.ndarray, seconds: float, hybrid: Formulation,
           energy: float | None, gamma: float | None, extra: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "k": int(x.sum()), "units": prep.space.N, "select_s": seconds,
                           "energy": energy, "gamma": gamma, "hybrid_e0": float(hybrid.energy(x, 0.0)), **extra}
    row.update(test_metrics(prep, x))
    return row


def ablation_rows(prep: Prepared, k: int, args: argparse.Namespace, hybrid: Formulation
                  ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    rows, masks = [], {}
    for v in variants():
        opts = MethodOptions(backend="neal", strategy=v.strategy or args.strategy, weights=v.weights,
                             fisher=v.fisher, capacity=v.capacity, seed=args.seed, steps=v.steps)
        t0 = time.perf_counter()
        x, out = select_mask(prep, v.method, k, opts)
        seconds = time.perf_counter() - t0
        f, gamma = out.get("formulation"), out.get("gamma")
        energy = None if f is None else float(f.energy(x, gamma))
        info = out.get("info", {})
        extra = {"kind": "ablation", "method": v.method, "fisher": v.fisher, "capacity": v.capacity,
                 "strategy": (v.strategy or args.strategy) if f is not None else None, "steps": v.steps,
                 "weights": None if v.weights is None else dataclasses.asdict(v.weights),
                 "repaired": info.get("repaired")}
        rows.append(row_of(prep, v.name, x, seconds, hybrid, energy, gamma, extra))
        masks[v.name] = x
        r = rows[-1]
        log(f"  {v.name:40s} k={r['k']} PSNR {r['psnr']:.3f} SSIM {r['ssim']:.4f} ({seconds:.1f} s)")
    return rows, masks


def penalty_rows(prep: Prepared, k: int, args: argparse.Namespace, hybrid: Formulation) -> list[dict[str, Any]]:
    """The full hybrid objective + P (sum x - k)^2 (dimod's helper), neal, repaired to exactly k."""
    objective = hybrid.objective_bqm()
    labels = hybrid.labels
    arrs = QuboArrays.from_bqm(objective, hybrid.reward, labels)
    c = float(np.mean(np.abs(arrs.h) + np.asarray(abs(arrs.J).sum(axis=1)).ravel()))
    constraint = constraint_of(prep.space, k)
    sampler = get_sampler("neal")
    rows = []
    for s in args.penalty_scales:
        t0 = time.perf_counter()
        bqm = objective.copy()
        bqm.add_linear_equality_constraint([(v, 1.0) for v in labels], lagrange_multiplier=s * c, constant=-float(k))
        build_s = time.perf_counter() - t0
        ss = sampler.sample(bqm, num_reads=args.penalty_reads, num_sweeps=args.penalty_sweeps, seed=args.seed)
        best = ss.first.sample
        x0 = np.array([best[v] for v in labels], dtype=np.int8)
        counts = ss.record.sample.sum(axis=1)
        x, flips = repair_to_k(arrs, x0, k, constraint, gamma=0.0)
        seconds = time.perf_counter() - t0
        extra = {"kind": "penalty", "method": "hybrid-qubo", "penalty_scale": s, "lagrange_multiplier": s * c,
                 "flip_scale_c": c, "reads": args.penalty_reads, "sweeps": args.penalty_sweeps,
                 "build_s": build_s, "count_before_repair": int(x0.sum()),
                 "read_counts": sorted(int(v) for v in counts), "repair_flips": int(flips),
                 "repaired": bool(flips), "couplings": int(bqm.num_interactions)}
        row = row_of(prep, f"full hybrid, penalty P={s:g}c", x, seconds, hybrid,
                     float(hybrid.energy(x, 0.0)), None, extra)
        rows.append(row)
        log(f"  penalty s={s:g}: count before repair {int(x0.sum())} (k={k}), {flips} flips, "
            f"E0 {row['hybrid_e0']:.4f}, PSNR {row['psnr']:.3f} ({seconds:.1f} s)")
    return rows


# ------------------------------------------------------------------------------ proxy vs truth


def swap_masks(base: np.ndarray, layer_ids: np.ndarray, caps: np.ndarray, distance: int, count: int,
               rng: np.random.Generator) -> np.ndarray:
    """``count`` masks, each ``distance`` random k-preserving swaps from ``base`` within the caps."""
    out = np.empty((count, base.size), dtype=np.int8)
    for r in range(count):
        x = base.astype(bool).copy()
        per = np.bincount(layer_ids[x], minlength=caps.size)
        for _ in range(distance):
            i = int(rng.choice(np.flatnonzero(x)))
            per[layer_ids[i]] -= 1
            x[i] = False
            room = ~x & (per[layer_ids] < caps[layer_ids])
            room[i] = False
            j = int(rng.choice(np.flatnonzero(room)))
            x[j] = True
            per[layer_ids[j]] += 1
        out[r] = x
    return out


def proxy_study(prep: Prepared, k: int, bases: dict[str, np.ndarray], args: argparse.Namespace,
                hybrid: Formulation, test: list) -> dict[str, Any]:
    space = prep.space
    caps = np.asarray(space.max_pruned_per_layer)
    rng = np.random.default_rng([args.seed, 17])
    cells = len(bases) * len(args.distances)
    per = -(-args.masks // cells)
    X, tags = [], []
    for bname, base in bases.items():
        for d in args.distances:
            X.append(swap_masks(base, space.layer_ids, caps, d, per, rng))
            tags += [(bname, d)] * per
    X.append(np.stack(list(bases.values())).astype(np.int8))
    tags += [(b, 0) for b in bases]
    M = np.concatenate(X)
    assert (M.sum(axis=1) == k).all(), "a proxy mask lost exact k"
    t0 = time.perf_counter()
    scorer = MaskScorer(prep.model, space, test, psnr, progress=True)
    truth = scorer(M)
    scorer.close()
    score_s = time.perf_counter() - t0
    log(f"  scored {len(M)} masks on {sum(int(x.shape[0]) for x, _ in test)} test patches in {score_s:.0f} s")
    gamma = float(args.hybrid_gamma) if args.hybrid_gamma is not None else 0.0
    energies = {"hybrid_e0": hybrid.energy(M, 0.0), "hybrid_e_gamma": hybrid.energy(M, gamma),
                "capacity_reward": -(M @ hybrid.reward)}
    for name, w, fisher in SINGLE_TERMS:
        f = build_formulation(space, prep.signals, "hybrid-qubo", weights=w, fisher=fisher)
        energies[name] = f.energy(M, 0.0)
    energies["loss_model"] = build_formulation(space, prep.signals, "fisher-qubo").energy(M, 0.0)
    points = [{"base": b, "distance": int(d), "psnr": float(t), **{n: float(e[i]) for n, e in energies.items()}}
              for i, ((b, d), t) in enumerate(zip(tags, truth))]
    out = {"masks": int(len(M)), "per_cell": per, "distances": list(args.distances), "bases": list(bases),
           "test_patches": sum(int(x.shape[0]) for x, _ in test), "score_s": score_s,
           "scorer_stats": {a: b for a, b in scorer.stats().items() if isinstance(b, (int, float, bool, str))},
           "hybrid_gamma": gamma, "energies": list(energies), "points": points}
    out.update(correlations(points, list(energies), list(args.distances)))
    return out


def correlations(points: list[dict[str, Any]], names: list[str], distances: list[int]) -> dict[str, Any]:
    """Spearman's rho of each energy with PSNR: over all masks, the near ones, and around each base alone."""
    near_max = max(distances[: len(distances) // 2] or [0])
    truth = np.array([p["psnr"] for p in points])

    def rho(sel: np.ndarray, name: str) -> dict[str, float]:
        e = np.array([p[name] for p in points])[sel]
        res = stats.spearmanr(e, truth[sel])
        return {"rho": float(res.statistic), "p": float(res.pvalue), "n": int(sel.sum())}

    every = np.ones(len(points), dtype=bool)
    near = np.array([p["distance"] <= near_max for p in points])
    bases = sorted({p["base"] for p in points})
    by_base = {b: np.array([p["base"] == b for p in points]) for b in bases}
    return {"spearman": {n: rho(every, n) for n in names},
            "spearman_near": {n: rho(near, n)["rho"] for n in names},
            "spearman_by_base": {b: {n: rho(sel, n) for n in names} for b, sel in by_base.items()},
            "near_rule": f"distance <= {near_max} swaps"}


def plot(proxy: dict[str, Any], path: Path, title: str) -> None:
    names = list(proxy["spearman"])
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), dpi=110, layout="constrained")
    axes = np.atleast_1d(axes).ravel()
    pts = proxy["points"]
    bases = proxy["bases"]
    cmap = {b: m for b, m in zip(bases, ("o", "^", "s", "D"))}
    for ax, name in zip(axes, names):
        for b in bases:
            sel = [p for p in pts if p["base"] == b]
            sc = ax.scatter([p[name] for p in sel], [p["psnr"] for p in sel], c=[p["distance"] for p in sel],
                            cmap="viridis", marker=cmap[b], s=14, alpha=0.8, label=f"around {b}",
                            norm=matplotlib.colors.SymLogNorm(1, vmin=0, vmax=max(proxy["distances"])))
        r = proxy["spearman"][name]["rho"]
        per = ", ".join(f"{b} {proxy['spearman_by_base'][b][name]['rho']:+.2f}" for b in bases)
        ax.set_title(f"{name}\nrho {r:+.2f} (around {per})", fontsize=8)
        ax.set_xlabel("energy (lower = predicted better)", fontsize=7)
        ax.set_ylabel("test PSNR (dB)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    for ax in axes[len(names):]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes.tolist(), shrink=0.5, label="swaps from the base mask (0 = the base)")
    fig.suptitle(title, fontsize=10)
    save_png(fig, path)


# ------------------------------------------------------------------------------------ report


def render_markdown(p: dict[str, Any]) -> str:
    un = p["unpruned"]
    out = [f"# Ablation and proxy-vs-truth at {p['fraction']:.0%}" + (" (QUICK pipeline check)" if p["quick"] else ""),
           "",
           f"- model: `{p['checkpoint']}`; training: {training_summary(p.get('checkpoint_meta') or {})}",
           f"- k = {p['k']} of {p['units']} units in {p['n_layers']} layers; every row prunes exactly k "
           f"(checked); seed {p['seed']}; strategy `{p['strategy']}`, backend neal",
           f"- rows: PSNR/SSIM of the gated model on the whole test split ({p['test_samples']} patches); "
           f"unpruned {un['psnr']:.3f} dB / {un['ssim']:.4f}",
           f"- proxy study: {p['proxy']['masks']} masks on the first {p['proxy']['test_patches']} patches of the "
           f"test split (--test-batches {p['test_batches']}, --test-images {p.get('test_images')}), scored in "
           f"{p['proxy']['score_s']:.0f} s",
           f"- calibration pass {p['signals_s']:.0f} s; total {p['total_s']:.0f} s; {p['machine']['cpu_count']} CPUs, "
           f"torch threads {p['machine']['torch_threads']}, load average at start {p['loadavg_start']}",
           "", "## Ablation (test split)", "",
           "`energy` = the row's own QUBO at its final gamma; `hybrid E0` = the full hybrid objective without "
           "the reward (the same function for every row; lower is better).", "",
           "| row | k | PSNR (dB) | SSIM | energy | hybrid E0 | select s | notes |", "|---|---|---|---|---|---|---|---|"]
    for r in p["rows"]:
        note = ""
        if r["kind"] == "penalty":
            note = (f"P = {r['lagrange_multiplier']:.3g}; count before repair {r['count_before_repair']}, "
                    f"{r['repair_flips']} repair flips")
        elif r.get("repaired"):
            note = f"repaired: {r['repaired']}"
        if r.get("capacity") == "units":
            note = (note + "; " if note else "") + "reward 1/N"
        e = "–" if r["energy"] is None else f"{r['energy']:.4f}"
        out.append(f"| {r['name']} | {r['k']} | {r['psnr']:.3f} | {r['ssim']:.4f} | {e} | {r['hybrid_e0']:.4f} | "
                   f"{r['select_s']:.1f} | {note} |")
    pr = p["proxy"]
    out += ["", f"## Proxy vs truth (Spearman's rho with test PSNR, {pr['masks']} exact-k masks)", "",
            f"Masks: {pr['per_cell']} per (base, distance), bases {pr['bases']}, distances {pr['distances']} "
            f"random k-preserving swaps, plus the bases. rho < 0 means lower energy goes with higher PSNR. "
            f"'near' = {pr['near_rule']}.", "",
            "| energy | rho (all) | p | rho (near) | " + " | ".join(f"rho around {b} (p)" for b in pr["spearman_by_base"])
            + " |", "|---|---|---|---|" + "---|" * len(pr["spearman_by_base"])]
    for name, v in pr["spearman"].items():
        per = " | ".join(f"{d[name]['rho']:+.3f} ({d[name]['p']:.2g})" for d in pr["spearman_by_base"].values())
        out.append(f"| {name} | {v['rho']:+.3f} | {v['p']:.2g} | {pr['spearman_near'][name]:+.3f} | {per} |")
    out += ["", f"Scatter plot: `{p['png']}`.", "", "## Notes", ""] + [f"- {n}" for n in p["notes"]]
    return "\n".join(out) + "\n"


# -------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help=f"denoise checkpoint (default {SIDD_CKPT.relative_to(ROOT)})")
    p.add_argument("--quick", action="store_true", help="shipped F=16 checkpoint, few masks: a pipeline check")
    p.add_argument("--sparsity", type=float, default=PAPER_FULL_SPARSITY, help="fraction of units (default 0.36)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", default="gamma", help="exact-k strategy of the QUBO rows (default gamma)")
    p.add_argument("--masks", type=int, help="proxy masks at least (default 208; quick 16)")
    p.add_argument("--distances", help="swap counts, comma list (default 1,2,4,8,16,32,64,128; quick 1,4)")
    p.add_argument("--test-batches", type=int, default=1, help="test batches for the proxy study (default 1)")
    p.add_argument("--test-images", type=int, help="only the first N patches of those batches (default: all)")
    p.add_argument("--penalty-scales", help="P / c values, comma list (default 0.1,1; quick 1)")
    p.add_argument("--penalty-reads", type=int, help="neal reads per penalty solve (default 5; quick 2)")
    p.add_argument("--penalty-sweeps", type=int, help="neal sweeps per read (default 1000; quick 200)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--replot", metavar="JSON", help="only recompute the correlations of a written JSON and "
                   "rewrite its JSON, Markdown and PNG (no model work)")
    p.add_argument("--out-name", help="output stem (default ablation; quick ablation_quick)")
    a = p.parse_args(argv)
    q = a.quick
    a.masks = a.masks or (16 if q else 208)
    a.distances = [int(s) for s in (a.distances or ("1,4" if q else "1,2,4,8,16,32,64,128")).split(",")]
    a.penalty_scales = [float(s) for s in (a.penalty_scales or ("1" if q else "0.1,1")).split(",")]
    a.penalty_reads = a.penalty_reads or (2 if q else 5)
    a.penalty_sweeps = a.penalty_sweeps or (200 if q else 1000)
    a.out_name = a.out_name or ("ablation_quick" if q else "ablation")
    if not 0 < a.sparsity < 1 or a.masks < 1 or a.test_batches < 1 or min(a.distances) < 1 \
            or (a.test_images is not None and a.test_images < 1):
        p.error("--sparsity must be in (0, 1); --masks, --test-batches and --distances must be positive")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        return replot(Path(args.replot))
    torch.set_num_threads(max(1, args.threads))
    t_start = time.perf_counter()
    load_start = list(os.getloadavg())
    ckpt = Path(args.checkpoint) if args.checkpoint else (QUICK_CKPT if args.quick else SIDD_CKPT)
    if not ckpt.is_file():
        print(f"ablation: checkpoint {ckpt} does not exist", file=sys.stderr)
        return 2
    problem, model = load_checkpoint(ckpt, **data_override(ckpt))
    if problem.name != "denoise":
        print(f"ablation: {ckpt} is a {problem.name!r} checkpoint; this benchmark needs denoise", file=sys.stderr)
        return 2
    prep = prepare(model, problem, methods=["hybrid-qubo", "taylor-greedy", "l1-qubo", "fisher-qubo"], fisher="both",
                   residual_branches=BRANCHES, progress=False)
    log(f"{ckpt}: {prep.space.N} units, calibration {prep.timings['signals']:.0f} s")
    k = round(args.sparsity * prep.space.N)
    unpruned = test_metrics(prep, np.zeros(prep.space.N, dtype=np.int8))
    hybrid = hybrid_formulation(prep)
    rows, masks = ablation_rows(prep, k, args, hybrid)
    args.hybrid_gamma = next(r["gamma"] for r in rows if r["name"] == "full hybrid")
    rows += penalty_rows(prep, k, args, hybrid)
    if any(r["k"] != k for r in rows):
        raise QpruneError(f"a row pruned other than k={k}: {[(r['name'], r['k']) for r in rows]}")
    test = prep.work.test[: args.test_batches]
    if args.test_images:
        test = [(x[: args.test_images - i], y[: args.test_images - i])
                for i, (x, y) in zip(np.cumsum([0] + [int(b[0].shape[0]) for b in test[:-1]]), test)
                if args.test_images - i > 0]
    proxy = proxy_study(prep, k, {"hybrid": masks["full hybrid"], "taylor": masks["taylor-greedy (reference)"],
                                  "fisher-qubo": masks["fisher-qubo"]}, args, hybrid, test)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{args.out_name}.png"
    notes = [
        "Calibration batches come from the training split, metrics from the held-out test split; no fine-tuning.",
        "Ablation variants are the hybrid preset with the other weights at 0 (the present weights 1; the full "
        "hybrid at its default weights); the "
        "within-layer couplings are divided by (layer size - 1) as in every QUBO here.",
        "hybrid E0 of a gamma-search row with reward P_i / sum P is not what that search minimised (it "
        "minimised E0 - gamma D.x); the reward-1/N row and the penalty rows minimise E0 at sum x = k.",
        f"Penalty rows: dimod add_linear_equality_constraint on all {prep.space.N} variables (a dense "
        "N x N coupling), neal with the given reads/sweeps, then repair_to_k (cheapest flips, per-layer caps).",
        "Proxy masks are evaluated in gate mode (equal to the physically pruned model) by MaskScorer on a "
        "fixed test subset; Spearman's rho by scipy.stats.spearmanr.",
    ]
    payload: dict[str, Any] = {
        "quick": bool(args.quick), "checkpoint": str(ckpt), "checkpoint_meta": getattr(problem, "checkpoint_meta", {}),
        "problem_config": problem.config, "k": k, "units": prep.space.N, "n_layers": prep.space.n_layers,
        "fraction": args.sparsity, "seed": args.seed, "strategy": args.strategy, "test_batches": args.test_batches,
        "test_images": args.test_images,
        "test_samples": sum(int(x.shape[0]) for x, _ in prep.work.test), "signals_s": prep.timings["signals"],
        "unpruned": unpruned, "rows": rows, "proxy": proxy, "png": str(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png),
        "machine": machine_info(), "loadavg_start": load_start, "argv": sys.argv[1:] if argv is None else list(argv),
        "notes": notes,
    }
    payload["total_s"] = time.perf_counter() - t_start
    write_outputs(payload, out_dir, args.out_name)
    return 0


def write_outputs(payload: dict[str, Any], out_dir: Path, name: str) -> None:
    """PNG, JSON and Markdown of a payload, each written atomically; the Markdown is also printed."""
    proxy = payload["proxy"]
    plot(proxy, out_dir / f"{name}.png",
         f"test PSNR vs QUBO energy, {proxy['masks']} exact-k masks (k = {payload['k']} of {payload['units']})")
    write_json(out_dir / f"{name}.json", payload)
    md = render_markdown(payload)
    with atomic_open(out_dir / f"{name}.md") as fh:
        fh.write(md)
    print(md)


def replot(path: Path) -> int:
    """Recompute the correlations from the stored points and rewrite the JSON, Markdown and PNG."""
    payload = json.loads(path.read_text())
    proxy = payload["proxy"]
    names = proxy.get("energies") or list(proxy["spearman"])
    proxy.update(correlations(proxy["points"], names, proxy["distances"]), energies=names)
    write_outputs(payload, path.parent, path.stem)
    return 0

if __name__ == "__main__":
    sys.exit(main())
