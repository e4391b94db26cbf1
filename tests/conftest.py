"""Shared test set-up."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _prepare_torchvision() -> None:
    """Let the real torchvision model code import beside the CPU build of torch.

    The torchvision wheel's C ops are linked against a CUDA torch and do not load here; its
    ``_meta_registrations`` then fails on ``register_fake("torchvision::nms")`` for an op that was
    never defined. Defining the two schemas (no kernels) is enough: the models never call them.
    Where torchvision's own ops did load, ``define`` raises and nothing changes.
    """
    try:
        import torch
    except ImportError:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
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
        except RuntimeError:
            pass
    _LIBS.append(lib)


_LIBS: list = []


_prepare_torchvision()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


os.environ.setdefault("MPLBACKEND", "Agg")

# Two torch threads on a loaded 2-core machine (and under pytest-xdist's two workers) make small
# convs 100x slower than one; tests measure correctness, so one thread each.
try:
    import torch as _torch

    _torch.set_num_threads(1)
except ImportError:
    pass
