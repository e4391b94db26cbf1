"""CPU latency of an unpruned vs physically pruned network at 20 / 36 / 50 % filter sparsity.

Model: the paper's NAF Half-UNet (width 64, random init, seed 0) on a 1x3x256x256 input. Its
filter space is what :func:`qprune.model.space.build_space` finds: the channels INSIDE the 12 NAF blocks
(768 units); the residual trunk (normalised by LayerNorm2d), the up-sampling convs on the trunk
and the output conv are excluded, so the FLOPs ratio stays above ``1 - sparsity``. ``--arch
resnet18`` runs torchvision's ResNet-18 on 1x3x224x224 instead.

Each sparsity prunes a uniformly random valid mask (seed 0, min_keep=1) with
``apply_mask(..., mode="remove")``. Latency: median of ``--repeats`` forwards per model after a
warm-up, all models timed side by side (each repeat runs every model once, in turn) with
``torch.set_num_threads(--threads)``, so load drift on a shared machine hits all alike.

    .venv/bin/python benchmarks/pruned_speed.py [--size 256] [--repeats 9] [--threads 1]

Prints a table and writes ``benchmarks/results/pruned_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# helper module beside this script (benchmarks/)
from common import RESULTS


def _model(arch: str) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    if arch == "halfunet":
        from qprune.problems.halfunet import HalfUNet

        return HalfUNet(width=64).eval(), 256
    from qprune.torchvision_compat import prepare_torchvision

    prepare_torchvision()  # lets torchvision import beside the CPU build of torch
    import torchvision

    return torchvision.models.resnet18().eval(), 224


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["halfunet", "resnet18"], default="halfunet")
    ap.add_argument("--size", type=int, default=None, help="input height = width (default 256 / 224)")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.20, 0.36, 0.50])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "pruned_speed.json")
    args = ap.parse_args(argv)

    from qprune.model.masking import apply_mask
    from qprune.model.space import build_space
    from qprune.model.stats import compare_latency, count_macs, count_params

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    model, default_size = _model(args.arch)
    size = args.size or default_size
    x = torch.rand(1, 3, size, size)
    small = torch.rand(1, 3, 64, 64)  # the space and the surgery need shapes, not a big input
    space = build_space(model, small)
    models = {"unpruned": model}
    masks = {}
    for s in args.sparsity:
        mask = space.random_mask(float(s), seed=args.seed)
        masks[f"{s:.0%}"] = mask
        models[f"{s:.0%}"] = apply_mask(model, space, mask, mode="remove", example_inputs=small)
    latency = compare_latency(models, x, repeats=args.repeats, warmup=args.warmup, threads=args.threads)
    base_macs = count_macs(model, x)
    base_params = count_params(model)
    base_ms = latency["unpruned"]["median_ms"]
    rows = []
    for name, m in models.items():
        macs = count_macs(m, x)
        params = count_params(m)
        mask = masks.get(name)
        rows.append({
            "model": name,
            "units_pruned": int(mask.sum()) if mask is not None else 0,
            "units": space.N,
            "params": params,
            "params_predicted": space.predicted_params(mask) if mask is not None else space.total_params,
            "params_ratio": params / base_params,
            "macs": macs,
            "flops": 2 * macs,
            "flops_ratio": macs / base_macs,
            "latency_median_ms": latency[name]["median_ms"],
            "latency_min_ms": latency[name]["min_ms"],
            "latency_stdev_ms": latency[name]["stdev_ms"],
            "latency_ratio": latency[name]["median_ms"] / base_ms,
            "speedup": base_ms / latency[name]["median_ms"],
        })
    header = (f"{'model':>9} | {'units':>9} | {'params':>9} | {'GFLOPs':>7} | {'FLOPs ratio':>11} | "
              f"{'median ms':>9} | {'latency ratio':>13} | {'speed-up':>8}")
    print(f"{args.arch}, input 1x3x{size}x{size}, {args.threads} thread(s), median of {args.repeats} "
          f"(interleaved), {space.N} prunable units in {space.n_layers} layers")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:>9} | {r['units_pruned']:>4}/{r['units']:<4} | {r['params']:>9} | "
              f"{r['flops'] / 1e9:>7.2f} | {r['flops_ratio']:>11.3f} | {r['latency_median_ms']:>9.1f} | "
              f"{r['latency_ratio']:>13.3f} | {r['speedup']:>7.2f}x")
    try:
        from qprune.pipeline.report import machine_info

        machine = machine_info()
    except ImportError:  # report.py is another issue's module
        machine = {"torch": torch.__version__}
    result = {
        "benchmark": "pruned_speed",
        "arch": args.arch,
        "input": [1, 3, size, size],
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "seed": args.seed,
        "mask": "uniformly random valid mask (FilterSpace.random_mask), min_keep=1",
        "space": {"units": space.N, "layers": space.n_layers, "excluded": space.excluded},
        "rows": rows,
        "machine": machine,
        "wall_seconds": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
