"""A per-layer latency table measured on the running device, for ``latency=`` budgets.

For every layer of a space, the physically pruned model is timed with that layer alone pruned to a
few counts (the others whole); ``delta_ms[c]`` is the measured saving, linearly interpolated between
the measured counts. The budget then uses the additive model ``t(mask) = full_ms - sum_l
delta_l(pruned in l)`` (:class:`qprune.solve.budgets.budget.CostModel`): interactions between layers (a
conv's time is kept-in x kept-out) are not in the table, so the measured latency of the pruned model
can differ from the predicted one; the benchmark reports both. The table records the device it was
measured on (CPU model, torch version and thread count; the GPU when measured there) and refuses
to load on another.
"""

from __future__ import annotations

import copy
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from qprune.atomic import write_json
from qprune.errors import QpruneError
from qprune.model.masking import apply_mask
from qprune.model.stats import measure_latency
from qprune.model.units import FilterSpace

__all__ = ["LatencyTable", "device_id", "load_table", "measure_latency_table"]


def device_id(threads: int = 1, device: str = "cpu") -> str:
    """What a latency depends on here: machine, CPU (or GPU) model, torch version, thread count."""
    if device.startswith("cuda") and torch.cuda.is_available():
        what = torch.cuda.get_device_name(torch.device(device))
    else:
        what = _cpu_model()
    return f"{platform.machine()} | {what} | torch {torch.__version__} | threads={int(threads)}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


@dataclass
class LatencyTable:
    """``full_ms`` of the unpruned model and, per layer, measured savings at a few pruned counts."""

    device: str
    full_ms: float
    layers: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # name -> {counts, delta_ms}
    threads: int = 1

    def per_layer(self, space: FilterSpace) -> np.ndarray:
        """float [n_layers, max size + 1]: interpolated saving per pruned count of each layer."""
        sizes = space.layer_sizes
        out = np.zeros((space.n_layers, int(sizes.max(initial=0)) + 1))
        missing = [lay for lay in space.layers if lay not in self.layers]
        if missing:
            raise QpruneError(f"the latency table has no entry for layer {missing[0]!r}; measure it for this space")
        for lid, lay in enumerate(space.layers):
            entry = self.layers[lay]
            c = np.arange(int(sizes[lid]) + 1)
            out[lid, :c.size] = np.interp(c, entry["counts"], entry["delta_ms"])
        return out

    def check_device(self, threads: int | None = None) -> None:
        """Refuse a table measured on another device (one line naming both)."""
        here = device_id(self.threads if threads is None else threads, "cuda" if "cuda" in self.device else "cpu")
        if self.device != here:
            raise QpruneError(f"latency table was measured on {self.device!r}, not on this device ({here!r})")

    def save(self, path: str | Path) -> None:
        """Write the table as JSON (atomically)."""
        write_json(path, asdict(self))


def load_table(source: Any) -> LatencyTable | None:
    """A :class:`LatencyTable` from itself, a JSON file path or None; checks it is for this device."""
    if source is None:
        return None
    if isinstance(source, LatencyTable):
        table = source
    else:
        path = Path(source)
        if not path.is_file():
            raise QpruneError(f"latency table {str(path)!r} does not exist")
        try:
            raw = json.loads(path.read_text())
            table = LatencyTable(str(raw["device"]), float(raw["full_ms"]), dict(raw["layers"]),
                                 int(raw.get("threads", 1)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise QpruneError(f"latency table {str(path)!r} is not a qprune latency table (JSON with "
                              "device, full_ms, layers)") from None
    table.check_device()
    return table


def measure_latency_table(model: nn.Module, space: FilterSpace, example_inputs: Any, *, points: int = 4,
                          repeats: int = 20, threads: int = 1, path: str | Path | None = None,
                          progress: bool = True) -> LatencyTable:
    """Measure the table for ``space`` on this CPU (``points`` pruned counts per layer, evenly up to
    its cap, each timed as the median of ``repeats`` forwards) and save it to ``path`` if given."""
    ex = example_inputs
    base = measure_latency(model, ex, repeats=repeats, threads=threads)["median_ms"]
    table = LatencyTable(device_id(threads), float(base), {}, int(threads))
    caps = space.max_pruned_per_layer
    for lid in tqdm(range(space.n_layers), desc="latency table", disable=not progress):
        units = space.layer_units(lid)
        counts = sorted({int(round(caps[lid] * (i + 1) / points)) for i in range(points)} - {0})
        deltas = [0.0]
        for c in counts:
            mask = np.zeros(space.N, dtype=bool)
            mask[units[:c]] = True
            pruned = apply_mask(copy.deepcopy(model), space, mask, mode="remove", example_inputs=ex)
            t = measure_latency(pruned, ex, repeats=repeats, threads=threads)["median_ms"]
            deltas.append(float(base - t))
        table.layers[space.layers[lid]] = {"counts": [0.0] + [float(c) for c in counts], "delta_ms": deltas}
    if path is not None:
        table.save(path)
    return table
