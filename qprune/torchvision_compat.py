"""Let torchvision's Python code import beside a torch build its C ops were not compiled for.

torchmetrics imports torchvision whenever it is installed, and the tests use torchvision's model
zoo. The torchvision wheel that pip finds next to the CPU build of torch has C ops linked against a
CUDA torch; they do not load, and ``torchvision._meta_registrations`` then fails on
``register_fake("torchvision::nms")`` for an op that was never defined. Defining the two op
schemas (no kernels) is enough for everything qprune and its tests use. Where the real ops load,
they are loaded and nothing else changes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_LIBS: list = []  # the fragment library must outlive this call


def prepare_torchvision() -> None:
    """Make ``import torchvision`` work; a no-op when torchvision is absent or its ops load."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations or _LIBS:
        return
    import torch

    for so in Path(spec.submodule_search_locations[0]).glob("_C*.so"):
        try:
            torch.ops.load_library(str(so))
            return  # the real ops load: nothing to do
        except OSError:
            pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"):
        try:
            lib.define(schema)
        except RuntimeError:  # already defined
            pass
    _LIBS.append(lib)
