"""PSNR/SSIM (torchmetrics) agree with scikit-image; the −PSNR loss agrees with the metric."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from qprune.problems.metrics import psnr, psnr_loss, ssim


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """Two 64x64 photo crops and noisy versions, float64 in [0, 1], NHWC."""
    rng = np.random.default_rng(0)
    clean = np.stack([skimage.data.astronaut()[100:164, 200:264], skimage.data.coffee()[150:214, 300:364]])
    clean = clean.astype(np.float64) / 255.0
    noisy = np.clip(clean + rng.normal(0.0, 0.05, clean.shape), 0.0, 1.0)
    return clean, noisy


def _t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).to(dtype)


def test_psnr_and_ssim_match_scikit_image(pair: tuple[np.ndarray, np.ndarray]) -> None:
    clean, noisy = pair
    ref_psnr = np.mean([peak_signal_noise_ratio(c, n, data_range=1.0) for c, n in zip(clean, noisy)])
    ref_ssim = np.mean([
        structural_similarity(c, n, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
        for c, n in zip(clean, noisy)
    ])
    # torchmetrics' PSNR takes its log10 in float32 even for float64 input: ~1e-6 dB off.
    assert psnr(_t(noisy, torch.float64), _t(clean, torch.float64)) == pytest.approx(ref_psnr, abs=1e-5)
    assert ssim(_t(noisy, torch.float64), _t(clean, torch.float64)) == pytest.approx(ref_ssim, abs=1e-9)
    # float32, as the model produces it
    assert psnr(_t(noisy, torch.float32), _t(clean, torch.float32)) == pytest.approx(ref_psnr, abs=1e-4)
    assert ssim(_t(noisy, torch.float32), _t(clean, torch.float32)) == pytest.approx(ref_ssim, abs=1e-5)


def test_metrics_clamp_and_perfect_prediction(pair: tuple[np.ndarray, np.ndarray]) -> None:
    clean = _t(pair[0], torch.float32)
    assert ssim(clean, clean) == pytest.approx(1.0, abs=1e-6)
    # Out-of-range predictions are clamped to [0, 1] before scoring, as a saved image would be.
    over = clean + 2.0 * (clean > 0.5)
    assert psnr(over, clean) == pytest.approx(psnr(over.clamp(0.0, 1.0), clean))


def test_loss_is_minus_mean_psnr(pair: tuple[np.ndarray, np.ndarray]) -> None:
    clean, noisy = (_t(a, torch.float64) for a in pair)
    out = noisy.clone().requires_grad_(True)
    loss = psnr_loss(out, clean)
    assert float(loss.detach()) == pytest.approx(-psnr(noisy, clean), abs=1e-5)
    loss.backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
