"""`qprune compare`: compare pruning methods at equal k or budget (table + JSON + plot).

Run several methods on one checkpoint at the same k (or the same budget) and write compare.md,
compare.json and compare.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qprune.commands import add_command
from qprune.commands._common import (
    add_budget_args, add_finetune_args, add_problem_args, add_space_args, budget_request, load_problem_and_model,
    method_options, parse_weights, residual_branches,
)
from qprune.errors import QpruneError
from qprune.qubo.presets import FISHER_CHOICES
from qprune.qubo.providers import CAPACITY_REWARDS
from qprune.solve.strategies import DEFAULT_STRATEGY, STRATEGIES


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _budgets(args: argparse.Namespace) -> list:
    """``--budget macs=0.8,0.5``: one request per fraction, all with the per-layer limits given."""
    if args.budget is None:
        return []
    kind, sep, fractions = args.budget.partition("=")
    if not sep or not fractions.strip():
        raise QpruneError(f"--budget {args.budget!r}: give KIND=F[,F...], e.g. macs=0.8,0.5")
    return [budget_request(args, f"{kind.strip()}={f.strip()}") for f in fractions.split(",") if f.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, run, add_problem_args, add_space_args)
    p.add_argument("--methods", default="random,l1-greedy,taylor-greedy,l1-qubo,hybrid-qubo,fisher-qubo",
                   help="comma-separated methods")
    p.add_argument("--sparsity", "-s", type=_floats,
                   help="fraction(s) of prunable units, comma-separated (default 0.36)")
    p.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--backend", "-b", default="neal")
    p.add_argument("--strategy", choices=tuple(STRATEGIES), default=DEFAULT_STRATEGY)
    p.add_argument("--fisher", choices=FISHER_CHOICES, default="channel")
    p.add_argument("--capacity", choices=CAPACITY_REWARDS, default="params",
                   help="what gamma's reward counts: params (the paper's) or units (a pure count reward)")
    p.add_argument("--weights", help="QUBO weights as JSON or a JSON file")
    p.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                   help="first tune each QUBO method's weights for TRIALS trials on the validation split")
    p.add_argument("--refine", choices=("tt",), help="refine every QUBO method's mask with TT search")
    p.add_argument("--tt-budget", type=int, default=2000)
    add_budget_args(p)
    add_finetune_args(p)
    p.add_argument("--no-remove", action="store_true",
                   help="score the gated models only: no physically pruned model, so no latency column (params "
                        "and MACs come from the exact cost model either way); faster")
    p.add_argument("--figure", action="store_true",
                   help="also figure.png: one test image, noisy / unpruned / the best QUBO method / the best greedy "
                        "one / clean, at the most pruned target (image-to-image problems)")
    p.add_argument("--out", default="out/compare", help="output directory (default out/compare)")
    p.add_argument("--quiet", "-q", action="store_true")


def run(args: argparse.Namespace) -> int:
    from qprune.pipeline.compare import FinetuneOptions, compare_methods

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    weights = parse_weights(args.weights)
    budgets = _budgets(args)
    sparsities = [] if budgets and args.sparsity is None else (args.sparsity or [0.36])
    problem, model, ckpt = load_problem_and_model(args)
    table = compare_methods(
        model, problem, methods=methods, sparsities=sparsities, seeds=args.seeds, budgets=budgets,
        options=method_options(args, weights), tune=args.tune, layers=args.layers, min_keep=args.min_keep,
        residual_branches=residual_branches(args), remove=not args.no_remove,
        progress=not args.quiet, out_dir=Path(args.out), extra={"checkpoint": ckpt}, figure=args.figure,
        finetune=FinetuneOptions(args.finetune, args.finetune_lr, args.distill, args.distill_weight)
        if args.finetune > 0 else None,
    )
    print(table)
    print(f"wrote {args.out}/compare.md, compare.json, compare.png" + (", figure.png" if args.figure else ""))
    return 0
