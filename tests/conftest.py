"""Shared test set-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qprune.torchvision_compat import prepare_torchvision

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# torchvision (the tests' model zoo) must import beside the CPU build of torch.
prepare_torchvision()


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
