"""Training speed of the paper's F = 64 Half-UNet per setting, side by side, and the bf16 quality check.

Speed: one Adam step (128x128 patches, batch 16, the -PSNR loss) timed for every setting in
interleaved rounds, so a background load slows all settings alike; the median step of each is
reported with its ratio to NCHW float32. Settings: NCHW / channels-last layout, float32 / bf16
autocast (forward in bf16, weights, loss and metrics float32), torch.compile, 1 / 2 threads; plus
the cost of making one training batch (data loading). Quality: the same short schedule trained
in fp32 and in bf16 (a smaller model, so that emulated bf16 stays affordable) must end within
0.05 dB validation PSNR.

    .venv/bin/python benchmarks/train_speed.py              # make bench-train
    .venv/bin/python benchmarks/train_speed.py --quick      # fewer steps, tiny quality run

Writes benchmarks/results/train_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qprune.atomic import atomic_open, write_json
from qprune.problems import training
from qprune.problems.denoise import DenoiseProblem
from qprune.problems.halfunet import HalfUNet
from qprune.problems.metrics import psnr_loss

# helper module beside this script (benchmarks/)
from common import RESULTS, SIDD_DATA

QUALITY_TOLERANCE_DB = 0.05

# name -> (channels_last, precision, compile, threads)
SETTINGS: dict[str, tuple[bool, str, bool, int]] = {
    "nchw fp32": (False, "fp32", False, 2),
    "channels-last fp32": (True, "fp32", False, 2),
    "channels-last bf16": (True, "bf16", False, 2),
    "channels-last fp32 compiled": (True, "fp32", True, 2),
    "channels-last fp32, 1 thread": (True, "fp32", False, 1),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=64, help="Half-UNet width timed (default 64, the paper's)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per setting and round (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--quality-width", type=int, default=16, help="model width of the quality run (default 16)")
    p.add_argument("--quality-epochs", type=int, default=3, help="epochs of the quality run (default 3)")
    p.add_argument("--quality-limit", type=int, default=40, help="SIDD images read for the quality run (default 40)")
    p.add_argument("--data", default=str(SIDD_DATA), help="SIDD-Small folder (default ../shared/data/sidd_small_256; "
                                                           "the bundled photos when it is absent)")
    p.add_argument("--quick", action="store_true", help="2 steps, 1 round, a 1-epoch width-8 quality run")
    p.add_argument("--out", default=str(RESULTS / "train_speed"),
                   help="output path without suffix (.json and .md are written)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.quality_width, args.quality_epochs, args.quality_limit = 2, 1, 8, 1, 8
    for name in ("width", "steps", "rounds", "quality_width", "quality_epochs", "quality_limit"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


class _Timer:
    """One setting's model, optimiser and (compiled) step, ready to be timed."""

    def __init__(self, width: int, channels_last: bool, precision: str, compile_: bool) -> None:
        torch.manual_seed(0)
        model = HalfUNet(width)
        self.settings = training.TrainSettings(precision=precision, channels_last=channels_last)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile_ else model
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.times: list[float] = []
        self.first: float | None = None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        t0 = time.perf_counter()
        training.train_step(self.model, self.opt, psnr_loss, x, y, self.settings, "cpu")
        return time.perf_counter() - t0


def time_settings(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Median step time per setting over interleaved rounds (first step of each, compile included, apart)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 128, 128, generator=g)
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    timers = {name: _Timer(args.width, cl, prec, comp) for name, (cl, prec, comp, _) in SETTINGS.items()}
    default_threads = torch.get_num_threads()
    for name, timer in timers.items():  # warm-up (and compilation) outside the timed rounds
        torch.set_num_threads(SETTINGS[name][3])
        timer.first = timer.step(x, y)
    for _ in range(args.rounds):
        for name, timer in timers.items():
            torch.set_num_threads(SETTINGS[name][3])
            timer.times += [timer.step(x, y) for _ in range(args.steps)]
    torch.set_num_threads(default_threads)
    base = statistics.median(timers["nchw fp32"].times)
    return [{"setting": name, "threads": SETTINGS[name][3], "median_step_s": statistics.median(t.times),
             "min_step_s": min(t.times), "first_step_s": t.first, "steps": len(t.times),
             "speedup_vs_nchw_fp32": base / statistics.median(t.times)} for name, t in timers.items()]


def _problem(args: argparse.Namespace, width: int) -> DenoiseProblem:
    data = args.data if Path(args.data).is_dir() else None
    return DenoiseProblem(width=width, data=data, limit=args.quality_limit if data else None)


def time_loading(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds to make one training batch (uint8 patches -> float, random flips)."""
    problem = _problem(args, args.width)
    rng = np.random.default_rng(0)
    problem.splits()  # reading the PNGs is a one-off cost per process, not per batch
    t0 = time.perf_counter()
    n = sum(1 for _ in problem._train_epoch_batches(0, rng))
    return {"batches": n, "seconds_per_batch": (time.perf_counter() - t0) / max(n, 1)}


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """The same short schedule in fp32 and bf16: final validation PSNR/SSIM of each."""
    out: dict[str, Any] = {"width": args.quality_width, "epochs": args.quality_epochs,
                           "data": args.data if Path(args.data).is_dir() else "bundled"}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        result = _problem(args, args.quality_width).train(epochs=args.quality_epochs, precision=precision,
                                                          seed=0, progress=False)
        out[precision] = {"val_psnr": result.history[-1]["val_psnr"], "val_ssim": result.history[-1]["val_ssim"],
                          "seconds": time.perf_counter() - t0}
    out["difference_db"] = out["bf16"]["val_psnr"] - out["fp32"]["val_psnr"]
    out["within_tolerance"] = abs(out["difference_db"]) <= QUALITY_TOLERANCE_DB
    return out


def markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    lines = [
        "# Training speed of the Half-UNet (one Adam step, 128x128 patches, batch 16)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; native bf16: {m['native_bf16']}. "
        f"`--precision auto` picks **{payload['auto_precision']}** here; the denoise default layout is "
        f"{'channels-last' if payload['default_channels_last'] else 'NCHW'}. Width {payload['width']}; "
        "median of the timed steps, settings interleaved round by round.",
        "",
        "| setting | threads | median step (s) | min (s) | first step (s) | vs NCHW fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["speed"]:
        lines.append(f"| {r['setting']} | {r['threads']} | {r['median_step_s']:.3f} | {r['min_step_s']:.3f} | "
                     f"{r['first_step_s']:.2f} | {r['speedup_vs_nchw_fp32']:.2f}x |")
    ld, q = payload["loading"], payload["quality"]
    lines += [
        "",
        f"Data loading: {ld['seconds_per_batch'] * 1e3:.1f} ms per training batch ({ld['batches']} batches).",
        "",
        f"Quality (width {q['width']}, {q['epochs']} epochs, data {q['data']}, the same seed): validation PSNR "
        f"fp32 {q['fp32']['val_psnr']:.3f} dB ({q['fp32']['seconds']:.0f} s), bf16 {q['bf16']['val_psnr']:.3f} dB "
        f"({q['bf16']['seconds']:.0f} s): difference {q['difference_db']:+.3f} dB, "
        f"{'within' if q['within_tolerance'] else 'OUTSIDE'} the {QUALITY_TOLERANCE_DB} dB tolerance.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    payload: dict[str, Any] = {
        "machine": {"cpu": cpu, "cores": torch.get_num_threads(), "torch": str(torch.__version__),
                    "native_bf16": training.native_bf16(), "python": sys.version.split()[0]},
        "auto_precision": training.resolve_precision("auto", "cpu"),
        "default_channels_last": DenoiseProblem.train_channels_last, "width": args.width,
        "speed": time_settings(args), "loading": time_loading(args), "quality": quality(args),
        "command": "benchmarks/train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), payload)
    text = markdown(payload)
    with atomic_open(out.with_suffix(".md")) as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
