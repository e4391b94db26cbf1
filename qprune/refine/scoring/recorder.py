"""Hooks on every submodule that record a forward's module calls, replay completed calls from
stored outputs, store the outputs a later stage replays, and end a pass at a stage boundary.

Resuming a forward in the middle of a general ``nn.Module`` needs no knowledge of its graph:
every module call completed before the resume point is *replayed* (its ``forward`` is
temporarily replaced by one that returns the stored output; the calls nested in it are
skipped), the Python glue between module calls simply runs again on the replayed tensors, and a
stage ends by raising from the pre-hook of the call where the next split happens. Stored
outputs are raw outputs (the recording hook runs before any other forward hook) and are copied
only if the trace run showed the model changing outputs in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.model.tensors import map_tensors
from qprune.refine.scoring.forward import sync_clock
from qprune.refine.scoring.trace import Abort, Call, Trace, TraceMismatch, version

__all__ = ["Recorder"]


class Recorder:
    """Hooks on every submodule: call counting, trace recording, replay, recording, abort."""

    def __init__(self, model: nn.Module, cuda: bool = False) -> None:
        self.model, self.cuda = model, cuda
        self.modules = [(name, m) for name, m in model.named_modules() if m is not model]
        self.handles: list[Any] = []
        self.mode = "off"
        self.trace: Trace | None = None
        self._reset()

    def _reset(self) -> None:
        self.counter: dict[int, int] = {}
        self.stack: list[int] = []
        self.pos = 0
        self.calls: list[Call] = []
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
            self.clock.append(sync_clock(self.cuda))
            self.calls.append(Call(module, "", index, self.pos,
                                    parent=self.stack[-1] if self.stack else -1))
            self.stack.append(len(self.calls) - 1)
            return
        assert self.trace is not None
        cid = self.trace.by_key.get((key, index))
        if cid is None:
            raise TraceMismatch(f"unexpected call #{index} of {type(module).__name__}")
        if cid == self.stop_at:
            raise Abort
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
            self.clock.append(sync_clock(self.cuda))
            self.calls[cid].end = self.pos
            map_tensors(out, lambda t: self.versions.append((t, version(t))))
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
    def record_trace(self, run: Callable[[], Any]) -> Trace:
        """Record the module calls of one forward, and whether any module output is changed in
        place after it was produced (then stored and replayed outputs must be copies)."""
        self._reset()
        self.versions: list[tuple[torch.Tensor, int | None]] = []
        self.clock = [sync_clock(self.cuda)]
        self.mode = "trace"
        try:
            run()
        finally:
            self.mode = "off"
        self.clock.append(sync_clock(self.cuda))
        names = {id(m): name for name, m in self.modules}
        for c in self.calls:
            c.name = names.get(id(c.module), "?")
        trace = Trace(self.calls)
        trace.in_place = any(v is None or version(t) != v for t, v in self.versions)
        clock = np.asarray(self.clock) - self.clock[0]
        trace.share = clock / max(clock[-1], 1e-12)  # fraction of the pass's time before pos
        self.versions, self.clock = [], []
        self._reset()
        return trace

    def run_stage(
        self, trace: Trace, run: Callable[[], Any], replay: dict[int, torch.Tensor],
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
            except Abort:
                pass
            else:
                if stop_at is not None:
                    raise TraceMismatch("the forward ended before the stage boundary")
            if self.replayed != len(replay):
                raise TraceMismatch("not every replayed call was reached")
            if self.stored.keys() != record:
                raise TraceMismatch("not every recorded call was reached")
            return out, self.stored
        finally:
            self.mode = "off"
            for key, m in patched.items():  # put back exactly what was there
                if saved[key] is None:
                    m.__dict__.pop("forward", None)
                else:
                    m.forward = saved[key]
