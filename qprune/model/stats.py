"""Model statistics before/after pruning: parameters, MACs/FLOPs, measured CPU latency.

* parameters: ``sum(p.numel())`` over the unique parameters (buffers such as BN running stats
  excluded);
* MACs: torch-pruning's ``tp.utils.count_ops_and_params`` (multiply-accumulates of conv / linear /
  norm / pooling modules per input sample; functional ops inside ``forward`` are not counted);
  FLOPs = 2 x MACs;
* latency: median wall time of ``repeats`` forwards under ``torch.inference_mode`` after ``warmup``
  forwards, in eval mode, with ``torch.set_num_threads(threads)`` for the measurement (restored
  afterwards). On a shared machine pin ``threads=1``: oversubscribed intra-op threads make
  timings meaningless.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from qprune.model.tensors import as_tuple

__all__ = ["compare_latency", "compare_stats", "count_macs", "count_params", "measure_latency", "model_stats"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates per input sample, counted by torch-pruning on a copy of ``model``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, _ = tp.utils.count_ops_and_params(model, as_tuple(example_inputs))
    return int(macs)


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = 1,
) -> dict[str, float]:
    """Median/min/mean/stdev forward time in milliseconds (eval mode, inference mode).

    ``threads=None`` keeps torch's current thread count.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    xs = as_tuple(example_inputs)
    old_threads = torch.get_num_threads()
    was_training = model.training
    times: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        model.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                model(*xs)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(*xs)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return _summary(times, repeats, threads if threads is not None else old_threads)


def compare_latency(
    models: dict[str, nn.Module],
    example_inputs: Any,
    *,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = 1,
) -> dict[str, dict[str, float]]:
    """Latency of several models measured side by side: each repeat times every model once, in turn.

    Interleaving spreads a shared machine's load drift over all models alike, so the RATIOS are
    trustworthy even when absolute times wander. Returns ``{name: measure_latency-style dict}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    xs = as_tuple(example_inputs)
    old_threads = torch.get_num_threads()
    modes = {k: m.training for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        with torch.inference_mode():
            for m in models.values():
                m.eval()
                for _ in range(warmup):
                    m(*xs)
            for _ in range(repeats):
                for k, m in models.items():
                    t0 = time.perf_counter()
                    m(*xs)
                    times[k].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old_threads)
        for k, m in models.items():
            m.train(modes[k])
    return {k: _summary(t, repeats, threads if threads is not None else old_threads) for k, t in times.items()}


def _summary(times: list[float], repeats: int, threads: int) -> dict[str, float]:
    """Median/min/mean/stdev of the times in ms, with the repeats and threads they were taken with."""
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "mean_ms": statistics.fmean(times),
        "stdev_ms": statistics.stdev(times) if len(times) > 1 else 0.0,
        "repeats": float(repeats),
        "threads": float(threads),
    }


def model_stats(
    model: nn.Module,
    example_inputs: Any,
    *,
    latency: bool = True,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = 1,
) -> dict[str, float]:
    """``{"params", "macs", "flops", "latency_ms"}`` (latency = median; omitted with ``latency=False``)."""
    macs = count_macs(model, example_inputs)
    out: dict[str, float] = {"params": float(count_params(model)), "macs": float(macs), "flops": 2.0 * macs}
    if latency:
        out["latency_ms"] = measure_latency(model, example_inputs, repeats=repeats, warmup=warmup,
                                            threads=threads)["median_ms"]
    return out


def compare_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Ratios after/before for every key both have (``params_ratio``, ``flops_ratio``, ...)."""
    return {f"{k}_ratio": after[k] / before[k] for k in before if k in after and before[k]}
