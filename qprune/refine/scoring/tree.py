"""The prefix tree: masks that agree on the units gated first share those stages of the forward.

A unit's gate acts when its first consumer is called, so everything the model computes before
that call is the same for two masks that agree on every unit gated earlier. The tree records
the model's module-call trace once per input shape (:class:`~qprune.refine.scoring.recorder.Recorder`)
and walks the masks depth first: a node is a set of masks that agree up to some point of the
trace; it runs the forward, once, up to where its masks first disagree, then splits. Leaves
that split at the same point finish together, several masks per pass. Requirements: the call
sequence must not depend on the data, the gates or the batch size, and the heavy work must sit
inside modules; a mismatch with the trace raises :class:`~qprune.refine.scoring.trace.TraceMismatch`
(the scorer then switches the tree off: plain batching, still exact).

With cut layers, a cut unit acts at its producer, before its gate would, so the tree still
splits at the gates and runs its shared stages on whole layers (a producer then runs once for
all the masks of a node; cutting there measured 0.66 of a forward per mask instead of 0.54 on
TT masks); a mask's own last stage cuts every unit whose layers it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.model.tensors import map_tensors
from qprune.refine.scoring.forward import replicate
from qprune.refine.scoring.session import Session
from qprune.refine.scoring.trace import Trace, TraceMismatch

__all__ = ["PrefixTree", "Sink"]

Sink = Callable[[np.ndarray, Any, int], None]  # (rows of X, model output on their replicas, copies)
Context = dict[int, torch.Tensor]  # call id -> stored output (one copy of the batch)


class PrefixTree:
    """Per input shape: the trace, the levels where units' gates first act, and which units a
    forward resumed at a position may run on cut layers."""

    def __init__(self, model: nn.Module, space: Any) -> None:
        self.model, self.space, self.n = model, space, int(space.N)
        self.traces: dict[tuple, Trace] = {}
        self.levels: dict[tuple, tuple[np.ndarray, list[np.ndarray]]] = {}
        self.cut_pos: dict[tuple, np.ndarray] = {}  # per unit: trace position of its first cut module
        self.cut_sets: dict[tuple, np.ndarray] = {}  # (shape, start) -> units cut in a run from there
        # units that cut the same tensor must be cut together or gated together (a consumer's
        # input width must be what its weights expect): the groups of more than one unit
        sharing: dict[str, list[int]] = {}
        for u, unit in enumerate(space.units):
            for name, _, _ in unit.slices:
                sharing.setdefault(name, []).append(u)
        self.shared = [np.unique(us) for us in sharing.values() if len(set(us)) > 1]

    def prepare(self, x: torch.Tensor, session: Session) -> None:
        """Record the trace for this input shape (once, with the session's recorder) and where
        each unit first acts."""
        shape = tuple(x.shape)
        if shape in self.traces:
            return
        recorder = session.recorder
        assert recorder is not None
        session.open()
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
                raise TraceMismatch(f"unit {unit.label}: none of its gated modules is in the trace")
            pos[u] = min(starts)
            cut = [first[p.rpartition(".")[0]] for p, _, _ in unit.slices if p.rpartition(".")[0] in first]
            cut_pos[u] = min(cut + starts)
        levels = np.unique(pos)
        self.traces[shape] = trace
        self.levels[shape] = (levels, [np.flatnonzero(pos == p) for p in levels])
        self.cut_pos[shape] = cut_pos

    def cuttable(self, shape: tuple, start: int) -> np.ndarray:
        """Units a forward resumed at trace position ``start`` can run on cut layers: those
        whose first cut module runs after ``start`` (what ran before was computed on whole
        layers and is replayed), less every group sharing a tensor with one that cannot."""
        key = (shape, start)
        ok = self.cut_sets.get(key)
        if ok is None:
            ok = self.cut_pos[shape] >= start
            changed = True
            while changed:
                changed = False
                for group in self.shared:
                    if ok[group].any() and not ok[group].all():
                        ok[group] = False
                        changed = True
            self.cut_sets[key] = ok
        return ok

    def walk(self, X: np.ndarray, x: torch.Tensor, session: Session, chunk: int,
             costs: tuple[float, float], sink: Sink | None, dry: bool = False) -> float:
        """Depth-first over the prefix tree of the (distinct) masks ``X`` on one batch piece;
        finished outputs go to ``sink(rows, output, copies)``, ``chunk`` masks per final pass.
        With ``dry=True`` nothing runs and the estimated cost (seconds, from ``costs`` =
        ``(overhead, per copy)``) is returned."""
        return _Walk(self, X, x, session, chunk, costs, sink, dry).run()


class _Walk:
    """One walk over the tree of ``X``.

    A node is a set of masks that agree on every unit whose gate acts before ``start``, with
    ``ctx`` the outputs of the calls completed before ``start`` (one copy of the batch). It
    runs, once, the forward from ``start`` to the first level where its masks disagree, then
    splits there. Children holding a single mask finish the forward together, ``chunk`` masks
    per pass; the others recurse. Memory: one path of contexts.
    """

    def __init__(self, tree: PrefixTree, X: np.ndarray, x: torch.Tensor, session: Session, chunk: int,
                 costs: tuple[float, float], sink: Sink | None, dry: bool) -> None:
        self.tree, self.X, self.x, self.session, self.chunk = tree, X, x, session, chunk
        self.sink, self.dry = sink, dry
        self.shape = tuple(x.shape)
        self.trace = tree.traces[self.shape]
        self.levels, self.cols = tree.levels[self.shape]
        self.b = int(x.shape[0])
        self.overhead, self.per_copy = costs
        self.done = np.zeros(len(X), dtype=bool)
        self.cost = 0.0

    def run(self) -> float:
        X, levels, cols, trace = self.X, self.levels, self.cols, self.trace
        # explicit stack (rows, first level not yet known to agree, start position, context)
        stack: list[tuple[np.ndarray, int, int, Context]] = [(np.arange(len(X)), 0, 0, {})]
        while stack:
            rows, j, start, ctx = stack.pop()
            sub = X[rows]
            while j < len(levels) and not np.any(sub[:, cols[j]] != sub[0, cols[j]]):
                j += 1
            if j == len(levels):  # one mask left (rows are distinct masks)
                self.finish(rows, start, ctx)
                continue
            stop = int(levels[j])
            if stop > start:  # shared work before the split: run it once
                _, stored = self.stage(sub[:1], start, stop, ctx)
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
                self.finish(np.asarray(singles), stop, ctx)
        assert self.dry or self.done.all()
        return self.cost

    def finish(self, rows: np.ndarray, start: int, ctx: Context) -> None:
        for lo in range(0, len(rows), self.chunk):
            part = rows[lo:lo + self.chunk]
            result, _ = self.stage(self.X[part], start, None, ctx)
            if self.dry:
                continue
            assert self.sink is not None
            self.sink(part, result, len(part))
            self.done[part] = True

    def stage(self, masks: np.ndarray, start: int, stop: int | None, ctx: Context) -> tuple[Any, Context]:
        """Forward ``len(masks)`` replicas from ``start`` to ``stop`` (None: the end)."""
        D = len(masks)
        trace, session = self.trace, self.session
        span = trace.span(start, stop)
        if self.dry:
            self.cost += self.overhead + self.per_copy * D * span
            return None, {}
        replay = self._replay(D, start, ctx)
        stop_call = trace.call_at(stop) if stop is not None else None
        record = set(trace.recorded_in(start, stop))
        # stages shared by several masks run on whole layers (a unit's producers then run once
        # for all of them); a mask's own last stage cuts the units whose layers it runs
        cut = self.tree.cuttable(self.shape, start) if stop is None and session.cut is not None else None
        session.set_masks(masks, cut)
        assert session.recorder is not None
        result, stored = session.recorder.run_stage(
            trace, lambda: self.tree.model(replicate(self.x, D)), replay, record, stop_call
        )
        session.count(D, span, trace.span_calls(start, stop))
        return result, stored

    def _replay(self, D: int, start: int, ctx: Context) -> Context:
        """The stored outputs a forward resumed at ``start`` replays, for ``D`` replicas."""
        trace, b = self.trace, self.b

        def grow(t: torch.Tensor) -> torch.Tensor:
            if t.dim() == 0 or t.shape[0] != b:  # not per sample: cannot be replicated
                raise TraceMismatch(f"a module output of shape {tuple(t.shape)} has no batch dim")
            return replicate(t, D)

        replay = {}
        for cid in (trace.replayed_at(start) if start > 0 else []):
            if D > 1:
                replay[cid] = map_tensors(ctx[cid], grow)
            else:  # the model may work in place on what it is given
                replay[cid] = map_tensors(ctx[cid], torch.Tensor.clone) if trace.in_place else ctx[cid]
        return replay
