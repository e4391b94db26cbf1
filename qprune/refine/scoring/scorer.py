"""Fast, exact scoring of many candidate pruning masks on a model's validation metric.

:class:`MaskScorer` maps masks ``[B, N]`` (1 = pruned) to one metric value per mask, each equal
(up to float rounding) to what :func:`naive_score` -- one gated forward pass per mask -- gives:
the mean over the validation batches of ``metric(model(x), y)``, weighted by batch size, with the
model in eval mode and the units of the mask gated off (:class:`qprune.model.masking.Gates`: a unit is
zeroed at the inputs of its consumers).

Where the speed comes from, all exact (each in its own module):

* **Shared prefixes** (:mod:`qprune.refine.scoring.tree`, :mod:`~qprune.refine.scoring.recorder`,
  :mod:`~qprune.refine.scoring.trace`): masks that agree on the units gated first share those stages of
  the forward; the forward is resumed mid-way by replaying recorded module outputs.
* **Many masks per forward pass, where it pays** (:mod:`qprune.refine.scoring.costs`): the batch is
  replicated once per mask; timings once per input shape decide how many masks share a pass and
  whether the tree or plain batching is cheaper for a call, corrected by what past calls took.
* **Fewer images per pass, the faster layout** (:mod:`qprune.refine.scoring.planner`): validation batches
  run in pieces and/or channels-last where timing shows it faster and the outputs match.
* **Layers cut to each mask (CPU)** (:mod:`qprune.refine.scoring.session`): where one mask runs per pass
  anyway, its pass runs the physically pruned layers instead of gating full-size ones.
* **Repeated masks** are served from a cache keyed by the mask's bit pattern
  (:class:`qprune.refine.cache.MaskCache`).
* **Fixed validation subset**: the batches are taken once, at construction.

One option trades exactness for speed: ``precision="bfloat16"`` runs the passes under
``torch.autocast`` to bfloat16 (convolutions and matrix products in bfloat16, normalisations and
residual sums in float32, as autocast chooses; the metric sees float32 outputs). On a CPU with AMX
that runs the F=64 Half-UNet's cut passes ~1.4x faster than float32; on one without native
bfloat16 (neither AMX nor AVX512-BF16) oneDNN emulates it and the same passes ran ~2x slower than
float32 (a ``RuntimeWarning`` says so). Its scores differ from the exact ones by rounding, so it is
for ranking masks in a search, whose winner is then scored again in float32
(:func:`qprune.refine.refine_mask` does). A whole bfloat16 copy of the model would be faster
still, but rounds the residual stream (values near 1, steps of 1/128) and moved scores by up to
0.05 dB, ten times more.

On a CUDA device both scorers run convolutions and matrix products in IEEE float32: cuDNN's
default is TF32, at which a batched pass and a one-mask pass would not round alike.

``stats()["work_vs_naive"]`` is the forward time run per mask relative to one full pass
(time-weighted from the trace profile; ``calls_vs_naive`` counts module calls instead).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from qprune.errors import QpruneError
from qprune.model.masking import Gates, isolated
from qprune.refine.cache import MaskCache, mask_keys
from qprune.refine.scoring.costs import PassCosts
from qprune.refine.scoring.forward import (
    Layout, as_float32, as_masks, cat_outputs, contiguous, ieee_fp32, native_bfloat16, replicate, split_output,
    sync_clock, weighted_mean,
)
from qprune.refine.scoring.planner import Planner
from qprune.refine.scoring.recorder import Recorder
from qprune.refine.scoring.session import Session
from qprune.refine.scoring.stats import ScorerStats
from qprune.refine.scoring.trace import TraceMismatch
from qprune.refine.scoring.tree import PrefixTree, Sink

Batch = tuple[torch.Tensor, torch.Tensor]
Metric = Callable[[Any, torch.Tensor], float]

__all__ = ["PRECISIONS", "MaskScorer", "ScorerStats", "naive_score"]

# the arithmetic a scorer can run in, and the relative rounding its checks (cut layers against
# gated ones, layouts and batch splits against the standard pass) allow
PRECISIONS = {"float32": (torch.float32, 1e-4), "bfloat16": (torch.bfloat16, 3e-2)}


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
    X = as_masks(masks, space.N)
    cuda = any(x.is_cuda for x, _ in batches)
    with isolated(model), ieee_fp32(cuda):
        gates = Gates(model, space)
        try:
            scores = np.empty(X.shape[0], dtype=np.float64)
            for j, mask in enumerate(X):
                gates.set(mask)  # one mask, unreplicated batch: what apply_mask(mode="gate") does
                values = [float(metric(model(x), y)) for x, y in batches]
                scores[j] = weighted_mean(values, [int(x.shape[0]) for x, _ in batches])
        finally:
            gates.remove()
    return scores


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
            tree, :mod:`qprune.refine.scoring.tree`) where the cost model says it is cheaper; ``False`` is
            plain batching; ``"always"`` uses the tree for every call.
        images_per_pass: run each validation batch through the model in pieces of this many
            images and concatenate the outputs before the metric (exact: eval-mode models act per
            sample). ``None`` times the divisors of the batch size among ``(b, 4, 2, 1)`` once per
            batch shape and keeps the fastest per image (see :mod:`qprune.refine.scoring.planner`: small
            passes avoid page faults and stay in the caches).
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
        precision: ``"float32"`` (exact) or ``"bfloat16"`` (the passes under bfloat16 autocast:
            faster on CPUs with AMX or AVX512-BF16 and on GPUs, scores rounded; see the module notes;
            on a CPU with neither it is emulated, slower than float32, and a ``RuntimeWarning`` says so).
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
        precision: str = "float32",
    ) -> None:
        if precision not in PRECISIONS:
            raise QpruneError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        dtype, rtol = PRECISIONS[precision]
        self.precision = precision
        self._reduced = dtype if dtype != torch.float32 else None  # the autocast dtype, if any
        self.batches = [(x, y) for x, y in batches]
        _check_options(self.batches, chunk, images_per_pass, prefix, physical)
        self.model, self.space, self.metric = model, space, metric
        self.weights = [int(x.shape[0]) for x, _ in self.batches]
        self.chunk, self.use_cache, self.prefix = chunk, cache, prefix
        self._cuda = any(x.is_cuda for x, _ in self.batches)
        if self._reduced is not None and not self._cuda and not native_bfloat16():
            warnings.warn("precision='bfloat16' on a CPU without native bfloat16 (no AVX512-BF16 or AMX): the "
                          "passes are emulated and run slower than in float32 here; precision='float32' is "
                          "faster on this CPU, and exact", RuntimeWarning, stacklevel=2)
        if physical is None:
            physical = not self._cuda and chunk in (None, 1)
        if target_mb is None:  # CPU: stay near the caches; GPU: an eighth of the free memory
            target_mb = torch.cuda.mem_get_info()[0] / 8 / 2**20 if self._cuda else 32.0
        self.out_mb, self.progress = out_mb, progress
        self.cache = MaskCache()
        self.n = int(space.N)
        self._stats = ScorerStats(prefix_tree=bool(prefix), batches=len(self.batches))
        self.costs = PassCosts(model, self._cuda, chunk, target_mb, self._stats)
        # physical None: wanted, until the first plan has checked the cut against the gated model
        self.planner = Planner(model, space, self.batches, images_per_pass, channels_last,
                               None if physical else False, self._cuda, self._stats, rtol)
        self.tree = PrefixTree(model, space)
        self._prepared = False
        self._bar = None

    @property
    def layout(self) -> bool | None:
        """Channels-last (True), the standard layout (False), or not chosen yet (None)."""
        return self.planner.layout

    @property
    def physical(self) -> bool | None:
        """Masks run on cut layers (True), gated (False), or not decided yet (None)."""
        return self.planner.physical

    @property
    def target_mb(self) -> float:
        return self.costs.target_mb

    # ----- public
    def __call__(self, masks: Any) -> np.ndarray:
        """Scores of the rows of ``masks`` (``[B, N]`` or ``[N]``, 1 = pruned)."""
        t0 = time.perf_counter()
        X = as_masks(masks, self.n)
        self.prepare()
        keys = mask_keys(X)
        cache = self.cache if self.use_cache else MaskCache()  # uncached: repeats within a call still once
        todo = cache.new(keys)
        st = self._stats
        st.calls += 1
        st.masks += len(keys)
        st.cache_hits += len(keys) - len(todo)
        if todo:
            rows = np.fromiter(todo.values(), dtype=np.int64)
            values = self._score(X[rows])
            st.evaluated += len(rows)
            cache.store(todo, values.tolist())
            st.best = max(st.best, float(np.max(values)))
            self._progress(len(rows))
        st.time += time.perf_counter() - t0
        return cache.lookup(keys)

    @torch.inference_mode()
    def prepare(self) -> None:
        """Make the one-off choices now: memory layout and images per pass (timed), masks per
        pass (timed) and the prefix tree's trace, for every validation batch shape. The first
        call does this anyway; calling it ahead keeps that cost out of a timed run. Its time is
        ``stats()["prepare_time"]``."""
        if self._prepared:
            return
        t0 = time.perf_counter()
        with self._session() as session:
            for x in self.planner.inputs or []:
                for piece in self.planner.pieces(x):
                    self.costs.chunk_for(piece, session)
                    if session.recorder is not None and self.prefix:
                        try:
                            self._prepare_tree(piece, session)
                        except TraceMismatch as exc:
                            self._disable_prefix(session.recorder, exc)
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
    def _session(self) -> Iterator[Session]:
        """Our gates on the model (others off), the chosen layout, the recorder's hooks."""
        with isolated(self.model), ieee_fp32(self._cuda), torch.autocast(
                "cuda" if self._cuda else "cpu", dtype=self._reduced, enabled=self._reduced is not None):
            gates = Gates(self.model, self.space)
            try:
                self.planner.plan(gates)
                with Layout(self.model, bool(self.layout)), self.planner.cutting() as cut:
                    recorder = Recorder(self.model, self._cuda) if self.prefix else None
                    if recorder is not None:
                        recorder.install()
                    try:
                        yield Session(gates, cut, recorder, self._stats, self.n)
                    finally:
                        if recorder is not None:
                            recorder.remove()
            finally:
                gates.remove()

    @torch.inference_mode()
    def _score(self, X: np.ndarray) -> np.ndarray:
        with self._session() as session:
            assert self.planner.inputs is not None
            per_batch = [self._score_batch(X, x, y, session)
                         for x, (_, y) in zip(self.planner.inputs, self.batches)]
        return np.array(
            [weighted_mean([v[j] for v in per_batch], self.weights) for j in range(len(X))]
        )

    def _score_batch(self, X: np.ndarray, x: torch.Tensor, y: torch.Tensor, session: Session) -> np.ndarray:
        out = np.empty(len(X), dtype=np.float64)
        pieces = self.planner.pieces(x)
        session.share = 1.0 / len(pieces)
        layout, reduced = bool(self.layout), self._reduced is not None

        def std(o: Any) -> Any:  # what the metric sees: standard layout, float32
            o = contiguous(o) if layout else o
            return as_float32(o) if reduced else o
        if len(pieces) == 1:
            def sink(rows: np.ndarray, result: Any, copies: int) -> None:
                for j, r in enumerate(rows):
                    out[r] = float(self.metric(std(split_output(result, copies, j)), y))

            self._score_piece(X, x, session, sink)
            return out
        # pieces: keep each mask's outputs until the batch is complete, a group of masks at a time
        group = max(1, int(self.out_mb * 2**20 // max(self.planner.out_bytes[tuple(x.shape)], 1)))
        for g0 in range(0, len(X), group):
            Xg = X[g0:g0 + group]
            parts: list[list[Any]] = [[None] * len(pieces) for _ in range(len(Xg))]
            for pi, piece in enumerate(pieces):
                def sink(rows: np.ndarray, result: Any, copies: int, pi: int = pi) -> None:
                    for j, r in enumerate(rows):
                        parts[r][pi] = split_output(result, copies, j)

                self._score_piece(Xg, piece, session, sink)
            for r, ps in enumerate(parts):
                out[g0 + r] = float(self.metric(std(cat_outputs(ps)), y))
        return out

    def _score_piece(self, X: np.ndarray, x: torch.Tensor, session: Session, sink: Sink) -> None:
        """All masks of ``X`` on one batch piece, by the prefix tree or plain batching, whichever
        the cost model (timed costs x a correction learnt from past calls) says is cheaper."""
        chunk = self.costs.chunk_for(x, session)
        factor = self._stats.cost_factor
        plain = 0.0  # estimated seconds; 0: not estimated (no tree to compare with)
        if session.recorder is not None and self.prefix:
            try:
                costs = self._prepare_tree(x, session)
                plain = self.costs.plain(x, len(X), chunk)
                tree = self.tree.walk(X, x, session, chunk, costs, None, dry=True)
                if self.prefix == "always" or tree * factor["tree"] < plain * factor["plain"]:
                    t0 = sync_clock(self._cuda)
                    self.tree.walk(X, x, session, chunk, costs, sink)
                    self.costs.learn("tree", tree, sync_clock(self._cuda) - t0)
                    self._stats.tree_batches += 1
                    return
            except TraceMismatch as exc:
                self._disable_prefix(session.recorder, exc)
        self._stats.plain_batches += 1
        t0 = sync_clock(self._cuda)
        for lo in range(0, len(X), chunk):
            rows = np.arange(lo, min(lo + chunk, len(X)))
            sink(rows, self._plain(X[rows], x, session), len(rows))
        self.costs.learn("plain", plain, sync_clock(self._cuda) - t0)

    def _prepare_tree(self, x: torch.Tensor, session: Session) -> tuple[float, float]:
        """The trace of this input shape, then its timed costs (both once per shape)."""
        self.tree.prepare(x, session)
        return self.costs.ensure(x, session)

    def _plain(self, X: np.ndarray, x: torch.Tensor, session: Session) -> Any:
        """All masks of ``X`` in one forward pass over the replicated batch: the model output."""
        D = len(X)
        session.set_masks(X, np.ones(self.n, dtype=bool))
        result = self.model(replicate(x, D))
        session.count(D, 1.0)
        return result

    def _disable_prefix(self, recorder: Recorder, exc: Exception) -> None:
        warnings.warn(
            f"MaskScorer: prefix sharing switched off ({exc}); scoring with plain batching",
            RuntimeWarning, stacklevel=3,
        )
        self.prefix = False
        self._stats.prefix_tree = False
        recorder.remove()


def _check_options(batches: list, chunk: int | None, images_per_pass: int | None, prefix: Any,
                   physical: Any) -> None:
    if not batches:
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
