"""MaskScorer: batched / prefix-tree / cached scores equal one-mask-per-pass scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qprune.refine.scoring.scorer import MaskScorer, naive_score
from qprune.model.space import build_space

TOL = 1e-4  # dB: the promise is "equal to naive scoring within float tolerance"


class TinyNet(nn.Module):
    """Convs with BatchNorm, an in-place ReLU module called three times, a residual add, a
    module that returns a tuple, and a head the space leaves alone."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 12, 3, padding=1, stride=2)
        self.b3 = nn.BatchNorm2d(12)
        self.c4 = nn.Conv2d(12, 10, 1)
        self.c5 = nn.Conv2d(5, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.b1(self.c1(x)))
        b = self.relu(self.b2(self.c2(a)))
        c = self.relu(self.b3(self.c3(b)))
        u, v = self.c4(c).chunk(2, dim=1)
        return x + F.interpolate(self.c5(u * torch.sigmoid(v)), scale_factor=2)


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.3))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def psnr(out: torch.Tensor, target: torch.Tensor) -> float:
    mse = ((out.clamp(0, 1) - target) ** 2).mean(dim=tuple(range(1, out.dim())))
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean())


def _batches(seed: int, shape: tuple[int, ...], sizes: tuple[int, ...]) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, *shape, generator=g), torch.rand(n, *shape, generator=g)) for n in sizes]


def _masks(space, rng: np.random.Generator, count: int) -> np.ndarray:
    """Random masks, plus near copies of one (swaps): what a TT batch looks like."""
    k = max(1, space.N // 3)
    base = space.random_mask(k, seed=int(rng.integers(1 << 30))).astype(np.int8)
    out = [base]
    for i in range(count - 1):
        if i % 3 == 0:
            out.append(space.random_mask(k, seed=int(rng.integers(1 << 30))).astype(np.int8))
            continue
        m = base.copy()
        for _ in range(int(rng.integers(1, 3))):
            on, off = np.flatnonzero(m == 1), np.flatnonzero(m == 0)
            m[rng.choice(on)], m[rng.choice(off)] = 0, 1
        out.append(m)
    return np.array(out)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = _randomise(TinyNet(), 0)
    batches = _batches(1, (3, 16, 16), (3, 2))
    space = build_space(model, batches[0][0][:1])
    return model, space, batches


@pytest.fixture(scope="module")
def halfunet():
    from qprune.problems.halfunet import HalfUNet

    torch.manual_seed(0)
    model = _randomise(HalfUNet(width=8), 1)
    batches = _batches(2, (3, 16, 16), (2, 2))
    space = build_space(model, batches[0][0][:1], exclude=("ending",))
    return model, space, batches


def _warns_but_equals(scorer: MaskScorer, X: np.ndarray, ref: np.ndarray, match: str) -> dict:
    """Score with the expected fallback warning; the scores still equal naive scoring."""
    with pytest.warns(RuntimeWarning, match=match):
        got = scorer(X)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    return scorer.stats()


def _no_leftovers(model: nn.Module) -> None:
    for m in model.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks
        assert "forward" not in m.__dict__


@pytest.mark.parametrize("prefix", [True, False])
@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_batched_equals_naive_on_a_small_convnet(tiny, prefix: bool, chunk: int | None) -> None:
    model, space, batches = tiny
    assert space.N >= 8
    X = _masks(space, np.random.default_rng(0), 14)
    ref = naive_score(model, space, batches, psnr, X)
    scorer = MaskScorer(model, space, batches, psnr, chunk=chunk, prefix=prefix, progress=False)
    got = scorer(X)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    assert len(set(np.round(ref, 3))) > 3  # the masks really differ
    _no_leftovers(model)
    assert not model.training


@pytest.mark.parametrize("physical", [True, False])
def test_prefix_tree_on_halfunet_equals_naive_and_shares_work(halfunet, physical: bool) -> None:
    model, space, batches = halfunet
    X = _masks(space, np.random.default_rng(1), 12)
    ref = naive_score(model, space, batches, psnr, X)
    before = _weights(model)
    scorer = MaskScorer(model, space, batches, psnr, chunk=1, prefix="always", physical=physical,
                        progress=False)
    got = scorer(X)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    st = scorer.stats()
    assert st["physical"] is physical
    assert _weights(model) == before  # cut layers are whole again
    assert st["plain_batches"] == 0 and st["tree_batches"] >= len(batches)
    assert st["calls_vs_naive"] < 0.95
    _no_leftovers(model)


def test_plain_batching_on_halfunet_equals_naive(halfunet) -> None:
    model, space, batches = halfunet
    X = _masks(space, np.random.default_rng(2), 7)
    ref = naive_score(model, space, batches, psnr, X)
    got = MaskScorer(model, space, batches, psnr, prefix=False, chunk=7, progress=False)(X)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


def test_prefix_tree_when_masks_differ_only_late(halfunet) -> None:
    """Masks that agree on every early layer (a chunked-refinement batch) share that work."""
    model, space, batches = halfunet
    rng = np.random.default_rng(3)
    late = np.flatnonzero(space.layer_ids >= space.layer_ids.max() - 1)
    base = np.zeros(space.N, dtype=np.int8)
    base[rng.choice(space.N, space.N // 4, replace=False)] = 1
    X = [base]
    for _ in range(6):
        m = base.copy()
        m[late] = 0
        m[rng.choice(late, 3, replace=False)] = 1
        X.append(m)
    X = np.unique(np.array(X), axis=0)
    ref = naive_score(model, space, batches, psnr, X)
    scorer = MaskScorer(model, space, batches, psnr, chunk=1, prefix="always", progress=False)
    np.testing.assert_allclose(scorer(X), ref, atol=TOL, rtol=0)
    assert scorer.stats()["calls_vs_naive"] < 0.6


def test_cache_returns_identical_scores(tiny) -> None:
    model, space, batches = tiny
    X = _masks(space, np.random.default_rng(4), 5)
    scorer = MaskScorer(model, space, batches, psnr, progress=False)
    first = scorer(np.concatenate([X, X[::-1]]))
    np.testing.assert_array_equal(first[:5], first[5:][::-1])
    st = scorer.stats()
    assert st["evaluated"] == 5 and st["cache_hits"] == 5
    again = scorer(X)
    np.testing.assert_array_equal(again, first[:5])
    assert scorer.stats()["evaluated"] == 5  # nothing recomputed
    uncached = MaskScorer(model, space, batches, psnr, cache=False, progress=False)
    np.testing.assert_allclose(uncached(X), again, atol=TOL, rtol=0)


def test_trace_mismatch_falls_back_to_plain_batching(tiny, monkeypatch) -> None:
    from qprune.refine.scoring.recorder import Recorder
    from qprune.refine.scoring.trace import TraceMismatch

    model, space, batches = tiny
    X = _masks(space, np.random.default_rng(5), 6)
    ref = naive_score(model, space, batches, psnr, X)

    def broken(self, *args, **kwargs):
        raise TraceMismatch("simulated")

    monkeypatch.setattr(Recorder, "run_stage", broken)
    scorer = MaskScorer(model, space, batches, psnr, chunk=1, progress=False)
    assert _warns_but_equals(scorer, X, ref, "prefix sharing switched off")["prefix_tree"] is False
    _no_leftovers(model)


def test_bad_masks_raise(tiny) -> None:
    from qprune.errors import QpruneError

    model, space, batches = tiny
    scorer = MaskScorer(model, space, batches, psnr, progress=False)
    with pytest.raises(QpruneError, match="shape"):
        scorer(np.zeros((2, space.N + 1)))
    with pytest.raises(QpruneError, match="0 and 1"):
        scorer(np.full((1, space.N), 2))


def test_gates_already_on_the_model_are_ignored_and_restored(tiny) -> None:
    from qprune.model.masking import apply_mask, remove_gates

    model, space, batches = tiny
    X = _masks(space, np.random.default_rng(6), 4)
    ref = naive_score(model, space, batches, psnr, X)
    apply_mask(model, space, X[1].astype(bool), mode="gate")
    try:
        got = MaskScorer(model, space, batches, psnr, chunk=2, progress=False)(X)
        np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
        np.testing.assert_allclose(naive_score(model, space, batches, psnr, X), ref, atol=TOL, rtol=0)
        assert model._qprune_gates.enabled
    finally:
        remove_gates(model)


def _weights(model: nn.Module) -> list[tuple[int, tuple[int, ...]]]:
    return [(t.data_ptr(), tuple(t.stride())) for t in [*model.parameters(), *model.buffers()]]


@pytest.mark.parametrize("prefix", [True, False, "always"])
@pytest.mark.parametrize("layout", [True, False])
def test_pieces_and_channels_last_equal_naive(halfunet, prefix, layout: bool) -> None:
    """One image per pass, outputs concatenated before the metric, in either memory layout."""
    model, space, batches = halfunet
    X = _masks(space, np.random.default_rng(7), 9)
    ref = naive_score(model, space, batches, psnr, X)
    before = _weights(model)
    scorer = MaskScorer(model, space, batches, psnr, prefix=prefix, images_per_pass=1,
                        channels_last=layout, progress=False)
    np.testing.assert_allclose(scorer(X), ref, atol=TOL, rtol=0)
    st = scorer.stats()
    assert st["channels_last"] is layout
    assert set(st["images_per_pass"].values()) == {1}
    assert st["forwards"] >= len(X) * sum(int(x.shape[0]) for x, _ in batches) // 8
    assert _weights(model) == before  # the original weight tensors are back
    _no_leftovers(model)


def test_masks_in_groups_when_outputs_exceed_out_mb(tiny) -> None:
    model, space, batches = tiny
    X = _masks(space, np.random.default_rng(8), 7)
    ref = naive_score(model, space, batches, psnr, X)
    scorer = MaskScorer(model, space, batches, psnr, images_per_pass=1, out_mb=1e-6, progress=False)
    np.testing.assert_allclose(scorer(X), ref, atol=TOL, rtol=0)


class BatchCoupled(nn.Module):
    """Eval-mode output depends on the other samples of the batch (normalised by the batch
    mean), so splitting a batch changes it: the planner must not split."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        return self.c2(h / (1.0 + h.mean(dim=0, keepdim=True)))


def test_planner_never_splits_a_batch_whose_samples_interact() -> None:
    model = _randomise(BatchCoupled(), 3)
    batches = _batches(4, (3, 8, 8), (4,))
    space = build_space(model, batches[0][0][:1])
    X = _masks(space, np.random.default_rng(9), 5)
    ref = naive_score(model, space, batches, psnr, X)
    scorer = MaskScorer(model, space, batches, psnr, prefix=False, progress=False)
    np.testing.assert_allclose(scorer(X), ref, atol=TOL, rtol=0)
    assert scorer.stats()["images_per_pass"] == {"4x3x8x8": 4}


class ViewNet(nn.Module):
    """``.view`` needs a contiguous tensor: fails in channels-last layout."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        return self.fc(h.view(h.shape[0], -1))


def test_layout_the_model_cannot_run_is_not_used() -> None:
    model = _randomise(ViewNet(), 5)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.rand(4, 3, 8, 8, generator=g), torch.rand(4, 5, generator=g))]
    space = build_space(model, batches[0][0][:1])
    X = _masks(space, np.random.default_rng(10), 4)
    ref = naive_score(model, space, batches, psnr, X)
    scorer = MaskScorer(model, space, batches, psnr, progress=False)
    assert _warns_but_equals(scorer, X, ref, "channels-last layout not used")["channels_last"] is False
    _no_leftovers(model)


def test_cost_model_correction_can_switch_the_tree_off(halfunet) -> None:
    """A tree measured far slower than its estimate is not picked again."""
    model, space, batches = halfunet
    X = _masks(space, np.random.default_rng(11), 6)
    scorer = MaskScorer(model, space, batches, psnr, chunk=1, images_per_pass=2, progress=False)
    scorer.prepare()
    assert scorer.stats()["prepare_time"] > 0 and scorer.stats()["evaluated"] == 0
    scorer._stats.cost_factor["tree"] = 1e9
    np.testing.assert_allclose(scorer(X), naive_score(model, space, batches, psnr, X), atol=TOL, rtol=0)
    st = scorer.stats()
    assert st["tree_batches"] == 0 and st["plain_batches"] == len(batches)
    assert st["cost_factor"]["plain"] > 0


def test_layers_are_cut_on_a_cpu_unless_masks_share_passes(tiny, halfunet) -> None:
    for (model, space, batches), chunk, cut in ((tiny, None, True), (halfunet, 1, True), (tiny, 4, False)):
        scorer = MaskScorer(model, space, batches, psnr, chunk=chunk, progress=False)
        scorer.prepare()
        assert scorer.stats()["physical"] is cut


class AffineFreeBN(nn.Module):
    """A BatchNorm without affine parameters: the filter space lists no tensor of it, so a cut
    leaves its running statistics full-size and the cut network fails."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8, affine=False)
        self.c2 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(torch.relu(self.b1(self.c1(x))))


def test_a_cut_the_model_cannot_run_falls_back_to_gates() -> None:
    model = _randomise(AffineFreeBN(), 6)
    batches = _batches(6, (3, 8, 8), (3,))
    space = build_space(model, batches[0][0][:1], exclude=("c2",))
    X = _masks(space, np.random.default_rng(12), 5)
    ref = naive_score(model, space, batches, psnr, X)
    scorer = MaskScorer(model, space, batches, psnr, physical=True, progress=False)
    st = _warns_but_equals(scorer, X, ref, "layers not cut per mask, gated instead .*running_mean")
    assert st["physical"] is False
    _no_leftovers(model)


@pytest.mark.parametrize("kwargs, match", [
    ({"images_per_pass": 0}, "images_per_pass must be >= 1, got 0"),
    ({"prefix": "sometimes"}, "prefix must be True, False or 'always', got 'sometimes'"),
    ({"physical": "yes"}, "physical must be True, False or None, got 'yes'"),
    ({"physical": True, "chunk": 4}, "physical=True scores one mask per pass; chunk=4 asks for more"),
])
def test_bad_options_raise(tiny, kwargs, match) -> None:
    from qprune.errors import QpruneError

    model, space, batches = tiny
    with pytest.raises(QpruneError, match=match):
        MaskScorer(model, space, batches, psnr, progress=False, **kwargs)


def test_cuda_scoring_turns_tf32_off_and_puts_the_settings_back() -> None:
    """cuDNN convolutions default to TF32: while scoring they run in IEEE float32, and the
    user's settings are restored afterwards, also when scoring fails (the flags are plain
    settings, so this runs on a CPU build of torch too)."""
    from qprune.refine.scoring.forward import ieee_fp32

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with ieee_fp32(True):
                assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
                raise RuntimeError("inside")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
        with ieee_fp32(False):  # a CPU run leaves them alone
            assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    finally:
        conv.fp32_precision, matmul.fp32_precision = before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_scoring_on_cuda_equals_naive_on_cpu(halfunet) -> None:
    import copy

    model, space, batches = halfunet
    X = _masks(space, np.random.default_rng(12), 10)
    ref = naive_score(model, space, batches, psnr, X)
    gpu = copy.deepcopy(model).cuda()
    on_gpu = [(x.cuda(), y.cuda()) for x, y in batches]
    scorer = MaskScorer(gpu, space, on_gpu, psnr, progress=False)
    got = scorer(X)
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=0)  # GPU kernels round differently
    # on the same device the batched scores equal one mask per pass (TF32 is off for both)
    np.testing.assert_allclose(got, naive_score(gpu, space, on_gpu, psnr, X), atol=TOL, rtol=0)
    assert scorer.target_mb > 32.0
