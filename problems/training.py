"""The one training loop every problem shares: precision, memory layout, resumable state.

Speed settings (measured by ``benchmarks/train_speed.py``): channels-last memory layout and, where
the CPU has native bfloat16 (AVX-512 BF16 or AMX), ``torch.autocast("cpu", dtype=torch.bfloat16)``
around the forward pass. Master weights, the optimiser, the loss and every metric stay float32.
Without native bf16 the autocast kernels are emulated and several times slower than float32, so
``precision="auto"`` picks bf16 only where the CPU has it.

Resuming: after every epoch the whole state (model, optimiser, scheduler, RNG states, history,
elapsed time) is written atomically to a state file. A run that is stopped and resumed from it ends
with the same history as one that never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from qprune.atomic import atomic_open
from qprune.errors import QpruneError

from .plain import plain

Batch = tuple[torch.Tensor, torch.Tensor]


class Trainable(Protocol):
    """What the loop needs of a problem (:class:`qprune.problems.Trainable` provides it all)."""

    name: ClassVar[str]
    config: dict

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...
    def distill_loss(self, out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor: ...
    def evaluate(self, model: nn.Module, batches: Sequence[Batch] | None = None) -> dict[str, float]: ...
    def calibration_batches(self) -> list[Batch]: ...
    def validation_batches(self) -> list[Batch]: ...
    def _train_epoch_batches(self, epoch: int, rng: np.random.Generator) -> Iterator[Batch]: ...
    def _train_epoch_len(self) -> int: ...

PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("cosine", "step")
STATE_FORMAT = "qprune-train-state"
STATE_VERSION = 1


def native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX-512 BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; a missing CUDA is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QpruneError(f"device {device!r} requested but torch sees no CUDA device; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise QpruneError(f"device must be cpu, cuda[:N] or auto, got {device!r}")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``"fp32"`` or ``"bf16"``: ``"auto"`` is bf16 on a CPU with native bf16 or a GPU that has it."""
    if precision not in PRECISIONS:
        raise QpruneError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_bf16() else "fp32"


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a training run besides the problem's config (all JSON-plain)."""

    epochs: int = 10
    lr: float = 1e-3
    seed: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.0
    precision: str = "fp32"        # resolved: "fp32" or "bf16"
    channels_last: bool = True
    step_every: int = 10           # "step" schedule: halve the learning rate every this many epochs

    def check(self) -> None:
        """Raise a QpruneError naming the first bad value."""
        if self.epochs < 1:
            raise QpruneError(f"epochs must be >= 1, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise QpruneError(f"lr must be a positive number, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise QpruneError(f"schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if self.precision not in ("fp32", "bf16"):
            raise QpruneError(f"precision must be resolved to fp32 or bf16, got {self.precision!r}")
        if self.step_every < 1:
            raise QpruneError(f"step_every must be >= 1, got {self.step_every}")


def _schedule(opt: torch.optim.Optimizer, s: TrainSettings, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    total = s.epochs * steps_per_epoch
    if s.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 ** ((k // steps_per_epoch) // s.step_every))


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a frozen teacher (the unpruned model), mixed into the task loss.

    Each step minimises ``(1 - weight) * problem.loss(out, y) + weight * problem.distill_loss(out,
    teacher(x))``; the teacher runs without gradients, in eval mode, on the same batch.
    """

    teacher: nn.Module
    weight: float = 0.5

    def check(self) -> None:
        """Raise a QpruneError when the weight is not in [0, 1]."""
        if not 0.0 <= self.weight <= 1.0:
            raise QpruneError(f"distillation weight must be in [0, 1], got {self.weight}")


# --------------------------------------------------------------------------- state file


def state_path(output: str | Path) -> Path:
    """Where the resumable state of a run writing ``output`` lives (``x.pt`` or ``x.pt2`` -> ``x.state.pt``).

    Always ``.pt``: the state is a torch file whatever format the finished model is written in.
    """
    out = Path(output)
    return out.with_name(out.stem + ".state.pt")


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    st = rng.bit_generator.state
    # The safe loader takes plain ints; PCG64's 128-bit words are split into decimal strings.
    return {"bit_generator": st["bit_generator"], "state": {k: str(v) for k, v in st["state"].items()},
            "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])}


def _set_rng_state(rng: np.random.Generator, saved: dict[str, Any]) -> None:
    rng.bit_generator.state = {"bit_generator": saved["bit_generator"],
                               "state": {k: int(v) for k, v in saved["state"].items()},
                               "has_uint32": saved["has_uint32"], "uinteger": saved["uinteger"]}


@dataclass
class _Run:
    """The mutable part of a run: what the state file holds besides problem and settings."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    rng: np.random.Generator
    history: list[dict[str, float]]
    seconds: float = 0.0

    @property
    def epochs_done(self) -> int:
        return len(self.history)


def save_state(path: Path, problem: Trainable, settings: TrainSettings, run: _Run,
               distill_weight: float | None = None) -> None:
    """Write the run's whole state atomically (a stop mid-write keeps the previous epoch's file)."""
    payload = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "problem": problem.name,
        "config": plain(problem.config), "settings": asdict(settings), "distill": distill_weight,
        "model": {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()},
        "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
        "numpy_rng": _rng_state(run.rng), "torch_rng": torch.get_rng_state(),
        "history": plain(run.history), "seconds": float(run.seconds),
    }
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)


def load_state(path: Path, problem: Trainable, settings: TrainSettings, run: _Run,
               distill_weight: float | None = None) -> None:
    """Restore ``run`` from ``path``; problem, settings and distillation must be the file's own."""
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a foreign file
        raise QpruneError(f"{path} is not a qprune training state ({type(exc).__name__}: {exc})") from exc
    if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
        raise QpruneError(f"{path} is not a qprune training state (no 'format': {STATE_FORMAT!r})")
    # "distill" is absent from states written before distillation existed: None, as now without it
    mine = {"problem": problem.name, "config": plain(problem.config), "settings": asdict(settings),
            "distill": distill_weight}
    for key, want in mine.items():
        if st.get(key) != want:
            have = st.get(key)
            if isinstance(want, dict) and isinstance(have, dict):
                diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
                what = ", ".join(f"{k}: saved {have.get(k)!r}, now {want.get(k)!r}" for k in diff)
            else:
                what = f"saved {have!r}, now {want!r}"
            raise QpruneError(f"cannot resume from {path}: it holds a run of another {key.rstrip('s')} ({what}); "
                              "rerun with the same options or delete the state file")
    try:
        run.model.load_state_dict(st["model"])
    except RuntimeError as exc:  # a state of another architecture (e.g. another pruned model)
        raise QpruneError(f"cannot resume from {path}: its model does not fit this one ({str(exc)[:200]})") from None
    run.opt.load_state_dict(st["optimizer"])
    run.sched.load_state_dict(st["scheduler"])
    _set_rng_state(run.rng, st["numpy_rng"])
    torch.set_rng_state(st["torch_rng"])
    run.history[:] = list(st["history"])
    run.seconds = float(st["seconds"])


# --------------------------------------------------------------------------- the loop


def _autocast(settings: TrainSettings, device: str) -> contextlib.AbstractContextManager:
    if settings.precision == "bf16":
        return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _layout(x: torch.Tensor, settings: TrainSettings) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if settings.channels_last and x.dim() == 4 else x


def train_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               x: torch.Tensor, y: torch.Tensor, settings: TrainSettings, device: str) -> torch.Tensor:
    """One optimiser step on one batch in the run's layout and precision; returns the float32 loss."""
    x = _layout(x.to(device, non_blocking=True), settings)
    y = y.to(device, non_blocking=True)
    opt.zero_grad(set_to_none=True)
    with _autocast(settings, device):
        out = model(x)
    loss = loss_fn(out.float(), y)  # the loss in float32 whatever the forward ran in
    if not torch.isfinite(loss):
        raise QpruneError(f"training diverged (loss {loss.item()}); lower --lr")
    loss.backward()
    opt.step()
    return loss.detach()


def _distilled(problem: Trainable, distill: Distillation, x: torch.Tensor, settings: TrainSettings,
               device: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of one batch under distillation: the teacher's output on ``x`` is computed first."""
    with torch.no_grad(), _autocast(settings, device):
        teacher_out = distill.teacher(_layout(x.to(device), settings)).float()
    w = distill.weight
    return lambda out, y: (1.0 - w) * problem.loss(out, y) + w * problem.distill_loss(out, teacher_out)


def train_epoch(problem: Trainable, run: _Run, settings: TrainSettings, device: str, epoch: int,
                on_batch: Callable[[float], None], distill: Distillation | None = None) -> float:
    """One epoch of Adam steps; returns the sample-weighted mean training loss."""
    run.model.train()
    running, seen = 0.0, 0
    for x, y in problem._train_epoch_batches(epoch, run.rng):
        loss_fn = problem.loss if distill is None else _distilled(problem, distill, x, settings, device)
        try:
            loss = train_step(run.model, run.opt, loss_fn, x, y, settings, device)
        except QpruneError as exc:
            raise QpruneError(f"epoch {epoch + 1}: {exc}") from None
        run.sched.step()
        running += float(loss) * x.shape[0]
        seen += int(x.shape[0])
        on_batch(running / seen)
    return running / max(seen, 1)


def epoch_row(problem: Trainable, model: nn.Module, epoch: int, lr: float, train_loss: float, seconds: float,
              train_eval: Sequence[Batch], val: Sequence[Batch]) -> dict[str, float]:
    """The history row of one epoch: its first learning rate, loss, float32 metrics on train and val."""
    row: dict[str, float] = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss}
    row.update({f"train_{k}": v for k, v in problem.evaluate(model, train_eval).items()})
    row.update({f"val_{k}": v for k, v in problem.evaluate(model, val).items()})
    row["seconds"] = round(seconds, 2)
    return row


def _teacher(distill: Distillation | None, settings: TrainSettings, device: str) -> Distillation | None:
    """A frozen copy of the teacher on ``device``, in eval mode and the run's layout (the caller's stays as is)."""
    if distill is None:
        return None
    distill.check()
    teacher = copy.deepcopy(distill.teacher).to(device).eval()
    if settings.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return Distillation(teacher.requires_grad_(False), distill.weight)


def fit(problem: Trainable, model: nn.Module, settings: TrainSettings, *, device: str = "cpu",
        state: Path | None = None, resume: bool = False, progress: bool = True,
        log: Callable[[str], None] | None = None, distill: Distillation | None = None) -> _Run:
    """Train ``model`` for ``settings.epochs``; save ``state`` after each epoch, resume from it if asked.

    ``train_eval`` metrics come from the problem's calibration batches (a seeded subset of the
    training split, no augmentation), as many batches as the validation set has, so the two curves
    are measured on equally many samples. ``distill`` adds knowledge distillation from a teacher.
    """
    from tqdm.auto import tqdm

    settings.check()
    distill = _teacher(distill, settings, device)
    weight = None if distill is None else distill.weight
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps = problem._train_epoch_len()
    run = _Run(model, opt, _schedule(opt, settings, steps), np.random.default_rng(settings.seed), [])
    if state is not None and state.exists():
        if not resume:
            raise QpruneError(f"a training state {state} exists (a stopped run); pass --resume to continue "
                              "it or delete the file to start again")
        load_state(state, problem, settings, run, weight)
        if log is not None:
            log(f"resumed from {state} after epoch {run.epochs_done} of {settings.epochs}")
    val = problem.validation_batches()
    train_eval = problem.calibration_batches()[:max(len(val), 1)]
    bar = tqdm(total=settings.epochs * steps, initial=run.epochs_done * steps, disable=not progress,
               desc=f"train {problem.name}", unit="batch", leave=False)
    for epoch in range(run.epochs_done, settings.epochs):
        t0 = time.perf_counter()

        def on_batch(mean_loss: float, epoch: int = epoch) -> None:
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.4g}")

        lr = float(run.opt.param_groups[0]["lr"])
        loss = train_epoch(problem, run, settings, device, epoch, on_batch, distill)
        row = epoch_row(problem, run.model, epoch, lr, loss, time.perf_counter() - t0, train_eval, val)
        run.history.append(row)
        run.seconds += time.perf_counter() - t0
        if state is not None:
            save_state(state, problem, settings, run, weight)
        if log is not None:
            line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            if progress:
                bar.write(line)  # keeps the progress bar below the log lines
            else:
                log(line)
    bar.close()
    return run


def convergence(history: Sequence[dict[str, float]], key: str = "val_psnr", *, fraction: float = 0.1,
                min_epochs: int = 20, tolerance: float = 0.05) -> dict[str, Any]:
    """Did ``key`` stop improving? Its gain over the last ``fraction`` of the epochs vs ``tolerance``.

    The rule of the trained-model issue: validation PSNR gained less than 0.05 dB over the last
    10 % of the epochs, with at least 20 epochs in all. The gain is measured from the epoch before
    the window to the best value inside it.
    """
    values = [float(r[key]) for r in history]
    window = max(1, math.ceil(fraction * len(values)))
    if len(values) <= window:
        return {"epochs": len(values), "window": window, "gain": None, "converged": False}
    gain = max(values[-window:]) - values[-window - 1]
    return {"epochs": len(values), "window": window, "gain": gain,
            "converged": len(values) >= min_epochs and gain < tolerance}

