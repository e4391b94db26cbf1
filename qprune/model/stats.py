"""Model statistics before/after pruning: parameters, MACs/FLOPs, measured CPU latency.

* parameters: ``sum(p.numel())`` over the unique parameters (buffers such as BN running stats
  excluded);
* MACs (:func:`count_macs`): multiply-accumulates per input sample of every convolution
  (output positions x weight elements; input positions for a transposed conv), every linear
  (tokens x weight elements) and every attention module qprune knows (q/k/v and output
  projections and the two attention products, per head; :mod:`qprune.model.attention`). Biases,
  norms, activations and pooling are not MACs and are not counted; functional convs/linears of
  other modules are not seen. FLOPs = 2 x MACs. Every counted term is ``positions x (elements
  of one weight tensor)`` or ``MACs per head x heads`` (:func:`mac_terms`), which is what lets
  :meth:`qprune.model.units.FilterSpace.predicted_macs` predict the count of a pruned model
  exactly. (Before the attention and branch units, this was torch-pruning's
  ``count_ops_and_params``, which also counts norms, activations, pooling and biases:
  :func:`count_ops` still gives that number.)
* latency: median wall time of ``repeats`` forwards under ``torch.inference_mode`` after ``warmup``
  forwards, in eval mode, with ``torch.set_num_threads(threads)`` for the measurement (restored
  afterwards). On a shared machine pin ``threads=1``: oversubscribed intra-op threads make
  timings meaningless.
"""

from __future__ import annotations

import functools
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from qprune.model.attention import adapter_for, head_geometry, head_macs
from qprune.model.modes import eval_mode
from qprune.model.tensors import as_tuple

__all__ = [
    "compare_latency", "compare_stats", "count_macs", "count_ops", "count_params", "mac_terms", "measure_latency",
    "model_stats",
]


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates per input sample (see the module doc for what counts)."""
    return int(sum(c * n for _, c, n in mac_terms(model, example_inputs)))


def count_ops(model: nn.Module, example_inputs: Any) -> int:
    """torch-pruning's ``count_ops_and_params`` per sample (MACs plus norm/activation/pool/bias ops)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, _ = tp.utils.count_ops_and_params(model, as_tuple(example_inputs))
    return int(macs)


def mac_terms(model: nn.Module, example_inputs: Any) -> list[tuple[str, int, int]]:
    """``(name, coefficient per sample, elements)`` whose products sum to the model's MACs.

    ``name`` is a weight's parameter name (coefficient: output positions or tokens, summed over
    the module's calls) or ``"heads:<attention path>"`` (coefficient: MACs per head; elements: the
    heads). One forward in eval mode under ``no_grad``.
    """
    xs = as_tuple(example_inputs)
    names = {m: n for n, m in model.named_modules()}
    # MultiheadAttention / Swin run their projections functionally (or, routed, as modules): their
    # head term counts them, so their own linears are never counted twice
    inside = {c for m in model.modules() if adapter_for(m) in ("mha", "swin") for c in m.modules() if c is not m}
    coeff: dict[str, int] = defaultdict(int)
    numel: dict[str, int] = {}

    def conv(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        ref = args[0] if m.transposed else out  # a transposed conv's work runs over its input positions
        name = f"{names[m]}.weight"
        coeff[name] += ref.numel() // ref.shape[1]
        numel[name] = m.weight.numel()

    def linear(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        name = f"{names[m]}.weight"
        coeff[name] += args[0].numel() // m.in_features
        numel[name] = m.weight.numel()

    def attn(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        name = f"heads:{names[m]}"
        coeff[name] += head_macs(m, args, kwargs, out)[0]
        numel[name] = head_geometry(m)[0]

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear) and m not in inside:
            hooks.append(m.register_forward_hook(linear))
        elif adapter_for(m) is not None:
            hooks.append(m.register_forward_hook(attn, with_kwargs=True))
    with eval_mode(model, hooks), torch.no_grad():
        model(*xs)
    batch = next((int(x.shape[0]) for x in xs if isinstance(x, torch.Tensor) and x.dim()), 1) or 1
    return [(n, c // batch, numel[n]) for n, c in coeff.items()]


def time_calls(
    calls: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = 1,
) -> dict[str, dict[str, float]]:
    """The one latency measurement: ``warmup`` untimed calls of each, then ``repeats`` rounds that
    time every call once, in turn (:func:`_summary` of each, in milliseconds).

    Interleaving spreads a shared machine's load drift over all calls alike, so the RATIOS are
    trustworthy even when absolute times wander. ``threads=None`` keeps torch's thread count.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    old_threads = torch.get_num_threads()
    times: dict[str, list[float]] = {k: [] for k in calls}
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        for _ in range(repeats):
            for k, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old_threads)
    return {k: _summary(t, repeats, threads if threads is not None else old_threads) for k, t in times.items()}


def compare_latency(
    models: dict[str, nn.Module],
    example_inputs: Any,
    *,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = 1,
) -> dict[str, dict[str, float]]:
    """Forward latency of several models side by side (:func:`time_calls`: interleaved rounds), in
    eval and inference mode; returns ``{name: {"median_ms", "min_ms", "mean_ms", "stdev_ms", ...}}``."""
    xs = as_tuple(example_inputs)
    modes = {k: m.training for k, m in models.items()}
    try:
        for m in models.values():
            m.eval()
        with torch.inference_mode():
            return time_calls({k: functools.partial(m, *xs) for k, m in models.items()},
                              repeats=repeats, warmup=warmup, threads=threads)
    finally:
        for k, m in models.items():
            m.train(modes[k])


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = 1,
) -> dict[str, float]:
    """Median/min/mean/stdev forward time of one model in milliseconds (:func:`compare_latency`)."""
    return compare_latency({"model": model}, example_inputs, repeats=repeats, warmup=warmup, threads=threads)["model"]


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
