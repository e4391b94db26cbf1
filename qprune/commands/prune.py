"""`qprune prune`: prune a checkpoint; write the pruned model and a report.

Prune a trained model to a count of filters (--sparsity, --k) or to a budget (--budget) and save the
smaller model.
"""

from __future__ import annotations

import argparse

from qprune.commands import add_command
from qprune.commands._common import (
    add_budget_args, add_finetune_args, add_problem_args, add_solver_args, add_space_args, budget_request, check_amount,
    check_output, load_problem_and_model, method_options, parse_weights, residual_branches,
)
from qprune.errors import QpruneError
from qprune.pipeline.figures import check_image_batches, write_comparison_figure


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, run, add_problem_args, add_solver_args, add_space_args, add_budget_args)
    p.add_argument("--output", "-o", help="pruned model file, format by suffix: .pt2 (torch.export), .onnx "
                                          "(ONNX, run by onnxruntime) or .pt (TorchScript); loads without qprune")
    p.add_argument("--recipe", help="also write the mask as a recipe (.json) that re-applies to a fresh instance "
                                    "of the model definition (qprune.model.recipe.apply_recipe)")
    p.add_argument("--report", help="report file: .md (Markdown) or .json")
    p.add_argument("--figure", help="PNG of a few test images side by side: noisy, unpruned, pruned, clean "
                                    "(image-to-image problems such as denoise; the paper's Figure 5)")
    p.add_argument("--figure-images", type=int, default=3, help="rows (test images) of --figure (default 3)")
    add_finetune_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from qprune.model.fileio import format_for, runtime_latency, save_pruned
    from qprune.model.recipe import save_recipe
    from qprune.pipeline.options import SpaceOptions
    from qprune.pipeline.run import method_spec, prune
    from qprune.pipeline.report import render_markdown, summarize, write_report

    check_amount(args)
    method_spec(args.method)  # fail on a bad method before loading anything
    check_output(args.output, "--output")
    check_output(args.report, "--report")
    check_output(args.recipe, "--recipe")
    check_output(args.figure, "--figure")
    if args.figure and not args.figure.lower().endswith(".png"):
        raise QpruneError(f"--figure {args.figure!r} must end in .png")
    if args.figure_images < 1:
        raise QpruneError(f"--figure-images {args.figure_images} must be >= 1")
    if args.output:
        format_for(args.output)  # a bad suffix fails before any work
    weights = parse_weights(args.weights)
    if args.budget is None and (args.min_keep_frac is not None or args.round_to != 1 or args.max_prune is not None
                                or args.latency_table is not None):
        raise QpruneError("--min-keep-frac, --round-to, --max-prune and --latency-table need a --budget "
                          "(e.g. --budget units=0.5)")
    problem, model, ckpt = load_problem_and_model(args)
    if args.figure:
        check_image_batches(problem.test_batches())  # before the pruning work
    space = SpaceOptions(layers=args.layers, min_keep=args.min_keep, residual_branches=residual_branches(args))
    result = prune(
        model, problem, sparsity=args.sparsity, k=args.k, budget=budget_request(args) if args.budget else None,
        method=args.method, backend=args.backend, seed=args.seed, options=method_options(args, weights), space=space,
        remove=args.output is not None or args.report is not None or args.finetune > 0, progress=not args.quiet,
    )
    summary = summarize(result, backend=str(args.backend), extra={"problem": problem.name, "checkpoint": ckpt})
    if args.figure:  # the pruned model as selected, before any fine-tuning
        summary["figure"] = write_comparison_figure(args.figure, model, result.gated_model, problem.test_batches(),
                                                    images=args.figure_images)
    if args.finetune > 0:
        ft = problem.finetune(result.pruned_model, epochs=args.finetune, lr=args.finetune_lr, seed=args.seed,
                              teacher=model if args.distill else None, distill_weight=args.distill_weight,
                              progress=not args.quiet)
        result.pruned_model = ft.model  # what is saved below is the fine-tuned model
        summary["finetune"] = {k: v for k, v in ft.to_dict().items() if k != "history"}
    if args.output:
        save_pruned(result.pruned_model, args.output, example_inputs=problem.example_inputs(),
                    meta={"problem": problem.name, "checkpoint": ckpt, "method": args.method, "k": result.k,
                          "sample": result.sample})
        summary["output"] = {"path": args.output, "format": format_for(args.output),
                             "runtime_latency_ms": runtime_latency(args.output, problem.example_inputs())}
    if args.recipe:
        save_recipe(args.recipe, result.recipe({"problem": problem.name, "checkpoint": ckpt}))
    if args.report:
        write_report(args.report, summary, title=f"qprune prune: {problem.name}")
    print(render_markdown(summary, title=f"qprune prune: {problem.name}"))
    return 0
