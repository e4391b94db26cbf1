"""Helpers for the scorers' forward passes: IEEE float32 on CUDA,
synchronised clocks, batch replication and the split / concatenation of model outputs, the
channels-last layout, and the output comparison that admits a layout or a batch split."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model.cut import channels_last
from qprune.model.tensors import iter_tensors, map_tensors

__all__ = [
    "Layout", "as_float32", "as_masks", "cat_outputs", "contiguous", "ieee_fp32", "matches", "native_bfloat16",
    "replicate", "split_output", "sync_clock", "weighted_mean",
]


def as_masks(masks: Any, n: int) -> np.ndarray:
    """Masks ``[B, N]`` or ``[N]`` (array or tensor, 0/1) as contiguous ``int8 [B, N]``."""
    X = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != n:
        raise QpruneError(f"masks must have shape [B, {n}], got {tuple(X.shape)}")
    if X.size and not np.all((X == 0) | (X == 1)):
        raise QpruneError("masks must contain only 0 and 1 (1 = pruned)")
    return np.ascontiguousarray(X, dtype=np.int8)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX tiles).

    Without either, oneDNN emulates bfloat16 and an autocast pass is slower than a float32 one
    (about 2x on the F = 64 Half-UNet), so bfloat16 scoring only pays where this is True.
    """
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu has no public probe
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def sync_clock(cuda: bool) -> float:
    """``time.perf_counter()`` once the GPU has finished its queued work (CUDA runs
    asynchronously: without the sync a timing would measure kernel launches)."""
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


@contextlib.contextmanager
def ieee_fp32(cuda: bool) -> Iterator[None]:
    """Full-precision float32 convolutions and matrix products on CUDA while scoring.

    cuDNN convolutions default to TF32 on Ampere and later GPUs (10-bit mantissas), and which
    kernel a pass gets depends on its batch size, so a batched pass and a one-mask pass would
    round differently at TF32's precision, not float32's: the scores would no longer equal naive
    scoring. The settings in force are put back on exit. Nothing changes on a CPU.
    """
    if not cuda:
        yield
        return
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    if hasattr(conv, "fp32_precision"):  # torch >= 2.9; mixing it with allow_tf32 is an error
        wanted = [(conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    else:
        wanted = [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in wanted]
    for obj, name, value in wanted:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def replicate(x: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` copies of a batch, mask-major: rows ``[j*b, (j+1)*b)`` belong to mask ``j``
    (the layout :class:`qprune.model.masking.Gates` expects); a channels-last batch stays channels-last."""
    if copies == 1:
        return x
    out = x.unsqueeze(0).expand(copies, *x.shape).reshape(copies * x.shape[0], *x.shape[1:])
    return out.contiguous(memory_format=torch.channels_last) if channels_last(x) else out


def cat_outputs(parts: Sequence[Any]) -> Any:
    """Concatenate model outputs (tensors, tuples, dicts) of consecutive pieces of a batch."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts))
    if isinstance(first, (tuple, list)):
        return type(first)(cat_outputs([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {key: cat_outputs([p[key] for p in parts]) for key in first}
    return first


def matches(out: Any, ref: Any, m: int, rtol: float = 1e-4) -> bool:
    """Whether ``out`` (a pass over the first ``m`` images, any layout) equals the first ``m``
    samples of the standard pass ``ref`` up to float rounding: the check that lets a layout or
    a batch split be used at all (a model whose samples interact in eval mode fails it).
    ``rtol``: the rounding allowed, relative to each value and (a tenth of it) to the largest."""
    a, b = list(iter_tensors(out)), list(iter_tensors(ref))
    if len(a) != len(b):
        return False
    for u, v in zip(a, b):
        if v.dim() == 0 or v.shape[0] < m or u.shape != v[:m].shape:
            return False
        v = v[:m]
        scale = float(v.abs().max()) if v.numel() and v.is_floating_point() else 1.0
        if not torch.allclose(u, v, rtol=rtol, atol=0.1 * rtol * max(scale, 1e-12)):
            return False
    return True


def contiguous(out: Any) -> Any:
    """The output in the standard layout, so the metric reduces in the order naive scoring does."""
    return map_tensors(out, torch.Tensor.contiguous)


def as_float32(out: Any) -> Any:
    """A reduced-precision output in float32, so the metric computes as it does on a float32 pass."""
    return map_tensors(out, lambda t: t.float() if t.is_floating_point() else t)


class Layout:
    """Context: the model's 4-D parameters and buffers in channels-last memory format (``on``),
    the original tensors put back on exit (no copy of the model, nothing else touched)."""

    def __init__(self, model: nn.Module, on: bool) -> None:
        self.model, self.on = model, on
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> None:
        if not self.on:
            return
        for t in [*self.model.parameters(), *self.model.buffers()]:
            if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                self.saved.append((t, t.data))
                t.data = t.data.contiguous(memory_format=torch.channels_last)

    def __exit__(self, *exc: object) -> None:
        for t, data in self.saved:
            t.data = data
        self.saved.clear()


def split_output(out: Any, copies: int, j: int) -> Any:
    """Mask ``j``'s share of a model output on a replicated batch (tensors, tuples, dicts)."""
    if isinstance(out, torch.Tensor):
        b = out.shape[0] // copies
        return out[j * b:(j + 1) * b]
    if isinstance(out, (tuple, list)):
        return type(out)(split_output(o, copies, j) for o in out)
    if isinstance(out, dict):
        return {key: split_output(o, copies, j) for key, o in out.items()}
    return out


def weighted_mean(values: Sequence[float], weights: Sequence[int]) -> float:
    """The mean of ``values`` weighted by ``weights`` (batch sizes)."""
    return float(sum(v * w for v, w in zip(values, weights)) / max(sum(weights), 1))
