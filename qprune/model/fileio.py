"""Save a pruned model so anyone can load it with plain PyTorch — no qprune, no model source code.

Format: **TorchScript** (``torch.jit.script``), one ``.pt`` zip holding the code AND the weights of
the pruned architecture. Loading needs only torch::

    import torch
    model = torch.jit.load("pruned.pt")      # an nn.Module-like ScriptModule, eval mode
    y = model(x)

Why this format:

* scripting keeps the model's Python control flow, so every input size the original accepted
  still works (the Half-UNet pads odd sizes; ResNets take any resolution);
* ``torch.export`` (available here as ``format="export"``, a ``.pt2`` loaded with
  ``torch.export.load(path).module()``) specialises on the example shapes: measured on torch 2.13,
  an exported Half-UNet refuses sizes that are not multiples of 8 and an exported ResNet-18 caps
  the resolution at the example's, even with ``Dim.AUTO``;
* a pickled ``nn.Module`` needs its class importable at load time and ``weights_only=False``.

``torch.jit.script`` is deprecated in recent torch releases (it still works in 2.13 and its
warning is silenced here). If scripting fails (code TorchScript cannot compile), ``torch.jit.trace``
on ``example_inputs`` is used instead and the metadata says so (``"format": "torchscript-trace"``:
control flow is frozen to the example's path). Metadata (``meta`` + format) is stored inside the
file as ``qprune.json`` and read back with :func:`load_meta`.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from qprune.errors import QpruneError
from qprune.model.tensors import as_tuple

__all__ = ["load_meta", "load_pruned", "save_pruned"]

_META = "qprune.json"


def save_pruned(
    model: nn.Module,
    path: str | Path,
    *,
    example_inputs: Any = None,
    meta: Mapping[str, Any] | None = None,
    format: str = "torchscript",
) -> Path:
    """Write ``model`` (in eval mode) to ``path``; returns the path.

    Args:
        model: the (pruned) model; it is put in eval mode.
        path: output file (``.pt`` for TorchScript, ``.pt2`` for export by convention).
        example_inputs: needed for ``format="export"`` and for the trace fallback.
        meta: JSON-serialisable information stored in the file (values that are not are str()-ed).
        format: ``"torchscript"`` (default) or ``"export"``.
    """
    path = Path(path)
    if format not in ("torchscript", "export"):
        raise QpruneError(f"format must be 'torchscript' or 'export', got {format!r}")
    model.eval()
    info: dict[str, Any] = {"meta": dict(meta or {}), "params": int(sum(p.numel() for p in model.parameters()))}
    if path.parent and not path.parent.exists():
        raise QpruneError(f"output folder {path.parent} does not exist")
    if format == "export":
        if example_inputs is None:
            raise QpruneError("format='export' needs example_inputs")
        xs = tuple(_batch2(x) for x in as_tuple(example_inputs))
        dyn = tuple({d: Dim.AUTO for d in range(x.dim())} if isinstance(x, torch.Tensor) else None for x in xs)
        ep = torch.export.export(model, xs, dynamic_shapes=dyn)
        info["format"] = "export"
        torch.export.save(ep, str(path), extra_files={_META: json.dumps(info, default=str)})
        return path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            scripted = torch.jit.script(model)
            info["format"] = "torchscript"
        except Exception as exc:
            if example_inputs is None:
                raise QpruneError(f"torch.jit.script failed ({type(exc).__name__}); pass example_inputs "
                                  "to fall back to torch.jit.trace") from exc
            with torch.no_grad():
                scripted = torch.jit.trace(model, as_tuple(example_inputs))
            info["format"] = "torchscript-trace"
            info["script_error"] = str(exc).splitlines()[0][:300]
        torch.jit.save(scripted, str(path), _extra_files={_META: json.dumps(info, default=str)})
    return path


def _batch2(x: Any) -> Any:
    # a batch of 1 is specialised to a constant by torch.export; 2 keeps the batch dimension free
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 1:
        return torch.cat([x, x])
    return x


def _is_export(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            # torch.export archives carry "<root>/archive_format" and "<root>/models/"; TorchScript ones "code/"
            return any(n.endswith("/archive_format") or "/models/" in n for n in z.namelist())
    except zipfile.BadZipFile as exc:
        raise QpruneError(f"{path} is not a saved model (not a zip archive)") from exc


def load_pruned(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by :func:`save_pruned` (what a user would do with plain torch)."""
    path = Path(path)
    if not path.is_file():
        raise QpruneError(f"model file {path} does not exist")
    if _is_export(path):
        return torch.export.load(str(path)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=map_location)


def load_meta(path: str | Path) -> dict[str, Any]:
    """The ``qprune.json`` stored in the file: ``{"meta": ..., "format": ..., "params": ...}``."""
    path = Path(path)
    files = {_META: ""}
    if _is_export(path):
        torch.export.load(str(path), extra_files=files)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(path), _extra_files=files)
    raw = files[_META]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw else {}
