"""Fast, exact scoring of many candidate pruning masks on a model's validation metric.

:class:`MaskScorer` maps masks ``[B, N]`` (1 = pruned) to one metric value per mask, each equal
(up to float rounding) to what :func:`naive_score` -- one gated forward pass per mask -- gives:
the mean over the validation batches of ``metric(model(x), y)``, weighted by batch size, with the
model in eval mode and the units of the mask gated off (:class:`qprune.model.masking.Gates`: a unit is
zeroed at the inputs of its consumers).

Where the speed comes from, all exact:

* **Shared prefixes (a prefix tree over the masks).** A unit's gate acts when its first consumer
  is called, so everything the model computes before that call is the same for two masks that
  agree on every unit gated earlier. The scorer records the model's module-call trace once
  (forward hooks), and walks the masks depth first: a node is a set of masks that agree up to
  some point of the trace; it runs the forward, once, up to where its masks first disagree, then
  splits. Resuming a forward in the middle of a general ``nn.Module`` needs no knowledge of its
  graph: every module call completed before the resume point is *replayed* (its ``forward`` is
  temporarily replaced by one that returns the stored output; the calls nested in it are
  skipped), the Python glue between module calls simply runs again on the replayed tensors, and a
  stage ends by raising from the pre-hook of the call where the next split happens. Stored
  outputs are raw outputs (the recording hook runs before any other forward hook) and are copied
  only if the trace run showed the model changing outputs in place. Requirements: the call
  sequence must not depend on the data, the gates or the batch size, and the heavy work must sit
  inside modules. A mismatch with the trace is detected and switches the tree off (plain batching,
  still exact).
* **Many masks per forward pass.** Leaves that split at the same point finish together: the
  batch is replicated once per mask and each replica gets its own gates (``Gates.set(masks [B,
  N])``); plain batching does the same for whole passes. A replicated pass saves per-call
  overhead but on a CPU it costs MORE per image once it no longer fits the caches (F=64
  Half-UNet, 64x64 tiles, 1 thread: 21 ms/image for 1 image, 38 ms/image for 16, 99 ms/image for
  256), so the scorer times a pass of 1 and of a few copies once per input shape and uses one copy
  per pass when replication does not pay (``chunk`` overrides). The same timings, and the time
  profile of the trace, make a cost model that picks the tree or plain batching per call; what
  each choice then really took corrects the model for the next calls (the estimates count
  forward time only, not hooks, replays or the metric).
* **Fewer images per pass, the faster layout.** For the same reason a validation batch is run
  in pieces (outputs concatenated before the metric, so any metric sees the whole batch) and, for
  4-D inputs, in channels-last memory format, whichever of these the timings once per batch shape
  show to be fastest per image. Why pieces pay on a CPU: an activation over many images is larger
  than glibc's mmap threshold (32 MB), so every op gets fresh pages from the kernel, zero-filled
  on first touch (F=64 Half-UNet, 8 images of 128x128, 1 thread, fresh process: ~270k minor page
  faults and ~105-120 ms/image per pass of 8, none and ~50-60 ms/image per pass of 1). How much
  that costs depends on the allocator's state (a long-running process may serve big tensors from
  free heap space), which is why it is timed, not assumed. A piece or layout is used only if its
  output matches the standard pass (rtol 1e-4): a model whose samples interact in eval mode is
  never split.
* **Layers cut to each mask (CPU).** Where one mask runs per pass anyway, a pass that belongs to
  one mask alone does not gate full-size layers: :class:`qprune.model.cut.ChannelCut` swaps in the
  parameters index-selected to the channels the mask keeps, so the pass runs the physically
  pruned layers (a pruned unit's zeros are simply not computed; F=64 Half-UNet at 36 %: 0.70 of
  the multiply-accumulates). A cut unit acts at its producer, before its gate would, so the
  prefix tree still splits at the gates and runs its shared stages on whole layers (a producer
  then runs once for all the masks of a node; cutting there measured 0.66 of a forward per mask
  instead of 0.54 on TT masks); a mask's own last stage cuts every unit whose layers it runs.
  Checked against the gated model once; where the two differ (a layer the filter space does not
  describe) the gates stay.
* **Repeated masks** are served from a cache keyed by the mask's bit pattern.
* **Fixed validation subset**: the batches are taken once, at construction.

On a CUDA device both scorers run convolutions and matrix products in IEEE float32: cuDNN's
default is TF32, at which a batched pass and a one-mask pass would not round alike.

``stats()["work_vs_naive"]`` is the forward time run per mask relative to one full pass
(time-weighted from the trace profile; ``calls_vs_naive`` counts module calls instead).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.model.cut import ChannelCut, channels_last
from qprune.errors import QpruneError
from qprune.model.masking import Gates, _tensors, map_tensors

Batch = tuple[torch.Tensor, torch.Tensor]
Metric = Callable[[Any, torch.Tensor], float]
Sink = Callable[[np.ndarray, Any, int], None]  # (rows of X, model output on their replicas, copies)

__all__ = ["MaskScorer", "naive_score"]


# --------------------------------------------------------------------------------------------
# gates


def _gates_class() -> type:
    """``qprune.model.masking.Gates`` -- per-sample gates over a batch replicated once per mask."""
    return Gates


class _Isolated:
    """Context: score with our own gates only -- gates already on the model (``apply_mask(...,
    mode="gate")``) are switched off meanwhile -- in eval mode; everything is put back on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        from qprune.model.masking import _GateHook

        self.others = {
            id(h.gates): h.gates for m in self.model.modules()
            for h in m._forward_pre_hooks.values() if isinstance(h, _GateHook)
        }
        self.enabled = {key: g.enabled for key, g in self.others.items()}
        for g in self.others.values():
            g.enabled = False
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for key, g in self.others.items():
            g.enabled = self.enabled[key]
        self.model.train(self.was_training)


def _as_masks(masks: Any, n: int) -> np.ndarray:
    X = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != n:
        raise QpruneError(f"masks must have shape [B, {n}], got {tuple(X.shape)}")
    if X.size and not np.all((X == 0) | (X == 1)):
        raise QpruneError("masks must contain only 0 and 1 (1 = pruned)")
    return np.ascontiguousarray(X, dtype=np.int8)


def _clock(cuda: bool) -> float:
    """``time.perf_counter()`` once the GPU has finished its queued work (CUDA runs
    asynchronously: without the sync a timing would measure kernel launches)."""
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


@contextlib.contextmanager
def _ieee_fp32(cuda: bool) -> Iterator[None]:
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


def _replicate(x: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` copies of a batch, mask-major: rows ``[j*b, (j+1)*b)`` belong to mask ``j``
    (the layout :class:`qprune.model.masking.Gates` expects); a channels-last batch stays channels-last."""
    if copies == 1:
        return x
    out = x.unsqueeze(0).expand(copies, *x.shape).reshape(copies * x.shape[0], *x.shape[1:])
    return out.contiguous(memory_format=torch.channels_last) if channels_last(x) else out


def _cat(parts: Sequence[Any]) -> Any:
    """Concatenate model outputs (tensors, tuples, dicts) of consecutive pieces of a batch."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts))
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {key: _cat([p[key] for p in parts]) for key in first}
    return first


def _matches(out: Any, ref: Any, m: int) -> bool:
    """Whether ``out`` (a pass over the first ``m`` images, any layout) equals the first ``m``
    samples of the standard pass ``ref`` up to float rounding: the check that lets a layout or
    a batch split be used at all (a model whose samples interact in eval mode fails it)."""
    a, b = list(_tensors(out)), list(_tensors(ref))
    if len(a) != len(b):
        return False
    for u, v in zip(a, b):
        if v.dim() == 0 or v.shape[0] < m or u.shape != v[:m].shape:
            return False
        v = v[:m]
        scale = float(v.abs().max()) if v.numel() and v.is_floating_point() else 1.0
        if not torch.allclose(u, v, rtol=1e-4, atol=1e-5 * max(scale, 1e-12)):
            return False
    return True


def _contiguous(out: Any) -> Any:
    """The output in the standard layout, so the metric reduces in the order naive scoring does."""
    return map_tensors(out, torch.Tensor.contiguous)


class _Layout:
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


def _split(out: Any, copies: int, j: int) -> Any:
    """Mask ``j``'s share of a model output on a replicated batch (tensors, tuples, dicts)."""
    if isinstance(out, torch.Tensor):
        b = out.shape[0] // copies
        return out[j * b:(j + 1) * b]
    if isinstance(out, (tuple, list)):
        return type(out)(_split(o, copies, j) for o in out)
    if isinstance(out, dict):
        return {key: _split(o, copies, j) for key, o in out.items()}
    return out


def _weighted_mean(values: Sequence[float], weights: Sequence[int]) -> float:
    return float(sum(v * w for v, w in zip(values, weights)) / max(sum(weights), 1))


@torch.inference_mode()
def naive_score(
    model: nn.Module,
    space: Any,
    batches: Iterable[Batch],
    metric: Metric,
    masks: Any,
) -> np.ndarray:
    """The reference: for each mask, one gated forward pass per validation batch.

    Returns ``float64 [B]``: per mask, the batch-size-weighted mean of ``metric(model(x), y)``.
    """
    batches = list(batches)
    X = _as_masks(masks, space.N)
    cuda = any(x.is_cuda for x, _ in batches)
    with _Isolated(model), _ieee_fp32(cuda):
        gates = _gates_class()(model, space)
        try:
            scores = np.empty(X.shape[0], dtype=np.float64)
            for j, mask in enumerate(X):
                gates.set(mask)  # one mask, unreplicated batch: what apply_mask(mode="gate") does
                values = [float(metric(model(x), y)) for x, y in batches]
                scores[j] = _weighted_mean(values, [int(x.shape[0]) for x, _ in batches])
        finally:
            gates.remove()
    return scores


# --------------------------------------------------------------------------------------------
# the module-call trace


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter (None where it is not tracked: inference tensors)."""
    try:
        return int(t._version)
    except RuntimeError:
        return None


class _Abort(BaseException):
    """Raised from a pre-hook to end a forward pass at a stage boundary (a BaseException so that
    an ``except Exception`` in a model's forward does not swallow it)."""


class _TraceMismatch(RuntimeError):
    """The model's call sequence differed from the recorded trace."""


@dataclass
class _Call:
    module: nn.Module
    name: str
    index: int  # the module's call count before this call, within one forward
    start: int  # event positions (one counter for starts and ends)
    end: int = -1
    parent: int = -1  # call id of the enclosing call, -1 = the root forward
    skipped: dict[int, int] = field(default_factory=dict)  # id(module) -> calls nested inside


class _Trace:
    """The ordered module calls of one forward pass."""

    def __init__(self, calls: list[_Call]) -> None:
        self.calls = calls
        self.in_place = True  # until the trace run shows otherwise
        self.share = np.linspace(0.0, 1.0, 2 * len(calls) + 2)  # replaced by measured times
        self.by_key = {(id(c.module), c.index): cid for cid, c in enumerate(calls)}
        self.start_index = {c.start: cid for cid, c in enumerate(calls)}
        for cid, c in enumerate(calls):  # what a replay of call cid must count as called
            p = c.parent
            while p >= 0:
                skipped = calls[p].skipped
                skipped[id(c.module)] = skipped.get(id(c.module), 0) + 1
                p = calls[p].parent

    def span(self, start: int, stop: int | None) -> float:
        """Fraction of a whole forward's time spent between two event positions."""
        end = self.share[-1] if stop is None else self.share[stop]
        return float(end - self.share[start])

    def span_calls(self, start: int, stop: int | None) -> float:
        """Fraction of a whole forward's module-call events between two positions
        (deterministic, unlike :meth:`span`)."""
        last = len(self.share) - 1
        return ((last if stop is None else stop) - start) / last

    def call_at(self, pos: int) -> int:
        """The call starting at event position ``pos``."""
        return self.start_index[pos]

    def open_at(self, cid: int, pos: int) -> bool:
        """Whether call ``cid`` (or the root, -1) is running at event position ``pos``."""
        return cid < 0 or self.calls[cid].start < pos < self.calls[cid].end

    def replayed_at(self, pos: int) -> list[int]:
        """The maximal calls completed before ``pos``: what a forward resumed there replays."""
        return [
            cid for cid, c in enumerate(self.calls) if c.end < pos and self.open_at(c.parent, pos)
        ]

    def recorded_in(self, lo: int, hi: int | None) -> list[int]:
        """Calls completing in ``(lo, hi)`` whose parent is still running at ``hi``: the stored
        outputs a later stage may replay (none after the last stage)."""
        if hi is None:
            return []
        return [
            cid for cid, c in enumerate(self.calls)
            if lo < c.end < hi and self.open_at(c.parent, hi)
        ]


class _Recorder:
    """Hooks on every submodule: call counting, trace recording, replay, recording, abort."""

    def __init__(self, model: nn.Module, cuda: bool = False) -> None:
        self.model, self.cuda = model, cuda
        self.modules = [(name, m) for name, m in model.named_modules() if m is not model]
        self.handles: list[Any] = []
        self.mode = "off"
        self.trace: _Trace | None = None
        self._reset()

    def _reset(self) -> None:
        self.counter: dict[int, int] = {}
        self.stack: list[int] = []
        self.pos = 0
        self.calls: list[_Call] = []
        self.replay: dict[int, torch.Tensor] = {}
        self.record: set[int] = set()
        self.stored: dict[int, torch.Tensor] = {}
        self.stop_at: int | None = None
        self.replayed = 0

    def install(self) -> None:
        for name, m in self.modules:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            # prepend: see the raw output, before any gate hook changes it
            self.handles.append(m.register_forward_hook(self._post, prepend=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    # ----- hooks
    def _pre(self, module: nn.Module, args: Any) -> None:
        if self.mode == "off":
            return
        key = id(module)
        index = self.counter.get(key, 0)
        self.counter[key] = index + 1
        if self.mode == "trace":
            self.pos += 1
            self.clock.append(_clock(self.cuda))
            self.calls.append(_Call(module, "", index, self.pos,
                                    parent=self.stack[-1] if self.stack else -1))
            self.stack.append(len(self.calls) - 1)
            return
        assert self.trace is not None
        cid = self.trace.by_key.get((key, index))
        if cid is None:
            raise _TraceMismatch(f"unexpected call #{index} of {type(module).__name__}")
        if cid == self.stop_at:
            raise _Abort
        if cid in self.replay:
            for mid, count in self.trace.calls[cid].skipped.items():
                self.counter[mid] = self.counter.get(mid, 0) + count
        self.stack.append(cid)

    def _post(self, module: nn.Module, args: Any, out: Any) -> None:
        if self.mode == "off":
            return
        cid = self.stack.pop()
        if self.mode == "trace":
            self.pos += 1
            self.clock.append(_clock(self.cuda))
            self.calls[cid].end = self.pos
            map_tensors(out, lambda t: self.versions.append((t, _version(t))))
            return
        if cid in self.record:
            # if the model works in place (ReLU(inplace=True), ``out += x``), keep a copy that
            # later ops cannot change
            self.stored[cid] = map_tensors(out, torch.Tensor.clone) if self.trace.in_place else out

    def _replaying_forward(self, module: nn.Module) -> Callable[..., Any]:
        original = module.__dict__.get("forward") or type(module).forward.__get__(module)

        def forward(*args: Any, **kwargs: Any) -> Any:
            cid = self.stack[-1]
            if cid in self.replay:
                self.replayed += 1
                return self.replay[cid]
            return original(*args, **kwargs)

        return forward

    # ----- runs
    def record_trace(self, run: Callable[[], Any]) -> _Trace:
        """Record the module calls of one forward, and whether any module output is changed in
        place after it was produced (then stored and replayed outputs must be copies)."""
        self._reset()
        self.versions: list[tuple[torch.Tensor, int | None]] = []
        self.clock = [_clock(self.cuda)]
        self.mode = "trace"
        try:
            run()
        finally:
            self.mode = "off"
        self.clock.append(_clock(self.cuda))
        names = {id(m): name for name, m in self.modules}
        for c in self.calls:
            c.name = names.get(id(c.module), "?")
        trace = _Trace(self.calls)
        trace.in_place = any(v is None or _version(t) != v for t, v in self.versions)
        clock = np.asarray(self.clock) - self.clock[0]
        trace.share = clock / max(clock[-1], 1e-12)  # fraction of the pass's time before pos
        self.versions, self.clock = [], []
        self._reset()
        return trace

    def run_stage(
        self, trace: _Trace, run: Callable[[], Any], replay: dict[int, torch.Tensor],
        record: set[int], stop_at: int | None,
    ) -> tuple[Any, dict[int, torch.Tensor]]:
        """One forward from a resume point: returns (model output or None, stored outputs)."""
        self._reset()
        self.trace, self.replay, self.record, self.stop_at = trace, replay, record, stop_at
        patched = {id(trace.calls[cid].module): trace.calls[cid].module for cid in replay}
        saved = {key: m.__dict__.get("forward") for key, m in patched.items()}
        for m in patched.values():
            m.forward = self._replaying_forward(m)
        self.mode = "stage"
        out = None
        try:
            try:
                out = run()
            except _Abort:
                pass
            else:
                if stop_at is not None:
                    raise _TraceMismatch("the forward ended before the stage boundary")
            if self.replayed != len(replay):
                raise _TraceMismatch("not every replayed call was reached")
            if self.stored.keys() != record:
                raise _TraceMismatch("not every recorded call was reached")
            return out, self.stored
        finally:
            self.mode = "off"
            for key, m in patched.items():  # put back exactly what was there
                if saved[key] is None:
                    m.__dict__.pop("forward", None)
                else:
                    m.forward = saved[key]


# --------------------------------------------------------------------------------------------
# the scorer


@dataclass
class ScorerStats:
    """What a :class:`MaskScorer` did so far."""

    calls: int = 0
    masks: int = 0  # masks asked for
    cache_hits: int = 0
    evaluated: int = 0  # distinct masks scored
    forwards: int = 0  # forward passes (whole or partial)
    replicas: int = 0  # batch copies pushed through those passes
    work: float = 0.0  # sum over passes of copies x fraction of a forward's time they ran
    work_calls: float = 0.0  # the same counted in module calls (deterministic)
    batches: int = 1
    tree_batches: int = 0  # (call, batch piece) pairs scored with the prefix tree
    plain_batches: int = 0  # ... with plain batching (cheaper by the cost model, or no tree)
    time: float = 0.0  # all calls, preparation included
    prepare_time: float = 0.0  # the one-off timings and trace recordings (see MaskScorer.prepare)
    prefix_tree: bool = True
    channels_last: bool | None = None  # the memory layout the passes run in (None: not chosen yet)
    physical: bool | None = None  # masks run on layers cut to their kept channels (None: not chosen yet)
    images_per_pass: dict[str, int] = field(default_factory=dict)  # per validation batch shape
    cost_factor: dict[str, float] = field(default_factory=lambda: {"tree": 1.0, "plain": 1.0})
    best: float = -math.inf

    def as_dict(self) -> dict[str, Any]:
        d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}
        # 1.0 = one whole forward per mask and batch (no sharing); the prefix tree makes it < 1
        denom = self.evaluated * self.batches
        d["work_vs_naive"] = self.work / denom if denom else None
        d["calls_vs_naive"] = self.work_calls / denom if denom else None
        return d


class MaskScorer:
    """Exact, batched, cached scores of pruning masks: ``scorer(masks [B, N]) -> float64 [B]``.

    Args:
        model: the network (put in eval mode while scoring, restored afterwards; hooks are
            attached, and 4-D weights put in channels-last layout, only during a call).
        space: its :class:`qprune.model.space.FilterSpace`.
        batches: validation ``(input, target)`` batches, fixed at construction.
        metric: ``metric(output, target) -> float``, higher is better (e.g. PSNR in dB); always
            called on a whole validation batch's output, in the standard memory layout.
        chunk: most masks (batch replicas) in one forward pass; ``None`` picks the largest count
            whose biggest activation stays under ``target_mb`` unless timing shows that
            replicated passes cost more per image than single ones (the usual case on a CPU).
        cache: serve repeated masks (same bit pattern) from a cache.
        prefix: share the computation of masks that agree on the units gated first (the prefix
            tree, see the module docstring) where the cost model says it is cheaper; ``False`` is
            plain batching; ``"always"`` uses the tree for every call.
        images_per_pass: run each validation batch through the model in pieces of this many
            images and concatenate the outputs before the metric (exact: eval-mode models act per
            sample). ``None`` times the divisors of the batch size among ``(b, 4, 2, 1)`` once per
            batch shape and keeps the fastest per image (see the module docstring: small passes
            avoid page faults and stay in the caches).
        channels_last: run 4-D inputs and weights in channels-last memory format; ``None``
            times both layouts once (with the first batch) and keeps the faster. Layouts whose
            outputs do not match the standard pass (rtol 1e-4) are never chosen.
        physical: run each mask on the layers cut to the channels it keeps
            (:class:`qprune.model.cut.ChannelCut`: the physically pruned network, no copy), one mask
            per pass, instead of gating the full-size layers. ``None``: on a CPU (where one mask
            per pass is the fast way anyway), not on a GPU (where many gated masks share a pass).
            The cut is checked against the gated model once (outputs within rtol 1e-4) and not
            used, with a warning, where it differs or fails.
        target_mb: see ``chunk``; ``None``: 32 MB on a CPU, an eighth of the free memory on a
            CUDA device (the batches' device).
        out_mb: memory for the outputs kept while a batch is scored in pieces (masks are then
            scored in groups whose outputs fit).
        progress: progress bar over masks with the best score so far.
    """

    def __init__(
        self,
        model: nn.Module,
        space: Any,
        batches: Iterable[Batch],
        metric: Metric,
        *,
        chunk: int | None = None,
        cache: bool = True,
        prefix: bool | str = True,
        images_per_pass: int | None = None,
        channels_last: bool | None = None,
        physical: bool | None = None,
        target_mb: float | None = None,
        out_mb: float = 256.0,
        progress: bool = True,
    ) -> None:
        self.model, self.space, self.metric = model, space, metric
        self.batches = [(x, y) for x, y in batches]
        if not self.batches:
            raise QpruneError("MaskScorer needs at least one validation batch")
        if chunk is not None and chunk < 1:
            raise QpruneError(f"chunk must be >= 1, got {chunk}")
        if images_per_pass is not None and images_per_pass < 1:
            raise QpruneError(f"images_per_pass must be >= 1, got {images_per_pass}")
        if prefix not in (True, False, "always"):
            raise QpruneError(f"prefix must be True, False or 'always', got {prefix!r}")
        if physical not in (None, True, False):
            raise QpruneError(f"physical must be True, False or None, got {physical!r}")
        if physical and chunk not in (None, 1):
            raise QpruneError(f"physical=True scores one mask per pass; chunk={chunk} asks for more")
        self.weights = [int(x.shape[0]) for x, _ in self.batches]
        self.chunk, self.use_cache, self.prefix = chunk, cache, prefix
        self.images_per_pass, self.layout = images_per_pass, channels_last
        self._cuda = any(x.is_cuda for x, _ in self.batches)
        if physical is None:
            physical = not self._cuda and chunk in (None, 1)
        # None: wanted, until the first plan has checked the cut against the gated model
        self.physical: bool | None = None if physical else False
        self._cut: ChannelCut | None = None  # open while a scoring session runs with cut layers
        if target_mb is None:  # CPU: stay near the caches; GPU: an eighth of the free memory
            target_mb = torch.cuda.mem_get_info()[0] / 8 / 2**20 if self._cuda else 32.0
        self.target_mb, self.out_mb, self.progress = target_mb, out_mb, progress
        self.cache: dict[bytes, float] = {}
        self.n = int(space.N)
        self._stats = ScorerStats(prefix_tree=bool(prefix), batches=len(self.batches))
        self._traces: dict[tuple, _Trace] = {}
        self._levels: dict[tuple, tuple[np.ndarray, list[np.ndarray]]] = {}
        self._cut_pos: dict[tuple, np.ndarray] = {}  # per unit: trace position of its first cut module
        self._cut_sets: dict[tuple, np.ndarray] = {}  # (shape, start) -> units cut in a run from there
        # units that cut the same tensor must be cut together or gated together (a consumer's
        # input width must be what its weights expect): the groups of more than one unit
        sharing: dict[str, list[int]] = {}
        for u, unit in enumerate(space.units):
            for name, _, _ in unit.slices:
                sharing.setdefault(name, []).append(u)
        self._shared = [np.unique(us) for us in sharing.values() if len(set(us)) > 1]
        self._sample_bytes: dict[tuple, int] = {}
        self._costs: dict[tuple, tuple[float, float]] = {}
        self._chunks: dict[tuple, int] = {}
        self._per_pass: dict[tuple, int] = {}
        self._out_bytes: dict[tuple, int] = {}
        self._inputs: list[torch.Tensor] | None = None  # the batches' inputs in the chosen layout
        self._prepared = False
        self._share = 1.0
        self._bar = None

    # ----- public
    def __call__(self, masks: Any) -> np.ndarray:
        """Scores of the rows of ``masks`` (``[B, N]`` or ``[N]``, 1 = pruned)."""
        t0 = time.perf_counter()
        X = _as_masks(masks, self.n)
        self.prepare()
        keys = [np.packbits(row).tobytes() for row in X]
        todo: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if (not self.use_cache or key not in self.cache) and key not in todo:
                todo[key] = i
        st = self._stats
        st.calls += 1
        st.masks += len(keys)
        st.cache_hits += len(keys) - len(todo)
        fresh: dict[bytes, float] = {}
        if todo:
            rows = np.fromiter(todo.values(), dtype=np.int64)
            values = self._score(X[rows])
            st.evaluated += len(rows)
            fresh = dict(zip(todo, values.tolist()))
            if self.use_cache:
                self.cache.update(fresh)
            st.best = max(st.best, float(np.max(values)))
            self._progress(len(rows))
        st.time += time.perf_counter() - t0
        lookup = self.cache if self.use_cache else fresh
        return np.array([lookup[key] for key in keys], dtype=np.float64)

    @torch.inference_mode()
    def prepare(self) -> None:
        """Make the one-off choices now: memory layout and images per pass (timed), masks per
        pass (timed) and the prefix tree's trace, for every validation batch shape. The first
        call does this anyway; calling it ahead keeps that cost out of a timed run. Its time is
        ``stats()["prepare_time"]``."""
        if self._prepared:
            return
        t0 = time.perf_counter()
        with self._session() as (gates, recorder):
            for x in self._inputs or []:
                for piece in self._pieces(x):
                    self._chunk_for(piece, gates)
                    if recorder is not None and self.prefix:
                        try:
                            self._prepare(piece, gates, recorder)
                        except _TraceMismatch as exc:
                            self._disable_prefix(recorder, exc)
        self._prepared = True
        self._stats.prepare_time += time.perf_counter() - t0

    def stats(self) -> dict[str, Any]:
        """Counters: masks asked for, cache hits, distinct masks scored, forward passes, time,
        the layout and images per pass chosen, and ``work_vs_naive`` (forward work per scored
        mask and batch; 1.0 = no sharing)."""
        return self._stats.as_dict()

    def close(self) -> None:
        """Close the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ----- internals
    def _progress(self, count: int) -> None:
        if not self.progress:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc="score masks", unit="mask", leave=False)
        self._bar.update(count)
        self._bar.set_postfix(best=f"{self._stats.best:.4f}", refresh=False)

    @contextlib.contextmanager
    def _session(self) -> Iterator[tuple[Any, _Recorder | None]]:
        """Our gates on the model (others off), the chosen layout, the recorder's hooks."""
        with _Isolated(self.model), _ieee_fp32(self._cuda):
            gates = _gates_class()(self.model, self.space)
            try:
                self._plan(gates)
                with _Layout(self.model, bool(self.layout)), self._cutting() as self._cut:
                    recorder = _Recorder(self.model, self._cuda) if self.prefix else None
                    if recorder is not None:
                        recorder.install()
                    try:
                        yield gates, recorder
                    finally:
                        if recorder is not None:
                            recorder.remove()
            finally:
                self._cut = None
                gates.remove()

    def _cutting(self) -> contextlib.AbstractContextManager[ChannelCut | None]:
        """The layers cut per mask while the context is open, if this scorer runs masks that way."""
        return ChannelCut(self.model, self.space) if self.physical else contextlib.nullcontext()

    def _set_masks(self, gates: Any, masks: np.ndarray, cut: np.ndarray | None = None) -> None:
        """Make the model compute under ``masks`` [D, N]: the units in ``cut`` (bool [N]; one
        mask per pass) on cut layers, the others by gates (one mask: the cheaper broadcast
        gates). With cut layers open, ``cut=None`` gates every unit on whole layers."""
        if self._cut is None:
            gates.set(masks if len(masks) > 1 else masks[0])
            return
        if cut is None:
            cut = np.zeros(self.n, dtype=bool)
        assert len(masks) == 1, "cut layers take one mask per pass"
        self._cut.set(masks[0] & cut)
        gates.set(masks[0] & ~cut)

    def _cuttable(self, shape: tuple, start: int) -> np.ndarray:
        """Units a forward resumed at trace position ``start`` can run on cut layers: those
        whose first cut module runs after ``start`` (what ran before was computed on whole
        layers and is replayed), less every group sharing a tensor with one that cannot."""
        key = (shape, start)
        ok = self._cut_sets.get(key)
        if ok is None:
            ok = self._cut_pos[shape] >= start
            changed = True
            while changed:
                changed = False
                for group in self._shared:
                    if ok[group].any() and not ok[group].all():
                        ok[group] = False
                        changed = True
            self._cut_sets[key] = ok
        return ok

    def _open(self, gates: Any) -> None:
        """The unpruned model: every gate open, every cut layer whole."""
        gates.clear()
        if self._cut is not None:
            self._cut.set(np.zeros(self.n, dtype=np.int8))

    @torch.inference_mode()
    def _score(self, X: np.ndarray) -> np.ndarray:
        with self._session() as (gates, recorder):
            assert self._inputs is not None
            per_batch = [self._score_batch(X, x, y, gates, recorder)
                         for x, (_, y) in zip(self._inputs, self.batches)]
        return np.array(
            [_weighted_mean([v[j] for v in per_batch], self.weights) for j in range(len(X))]
        )

    # ----- layout and images per pass
    def _plan(self, gates: Any) -> None:
        """Per batch shape, time the candidate (layout, images per pass) pairs on the open
        model and keep the fastest per image whose output matches the standard pass."""
        four_d = any(p.dim() == 4 for p in self.model.parameters())
        # time passes that gate like a real mask does (every gated consumer multiplies): one
        # unit off per layer
        probe = np.zeros(self.n, dtype=np.int8)
        probe[np.unique(np.asarray(self.space.layer_ids), return_index=True)[1]] = 1
        for x, _ in self.batches:
            shape = tuple(x.shape)
            if shape in self._per_pass:
                continue
            if self.physical is None:
                self._check_cut(gates, x)
            b = int(x.shape[0])
            if self.images_per_pass is not None:
                sizes = [min(self.images_per_pass, b)]
            else:
                sizes = [d for d in dict.fromkeys((b, 4, 2, 1)) if d <= b and b % d == 0]
            if self.layout is not None:
                layouts = [self.layout and x.dim() == 4]
            else:
                layouts = [False, True] if x.dim() == 4 and four_d else [False]
            configs = [(cl, m) for cl in layouts for m in sizes]
            times: dict[tuple[bool, int], float] = {}
            ref: Any = None
            # round 0 checks each config (and warms it up); rounds 1-2 time them interleaved,
            # so that a load change on a shared machine does not favour one config
            for rnd in range(3):
                if rnd and len(configs) == 1:
                    break  # nothing to choose between
                for cl, m in list(configs):
                    if (cl, m) not in configs:  # dropped this round (the layout failed)
                        continue
                    with _Layout(self.model, cl), self._cutting() as cut:
                        if cut is None:
                            gates.set(probe)
                        else:
                            gates.clear()
                            cut.set(probe)
                        xl = x[:m].contiguous(memory_format=torch.channels_last) if cl else x[:m]
                        t0 = _clock(self._cuda)
                        try:
                            out = self.model(xl)
                        except Exception as exc:  # noqa: BLE001 -- a layout the model cannot run
                            if not cl:
                                raise
                            warnings.warn(f"MaskScorer: channels-last layout not used ({exc})",
                                          RuntimeWarning, stacklevel=4)
                            configs = [c for c in configs if not c[0]]
                            continue
                        elapsed = _clock(self._cuda) - t0
                    if rnd == 0:
                        if ref is None:
                            ref = out
                            self._out_bytes[shape] = sum(
                                t.numel() * t.element_size() for t in _tensors(out)) * b // m
                        elif not _matches(out, ref, m):
                            configs.remove((cl, m))
                        continue
                    times[(cl, m)] = min(times.get((cl, m), math.inf), elapsed / m)
            cl, m = min(configs, key=lambda c: times.get(c, math.inf))
            if self.layout is None:
                self.layout = cl
            self._per_pass[shape] = m
            self._stats.images_per_pass["x".join(map(str, shape))] = m
        self._stats.channels_last = bool(self.layout)
        self._stats.physical = bool(self.physical)
        if self._inputs is None:
            self._inputs = [
                x.contiguous(memory_format=torch.channels_last) if self.layout and x.dim() == 4 else x
                for x, _ in self.batches
            ]

    def _check_cut(self, gates: Any, x: torch.Tensor) -> None:
        """Use cut layers only if the cut model computes what the gated one does: compared once,
        on a batch, with a third of every layer's units pruned."""
        lids = np.asarray(self.space.layer_ids)
        probe = np.zeros(self.n, dtype=np.int8)
        for lid in np.unique(lids):
            probe[np.flatnonzero(lids == lid)[1::3]] = 1
        gates.set(probe)
        ref = self.model(x)
        gates.clear()
        why = None
        try:
            with ChannelCut(self.model, self.space) as cut:
                cut.set(probe)
                out = self.model(x)
            if not _matches(out, ref, int(x.shape[0])):
                why = "its output differs from the gated model's"
        except Exception as exc:  # noqa: BLE001 -- a model the cut cannot run
            why = f"{type(exc).__name__}: {exc}"
        self.physical = why is None
        if why is not None:
            warnings.warn(f"MaskScorer: layers not cut per mask, gated instead ({why})",
                          RuntimeWarning, stacklevel=5)

    def _pieces(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self._per_pass[tuple(x.shape)]
        return [x[lo:lo + m] for lo in range(0, int(x.shape[0]), m)]

    # ----- one batch
    def _score_batch(
        self, X: np.ndarray, x: torch.Tensor, y: torch.Tensor, gates: Any, recorder: _Recorder | None
    ) -> np.ndarray:
        out = np.empty(len(X), dtype=np.float64)
        pieces = self._pieces(x)
        self._share = 1.0 / len(pieces)
        std = _contiguous if self.layout else (lambda o: o)
        if len(pieces) == 1:
            def sink(rows: np.ndarray, result: Any, copies: int) -> None:
                for j, r in enumerate(rows):
                    out[r] = float(self.metric(std(_split(result, copies, j)), y))

            self._score_piece(X, x, gates, recorder, sink)
            return out
        # pieces: keep each mask's outputs until the batch is complete, a group of masks at a time
        group = max(1, int(self.out_mb * 2**20 // max(self._out_bytes[tuple(x.shape)], 1)))
        for g0 in range(0, len(X), group):
            Xg = X[g0:g0 + group]
            parts: list[list[Any]] = [[None] * len(pieces) for _ in range(len(Xg))]
            for pi, piece in enumerate(pieces):
                def sink(rows: np.ndarray, result: Any, copies: int, pi: int = pi) -> None:
                    for j, r in enumerate(rows):
                        parts[r][pi] = _split(result, copies, j)

                self._score_piece(Xg, piece, gates, recorder, sink)
            for r, ps in enumerate(parts):
                out[g0 + r] = float(self.metric(std(_cat(ps)), y))
        return out

    def _score_piece(
        self, X: np.ndarray, x: torch.Tensor, gates: Any, recorder: _Recorder | None, sink: Sink
    ) -> None:
        """All masks of ``X`` on one batch piece, by the prefix tree or plain batching, whichever
        the cost model (timed costs x a correction learnt from past calls) says is cheaper."""
        chunk = self._chunk_for(x, gates)
        factor = self._stats.cost_factor
        plain = 0.0  # estimated seconds; 0: not estimated (no tree to compare with)
        if recorder is not None and self.prefix:
            try:
                self._prepare(x, gates, recorder)
                overhead, per_copy = self._costs[tuple(x.shape)]
                plain = math.ceil(len(X) / chunk) * overhead + per_copy * len(X)
                tree = self._tree(X, x, gates, recorder, None, dry=True)
                if self.prefix == "always" or tree * factor["tree"] < plain * factor["plain"]:
                    t0 = _clock(self._cuda)
                    self._tree(X, x, gates, recorder, sink)
                    self._learn("tree", tree, _clock(self._cuda) - t0)
                    self._stats.tree_batches += 1
                    return
            except _TraceMismatch as exc:
                self._disable_prefix(recorder, exc)
        self._stats.plain_batches += 1
        t0 = _clock(self._cuda)
        for lo in range(0, len(X), chunk):
            rows = np.arange(lo, min(lo + chunk, len(X)))
            sink(rows, self._plain(X[rows], x, gates), len(rows))
        self._learn("plain", plain, _clock(self._cuda) - t0)

    def _learn(self, kind: str, estimate: float, actual: float) -> None:
        """Correct the cost model with what a run really took: the estimates count forward
        time only, not hooks, replays, splits or the metric, and those weigh differently on the
        tree (many short passes) and on plain batching."""
        if estimate > 0 and actual > 0:
            f = self._stats.cost_factor
            f[kind] = math.sqrt(f[kind] * actual / estimate)  # geometric running mean

    def _disable_prefix(self, recorder: _Recorder, exc: Exception) -> None:
        warnings.warn(
            f"MaskScorer: prefix sharing switched off ({exc}); scoring with plain batching",
            RuntimeWarning, stacklevel=3,
        )
        self.prefix = False
        self._stats.prefix_tree = False
        recorder.remove()

    def _chunk_for(self, x: torch.Tensor, gates: Any) -> int:
        """Masks per forward pass: ``chunk``, or what fits ``target_mb`` unless measuring showed
        that batching does not pay for this input shape."""
        if self.chunk is not None or self.physical:
            return self.chunk or 1
        shape = tuple(x.shape)
        if shape not in self._costs:
            self._costs[shape] = self._measure(x, gates)
        return self._chunks.get(shape) or self._mem_chunk(x, gates)
    def _mem_chunk(self, x: torch.Tensor, gates: Any) -> int:
        per_sample = self._sample_bytes.get(tuple(x.shape))
        if per_sample is None:  # measure once: the largest activation of one forward
            biggest = [0]

            def watch(module: nn.Module, args: Any, out: Any) -> None:
                if isinstance(out, torch.Tensor):
                    biggest[0] = max(biggest[0], out.numel() * out.element_size())

            self._open(gates)
            handle = torch.nn.modules.module.register_module_forward_hook(watch)
            try:
                self.model(x[:1])
            finally:
                handle.remove()
            per_sample = self._sample_bytes[tuple(x.shape)] = biggest[0]
        fit = int(self.target_mb * 2**20 // max(per_sample * int(x.shape[0]), 1))
        return max(1, min(128, fit))

    def _plain(self, X: np.ndarray, x: torch.Tensor, gates: Any) -> Any:
        """All masks of ``X`` in one forward pass over the replicated batch: the model output."""
        D = len(X)
        self._set_masks(gates, X, np.ones(self.n, dtype=bool))
        result = self.model(_replicate(x, D))
        self._count(D, 1.0)
        return result

    def _count(self, copies: int, span: float, span_calls: float | None = None) -> None:
        self._stats.forwards += 1
        self._stats.replicas += copies
        share = self._share  # a pass over a piece of the batch is that share of a whole pass
        self._stats.work += copies * span * share
        self._stats.work_calls += copies * (span if span_calls is None else span_calls) * share

    # ----- the prefix tree
    def _prepare(self, x: torch.Tensor, gates: Any, recorder: _Recorder) -> None:
        shape = tuple(x.shape)
        if shape in self._traces:
            return
        self._open(gates)
        with torch.inference_mode(False), torch.no_grad():  # version counters need normal tensors
            recorder.record_trace(lambda: self.model(x.clone()))  # warm-up: timings of a 2nd pass
            trace = recorder.record_trace(lambda: self.model(x.clone()))
        first: dict[str, int] = {}
        for c in trace.calls:
            first.setdefault(c.name, c.start)
        # where each unit's gate first acts: the first call of any of its consumers
        # (``Unit.inputs``; Gates zero the unit at their inputs); the tree splits there, so that
        # the unit's producers run once for every mask that agrees on the earlier units
        pos = np.empty(self.n, dtype=np.int64)
        cut_pos = np.empty(self.n, dtype=np.int64)  # cut, a unit acts at its first cut module
        for u, unit in enumerate(self.space.units):
            starts = [first[name] for name, _ in (unit.inputs or unit.members) if name in first]
            if not starts:
                raise _TraceMismatch(f"unit {unit.label}: none of its gated modules is in the trace")
            pos[u] = min(starts)
            cut = [first[p.rpartition(".")[0]] for p, _, _ in unit.slices if p.rpartition(".")[0] in first]
            cut_pos[u] = min(cut + starts)
        levels = np.unique(pos)
        self._traces[shape] = trace
        self._levels[shape] = (levels, [np.flatnonzero(pos == p) for p in levels])
        self._cut_pos[shape] = cut_pos
        if shape not in self._costs:
            self._costs[shape] = self._measure(x, gates)

    def _measure(self, x: torch.Tensor, gates: Any) -> tuple[float, float]:
        """``(overhead, per copy)`` seconds of a forward pass, ``t(D) = overhead + per copy * D``,
        fitted on D = 1 and D = min(chunk, 8) (best of a few runs). It decides between the
        prefix tree (more, smaller passes) and plain batching (fewer, larger passes), and turns
        batching off (chunk 1) when a replicated pass costs more per copy than single passes --
        the usual case on a CPU once a pass no longer fits in its caches."""
        shape = tuple(x.shape)
        chunk = 1 if self.physical else min(self.chunk or self._mem_chunk(x, gates), 8)
        self._open(gates)

        def best(copies: int, reps: int) -> float:
            xs = _replicate(x, copies)
            times = []
            for _ in range(reps):
                t0 = _clock(self._cuda)
                self.model(xs)
                times.append(_clock(self._cuda) - t0)
            return min(times)

        best(1, 1)  # warm-up
        t1 = best(1, 3)
        if chunk == 1:  # one copy per pass either way: the tree can only save work
            return 0.0, t1
        tc = best(chunk, 2)
        if self.chunk is None and tc / chunk >= 0.9 * t1:
            self._chunks[shape] = 1
            return 0.0, t1
        per_copy = max((tc - t1) / (chunk - 1), 1e-9)
        return max(t1 - per_copy, 0.0), per_copy

    def _tree(
        self, X: np.ndarray, x: torch.Tensor, gates: Any, recorder: _Recorder, sink: Sink | None,
        dry: bool = False,
    ) -> float:
        """Depth-first over the prefix tree of the (distinct) masks ``X`` on one batch piece;
        finished outputs go to ``sink(rows, output, copies)``.

        A node is a set of masks that agree on every unit whose gate acts before ``start``,
        with ``ctx`` the outputs of the calls completed before ``start`` (one copy of the
        batch). It runs, once, the forward from ``start`` to the first level where its masks
        disagree, then splits there. Children holding a single mask finish the forward
        together, ``chunk`` masks per pass; the others recurse. Memory: one path of contexts.
        With ``dry=True`` nothing runs and the estimated cost (seconds) is returned.
        """
        shape = tuple(x.shape)
        trace = self._traces[shape]
        levels, cols = self._levels[shape]
        b = int(x.shape[0])
        chunk = self._chunk_for(x, gates)
        done = np.zeros(len(X), dtype=bool)
        overhead, per_copy = self._costs[shape]
        cost = [0.0]

        def run(masks: np.ndarray, start: int, stop: int | None, ctx: dict[int, torch.Tensor]) -> Any:
            """Forward ``len(masks)`` replicas from ``start`` to ``stop`` (None: the end)."""
            D = len(masks)
            span = trace.span(start, stop)
            if dry:
                cost[0] += overhead + per_copy * D * span
                return None, {}

            def grow(t: torch.Tensor) -> torch.Tensor:
                if t.dim() == 0 or t.shape[0] != b:  # not per sample: cannot be replicated
                    raise _TraceMismatch(f"a module output of shape {tuple(t.shape)} has no batch dim")
                return _replicate(t, D)

            replay = {}
            for cid in (trace.replayed_at(start) if start > 0 else []):
                if D > 1:
                    replay[cid] = map_tensors(ctx[cid], grow)
                else:  # the model may work in place on what it is given
                    replay[cid] = map_tensors(ctx[cid], torch.Tensor.clone) if trace.in_place else ctx[cid]
            stop_call = trace.call_at(stop) if stop is not None else None
            record = set(trace.recorded_in(start, stop))
            # stages shared by several masks run on whole layers (a unit's producers then run once
            # for all of them); a mask's own last stage cuts the units whose layers it runs
            cut = self._cuttable(shape, start) if stop is None and self._cut is not None else None
            self._set_masks(gates, masks, cut)
            result, stored = recorder.run_stage(
                trace, lambda: self.model(_replicate(x, D)), replay, record, stop_call
            )
            self._count(D, span, trace.span_calls(start, stop))
            return result, stored

        def finish(rows: np.ndarray, start: int, ctx: dict[int, torch.Tensor]) -> None:
            for lo in range(0, len(rows), chunk):
                part = rows[lo:lo + chunk]
                result, _ = run(X[part], start, None, ctx)
                if dry:
                    continue
                assert sink is not None
                sink(part, result, len(part))
                done[part] = True

        # explicit stack (rows, first level not yet known to agree, start position, context)
        stack: list[tuple[np.ndarray, int, int, dict[int, torch.Tensor]]] = [
            (np.arange(len(X)), 0, 0, {})
        ]
        while stack:
            rows, j, start, ctx = stack.pop()
            sub = X[rows]
            while j < len(levels) and not np.any(sub[:, cols[j]] != sub[0, cols[j]]):
                j += 1
            if j == len(levels):  # one mask left (rows are distinct masks)
                finish(rows, start, ctx)
                continue
            stop = int(levels[j])
            if stop > start:  # shared work before the split: run it once
                _, stored = run(sub[:1], start, stop, ctx)
                keep = trace.replayed_at(stop)
                ctx = {cid: t for cid, t in {**ctx, **stored}.items() if cid in keep}
            # split on the bits of level j; singletons finish together
            _, group = np.unique(sub[:, cols[j]], axis=0, return_inverse=True)
            group = group.reshape(-1)
            singles = []
            for g in range(int(group.max()) + 1):
                members = rows[group == g]
                if len(members) == 1:
                    singles.append(int(members[0]))
                else:
                    stack.append((members, j + 1, stop, ctx))
            if singles:
                finish(np.asarray(singles), stop, ctx)
        assert dry or done.all()
        return cost[0]
