"""The paper's Tables 1-4 on our denoising problem (``make bench-paper``; not a test).

What it reproduces: the STRUCTURE of the paper's Tables 1-4 (SIDD, NAF Half-UNet with F = 64, no
fine-tuning after pruning): PSNR/SSIM on the held-out TEST split of the unpruned model and of each
pruning method, at exactly the same number k of pruned units per setting:

* ``full``: the whole model, 36 % of the prunable units (paper Table 1: ~36 % of the filters);
* ``4``, ``8``, ``16``: the first L prunable layers (``prepare(layers=L)``), with the paper's counts
  (60, 200, 480 filters) SCALED to our units (paper Tables 2-4, see "Counts" below).

Methods (rows): ``taylor-greedy``, ``l1-qubo``, ``hybrid-qubo`` (the paper's three), plus
``gradient-qubo`` and ``random`` as extra rows; ``--tt`` adds ``hybrid-qubo+tt`` (PROTES refinement
of the hybrid mask on the validation metric; slow; ``--tt-base fisher-qubo`` refines fisher-qubo's
mask instead, the ``fisher-qubo+tt`` row). Every method prunes exactly the same k in a
setting (asserted per row and per setting).

Counts. The paper's Half-UNet has "64 filters per layer", so its L-layer sub-problems hold 64 L
filters and prune 60/256, 200/512 and 480/1024 of them (23.4 %, 39.1 %, 46.9 %). Our F = 64 space
has 27 prunable layers: in each of the 6 NAF blocks ``conv1`` (the SimpleGate pair of conv1/conv2 +
SCA), ``conv3`` (the first residual branch, added into the trunk under ``beta``), ``conv4`` (the
FFN's SimpleGate pair) and ``conv5`` (the second residual branch, under ``gamma``), 64 units each,
then the three upsample convs ``up3/up2/up1.conv`` (256 output channels each, added into the skip
trunk), 2304 units in all; the output conv keeps its 3 channels. We keep the paper's FRACTION:
k = round(paper_count / (64 L) * our units in those layers). The first 4, 8 and 16 layers hold
256, 512 and 1024 units, so k is exactly the paper's 60, 200 and 480.

Seeds. ``--seeds`` (default 0,1,2,3,4) seed the QUBO solver (simulated annealing inside the gamma
search) and ``random``. ``taylor-greedy`` (and any greedy method) is deterministic: it is run once
and its row repeated per seed (std 0). The denoise problem's ``seed`` option moves the data split,
the synthetic noise AND the calibration order together, so it cannot vary the calibration subset
alone; ``--vary-calibration`` does that here (calibration batches drawn from the training split
with seed (data seed, 1, run seed)) at the cost of one calibration pass per seed and setting; the
test and validation splits never change.

Weights. The paper tunes the QUBO weights by random search on validation. ``--tune N`` runs N
trials of :func:`qprune.pipeline.run.tune_weights` (Optuna random sampler by default,
``--tune-sampler tpe`` for TPE) per (setting, QUBO method) on the VALIDATION split, with gamma
searched to exact k in every trial and the solver seed = the first run seed; the default weights
(all 1) are scored too, and whichever is better on validation is used for every seed. ``--tune 0``
uses the defaults. A ``+tt`` row uses the weights chosen for the method it refines. The weights and
their validation PSNR are in the output.

Model. ``--checkpoint PATH``, else the shipped F = 64 SIDD model
``problems/checkpoints/denoise_sidd_f64.pt`` (``make train-sidd`` trains it again; another
``--width W`` looks for ``denoise_sidd_f<W>.pt`` there). When that file
is missing the script says so and exits 2; with ``--train`` it first runs the make target's command
(``qprune train --problem denoise --width W --data ../shared/data/sidd_small_256 --epochs E
--schedule cosine --device auto -o CKPT``; ``--train-epochs``, default 100 as in the paper; on the
2-core CPU machine an epoch takes minutes, see the report). The SIDD folder is resolved from this
file's location (``<repo>/../shared/data/sidd_small_256``).

``--quick``: the small shipped checkpoint (``problems/checkpoints/denoise_bundled_f16.pt``, F = 16,
bundled photos with synthetic noise), seed 0 only, 2 tuning trials: a pipeline check in a few
minutes, NOT a paper comparison. It writes ``paper_tables_quick.{json,md}`` so that it never
overwrites the real results; the full run writes ``benchmarks/results/paper_tables.{json,md}``
(``--out-name`` changes the stem, ``--out-dir`` the folder).

``--tt-from JSON``: add the ``+tt`` rows of ``--tt-base`` (default hybrid-qubo) to a finished results
file instead of running the table again (the TT refinement is the slow part, so the table runs first
without it). It takes the file's checkpoint, seeds, solver and weight search, re-runs the base method
per seed with the recorded weights (where today's code solves a seed to another mask, that row is
replaced, so TT refines the mask the table reports), refines the masks with ``--tt-budget``
evaluations, and rewrites the file after every setting (a stopped run resumes). Each setting keeps,
per ``+tt`` method, how its rows were made (``tt``: budget and scorer, calibration time, re-run
base masks).

Wall time per method: ``select_s`` = choosing the mask (formulate + exact-k solve [+ TT]), mean
over seeds; the calibration pass (``signals_s``, one pass per setting collecting what all methods
need) and the weight search (``tune_s``) are reported separately. Test evaluation is not included.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from qprune.atomic import atomic_open, write_json
from qprune.qubo.formulation import Weights
from qprune.model.stats import count_macs, count_params
from qprune.pipeline.compare import compare_rows
from qprune.pipeline.run import (
    METHODS,
    Prepared,
    evaluate,
    method_spec,
    prepare,
    select_mask,
    tune_weights,
    validation_score,
)
from qprune.pipeline.methods import MethodOptions, method_weights
from qprune.pipeline.report import aggregate, machine_info, training_summary
from qprune.qubo.providers import CAPACITY_REWARDS
from qprune.solve.strategies import DEFAULT_STRATEGY, STRATEGIES
from qprune.model.space import build_space

# helper modules beside this script (benchmarks/)
from common import (
    BRANCHES, CHECKPOINTS, PAPER_FULL_SPARSITY, QUICK_CKPT, RESULTS, ROOT, SIDD_DATA, Draw, data_override, logger,
)

PAPER_FILTERS_PER_LAYER = 64
PAPER_SUB_COUNTS = {4: 60, 8: 200, 16: 480}
DEFAULT_METHODS = ("taylor-greedy", "l1-qubo", "hybrid-qubo", "gradient-qubo", "random")
TT_METHOD = "hybrid-qubo+tt"  # the paper's refined row
TT_BASES = ("hybrid-qubo", "fisher-qubo")  # the methods --tt-base can refine (their "+tt" rows)

# The paper's Tables 1-4 (PSNR dB / SSIM on its test split; "-" = not reported).
PAPER = {
    "full": {"unpruned": (37.2632, 0.9327), "l1-qubo": (24.7963, 0.6346), "taylor-greedy": (34.8082, 0.8974),
             "hybrid-qubo": (35.0715, 0.9140), TT_METHOD: (35.0715, 0.9140)},
    "4": {"unpruned": (37.2632, 0.9316), "taylor-greedy": (37.0546, 0.9284), "hybrid-qubo": (37.1742, 0.9300),
          TT_METHOD: (37.1893, 0.9300)},
    "8": {"unpruned": (36.6977, 0.9258), "taylor-greedy": (33.9939, 0.8912), "hybrid-qubo": (35.4934, 0.9091),
          TT_METHOD: (35.5075, 0.9093)},
    "16": {"unpruned": (36.0683, 0.9163), "taylor-greedy": (33.8815, 0.8836), "hybrid-qubo": (34.4419, 0.8953),
           TT_METHOD: (34.5659, 0.8973)},
}
PAPER_SECONDS_FULL = {"taylor-greedy": 141.8, "l1-qubo": 289.9, "hybrid-qubo": 332.4, TT_METHOD: 11383.0}


def die(msg: str) -> None:
    """One clear message on stderr and exit status 2 (a usage problem, not a crash)."""
    print(f"paper_tables: {msg}", file=sys.stderr)
    raise SystemExit(2)


log = logger("paper_tables", clock=True)


# ------------------------------------------------------------------------------------- model


def train_command(width: int, epochs: int, ckpt: Path) -> list[str]:
    """The command ``make train-sidd`` runs (Makefile: train-sidd), for width ``width``."""
    qprune = Path(sys.executable).with_name("qprune")
    exe = [str(qprune)] if qprune.is_file() else [sys.executable, "-m", "qprune.cli"]
    return exe + ["train", "--problem", "denoise", "--width", str(width), "--data", str(SIDD_DATA),
                  "--epochs", str(epochs), "--schedule", "cosine", "--device", "auto", "-o", str(ckpt)]


def paper_checkpoint(args: argparse.Namespace) -> tuple[Path, str]:
    """The checkpoint to prune and a sentence saying where it came from (trains with --train).

    Not :func:`common.pick_checkpoint` (tt_refine's): this one checks a given path, takes
    ``--quick`` and ``--width``, and never falls back to the small model for a full run.
    """
    if args.checkpoint:
        path = Path(args.checkpoint).expanduser()
        if not path.is_file():
            die(f"--checkpoint {path} does not exist")
        return path, "given with --checkpoint"
    if args.quick:
        return QUICK_CKPT, ("--quick: the small shipped checkpoint (F=16, bundled photos + synthetic noise); "
                            "a pipeline check, not the paper's setting")
    ckpt = CHECKPOINTS / f"denoise_sidd_f{args.width}.pt"
    if ckpt.is_file():
        return ckpt, f"the shipped F={args.width} SIDD model ({ckpt.relative_to(ROOT)}; `make train-sidd` retrains it)"
    cmd = train_command(args.width, args.train_epochs, ckpt)
    if not SIDD_DATA.is_dir():
        die(f"no checkpoint at {ckpt} and the SIDD folder {SIDD_DATA} is absent, "
            "so it cannot be trained here. Give --checkpoint PATH (or --quick for a pipeline check).")
    if not args.train:
        die(
            f"the F={args.width} SIDD checkpoint {ckpt} is missing.\n"
            f"  Train it first with `make train-sidd` (F=64) or rerun this script with --train, which runs:\n"
            f"    {' '.join(cmd)}\n"
            f"  ({args.train_epochs} epochs; on a 2-core CPU that is many hours, on a CUDA GPU minutes), or give\n"
            f"  --checkpoint PATH, or --quick for a pipeline check on the shipped F=16 model.")
    log(f"{ckpt} is missing: training it with: {' '.join(cmd)}")
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0 or not ckpt.is_file():
        die(f"training failed (exit {rc}); command: {' '.join(cmd)}")
    return ckpt, f"trained by this run with `{' '.join(cmd)}` in {time.perf_counter() - t0:.0f} s"


# ------------------------------------------------------------------------------------ settings


@dataclasses.dataclass
class Setting:
    name: str          # "full" | "4" | "8" | "16"
    layers: int | None  # what prepare() gets (None = all prunable layers)
    fraction: float    # of the units in the setting
    rule: str          # how k was chosen, in words


def make_settings(names: Sequence[str], n_layers: int) -> list[Setting]:
    out = []
    for name in names:
        if name == "full":
            out.append(Setting("full", None, PAPER_FULL_SPARSITY,
                               f"{PAPER_FULL_SPARSITY:.0%} of all prunable units (paper: ~36 % of the filters)"))
            continue
        try:
            L = int(name)
        except ValueError:
            die(f"unknown setting {name!r}; choose from full,4,8,16")
        if L not in PAPER_SUB_COUNTS:
            die(f"no paper count for {L} layers; choose from full,4,8,16")
        paper_filters = PAPER_FILTERS_PER_LAYER * L
        frac = PAPER_SUB_COUNTS[L] / paper_filters
        used = min(L, n_layers)
        rule = (f"paper: {PAPER_SUB_COUNTS[L]} of {paper_filters} filters ({L} layers x {PAPER_FILTERS_PER_LAYER}) "
                f"= {frac:.2%}; ours: the same fraction of the units in the first {used} prunable layers")
        if used < L:
            rule += (f" (the model has only {n_layers} prunable layers, so this is ALL of them: the full model "
                     f"at {frac:.2%}, not a {L}-layer sub-problem)")
        out.append(Setting(name, None if used == n_layers else used, frac, rule))
    return out


# ---------------------------------------------------------------------------------- measuring


def choose_weights(prep: Prepared, method: str, k: int, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Default weights, or the best of (defaults, --tune random-search trials) on VALIDATION."""
    default = Weights()
    if args.tune <= 0:
        return {"weights": dataclasses.asdict(default), "source": "default (all 1)", "trials": 0, "tune_s": 0.0}
    t0 = time.perf_counter()
    opts = MethodOptions(backend=args.backend, strategy=args.strategy, capacity=args.capacity, seed=seed)
    x, _ = select_mask(prep, method, k, dataclasses.replace(opts, weights=default))
    default_val = validation_score(prep, x)
    res = tune_weights(prep, method, k, opts, n_trials=args.tune, sampler=args.tune_sampler, progress=False)
    seconds = time.perf_counter() - t0
    tuned_better = res.best_value > default_val
    best = res.best_weights if tuned_better else default
    return {
        "weights": dataclasses.asdict(best),
        "source": (f"{args.tune_sampler} search, {res.n_trials} trials" if tuned_better
                   else f"default (all 1): no {args.tune_sampler} trial of {res.n_trials} beat it"),
        "trials": res.n_trials, "val_psnr_default": default_val, "val_psnr_best_trial": res.best_value,
        "val_psnr_used": max(default_val, res.best_value), "tune_s": seconds,
        "trial_values": [t["value"] for t in res.trials],
    }


def run_setting(model: Any, problem: Any, st: Setting, methods: Sequence[str], seeds: Sequence[int],
                args: argparse.Namespace, weights: dict[str, dict] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Rows of every (method, seed) of one setting (through :func:`qprune.pipeline.compare.compare_rows`),
    and its metadata; ``weights`` (method -> the ``meta["weights"]`` record of an earlier run) are
    used as given instead of being searched."""
    draws = (lambda seed: Draw(problem, seed)) if args.vary_calibration else None
    first = problem if draws is None else draws(seeds[0])
    tt_here = st.name in {t.strip() for t in args.tt_settings.split(",")}
    methods = [m for m in methods if not method_spec(m).refine or tt_here]
    meta_weights = dict(weights or {})
    to_tune = [m for m in methods if method_weights(method_spec(m)) and not method_spec(m).refine
               and m not in meta_weights]
    tt_weights = [m for m in methods if method_spec(m).refine and method_weights(method_spec(m))
                  and m not in meta_weights]
    # a +tt row without its base's row to take the weights from: they are searched for it, as for the base
    alone = [tt_base(m) for m in tt_weights if tt_base(m) not in to_tune and tt_base(m) not in meta_weights]
    searched = (to_tune + alone) if args.tune > 0 else []
    # the first seed's space for k (and, where weights are searched, its signals for the search)
    prep0 = prepare(model, first, methods=searched or ["random"], layers=st.layers, residual_branches=BRANCHES,
                    progress=False)
    N = prep0.space.N
    k = round(st.fraction * N)
    caps = int(prep0.space.max_pruned_per_layer.sum())
    if not 0 < k <= caps:
        die(f"setting {st.name}: k={k} out of range for {N} units (cap {caps})")
    log(f"setting {st.name}: {N} units in {len(prep0.space.layers)} layers, k = {k} ({st.fraction:.2%})")
    for m in to_tune:  # tuned on validation with the first seed's calibration
        meta_weights[m] = w = choose_weights(prep0, m, k, args, seeds[0])
        if args.tune > 0:
            log(f"  {m}: weights {w['source']}; val PSNR default {w['val_psnr_default']:.3f}, "
                f"best trial {w['val_psnr_best_trial']:.3f} ({w['tune_s']:.0f} s)")
    for m in tt_weights:
        base = meta_weights.get(b := tt_base(m))
        if base is not None:  # tuned once for the base method; no extra search time for the +tt row
            meta_weights[m] = dict(base, source=f"the weights chosen for {b}", tune_s=0.0)
        else:
            w = choose_weights(prep0, b, k, args, seeds[0])
            meta_weights[m] = dict(w, source=f"tuned as for {b}: {w['source']}")
    layers_used = list(prep0.space.layers)
    del prep0
    found = compare_rows(
        model, problem, methods=methods, sparsities=[st.fraction], seeds=seeds, layers=st.layers,
        residual_branches=BRANCHES, setting=st.name, remove=False, progress=False, draws=draws,
        options=MethodOptions(backend=args.backend, strategy=args.strategy, capacity=args.capacity,
                              tt_budget=args.tt_budget, tt_precision=args.tt_precision, tt_images=args.tt_images,
                              tt_crop=args.tt_crop,
                              tt_journal=args.tt_journal),
        weights={m: Weights(**w["weights"]) for m, w in meta_weights.items()})
    rows = [paper_row(r, deterministic=method_spec(r["method"]).kind == "greedy" and draws is None) for r in found]
    for r in rows:
        log(f"  {r['method']:15s} seed {r['seed']}: PSNR {r.get('psnr', float('nan')):.3f} dB, "
            f"SSIM {r.get('ssim', float('nan')):.4f}, select {r['select_s']:.1f} s")
    ks = {r["k"] for r in rows}
    assert ks == {k}, f"setting {st.name}: methods pruned different k: {sorted(ks)} (expected {k})"
    signals = {str(r["seed"]): r["signals_s"] for r in rows}
    meta: dict[str, Any] = {
        "setting": st.name, "layers_used": layers_used, "n_layers": len(layers_used), "units": N, "k": k,
        "fraction": st.fraction, "rule": st.rule, "weights": meta_weights,
        "signals_s": signals if draws is not None else signals[str(seeds[0])],
    }
    tt_rows = [m for m in methods if method_spec(m).refine]
    if tt_rows:
        meta["tt"] = {m: {"made": tt_record(args), "signals_s": meta["signals_s"]} for m in tt_rows}
    return rows, meta


def tt_base(method: str) -> str:
    """The method whose mask a ``+tt`` row refines."""
    return method.removesuffix("+tt")


def tt_made(meta: dict[str, Any], method: str) -> dict[str, Any] | None:
    """How the ``method`` (+tt) rows of a setting were made (:func:`tt_record`; None: not recorded)."""
    return (meta.get("tt") or {}).get(method, {}).get("made")


def paper_row(r: dict[str, Any], deterministic: bool) -> dict[str, Any]:
    """A compare row as the tables keep it: test metrics, exact params/MACs of the pruned model, the
    time to choose the mask (``select_s``), its per-layer counts and a short hash of the mask."""
    keep = ("setting", "method", "seed", "k", "units", "gamma", "energy", "psnr", "ssim", "params", "macs",
            "params_kept", "macs_kept", "pruned_per_layer", "weights")
    row = {key: r[key] for key in keep if key in r}
    row.update(deterministic=deterministic, select_s=r["method_seconds"], signals_s=r["signals_seconds"],
               mask_sha1=hashlib.sha1(bytes.fromhex(r["mask"])).hexdigest()[:12])
    return row


# ------------------------------------------------------------------------------------- report


def mean_std(agg: dict[str, Any], key: str) -> str:
    v, s = agg.get(key), agg.get(key + "_std", 0.0)
    if v is None:
        return "–"
    return f"{v:.3f} ± {s:.3f}" if len(agg["seeds"]) > 1 else f"{v:.3f}"


def ordering_paragraph(aggs: list[dict], settings_meta: list[dict], seeds: Sequence[int],
                       paired: Sequence[dict] = ()) -> str:
    by = {(a["setting"], a["method"]): a for a in aggs}
    test = {(r["setting"], r["a"], r["b"]): r for r in paired}
    lines = []
    full = [m for m in settings_meta if m["setting"] == "full"]
    trio = ("hybrid-qubo", "taylor-greedy", "l1-qubo")
    if full and all(("full", m) in by for m in trio):
        h, t, l1 = (by[("full", m)] for m in trio)
        holds = h["psnr"] > t["psnr"] > l1["psnr"]
        sep_ht = h["psnr"] - t["psnr"]
        spread = max(h.get("psnr_std", 0.0), t.get("psnr_std", 0.0))
        txt = (f"**Paper ordering at 36 % (full model, k = {full[0]['k']} of {full[0]['units']} units, test PSNR, "
               f"mean ± std over seeds {list(seeds)}): hybrid-qubo {mean_std(h, 'psnr')} dB, taylor-greedy "
               f"{mean_std(t, 'psnr')} dB, l1-qubo {mean_std(l1, 'psnr')} dB. ")
        if holds:
            txt += "The paper's ordering hybrid-qubo > taylor-greedy > l1-qubo HOLDS by the means"
            if len(seeds) == 1:
                why = "one seed only, no spread"
            elif spread == 0.0:
                why = "every seed gave the same masks, so the seeds give no spread to compare with"
            elif sep_ht > 2 * spread:
                why = "more than twice the larger seed std"
            else:
                why = "NOT clearly larger than the seed spread"
            txt += f" (hybrid − taylor = {sep_ht:+.3f} dB; {why}){_test_clause(test, 'full')}.**"
        else:
            order = sorted(trio, key=lambda m: -by[("full", m)]["psnr"])
            txt += (f"The paper's ordering hybrid-qubo > taylor-greedy > l1-qubo does NOT hold here: measured "
                    f"order {' > '.join(order)} (hybrid − taylor = {sep_ht:+.3f} dB{_test_clause(test, 'full')}).**")
        lines.append(txt)
        masks = ", ".join(f"{m} {by[('full', m)]['distinct_masks']}" for m in trio if len(seeds) > 1)
        if masks:
            lines.append(f"Distinct masks over the {len(seeds)} seeds (full model): {masks}. The seeds move the "
                         "annealer (and random); greedy methods are deterministic, and a QUBO method with one "
                         "distinct mask means the annealer found the same mask from every seed. Sensitivity to the "
                         "calibration data is only measured with --vary-calibration.")
    else:
        lines.append("The full-model 36 % setting with hybrid-qubo, taylor-greedy and l1-qubo was not run, so the "
                     "paper's ordering is not checked.")
    for meta in settings_meta:
        s = meta["setting"]
        if s == "full" or (s, "hybrid-qubo") not in by or (s, "taylor-greedy") not in by:
            continue
        h, t = by[(s, "hybrid-qubo")], by[(s, "taylor-greedy")]
        d = h["psnr"] - t["psnr"]
        lines.append(f"Setting {s} (k = {meta['k']} of {meta['units']}): hybrid-qubo {mean_std(h, 'psnr')} vs "
                     f"taylor-greedy {mean_std(t, 'psnr')} dB, hybrid − taylor = {d:+.3f} dB "
                     f"(paper: {PAPER[s]['hybrid-qubo'][0] - PAPER[s]['taylor-greedy'][0]:+.3f} dB)"
                     f"{_test_clause(test, s)}.")
    return "\n\n".join(lines)


PAIRS = (("hybrid-qubo", "taylor-greedy"), ("hybrid-qubo", "l1-qubo"),
         *((f"{b}+tt", b) for b in TT_BASES), ("fisher-qubo", "hybrid-qubo"))


def paired_tests(rows: list[dict], settings_meta: list[dict], key: str = "psnr") -> list[dict[str, Any]]:
    """Per setting and pair (a, b): the per-seed differences a - b of ``key`` and two paired tests.

    Wilcoxon's signed-rank test (two-sided, exact for small n; scipy) is the one we state: it assumes
    no normal differences. The paired t-test is printed beside it. With 5 seeds the smallest two-sided
    Wilcoxon p-value possible is 2/32 = 0.0625, so p < 0.05 cannot happen with 5 seeds; the t-test can.
    """
    out = []
    for meta in settings_meta:
        by = {(r["method"], r["seed"]): r[key] for r in rows if r["setting"] == meta["setting"] and key in r}
        for a, b in PAIRS:
            seeds = sorted(sd for (m, sd) in by if m == a and (b, sd) in by)
            if not seeds:
                continue
            d = np.array([by[(a, sd)] - by[(b, sd)] for sd in seeds])
            rec: dict[str, Any] = {"setting": meta["setting"], "a": a, "b": b, "key": key, "seeds": seeds,
                                   "diffs": d.tolist(), "mean": float(d.mean()),
                                   "std": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                                   "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
                                   "wilcoxon_p": None, "ttest_p": None}
            if d.size > 1 and np.any(d != 0):
                rec["wilcoxon_p"] = float(stats.wilcoxon(d, alternative="two-sided").pvalue)
                if d.std() > 0:
                    rec["ttest_p"] = float(stats.ttest_1samp(d, 0.0).pvalue)
            out.append(rec)
    return out


def paired_section(paired: list[dict[str, Any]]) -> list[str]:
    """Markdown table of :func:`paired_tests`."""
    if not paired:
        return []
    out = ["## Paired differences per seed (test PSNR, dB)", "",
           ("a − b on the same seed (same calibration subset with --vary-calibration, same solver seed). Test: "
            "Wilcoxon signed-rank, two-sided (stated); paired t-test beside it. With 5 seeds the smallest "
            "possible two-sided Wilcoxon p is 0.0625."), "",
           "| setting | a − b | per seed | mean ± std | a better / worse | Wilcoxon p | paired t p |",
           "|---|---|---|---|---|---|---|"]
    for r in paired:
        per = ", ".join(f"{v:+.3f}" for v in r["diffs"])
        out.append(f"| {r['setting']} | `{r['a']}` − `{r['b']}` | {per} | {r['mean']:+.3f} ± {r['std']:.3f} | "
                   f"{r['wins']} / {r['losses']} | {_p(r['wilcoxon_p'])} | {_p(r['ttest_p'])} |")
    return out + [""]


def _p(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"


def _test_clause(test: dict, setting: str) -> str:
    r = test.get((setting, "hybrid-qubo", "taylor-greedy"))
    if r is None or r["wilcoxon_p"] is None:
        return ""
    return (f"; per seed hybrid better in {r['wins']} of {len(r['diffs'])}, Wilcoxon signed-rank p = "
            f"{r['wilcoxon_p']:.3g}, paired t p = {_p(r['ttest_p'])}")


def render_markdown(payload: dict[str, Any]) -> str:
    aggs = payload["aggregate"]
    by = {(a["setting"], a["method"]): a for a in aggs}
    un = payload["unpruned"]
    out = [f"# Paper Tables 1-4 on our denoiser{' (QUICK pipeline check, not the paper setting)' if payload['quick'] else ''}",
           "",
           f"- model: `{payload['checkpoint']}` — {payload['checkpoint_note']}",
           "- training: " + training_summary(payload.get("checkpoint_meta") or {}),
           f"- problem: width F = {payload['problem_config'].get('width')}, data `{payload['problem_config'].get('data')}`; "
           f"test split {payload['test_samples']} patches, validation {payload['val_samples']} patches, "
           f"calibration {payload['calib_samples']} patches"
           + (" (a different seeded draw per seed: --vary-calibration)" if payload["vary_calibration"] else ""),
           f"- seeds: {payload['seeds']} (solver + random; greedy methods are deterministic and run once"
           + ("" if not payload["vary_calibration"] else "; calibration subset varies with the seed") + ")",
           f"- backend `{payload['backend']}`, strategy `{payload['strategy']}`, weight search: "
           + (f"{payload['tune']} {payload['tune_sampler']} trials per (setting, QUBO method) on VALIDATION, "
              "best of those and the defaults" if payload["tune"] else "none (default weights, all 1)"),
           f"- unpruned model on the test split: PSNR {un.get('psnr', float('nan')):.3f} dB, "
           f"SSIM {un.get('ssim', float('nan')):.4f}"
           + (f", {un['params']:.0f} params" if "params" in un else ""),
           (f"- machine: {payload['machine']['platform']}, {payload['machine']['cpu_count']} CPUs, torch "
           f"{payload['machine']['torch']} with {payload['machine']['torch_threads']} thread(s); "
           f"load average at start {payload['loadavg_start']}; total wall time {payload['total_s']:.0f} s"
           + (f" (the +tt rows: {tt['wall_s']:.0f} s of it, made by a later run with "
              f"{tt['machine']['torch_threads']} torch thread(s), load average at start {tt['loadavg_start']})"
              if (tt := payload.get("tt_run")) else "")),
           *([] if payload.get("complete", True) else
             ["", f"**PARTIAL: the run stopped after setting(s) {', '.join(m['setting'] for m in payload['settings'])}.**"]),
           *pending_lines(payload.get("tt_pending", {}), by),
           "", "## Result", "", payload["ordering"], "", "## Tables (test split; mean ± std over seeds)", ""]
    for meta in payload["settings"]:
        s = meta["setting"]
        title = "full model" if s == "full" else f"{s} layers"
        out += [f"### {title}: k = {meta['k']} of {meta['units']} units ({meta['k'] / meta['units']:.1%})", "",
                (f"{meta['rule']}. Layers: {meta['n_layers']} (`{meta['layers_used'][0]}` … `{meta['layers_used'][-1]}`). "
                f"Calibration pass: {_fmt_signals(meta['signals_s'])}."), "",
                "| method | k | PSNR (dB) | SSIM | params | select s | tune s | paper PSNR / SSIM |",
                "|---|---|---|---|---|---|---|---|"]
        pu = PAPER.get(s, {}).get("unpruned")
        out.append(f"| unpruned | 0 | {un.get('psnr', float('nan')):.3f} | {un.get('ssim', float('nan')):.4f} | "
                   f"{_num(un.get('params'))} | – | – | {_paper(pu)} |")
        for m in payload["methods"]:
            a = by.get((s, m))
            if a is None:
                continue
            w = meta["weights"].get(m, {})
            out.append(f"| `{m}`{' (det.)' if a.get('deterministic') else ''} | {a['k']} | {mean_std(a, 'psnr')} | "
                       f"{a['ssim']:.4f}{' ± {:.4f}'.format(a['ssim_std']) if len(a['seeds']) > 1 else ''} | "
                       f"{_num(a.get('params'))} | {a['select_s']:.1f} | "
                       f"{w.get('tune_s', 0.0):.0f} | {_paper(PAPER.get(s, {}).get(m))} |")
        out.append("")
        for m, rec in (meta.get("tt") or {}).items():
            if (s, m) in by:
                out += [f"`{m}`: {rec['made']['budget']} TT evaluations per run, masks scored in "
                        f"{tt_scorer_words(rec['made'])}"
                        + (f" (run beside the others, by the run that wrote `{src}`; its time is not in this file's)"
                           if (src := rec.get("taken_from")) else "") + ".", ""]
        if meta["weights"]:
            out += ["QUBO weights used:", ""]
            for m, w in meta["weights"].items():
                ws = ", ".join(f"{k}={v:.3g}" for k, v in w["weights"].items() if isinstance(v, (int, float)))
                extra = (f"; val PSNR default {w['val_psnr_default']:.3f}, best trial {w['val_psnr_best_trial']:.3f}"
                         if "val_psnr_default" in w else "")
                out.append(f"- `{m}`: {ws} — {w['source']}{extra}")
            out.append("")
    out += paired_section(payload.get("paired", []))
    metas = {m["setting"]: m for m in payload["settings"]}
    s0 = "full" if "full" in metas else payload["settings"][0]["setting"]
    meta0 = metas[s0]
    out += [f"## Wall time per method (setting {s0}, seconds)", "",
            ("`select` = formulate + exact-k solve (+ TT) per seed (mean ± std); the calibration pass is ONE pass per "
            "setting collecting what every method needs (a method alone would need less); `tune` = the weight "
            "search on validation (once per setting, not per seed). The paper's figures (full model, its own "
            "workstation, presumably including its calibration) are for the order of magnitude only."), "",
            "| method | select | calibration pass (shared) | tune | paper |", "|---|---|---|---|---|"]
    for m in payload["methods"]:
        a = by.get((s0, m))
        if a is None:
            continue
        w = meta0["weights"].get(m, {})
        paper_s = PAPER_SECONDS_FULL.get(m) if s0 == "full" else None
        out.append(f"| `{m}` | {a['select_s']:.2f}" + (f" ± {a['select_s_std']:.2f}" if len(a["seeds"]) > 1 else "")
                   + f" | {_fmt_signals(meta0['signals_s'])} | {w.get('tune_s', 0.0):.1f} | "
                   + ("–" if paper_s is None else f"{paper_s:g}") + " |")
    out += ["", "## Notes", ""] + [f"- {n}" for n in payload["notes"]]
    return "\n".join(out) + "\n"


def pending_lines(pending: dict[str, list[str]], by: dict[tuple[str, str], Any]) -> list[str]:
    """What a stopped ``--tt-from`` run has still to do, per +tt method: settings whose rows are an
    earlier run's, and settings that have none yet."""
    out = []
    for m, settings in pending.items():
        earlier = [s for s in settings if (s, m) in by]
        if earlier:
            out.append(f"- the `{m}` rows of setting(s) {', '.join(earlier)} are still the earlier run's (see each "
                       "setting's budget below); the same `--tt-from` run goes on with them")
        if missing := [s for s in settings if (s, m) not in by]:
            out.append(f"- setting(s) {', '.join(missing)} have no `{m}` rows yet; the same `--tt-from` run makes them")
    return out


def _fmt_signals(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"seed {k}: {s:.1f} s" for k, s in v.items())
    return f"{v:.1f} s" if v is not None else "–"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def _paper(v: tuple[float, float] | None) -> str:
    return "–" if v is None else f"{v[0]:.2f} / {v[1]:.4f}"


# --------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="denoise checkpoint to prune (default: the cached F=--width SIDD model)")
    p.add_argument("--width", type=int, default=64, help="F of the SIDD model to use/train (default 64)")
    p.add_argument("--train", action="store_true", help="train the SIDD checkpoint if it is missing (slow on CPU)")
    p.add_argument("--train-epochs", type=int, default=100, help="epochs for --train (default 100, the paper's)")
    p.add_argument("--settings", default="full,4,8,16", help="comma list of full,4,8,16 (default all)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma list (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--tt", action="store_true", help="add the --tt-base method's +tt row (PROTES refinement; slow)")
    p.add_argument("--tt-base", choices=TT_BASES, default="hybrid-qubo",
                   help="the method whose mask --tt and --tt-from refine (default hybrid-qubo: the paper's +tt row)")
    p.add_argument("--tt-budget", type=int, default=2000, help="TT evaluations per run (paper 20000; default 2000)")
    p.add_argument("--tt-precision", choices=("float32", "bfloat16"), default="float32",
                   help="arithmetic of the TT's mask scorer (default float32; the winner is re-scored in float32)")
    p.add_argument("--tt-images", type=int, help="validation images the TT scores masks on (default all)")
    p.add_argument("--tt-crop", type=int, help="the TT scores the central C x C pixels of those images (default whole)")
    p.add_argument("--tt-journal", default=str(ROOT / "benchmarks" / "journals" / "paper_tables"),
                   help="directory of the TT score journals: a stopped run resumes each TT run where it was")
    p.add_argument("--seeds", help="comma list of seeds (default 0,1,2,3,4; --quick: 0)")
    p.add_argument("--tune", type=int, default=None, help="weight-search trials per (setting, QUBO method) on "
                   "validation (default 10; --quick: 2; 0 = default weights)")
    p.add_argument("--tune-sampler", choices=("random", "tpe"), default="random",
                   help="random (the paper's) or tpe (default random)")
    p.add_argument("--backend", default="neal", help="QUBO backend (default neal)")
    p.add_argument("--strategy", choices=tuple(STRATEGIES), default=DEFAULT_STRATEGY,
                   help=f"exact-k strategy (default {DEFAULT_STRATEGY}; gamma = the paper's bisection)")
    p.add_argument("--capacity", choices=CAPACITY_REWARDS, default="params",
                   help="what gamma's reward counts: params (the paper's D_i = P_i / sum P) or units (1/N)")
    p.add_argument("--tt-settings", default="4,8,16",
                   help="settings that get the TT row (default the sub-problems 4,8,16, as the paper)")
    p.add_argument("--add-to", metavar="JSON",
                   help="add the rows of --methods to a finished results file (its model, seeds, calibration "
                        "draws and solver), replacing any it holds for them; resumable per setting")
    p.add_argument("--tt-from", metavar="JSON",
                   help="add the --tt-base +tt rows of --tt-settings to this finished results file (its model, "
                        "seeds and weights; resumes when some settings already have them) and rewrite it")
    p.add_argument("--tt-take", metavar="JSON", action="append", default=[],
                   help="with --tt-from: results of another --tt-from run of the same file (one setting per core, "
                        "say); a setting it holds with this budget and scorer for every seed is taken from it, "
                        "not run again (repeatable)")
    p.add_argument("--test-batches", type=int, help="use only the first N test batches (default: the whole split)")
    p.add_argument("--vary-calibration", action="store_true",
                   help="draw another calibration subset per seed (one calibration pass per seed and setting)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--quick", action="store_true", help="shipped F=16 checkpoint, seed 0, 2 tuning trials")
    p.add_argument("--out-dir", default=str(RESULTS), help=f"output folder (default {RESULTS})")
    p.add_argument("--out-name", help="output stem in benchmarks/results (default paper_tables, quick: paper_tables_quick)")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = "0" if args.quick else "0,1,2,3,4"
    if args.tune is None:
        args.tune = 2 if args.quick else 10
    args.out_name = args.out_name or ("paper_tables_quick" if args.quick else "paper_tables")
    args.tt_method = f"{args.tt_base}+tt"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    t_start = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.tt and args.tt_method not in methods:
        methods.append(args.tt_method)
    for m in methods:
        if m not in METHODS:
            die(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    if not seeds:
        die("give at least one seed")

    from qprune.problems import load_checkpoint

    if args.tt_from and args.add_to:
        die("give --tt-from or --add-to, not both")
    if args.tt_take and not args.tt_from:
        die("--tt-take goes with --tt-from (it takes TT rows made from the same file)")
    if args.add_to:
        args.tt_from, adding = args.add_to, methods
    else:
        adding = None
    source = adopt_source(args) if args.tt_from else None
    ckpt, note = paper_checkpoint(args)
    problem, model = load_checkpoint(ckpt, test_batches=args.test_batches, **data_override(ckpt))
    if problem.name != "denoise":
        die(f"{ckpt} is a {problem.name!r} checkpoint; this benchmark needs denoise")
    log(f"model {ckpt} ({note}); F={problem.config['width']}, data {problem.config['data']}")

    full_space = build_space(model, problem.example_inputs(), **problem.prunable(model),
                             residual_branches=BRANCHES)
    settings = make_settings([s.strip() for s in args.settings.split(",") if s.strip()],
                             full_space.n_layers)

    t0 = time.perf_counter()
    test, val = problem.test_batches(), problem.validation_batches()
    unpruned = evaluate(model, test, problem.metrics)
    unpruned.update(params=float(count_params(model)), macs=float(count_macs(model, test[0][0][:1])))
    log(f"unpruned on test: PSNR {unpruned['psnr']:.3f} dB, SSIM {unpruned['ssim']:.4f} "
        f"({time.perf_counter() - t0:.1f} s)")

    if adding is not None:
        add_methods(args, model, problem, full_space.n_layers, source, adding, (test, val, unpruned), t_start,
                    load_start, argv)
        return 0
    if args.tt_from:
        add_tt(args, model, problem, full_space.n_layers, source, (test, val, unpruned), t_start, load_start, argv)
        return 0
    all_rows: list[dict] = []
    metas: list[dict] = []
    for st in settings:
        rows, meta = run_setting(model, problem, st, methods, seeds, args)
        all_rows += rows
        metas.append(meta)
        # written after every setting, so a run stopped later still leaves the settings it finished
        write_results(args, ckpt, note, problem, methods, seeds, test, val, unpruned, all_rows, metas,
                      t_start, load_start, argv, final=st is settings[-1])
    return 0


def adopt_source(args: argparse.Namespace) -> dict[str, Any]:
    """Load ``--tt-from``'s results and take its run's settings (model, seeds, solver, weight search)."""
    path = Path(args.tt_from)
    try:
        source = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        die(f"--tt-from {path}: cannot read it as a results JSON ({exc})")
    if source.get("quick") != bool(args.quick) or not source.get("rows"):
        die(f"--tt-from {path}: {'a --quick' if source.get('quick') else 'a full'} run with "
            f"{len(source.get('rows', []))} rows; give a finished run of the same kind")
    args.checkpoint = source["checkpoint"]
    args.seeds = ",".join(str(s) for s in source["seeds"])
    for key in ("backend", "strategy", "tune", "tune_sampler", "vary_calibration"):
        setattr(args, key, source[key])
    args.capacity = source.get("capacity", "params")  # files older than the capacity option used the paper's
    args.source_argv = source["argv"]
    tt_before = float((source.get("tt_run") or {}).get("wall_s", 0.0))  # an earlier, stopped --tt-from run
    args.source_run = {"machine": source["machine"], "loadavg_start": source["loadavg_start"],
                       "first_s": float(source.get("total_s", 0.0)) - tt_before, "tt_before_s": tt_before}
    return source


def add_tt(args: argparse.Namespace, model: Any, problem: Any, n_layers: int, source: dict[str, Any],
           splits: tuple[list, list, dict], t_start: float, load_start: list | None,
           argv: Sequence[str] | None) -> None:
    """Add the ``--tt-base`` method's ``+tt`` rows to a finished results file, leaving its other rows as they are.

    Per setting in ``--tt-settings`` (skipped when the file already holds those rows, made with this
    budget and scorer, so a stopped run resumes): the base method re-run per seed with its recorded
    weights, then TT from the mask it got. Results are rewritten after every setting.
    """
    names = {t.strip() for t in args.tt_settings.split(",")}
    tt, base = args.tt_method, args.tt_base
    seeds = list(source["seeds"])
    rows = list(source["rows"])
    metas = [dict(m) for m in source["settings"]]
    methods = list(source["methods"]) + ([tt] if tt not in source["methods"] else [])
    t0 = t_start - float(source.get("total_s", 0.0))  # the file's total wall time includes both runs
    want = tt_record(args)
    todo = [i for i, m in enumerate(metas) if m["setting"] in names
            and ({r["seed"] for r in rows if r["setting"] == m["setting"] and r["method"] == tt} != set(seeds)
                 or tt_made(m, tt) != want)]
    takes = [(path, read_take(path, source)) for path in args.tt_take] if todo else []
    for n, i in enumerate(todo):
        meta = metas[i]
        if taken := taken_setting(takes, meta["setting"], tt, want, seeds):
            setting_rows, metas[i] = taken
            rows = [r for r in rows if r["setting"] != meta["setting"]] + setting_rows
        else:
            st = make_settings([meta["setting"]], n_layers)[0]
            new_rows, new_meta = run_setting(model, problem, st, [base, tt], seeds, args,
                                             weights={m: w for m, w in meta["weights"].items() if m == base})
            rerun = rerun_changes(rows, new_rows, meta["setting"], base)
            # TT must refine the mask its paired base row reports: where today's code solves a seed to
            # another mask than the recorded one, the re-run's row replaces the recorded row
            replaced = {(r["seed"], base) for r in rerun} | {(sd, tt) for sd in seeds}
            rows = [r for r in rows if not (r["setting"] == meta["setting"] and (r["seed"], r["method"]) in replaced)]
            rows += [r for r in new_rows if (r["seed"], r["method"]) in replaced]
            weights = dict(meta["weights"], **{m: w for m, w in new_meta["weights"].items() if m == tt})
            metas[i] = dict(meta, weights=weights, tt={**(meta.get("tt") or {}),
                                                       tt: dict(new_meta["tt"][tt], base_rerun=rerun)})
        # the table stays whole (every setting keeps its rows); what is still to be redone is named
        write_results(args, Path(source["checkpoint"]), source["checkpoint_note"], problem, methods, seeds,
                      *splits, rows, metas, t0, load_start, argv, final=source.get("complete", True),
                      tt_pending={tt: [metas[j]["setting"] for j in todo[n + 1:]]})
    if not todo:
        log(f"{args.tt_from} already holds {tt} rows for every seed of settings {sorted(names)}")


def rerun_changes(rows: list[dict], new_rows: list[dict], setting: str, base: str) -> list[dict[str, Any]]:
    """The seeds whose re-run ``base`` mask differs from the recorded one (a code change since the
    first run can move a near-tie of the solver), with both masks' hashes and test PSNRs."""
    recorded = {r["seed"]: r for r in rows if r["setting"] == setting and r["method"] == base}
    out = []
    for r in new_rows:
        old = recorded.get(r["seed"])
        if r["method"] == base and (old is None or old["mask_sha1"] != r["mask_sha1"]):
            out.append({"seed": r["seed"], "recorded": old and old["mask_sha1"], "now": r["mask_sha1"],
                        "psnr_recorded": old and old.get("psnr"), "psnr_now": r.get("psnr")})
            log(f"  setting {setting} seed {r['seed']}: {base} now solves to mask {r['mask_sha1']}, not the "
                f"recorded {old and old['mask_sha1']}; its row is replaced by the re-run's")
    return out


def read_take(path: str, source: dict[str, Any]) -> dict[str, Any]:
    """A ``--tt-take`` results file; one of another model or seeds than ``source`` is refused."""
    try:
        other = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        die(f"--tt-take {path}: cannot read it as a results JSON ({exc})")
    if (other.get("checkpoint"), other.get("seeds")) != (source["checkpoint"], source["seeds"]):
        die(f"--tt-take {path}: made with checkpoint {other.get('checkpoint')} and seeds {other.get('seeds')}, "
            f"not the --tt-from file's {source['checkpoint']} and {source['seeds']}")
    return other


def taken_setting(takes: Sequence[tuple[str, dict[str, Any]]], setting: str, tt: str, want: dict[str, Any],
                  seeds: Sequence[int]) -> tuple[list[dict], dict[str, Any]] | None:
    """``setting``'s rows and record from the first ``--tt-take`` file whose ``tt`` rows of it were
    made as ``want`` says for every seed (None: no such file)."""
    for path, other in takes:
        meta = next((m for m in other.get("settings", []) if m["setting"] == setting), None)
        rows = [r for r in other["rows"] if r["setting"] == setting]
        tt_seeds = {r["seed"] for r in rows if r["method"] == tt}
        if meta and tt_made(meta, tt) == want and tt_seeds == set(seeds):
            log(f"setting {setting}: its rows taken from {path} (a run beside this one)")
            return rows, dict(meta, tt={**meta["tt"], tt: dict(meta["tt"][tt], taken_from=Path(path).name)})
    return None


def tt_scorer_words(tt: dict[str, Any]) -> str:
    """How a :func:`tt_record` scored masks, in words."""
    return (f"{tt['precision']} on " + (f"{tt['images']} of the validation images" if tt["images"] else
                                         "the whole validation split")
            + (f" (their central {tt['crop']}x{tt['crop']} pixels)" if tt.get("crop") else ""))


def tt_record(args: argparse.Namespace) -> dict[str, Any]:
    """How the TT rows of a setting were made (a file whose rows were made otherwise gets new ones)."""
    record = {"budget": args.tt_budget, "precision": args.tt_precision, "images": args.tt_images}
    return record | ({"crop": args.tt_crop} if args.tt_crop else {})  # records made before crops still match


def add_methods(args: argparse.Namespace, model: Any, problem: Any, n_layers: int, source: dict[str, Any],
                adding: list[str], splits: tuple[list, list, dict], t_start: float, load_start: list | None,
                argv: Sequence[str] | None) -> None:
    """Add the rows of ``adding`` to a finished results file, per setting (a setting that already
    holds them for every seed is skipped, so a stopped run resumes); the other rows stay as they are."""
    seeds = list(source["seeds"])
    rows = list(source["rows"])
    metas = [dict(m) for m in source["settings"]]
    methods = list(source["methods"]) + [m for m in adding if m not in source["methods"]]
    t0 = t_start - float(source.get("total_s", 0.0))
    todo = [i for i, m in enumerate(metas)
            if any({r["seed"] for r in rows if r["setting"] == m["setting"] and r["method"] == a} != set(seeds)
                   for a in adding)]
    for n, i in enumerate(todo):
        meta = metas[i]
        st = make_settings([meta["setting"]], n_layers)[0]
        new_rows, new_meta = run_setting(model, problem, st, adding, seeds, args, {})
        rows = [r for r in rows if not (r["setting"] == meta["setting"] and r["method"] in adding)] + new_rows
        metas[i] = dict(meta, weights={**meta["weights"], **new_meta["weights"]},
                        added_signals_s={**meta.get("added_signals_s", {}), **{m: new_meta["signals_s"] for m in adding}})
        write_results(args, Path(source["checkpoint"]), source["checkpoint_note"], problem, methods, seeds,
                      *splits, rows, metas, t0, load_start, argv, final=n == len(todo) - 1)
    if not todo:
        log(f"{args.add_to} already holds {adding} rows for every seed of every setting")


def tt_notes(args: argparse.Namespace, tt_methods: Sequence[str], metas: list[dict]) -> list[str]:
    """The notes on the ``+tt`` rows: what they refine, and what a ``--tt-from`` run re-ran."""
    notes = [f"{m}: the {tt_base(m)} mask of the same seed refined by TT (PROTES) on the validation metric; "
             "each setting says its budget (paper: 20,000 evaluations) and how the masks were scored; where that "
             "is not float32 on the whole validation split, the winner and the seed are re-scored so and the "
             "winner kept only if better there. Its `select s` includes the solve." for m in tt_methods]
    if getattr(args, "tt_from", None):
        def listed(recorded: bool) -> list[str]:
            return [f"the {tt_base(tm)} rows of setting {m['setting']} (seeds {', '.join(str(c['seed']) for c in rr)})"
                    for m in metas for tm, rec in (m.get("tt") or {}).items()
                    if (rr := [c for c in rec.get("base_rerun", []) if bool(c["recorded"]) == recorded])]
        moved, added = listed(True), listed(False)
        notes.append("The +tt rows were added by a later run (`--tt-from`; its arguments are `tt_argv`): it re-ran "
                     "the method each refines per seed with the recorded weights and refined the mask it got; the "
                     "other rows are the first run's"
                     + (f", except {'; '.join(moved)}: the re-run solved those to another mask than the recorded "
                        "one, so its row replaces the recorded row (both masks are in the setting's "
                        "`tt.<method>.base_rerun`)." if moved else
                        " (every re-run mask equals the recorded one).")
                     + (f" It added {'; '.join(added)}: the first run had none." if added else ""))
    return notes


def write_results(args: argparse.Namespace, ckpt: Path, note: str, problem: Any, methods: list[str],
                  seeds: list[int], test: list, val: list, unpruned: dict[str, float], all_rows: list[dict],
                  metas: list[dict], t_start: float, load_start: list | None, argv: Sequence[str] | None,
                  *, final: bool, tt_pending: dict[str, list[str]] | None = None) -> None:
    """Aggregate, test and write the JSON and Markdown of the settings done so far (``tt_pending``:
    +tt method -> the settings whose rows a ``--tt-from`` run has still to redo)."""
    keys = [k for k in ("psnr", "ssim", "params", "macs", "select_s") if k in all_rows[0]]
    aggs = aggregate(all_rows, keys)
    for a in aggs:
        mine = [r for r in all_rows if r["setting"] == a["setting"] and r["method"] == a["method"]]
        a["deterministic"] = all(r["deterministic"] for r in mine)
        a["distinct_masks"] = len({r["mask_sha1"] for r in mine})
    notes = [
        ("Metrics are on the held-out TEST split; weights are chosen on the VALIDATION split; the calibration "
        "batches come from the training split."),
        (f"Counts: paper filters per layer assumed {PAPER_FILTERS_PER_LAYER} (\"64 filters per layer\"); k = "
        "round(paper count / (64 x layers) x our units); full model: 36 %."),
        ("Which layers the paper isolated for its sub-problems is not stated; we take the first L prunable layers "
        "in module order (enc1.0.conv1, enc1.0.conv3, enc1.0.conv4, enc1.0.conv5, enc1.1.conv1, ...)."),
        (f"Capacity reward (what gamma multiplies): {args.capacity}"
         + (" (D_i = P_i / sum P, the paper's)." if args.capacity == "params" else
            " (D_i = 1/N: a pure count reward; our units differ in size, so the paper's P_i-proportional reward "
            "would also steer the mask towards big units).")),
        "The paper's unpruned baselines differ per table (unseeded data splits); ours is one model on one fixed split.",
        ("No fine-tuning after pruning (as in the paper). PSNR/SSIM of the gated model, which equals the physically "
        "pruned model (qprune.model.masking)."),
        "Greedy methods are deterministic given the calibration data: one run, row repeated per seed (std 0)."
        if not args.vary_calibration else "Greedy methods vary only through the calibration subset.",
        ("The denoise problem's own `seed` option changes the split, the noise and the calibration order together; "
        "--vary-calibration varies only the calibration subset (a seeded draw from the training split)."),
        ("The weight search uses the first seed for both Optuna's sampler and the QUBO solver, so every setting "
        "tries the same candidate weights; the one kept is the best on validation for that setting."),
    ]
    tt_methods = [m for m in methods if method_spec(m).refine]
    notes += tt_notes(args, tt_methods, metas)
    payload: dict[str, Any] = {
        "quick": bool(args.quick), "checkpoint": str(ckpt), "checkpoint_note": note,
        "checkpoint_meta": getattr(problem, "checkpoint_meta", {}),
        "problem_config": problem.config, "seeds": seeds, "methods": methods,
        "backend": args.backend, "strategy": args.strategy, "tune": args.tune, "tune_sampler": args.tune_sampler,
        "vary_calibration": bool(args.vary_calibration),
        "test_samples": sum(int(x.shape[0]) for x, _ in test), "val_samples": sum(int(x.shape[0]) for x, _ in val),
        "calib_samples": sum(int(x.shape[0]) for x, _ in problem.calibration_batches()),
        "unpruned": unpruned, "settings": metas, "rows": all_rows, "aggregate": aggs,
        "paper": {s: {m: {"psnr": v[0], "ssim": v[1]} for m, v in d.items()} for s, d in PAPER.items()},
        "paper_seconds_full": PAPER_SECONDS_FULL,
        "machine": machine_info(), "loadavg_start": load_start,
        "argv": sys.argv[1:] if argv is None else list(argv), "notes": notes, "capacity": args.capacity,
    }
    payload["total_s"] = time.perf_counter() - t_start
    if getattr(args, "tt_from", None):  # the first run's machine and time stay; the TT run gets its own record
        first = args.source_run
        payload["tt_argv"], payload["argv"] = payload["argv"], args.source_argv
        payload["tt_run"] = {"machine": payload["machine"], "loadavg_start": load_start,
                             "wall_s": payload["total_s"] - first["first_s"]}
        payload["machine"], payload["loadavg_start"] = first["machine"], first["loadavg_start"]
    payload["paired"] = paired_tests(all_rows, metas)
    payload["ordering"] = ordering_paragraph(aggs, metas, seeds, payload["paired"])
    payload["complete"] = final
    payload["tt_pending"] = {m: list(v) for m, v in (tt_pending or {}).items() if v}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{args.out_name}.json", payload)
    md = render_markdown(payload)
    with atomic_open(out_dir / f"{args.out_name}.md") as fh:
        fh.write(md)
    if final and not payload["tt_pending"]:
        print(md)
    log(f"wrote {out_dir / (args.out_name + '.json')} and .md in {payload['total_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
