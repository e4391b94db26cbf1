"""Arguments and loading shared by the pruning commands (prune, export, apply, compare)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qprune.errors import QpruneError
from qprune.pipeline.catalog import DEFAULT_METHOD
from qprune.qubo.presets import FISHER_CHOICES
from qprune.qubo.providers import CAPACITY_REWARDS
from qprune.solve.budgets.budget import parse_budget
from qprune.solve.strategies import DEFAULT_STRATEGY, STRATEGIES

#: ``--residual-branches`` -> ``build_space(residual_branches=...)``
BRANCH_FLAGS: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}


def add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--problem", help="workload name (denoise, classify); read from the checkpoint if omitted")
    p.add_argument("--checkpoint", "-c", help="checkpoint from `qprune train` (default: the shipped one)")
    p.add_argument("--data", help="dataset path for the problem (default: its bundled data)")


def add_space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, help="restrict to the first N prunable layers (paper: 4, 8, 16)")
    p.add_argument("--min-keep", type=int, default=1, help="channels every layer keeps (default 1)")
    p.add_argument("--residual-branches", choices=tuple(BRANCH_FLAGS), default="off",
                   help="output channels of convs added into a residual trunk as units: off (default), auto "
                        "(where no other layer prunes the trunk: the paper's filters), on (every such conv, the "
                        "trunk kept whole)")


def residual_branches(args: argparse.Namespace) -> bool | str:
    """``--residual-branches`` as :func:`qprune.model.space.build_space` takes it."""
    return BRANCH_FLAGS[args.residual_branches]


def add_solver_args(p: argparse.ArgumentParser, *, method: bool = True, default_method: str = DEFAULT_METHOD) -> None:
    if method:
        p.add_argument("--method", "-m", default=default_method, help=f"pruning method (default {default_method})")
    p.add_argument("--sparsity", "-s", type=float, help="fraction of prunable units to remove")
    p.add_argument("--k", type=int, help="number of units to remove (instead of --sparsity)")
    p.add_argument("--backend", "-b", default="neal", help="solver backend (see `qprune backends`)")
    p.add_argument("--strategy", choices=tuple(STRATEGIES), default=DEFAULT_STRATEGY,
                   help=f"exact-k strategy: gamma bisection (paper) or per-layer curves + DP "
                        f"(default {DEFAULT_STRATEGY})")
    p.add_argument("--fisher", choices=FISHER_CHOICES, default="channel",
                   help="Fisher term of the hybrid preset")
    p.add_argument("--capacity", choices=CAPACITY_REWARDS, default="params",
                   help="what the reward gamma multiplies counts: params (the paper's D_i = P_i / sum P) "
                        "or units (1/N, a pure count reward)")
    p.add_argument("--weights", help="QUBO weights as JSON, e.g. '{\"alpha\": 2.0}', or a JSON file")
    p.add_argument("--seed", type=int, default=0, help="seed for every random step (default 0)")
    p.add_argument("--steps", type=int, help="stages of a QUBO method, the QUBO rebuilt on each stage's pruned "
                                             "model (default: the method's own; fisher-qubo 4)")
    p.add_argument("--refine", choices=("tt",), help="refine the QUBO mask with tensor-train search")
    p.add_argument("--tt-budget", type=int, default=2000, help="metric evaluations for --refine tt")
    p.add_argument("--tt-precision", choices=("float32", "bfloat16"), default="float32",
                   help="arithmetic of the --refine tt mask scorer (bfloat16: faster, approximate; the "
                        "winner is re-scored in float32)")
    p.add_argument("--tt-images", type=int, metavar="N",
                   help="validation images --refine tt scores masks on (default all)")
    p.add_argument("--tt-crop", type=int, metavar="PX",
                   help="--refine tt scores only the central PX x PX pixels of each validation image "
                        "(default: whole images)")


def add_budget_args(p: argparse.ArgumentParser) -> None:
    """--budget and the per-layer limits that go with it (qprune.pipeline.budgeted)."""
    p.add_argument("--budget", help="instead of --sparsity/--k: keep at most this fraction of the model's "
                                    "units, params, macs or latency, e.g. macs=0.5 (lands within 1 %% below)")
    p.add_argument("--round-to", type=int, default=1, help="with --budget: kept counts multiples of N per layer")
    p.add_argument("--max-prune", help="with --budget: prune at most this many units of a layer (an int) or "
                                       "this fraction of it (a float, e.g. 0.75)")
    p.add_argument("--min-keep-frac", type=float, help="with --budget: every layer keeps at least this fraction")
    p.add_argument("--latency-table", help="with --budget latency=F: the per-layer latency table (JSON) "
                                           "measured on this device (`qprune.solve.budgets.latency_table`)")


def parse_max_prune(text: str | None) -> int | float | None:
    """--max-prune as an int count or a float fraction (one-line error otherwise)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise QpruneError(f"--max-prune {text!r} must be a count (int) or a fraction (float)") from None


def budget_request(args: argparse.Namespace, text: str | None = None) -> Any:
    """A ``BudgetRequest`` of ``--budget`` (or ``text``: one budget of a list) with the per-layer
    limit flags of :func:`add_budget_args`."""
    from qprune.pipeline.budgeted import BudgetRequest  # torch and dimod: only once a command runs

    return BudgetRequest.of(args.budget if text is None else text, round_to=args.round_to,
                            min_keep_frac=args.min_keep_frac, max_prune=parse_max_prune(args.max_prune),
                            latency=args.latency_table)


def add_finetune_args(p: argparse.ArgumentParser, *, flag: str | None = "--finetune") -> None:
    """Recovery fine-tuning flags; ``flag`` also adds ``--finetune EPOCHS`` (prune, compare)."""
    if flag:
        p.add_argument(flag, type=int, default=0, metavar="EPOCHS",
                       help="fine-tune each pruned model for EPOCHS epochs with the problem's training loop "
                            "(default 0: none)")
    p.add_argument("--distill", action="store_true",
                   help="fine-tune with knowledge distillation from the unpruned model")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="share of the distillation term in the fine-tuning loss (default 0.5)")
    p.add_argument("--lr" if flag is None else "--finetune-lr", dest="finetune_lr", type=float, default=1e-4,
                   help="fine-tuning learning rate, Adam with a cosine schedule (default 1e-4)")


def load_problem_and_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(problem, trained model, checkpoint path) from --problem/--checkpoint/--data."""
    from qprune import problems

    if args.checkpoint:
        path = Path(args.checkpoint)
        if not path.is_file():
            raise QpruneError(f"checkpoint {str(path)!r} does not exist")
        problem, model = problems.load_checkpoint(path, data=getattr(args, "data", None))
        if args.problem and args.problem != problem.name:
            raise QpruneError(
                f"checkpoint {str(path)!r} holds problem {problem.name!r}, not {args.problem!r}"
            )
        return problem, model, str(path)
    if not args.problem:
        raise QpruneError("give --checkpoint, or --problem to use its shipped checkpoint")
    path = problems.default_checkpoint(args.problem)
    problem, model = problems.load_checkpoint(path, data=getattr(args, "data", None))
    return problem, model, str(path)


def parse_weights(text: str | None) -> Any:
    """--weights as inline JSON or a JSON file (e.g. hpsearch's best-weights file)."""
    from dataclasses import fields

    from qprune.qubo.presets import Weights

    if not text:
        return None
    src = Path(text)
    try:
        raw = json.loads(src.read_text()) if src.is_file() else json.loads(text)
    except json.JSONDecodeError as exc:
        raise QpruneError(f"--weights is neither a JSON object nor a JSON file: {exc.msg}") from None
    if isinstance(raw, dict) and "best_weights" in raw:
        raw = raw["best_weights"]
    if not isinstance(raw, dict):
        raise QpruneError(f"--weights must be a JSON object, got {type(raw).__name__}")
    names = {f.name for f in fields(Weights)}
    bad = sorted(set(raw) - names)
    if bad:
        raise QpruneError(f"unknown weight(s) {bad} in --weights; known: {sorted(names)}")
    try:
        values = {k: ({str(n): float(x) for n, x in v.items()} if k == "extra" else float(v)) for k, v in raw.items()}
    except (TypeError, ValueError, AttributeError):
        raise QpruneError(f"--weights values must be numbers (and 'extra' a name -> number map): {raw}") from None
    return Weights(**values)


def method_options(args: argparse.Namespace, weights: Any = None) -> Any:
    """The :class:`qprune.pipeline.methods.MethodOptions` the solver flags describe."""
    from qprune.pipeline.methods import MethodOptions

    return MethodOptions(backend=args.backend, strategy=args.strategy, refine=getattr(args, "refine", None),
                         weights=weights, fisher=args.fisher, capacity=getattr(args, "capacity", "params"),
                         seed=getattr(args, "seed", 0), steps=getattr(args, "steps", None),
                         tt_budget=getattr(args, "tt_budget", 2000),
                         tt_precision=getattr(args, "tt_precision", "float32"), tt_images=getattr(args, "tt_images", None),
                         tt_crop=getattr(args, "tt_crop", None))


def check_output(path: str | None, flag: str) -> None:
    """Fail before any work if an output's directory cannot be written."""
    if path is None:
        return
    parent = Path(path).resolve().parent
    if parent.exists() and not parent.is_dir():
        raise QpruneError(f"{flag} {path!r}: {str(parent)!r} is not a directory")


def check_amount(args: argparse.Namespace) -> None:
    """--sparsity/--k sanity that needs no model: exactly one, sparsity in [0, 1), k >= 0 (or a
    --budget, parsed here so that a bad one fails before any work)."""
    if getattr(args, "budget", None) is not None:
        if args.sparsity is not None or args.k is not None:
            raise QpruneError("give --budget or --sparsity/--k, not both")
        parse_budget(args.budget)
        return
    if (args.sparsity is None) == (args.k is None):
        raise QpruneError("give exactly one of --sparsity (a fraction in [0, 1)) or --k (a count)")
    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        raise QpruneError(f"--sparsity {args.sparsity} must be a fraction in [0, 1)")
    if args.k is not None and args.k < 0:
        raise QpruneError(f"--k {args.k} must be >= 0")
