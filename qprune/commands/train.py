"""`qprune train`: train a model for a problem and save a checkpoint.

Train the problem's model (denoise: NAF Half-UNet; classify: small ResNet), print the held-out
result against the trivial baseline, and save a checkpoint that holds the problem name, its full
config and the training metadata.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from qprune.commands import add_command
from qprune.errors import QpruneError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, run)
    p.add_argument("--problem", "-p", required=True, help="denoise or classify")
    p.add_argument("--output", "-o", required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--width", type=int, help="model width (denoise: filters F, paper 64; classify: 16)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--data", help="dataset path: SIDD-Small folder (or validation .mat) for denoise, CIFAR-10 "
                                  "folder for classify (default: bundled scikit-image photos / digits)")
    p.add_argument("--seed", type=int, default=0, help="training seed: init, order, flips (default 0)")
    p.add_argument("--data-seed", type=int, help="seed of the split and synthetic noise (default 0)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                   help="learning-rate schedule: cosine (default) or step (the paper: halve every 10 epochs)")
    p.add_argument("--step-every", type=int, default=10,
                   help="step schedule: halve the learning rate every N epochs (default 10, the paper's)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): bf16 autocast where the CPU/GPU has native bf16, else fp32; "
                        "weights, loss and metrics stay float32")
    p.add_argument("--memory-format", choices=("auto", "channels-last", "nchw"), default="auto",
                   help="tensor layout while training; auto (default): the problem's measured choice "
                        "(denoise channels-last, classify NCHW)")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped run from OUTPUT's state file (x.pt -> x.state.pt, written after "
                        "every epoch); starts fresh when there is none, does nothing when OUTPUT is finished")
    p.add_argument("--curves", help="also write the training curves (loss, PSNR/SSIM or accuracy per epoch, train "
                                    "and validation) to this PNG; with --resume on a finished run, from its history")
    p.add_argument("--batch-size", type=int, help="batch size (denoise 16, classify 64)")
    p.add_argument("--patch", type=int, help="denoise: patch size, a multiple of 8 (bundled 64, SIDD 128)")
    p.add_argument("--limit", type=int, help="use only the first N images/scenes (quick runs)")
    p.add_argument("--config", help="more problem options as JSON, e.g. '{\"photons\": 200}'")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (CUDA when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace) -> dict:
    extra: dict = {}
    if args.config:
        try:
            extra = json.loads(args.config)
        except json.JSONDecodeError as exc:
            raise QpruneError(f"--config is not a JSON object: {exc.msg}") from None
        if not isinstance(extra, dict):
            raise QpruneError(f"--config must be a JSON object, got {type(extra).__name__}")
    flags = {"width": args.width, "data": args.data, "seed": args.data_seed, "batch_size": args.batch_size,
             "limit": args.limit}
    if args.patch is not None:
        if args.problem != "denoise":
            raise QpruneError("--patch applies to --problem denoise only")
        flags["patch"] = args.patch
    return {**extra, **{k: v for k, v in flags.items() if v is not None}}


def _finished(out: Path, problem: object, args: argparse.Namespace) -> bool:
    """True when ``out`` is already the finished checkpoint of this very run (nothing to resume)."""
    from qprune import problems

    if not out.is_file():
        return False
    ckpt = problems.read_checkpoint(out)
    meta = ckpt.get("meta", {})
    same = (ckpt.get("problem") == args.problem and ckpt.get("config") == problems.plain(problem.config)
            and meta.get("epochs") == args.epochs and meta.get("seed") == args.seed and meta.get("lr") == args.lr
            and meta.get("schedule") == args.schedule)
    if not same:
        raise QpruneError(f"--resume: {out} is a finished checkpoint of a different run; "
                          "choose another --output or delete it")
    return True


def run(args: argparse.Namespace) -> int:
    """Train (or resume), print the held-out comparison, save the checkpoint; returns the exit code."""
    import torch

    from qprune import problems
    from qprune.problems.training import state_path

    out = Path(args.output)
    if out.exists() and out.is_dir():
        raise QpruneError(f"--output {str(out)!r} is a directory")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    problem = problems.get(args.problem, **_config(args))
    state = state_path(out)
    if args.resume and not state.exists() and _finished(out, problem, args):
        print(f"{out} is already trained ({args.epochs} epochs); nothing to resume")
        _curves(args, problems.read_checkpoint(out)["meta"].get("history", []))
        return 0
    result = problem.train(epochs=args.epochs, lr=args.lr, seed=args.seed, schedule=args.schedule,
                           step_every=args.step_every, precision=args.precision,
                           channels_last={"auto": None, "channels-last": True, "nchw": False}[args.memory_format], device=args.device, state=state,
                           resume=args.resume, progress=not args.quiet, log=lambda line: print(line, flush=True))
    print(problem.summary(result.meta))
    # Recorded so a checkpoint says how to remake it (None when called from Python, not the CLI).
    command = "qprune " + shlex.join(sys.argv[1:]) if "train" in sys.argv[1:] else None
    meta = {**result.meta, "history": result.history, "command": command}
    problems.save_checkpoint(out, problem, result.model, meta=meta)
    state.unlink(missing_ok=True)  # the checkpoint holds the history; the state is only for resuming
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB; problem {problem.name}, "
          f"{sum(p.numel() for p in result.model.parameters()):,} parameters, {result.meta['train_seconds']} s)")
    _curves(args, result.history)
    return 0


def _curves(args: argparse.Namespace, history: list) -> None:
    if not args.curves:
        return
    from qprune.pipeline.report import plot_training

    plot_training(history, args.curves, title=f"qprune train --problem {args.problem}: {Path(args.output).name}")
    print(f"wrote {args.curves}")
