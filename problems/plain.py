"""Metadata as built-in types only, so ``torch.load(weights_only=True)`` accepts the file."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch


def plain(obj: Any) -> Any:
    """``obj`` with every container and scalar turned into a built-in type (tensors kept).

    str/float subclasses (``torch.__version__`` is a ``TorchVersion``), numpy scalars and tuples
    would each make the safe loader refuse the whole checkpoint.
    """
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    return str(obj)
