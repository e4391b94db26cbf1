"""`qprune apply`: apply a solved sample (JSON/CSV/bitstring) to a checkpoint.

Match a sample to the model's filters by label, prune them, report the metrics and optionally save
the smaller model.
"""

from __future__ import annotations

import argparse

from qprune.commands import add_command
from qprune.commands._common import (
    add_problem_args, add_space_args, check_output, load_problem_and_model, residual_branches,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, run, add_problem_args, add_space_args)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--sample", help="sample file: JSON, CSV (label,value) or a bitstring file")
    what.add_argument("--recipe", help="recipe file from `qprune prune --recipe` (its space options are used)")
    p.add_argument("--output", "-o", help="pruned model file: .pt2, .onnx or .pt")
    p.add_argument("--report", help="report file: .md or .json")


def run(args: argparse.Namespace) -> int:
    from qprune.qubo import fileio as qubo_io
    from qprune.model.fileio import format_for, save_pruned
    from qprune.pipeline.run import as_workload, finish
    from qprune.pipeline.report import render_markdown, summarize, write_report
    from qprune.model.recipe import load_recipe, recipe_space
    from qprune.model.space import build_space

    check_output(args.output, "--output")
    if args.output:
        format_for(args.output)  # a bad suffix fails before any work
    check_output(args.report, "--report")
    problem, model, ckpt = load_problem_and_model(args)
    work = as_workload(model, problem)
    model.eval()
    if args.recipe:
        recipe = load_recipe(args.recipe)
        space = recipe_space(model, recipe, problem.example_inputs())
        mask = space.to_mask({label: 1 for label in recipe["pruned"]})
    else:
        kwargs = dict(work.space_kwargs, min_keep=args.min_keep, residual_branches=residual_branches(args))
        if args.layers is not None:
            kwargs["layers"] = args.layers
        space = build_space(model, problem.example_inputs(), **kwargs)
        mask = qubo_io.load_sample(args.sample, space.labels).astype(bool)
    result = finish(model, space, mask, work, remove=args.output is not None or args.report is not None)
    result.method, result.k = "recipe" if args.recipe else "external sample", int(mask.sum())
    summary = summarize(result, extra={"problem": problem.name, "checkpoint": ckpt,
                                       "source": args.recipe or args.sample})
    if args.output:
        save_pruned(result.pruned_model, args.output, example_inputs=problem.example_inputs(),
                    meta={"problem": problem.name, "checkpoint": ckpt, "sample": result.sample})
    if args.report:
        write_report(args.report, summary, title=f"qprune apply: {problem.name}")
    print(render_markdown(summary, title=f"qprune apply: {problem.name}"))
    return 0
