"""`qprune finetune`: recovery fine-tuning of a pruned model (optionally distilled from the unpruned one).

Rebuild the pruned model from a recipe (`qprune prune --recipe`) on the checkpoint, train it with
the problem's own loop (Adam, cosine schedule; state saved after every epoch, --resume continues),
and save it; the report shows the metrics before and after.
"""

from __future__ import annotations

import argparse

from qprune.commands import add_command
from qprune.commands._common import add_finetune_args, add_problem_args, check_output, load_problem_and_model
from qprune.errors import QpruneError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, run, add_problem_args)
    p.add_argument("--recipe", required=True, help="recipe file from `qprune prune --recipe`")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
    add_finetune_args(p, flag=None)
    p.add_argument("--seed", type=int, default=0, help="training seed: order, flips (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped run from OUTPUT's state file (x.pt2 -> x.state.pt)")
    p.add_argument("--output", "-o", required=True, help="fine-tuned model file: .pt2, .onnx or .pt")
    p.add_argument("--report", help="report file: .md or .json")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Rebuild, fine-tune, save; returns the exit code."""
    import copy

    from qprune.model.fileio import format_for, save_pruned
    from qprune.model.recipe import apply_recipe, load_recipe
    from qprune.pipeline.report import write_report
    from qprune.problems.training import state_path

    check_output(args.output, "--output")
    check_output(args.report, "--report")
    format_for(args.output)  # a bad suffix fails before any work
    if args.epochs < 1:
        raise QpruneError(f"--epochs {args.epochs} must be >= 1")
    recipe = load_recipe(args.recipe)
    if not args.checkpoint and not args.problem:  # the recipe knows what it was made from
        args.checkpoint = recipe.get("meta", {}).get("checkpoint")
    problem, model, ckpt = load_problem_and_model(args)
    model.eval()
    pruned = apply_recipe(copy.deepcopy(model), recipe, problem.example_inputs())
    state = state_path(args.output)
    ft = problem.finetune(pruned, epochs=args.epochs, lr=args.finetune_lr, seed=args.seed,
                          teacher=model if args.distill else None, distill_weight=args.distill_weight,
                          device=args.device, precision=args.precision, state=state, resume=args.resume,
                          progress=not args.quiet, log=None if args.quiet else (lambda line: print(line, flush=True)))
    save_pruned(ft.model, args.output, example_inputs=problem.example_inputs(),
                meta={"problem": problem.name, "checkpoint": ckpt, "recipe": str(args.recipe),
                      "finetune": {k: v for k, v in ft.to_dict().items() if k != "history"}})
    state.unlink(missing_ok=True)  # the model file is written: nothing left to resume
    summary = {"problem": problem.name, "checkpoint": ckpt, "recipe": str(args.recipe), "output": args.output,
               "unpruned": problem.evaluate(model), **ft.to_dict()}
    if args.report:
        write_report(args.report, summary, render=finetune_markdown)
    print(finetune_markdown(summary))
    return 0


def finetune_markdown(summary: dict) -> str:
    """The report: metric of the unpruned model, of the pruned one before and after fine-tuning."""
    distill = summary.get("distill_weight")
    lines = [f"# qprune finetune: {summary['problem']}", "",
             f"- {summary['epochs']} epochs, lr {summary['lr']:g}, seed {summary['seed']}, "
             + (f"distilled from the unpruned model (weight {distill:g})" if distill is not None else "no distillation")
             + f", {summary['seconds']} s", "",
             "| metric | unpruned | pruned | fine-tuned | gain |", "|---|---|---|---|---|"]
    for name, before in summary["before"].items():
        lines.append(f"| {name} | {summary['unpruned'].get(name, float('nan')):.4f} | {before:.4f} | "
                     f"{summary['after'][name]:.4f} | {summary['gain'][name]:+.4f} |")
    return "\n".join(lines) + "\n"
