"""Save a pruned model in the format its runtime loads: no qprune and no model source code needed.

The format follows the file's suffix (or ``format=``):

* ``.pt2`` — a ``torch.export`` program (``torch.export.load(path).module()``), the successor of
  TorchScript. Every dimension of a tensor input is exported as ``Dim.AUTO``, so the batch size
  and the image height/width stay free wherever the model allows (torch records the constraints
  it finds, e.g. the Half-UNet's multiples of 8; measured on torch 2.13: the Half-UNet and a
  ResNet-18 exported at 64x64 run at 40, 72 and 128 as well).
* ``.onnx`` — ONNX through torch's ``torch.onnx.export(..., dynamo=True)``, checked with
  ``onnx.checker``; run it with onnxruntime (:func:`load_pruned` wraps an ``InferenceSession`` in
  a module that takes and returns torch tensors). Needs the ``onnx`` extra.
* ``.pt`` — TorchScript (``torch.jit.load``), kept for runtimes that still want it; ``torch.jit`` is
  deprecated in torch 2.13 (its warnings are silenced here). If scripting fails, ``torch.jit.trace``
  on ``example_inputs`` is used and the metadata says so (``"torchscript-trace"``).

Every file carries qprune's record (``meta`` + format + parameter count), read back with
:func:`load_meta`. Writing is atomic, and before the file takes its name it is loaded back and run
on the example inputs: a file whose outputs differ from the model's (relative 1e-4) is never left.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.export import Dim

from qprune.errors import QpruneError
from qprune.model.stats import time_calls
from qprune.model.tensors import as_tuple

__all__ = ["FORMATS", "OnnxModule", "format_for", "load_meta", "load_pruned", "runtime_latency", "save_pruned"]

_META = "qprune.json"
#: suffix -> format
FORMATS: dict[str, str] = {".pt2": "export", ".onnx": "onnx", ".pt": "torchscript"}
_CHECK_RTOL = 1e-4


def format_for(path: str | Path, format: str | None = None) -> str:
    """The format ``path`` is written in: ``format`` when given, else the one its suffix names."""
    if format is not None:
        if format not in FORMATS.values():
            raise QpruneError(f"format must be one of {', '.join(sorted(set(FORMATS.values())))}, got {format!r}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise QpruneError(f"cannot tell the model format from {str(path)!r}: use a suffix "
                          f"{', '.join(FORMATS)} ({', '.join(f'{s} = {f}' for s, f in FORMATS.items())})")
    return FORMATS[suffix]


def save_pruned(
    model: nn.Module,
    path: str | Path,
    *,
    example_inputs: Any = None,
    meta: Mapping[str, Any] | None = None,
    format: str | None = None,
) -> Path:
    """Write ``model`` (put in eval mode) to ``path`` in the format its suffix names; returns the path.

    Args:
        model: the (pruned) model.
        path: ``.pt2`` (torch.export), ``.onnx`` (ONNX) or ``.pt`` (TorchScript).
        example_inputs: the inputs the export traces and the written file is checked on (needed
            for ``.pt2`` and ``.onnx``, and for TorchScript's trace fallback).
        meta: JSON-serialisable information stored in the file (other values are str()-ed).
        format: ``"export"``, ``"onnx"`` or ``"torchscript"`` to override the suffix.
    """
    path = Path(path)
    fmt = format_for(path, format)
    if not path.parent.is_dir():
        raise QpruneError(f"output folder {path.parent} does not exist")
    if fmt != "torchscript" and example_inputs is None:
        raise QpruneError(f"writing {fmt} ({path.suffix}) needs example_inputs")
    model.eval()
    info: dict[str, Any] = {"meta": dict(meta or {}), "params": int(sum(p.numel() for p in model.parameters()))}
    with _staged(path) as tmp:
        info.update(_WRITERS[fmt](model, tmp, example_inputs, info))
        if example_inputs is not None:
            _check(model, tmp, example_inputs)
    return path


@contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it on success and vanishes on error."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _free_batch(xs: tuple[Any, ...]) -> tuple[Any, ...]:
    # a batch of 1 is specialised to a constant by torch.export; 2 keeps the batch dimension free
    return tuple(torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 1 else x
                 for x in xs)


def _dynamic(xs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple({d: Dim.AUTO for d in range(x.dim())} if isinstance(x, torch.Tensor) else None for x in xs)


def _write_export(model: nn.Module, path: Path, example_inputs: Any, info: dict[str, Any]) -> dict[str, Any]:
    xs = _free_batch(as_tuple(example_inputs))
    ep = torch.export.export(model, xs, dynamic_shapes=_dynamic(xs))
    ranges = {str(k): str(v) for k, v in ep.range_constraints.items()}
    extra = {"format": "export", "dynamic_dims": ranges}
    torch.export.save(ep, str(path), extra_files={_META: json.dumps({**info, **extra}, default=str)})
    return extra


def _write_onnx(model: nn.Module, path: Path, example_inputs: Any, info: dict[str, Any]) -> dict[str, Any]:
    try:
        import onnx
    except ImportError:
        raise QpruneError("writing .onnx needs the onnx packages: pip install 'qprune[onnx]'") from None
    xs = _free_batch(as_tuple(example_inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, xs, dynamo=True, dynamic_shapes=_dynamic(xs), verbose=False)
    program.save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    extra = {"format": "onnx", "opset": int(proto.opset_import[0].version)}
    entry = proto.metadata_props.add()
    entry.key, entry.value = _META, json.dumps({**info, **extra}, default=str)
    onnx.save(proto, str(path))
    return extra


def _write_torchscript(model: nn.Module, path: Path, example_inputs: Any, info: dict[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {"format": "torchscript"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            scripted = torch.jit.script(model)
        except Exception as exc:
            if example_inputs is None:
                raise QpruneError(f"torch.jit.script failed ({type(exc).__name__}); pass example_inputs "
                                  "to fall back to torch.jit.trace") from exc
            with torch.no_grad():
                scripted = torch.jit.trace(model, as_tuple(example_inputs))
            extra = {"format": "torchscript-trace", "script_error": str(exc).splitlines()[0][:300]}
        torch.jit.save(scripted, str(path), _extra_files={_META: json.dumps({**info, **extra}, default=str)})
    return extra


_WRITERS = {"export": _write_export, "onnx": _write_onnx, "torchscript": _write_torchscript}


@torch.no_grad()
def _check(model: nn.Module, path: Path, example_inputs: Any) -> None:
    """Load the written file and compare its outputs with the model's on the example inputs."""
    xs = as_tuple(example_inputs)
    want = [t for t in as_tuple(model(*xs)) if isinstance(t, torch.Tensor)]
    got = [t for t in as_tuple(load_pruned(path)(*xs)) if isinstance(t, torch.Tensor)]
    for w, g in zip(want, got, strict=True):
        err = float((w - g).abs().max()) / max(float(w.abs().max()), 1e-12)
        if g.shape != w.shape or not err <= _CHECK_RTOL:
            raise QpruneError(f"the written {path.suffix} model differs from the torch model "
                              f"(relative error {err:.2e} > {_CHECK_RTOL:g}); nothing was written")


class OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime, called like the torch model (torch tensors in and out)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise QpruneError("running .onnx needs onnxruntime: pip install 'qprune[onnx]'") from None
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feeds = {name: x.detach().cpu().numpy() for name, x in zip(self.input_names, xs, strict=True)}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _kind(path: Path) -> str:
    if path.suffix.lower() == ".onnx":
        return "onnx"
    try:
        with zipfile.ZipFile(path) as z:
            # torch.export archives carry "<root>/archive_format" and "<root>/models/"; TorchScript ones "code/"
            names = z.namelist()
    except zipfile.BadZipFile as exc:
        raise QpruneError(f"{path} is not a saved model (neither ONNX nor a zip archive)") from exc
    return "export" if any(n.endswith("/archive_format") or "/models/" in n for n in names) else "torchscript"


def load_pruned(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by :func:`save_pruned` (an ONNX file comes back as an :class:`OnnxModule`)."""
    path = Path(path)
    if not path.is_file():
        raise QpruneError(f"model file {path} does not exist")
    kind = _kind(path)
    if kind == "onnx":
        return OnnxModule(path)
    if kind == "export":
        return torch.export.load(str(path)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=map_location)


def load_meta(path: str | Path) -> dict[str, Any]:
    """The record stored in the file: ``{"meta": ..., "format": ..., "params": ...}``."""
    path = Path(path)
    kind = _kind(path)
    if kind == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[_META]) if _META in props else {}
    files = {_META: ""}
    if kind == "export":
        torch.export.load(str(path), extra_files=files)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(path), _extra_files=files)
    raw = files[_META]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw else {}


@torch.no_grad()
def runtime_latency(path: str | Path, example_inputs: Any, *, warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of one forward of the saved file in its own runtime (onnxruntime for
    .onnx), timed as every latency is (:func:`qprune.model.stats.time_calls`)."""
    module = load_pruned(path)
    xs = as_tuple(example_inputs)
    return time_calls({"file": lambda: module(*xs)}, repeats=repeats, warmup=warmup, threads=None)["file"]["median_ms"]
