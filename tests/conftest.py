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


@pytest.fixture()
def small_unet():
    """A width-8 Half-UNet whose residual scales are not zero (so every unit changes the output),
    and a seeded factory of ``count`` (input, target) batches of ``size`` 16x16 images."""
    import torch

    from qprune.problems.halfunet import HalfUNet

    torch.manual_seed(0)
    model = HalfUNet(width=8).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.5)

    def batches(count: int, size: int) -> list:
        g = torch.Generator().manual_seed(0)
        return [(torch.rand(size, 3, 16, 16, generator=g), torch.rand(size, 3, 16, 16, generator=g))
                for _ in range(count)]

    return model, batches


os.environ.setdefault("MPLBACKEND", "Agg")

# Two torch threads on a loaded 2-core machine (and under pytest-xdist's two workers) make small
# convs 100x slower than one; tests measure correctness, so one thread each.
try:
    import torch as _torch

    _torch.set_num_threads(1)
except ImportError:
    pass
