"""Image metrics (PSNR, SSIM through torchmetrics) and the −PSNR training loss.

torchmetrics imports torchvision whenever torchvision is installed. The project's venv carries a
torchvision wheel whose C ops are built against CUDA torch; with the CPU torch its import fails on
``register_fake("torchvision::nms")`` and takes torchmetrics down with it; :func:`_functional`
then applies :func:`qprune.torchvision_compat.prepare_torchvision` and imports again.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType

import torch

_SSIM_WINDOW = 11  # torchmetrics' Gaussian window for sigma 1.5: 2 * int(3.5 * 1.5 + 0.5) + 1


@lru_cache(maxsize=1)
def _functional() -> ModuleType:
    try:
        import torchmetrics.functional.image as image
    except RuntimeError:
        from qprune.torchvision_compat import prepare_torchvision

        prepare_torchvision()
        import sys

        for mod in [m for m in sys.modules if m.split(".")[0] in ("torchmetrics", "torchvision")]:
            del sys.modules[mod]
        import torchmetrics.functional.image as image
    return image


def psnr(out: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean over the batch of per-image PSNR in dB (torchmetrics), ``out`` clamped to the range."""
    f = _functional()
    out = out.detach().clamp(0.0, data_range)
    return float(f.peak_signal_noise_ratio(out, target.detach(), data_range=data_range, dim=(1, 2, 3)))


def ssim(out: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean over the batch of per-image SSIM (Gaussian window 11, sigma 1.5), as scikit-image.

    torchmetrics computes the SSIM map on a reflect-padded image and averages all of it; Wang et
    al.'s reference code and scikit-image drop the 5-pixel border whose windows leave the image.
    We take torchmetrics' full map and crop that border, so the value equals
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` (checked in tests/test_problems_metrics.py).
    """
    f = _functional()
    out = out.detach().clamp(0.0, data_range)
    _, full = f.structural_similarity_index_measure(out, target.detach(), data_range=data_range,
                                                    return_full_image=True)
    pad = (_SSIM_WINDOW - 1) // 2
    if full.shape[-1] > 2 * pad and full.shape[-2] > 2 * pad:
        full = full[..., pad:-pad, pad:-pad]
    return float(full.flatten(1).mean(1).mean())


def psnr_loss(out: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """−(mean per-image PSNR) for data in [0, 1]: the paper's loss; differentiable, unclamped."""
    mse = (out - target).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(mse + eps)).mean()
