"""Prune your own torchvision model on your own batches through the Python API.

Any ``nn.Module`` and a list of ``(input, target)`` batches will do: qprune needs a loss for the
calibration pass (Taylor/Fisher signals) and, to report a metric, a metric function. Here: a
ResNet-18 on random images with random labels, so the script runs anywhere; put your trained model
and your own data loader's batches in their place.

    python examples/prune_torchvision.py            # resnet18, 30 % of its units
    python examples/prune_torchvision.py --quick    # fewer, smaller images, 4 layers (the test runs this)
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

import qprune
from qprune.torchvision_compat import prepare_torchvision

prepare_torchvision()  # torchvision's Python code beside a CPU-only torch build
import torchvision  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 batches of 4 images at 32x32, the first 4 prunable layers")
    p.add_argument("--sparsity", type=float, default=0.3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()  # your trained model here
    n, size = (2, 32) if args.quick else (4, 64)
    batches = [(torch.randn(4, 3, size, size), torch.randint(0, 10, (4,))) for _ in range(n)]  # your data here

    def accuracy(out: torch.Tensor, target: torch.Tensor) -> float:
        return float((out.argmax(1) == target).float().mean())

    result = qprune.prune(model, batches, sparsity=args.sparsity, method="hybrid-qubo", backend="neal",
                          loss_fn=F.cross_entropy, metric_fn=accuracy, seed=0, progress=not args.quick,
                          space=qprune.SpaceOptions(exclude=["fc"],  # keep the classifier's 10 outputs
                                                    layers=4 if args.quick else None))
    before, after = result.stats_before, result.stats_after
    print(f"pruned {result.k} of {result.space.N} units in {len(result.space.layers)} layers")
    print(f"params {int(before['params']):,} -> {int(after['params']):,}; "
          f"MACs {int(before['macs']):,} -> {int(after['macs']):,}")
    print(f"energy {result.energy:.4f} at gamma {result.gamma:.4g}; stage seconds "
          + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    assert after["params"] < before["params"]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
