"""The fast TT scorer: bfloat16 passes, a subset of the validation images, the exact re-score of
the winner, and the score journal that makes a long search resumable."""

from __future__ import annotations

import hashlib
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qprune.errors import QpruneError
from qprune.model.space import build_space
from qprune.refine import MaskScorer, ScoreJournal, naive_score, read_journal, refine, search_subset


def _psnr(out: torch.Tensor, target: torch.Tensor) -> float:
    mse = ((out.float().clamp(0, 1) - target) ** 2).mean()
    return float(-10 * torch.log10(mse))


@pytest.fixture()
def net(small_unet) -> SimpleNamespace:
    model, make_batches = small_unet
    batches = make_batches(3, 4)
    space = build_space(model, batches[0][0][:1], exclude=("ending",), min_keep=1)
    k = space.N // 3
    masks = np.stack([space.random_mask(k, seed=s).astype(np.int8) for s in range(12)])
    return SimpleNamespace(model=model, batches=batches, space=space, k=k, masks=masks)


def test_bfloat16_scores_are_close_to_exact_and_leave_the_model_as_it_was(net: SimpleNamespace) -> None:
    before = {n: p.detach().clone() for n, p in net.model.state_dict().items()}
    exact = naive_score(net.model, net.space, net.batches, _psnr, net.masks)
    for prefix in (True, False):
        fast = MaskScorer(net.model, net.space, net.batches, _psnr, progress=False, precision="bfloat16",
                          prefix=prefix)(net.masks)
        # bfloat16 keeps 8 bits of mantissa: scores move by rounding, not by a different model
        assert np.max(np.abs(fast - exact)) < 0.1
        assert np.max(np.abs(fast - exact)) > 0.0  # it really ran in bfloat16
        assert np.corrcoef(fast, exact)[0, 1] > 0.99
    for n, t in net.model.state_dict().items():
        assert t.dtype == before[n].dtype and torch.equal(t, before[n])
    assert torch.is_autocast_enabled("cpu") is False


def test_precision_is_checked(net: SimpleNamespace) -> None:
    with pytest.raises(QpruneError, match="precision must be one of float32, bfloat16, got 'fp8'"):
        MaskScorer(net.model, net.space, net.batches, _psnr, precision="fp8")


def test_bfloat16_on_a_cpu_without_native_bfloat16_warns_that_float32_is_faster(net: SimpleNamespace,
                                                                                monkeypatch) -> None:
    import qprune.refine.scoring.scorer as scorer_module

    monkeypatch.setattr(scorer_module, "native_bfloat16", lambda: False)
    with pytest.warns(RuntimeWarning, match="without native bfloat16.*float32' is faster"):
        MaskScorer(net.model, net.space, net.batches, _psnr, progress=False, precision="bfloat16")
    monkeypatch.setattr(scorer_module, "native_bfloat16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MaskScorer(net.model, net.space, net.batches, _psnr, progress=False, precision="bfloat16")
    monkeypatch.setattr(scorer_module, "native_bfloat16", lambda: False)
    with warnings.catch_warnings():  # float32 never emulates anything
        warnings.simplefilter("error")
        MaskScorer(net.model, net.space, net.batches, _psnr, progress=False)


def test_native_bfloat16_reads_the_cpu_flags_torch_reports() -> None:
    from qprune.refine.scoring.forward import native_bfloat16

    flags = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert native_bfloat16() is bool(flags)


def test_search_subset_spreads_the_images_and_checks_the_count(net: SimpleNamespace) -> None:
    xs = torch.cat([x for x, _ in net.batches])
    sub = search_subset(net.batches, 5)
    assert [int(x.shape[0]) for x, _ in sub] == [4, 1]  # the original batch size
    picked = torch.cat([x for x, _ in sub])
    idx = [int(i) for i in np.linspace(0, 11, 5).round()]
    assert torch.equal(picked, xs[idx]) and idx[0] == 0 and idx[-1] == 11
    assert torch.equal(torch.cat([y for _, y in sub]), torch.cat([y for _, y in net.batches])[idx])
    for bad in (0, 13, True):
        with pytest.raises(QpruneError, match=f"between 1 and the 12 validation images, got {bad!r}"):
            search_subset(net.batches, bad)


def test_search_subset_crops_the_centre_of_input_and_target(net: SimpleNamespace) -> None:
    xs = torch.cat([x for x, _ in net.batches])
    ys = torch.cat([y for _, y in net.batches])
    sub = search_subset(net.batches, 5, crop=8)  # 16x16 images: rows and columns 4..11
    idx = [int(i) for i in np.linspace(0, 11, 5).round()]
    assert torch.equal(torch.cat([x for x, _ in sub]), xs[idx][..., 4:12, 4:12])
    assert torch.equal(torch.cat([y for _, y in sub]), ys[idx][..., 4:12, 4:12])
    whole = search_subset(net.batches, None, crop=16)  # every image, the whole window
    assert torch.equal(torch.cat([x for x, _ in whole]), xs)
    odd = search_subset(net.batches, None, crop=5)  # an odd margin: the extra row and column at the end
    assert torch.equal(odd[0][0], net.batches[0][0][..., 5:10, 5:10])
    for bad in (0, 17, True):
        with pytest.raises(QpruneError, match=rf"search_crop must be between 1 and the images' smaller side \(16\), got {bad!r}"):
            search_subset(net.batches, 4, crop=bad)
    labels = [(x, torch.zeros(len(x), dtype=torch.long)) for x, _ in net.batches]  # a classifier's targets
    with pytest.raises(QpruneError, match=r"search_crop needs image batches \[B, C, H, W\].*got shape \[12\]"):
        search_subset(labels, 4, crop=8)


def test_journal_replays_a_stopped_search_and_continues_it(tmp_path) -> None:
    pytest.importorskip("protes")
    n, k = 24, 8
    w = np.random.default_rng(0).normal(size=n)
    calls: list[int] = []

    def objective(X: np.ndarray) -> np.ndarray:
        calls.append(len(X))
        return -(X @ w)

    x0 = np.zeros(n, dtype=np.int8)
    x0[:k] = 1
    path = tmp_path / "scores.journal"
    short = refine(x0, ScoreJournal(objective, path, n), k, budget=40, seed=3, progress=False, batch=10)
    first = sum(calls)
    assert first == 40
    calls.clear()
    journal = ScoreJournal(objective, path, n)
    longer = refine(x0, journal, k, budget=70, seed=3, progress=False, batch=10)
    assert journal.replayed >= 40 and journal.computed == sum(calls) == 30
    # the same search as one uninterrupted run of 70
    calls.clear()
    whole = refine(x0, objective, k, budget=70, seed=3, progress=False, batch=10)
    assert np.array_equal(whole.x, longer.x) and whole.value == longer.value and whole.trace == longer.trace
    assert longer.value >= short.value


def test_journal_refuses_another_search_and_drops_a_cut_line(tmp_path) -> None:
    path = tmp_path / "j.txt"
    ScoreJournal(lambda X: np.zeros(len(X)), path, 16)(np.eye(16, dtype=np.int8)[:2])
    with pytest.raises(QpruneError, match="not a score journal for masks of 8 units"):
        ScoreJournal(lambda X: np.zeros(len(X)), path, 8)
    path.write_text(path.read_text() + "00ff 1.")  # a write cut short by a crash
    j = ScoreJournal(lambda X: np.ones(len(X)), path, 16)
    assert len(j.cache) == 2 and path.read_text().endswith("\n")
    assert j(np.eye(16, dtype=np.int8)[:3]).tolist() == [0.0, 0.0, 1.0]
    assert len(ScoreJournal(lambda X: np.ones(len(X)), path, 16).cache) == 3
    masks, scores = read_journal(path, 16)  # what a report reads: the masks in the order they were scored
    assert np.array_equal(masks, np.eye(16, dtype=np.int8)[:3]) and scores.tolist() == [0.0, 0.0, 1.0]


def test_refine_mask_rescores_a_fast_search_exactly(net: SimpleNamespace, tmp_path) -> None:
    pytest.importorskip("protes")
    from qprune.refine import refine_mask

    work = SimpleNamespace(validation=net.batches, metric=_psnr)
    seed = net.masks[0]
    res = refine_mask(net.model, net.space, work, seed, net.k, budget=40, seed=0, progress=False, batch=20,
                      precision="bfloat16", search_images=6, journal=tmp_path / "j.txt")
    exact = naive_score(net.model, net.space, net.batches, _psnr, np.stack([seed, res.x]))
    info = res.info
    assert info["scorer"]["precision"] == "bfloat16" and info["scorer"]["images"] == 6
    assert info["exact"]["seed"] == pytest.approx(exact[0], abs=1e-4)
    assert info["exact"]["refined"] == pytest.approx(exact[1], abs=1e-4) or info["kept_seed"]
    # what comes back never scores below the seed on the exact, whole-split metric
    assert exact[1] >= exact[0] - 1e-4
    if info["kept_seed"]:
        assert np.array_equal(res.x, seed)
    assert info["journal"]["computed"] == res.evaluations
    cropped = refine_mask(net.model, net.space, work, seed, net.k, budget=20, seed=0, progress=False, batch=10,
                          search_crop=8)
    assert cropped.info["scorer"]["crop"] == 8 and cropped.info["scorer"]["images"] == 12
    assert cropped.info["exact"]["seed"] == pytest.approx(exact[0], abs=1e-4)  # re-scored on whole images


def test_method_options_and_cli_flags_carry_the_tt_scorer() -> None:
    from qprune.commands._common import method_options
    from qprune.cli import build_parser
    from qprune.pipeline.methods import MethodOptions

    opts = MethodOptions(tt_precision="bfloat16", tt_images=16, tt_journal="j")
    assert (opts.tt_precision, opts.tt_images, opts.tt_journal) == ("bfloat16", 16, "j")
    with pytest.raises(QpruneError, match="tt_precision must be one of float32, bfloat16, got 'half'"):
        MethodOptions(tt_precision="half")
    with pytest.raises(QpruneError, match="tt_images must be a positive integer or None, got 0"):
        MethodOptions(tt_images=0)
    with pytest.raises(QpruneError, match="tt_crop must be a positive integer or None, got 0"):
        MethodOptions(tt_crop=0)
    # refused, not truncated: int(2.5) would quietly run a budget of 2
    with pytest.raises(QpruneError, match=r"tt_budget must be a positive integer, got 2\.5"):
        MethodOptions(tt_budget=2.5)
    with pytest.raises(QpruneError, match="tt_images must be a positive integer or None, got '8'"):
        MethodOptions(tt_images="8")
    with pytest.raises(QpruneError, match="steps must be a positive integer or None, got True"):
        MethodOptions(steps=True)
    assert MethodOptions(tt_budget=np.int64(3), tt_crop=np.int32(40)).tt_budget == 3
    args = build_parser().parse_args(["prune", "--refine", "tt", "--tt-precision", "bfloat16", "--tt-images", "8",
                                      "--tt-crop", "64"])
    got = method_options(args)
    assert (got.refine, got.tt_precision, got.tt_images, got.tt_crop) == ("tt", "bfloat16", 8, 64)


def test_journal_names_tell_scorers_apart_and_keep_the_names_made_before_crops() -> None:
    from qprune.pipeline.methods import MethodOptions
    from qprune.pipeline.run import _journal_path

    x = np.array([1, 0, 1, 1, 0, 0, 0, 1, 0], dtype=np.int8)
    name = {c: _journal_path(MethodOptions(tt_journal="j", tt_precision="bfloat16", tt_images=32, tt_crop=c), x).name
            for c in (None, 64, 80)}
    assert len(set(name.values())) == 3
    tag = b"0/bfloat16/32"  # the name a journal got before the crop option: a stopped run still resumes
    assert name[None] == f"tt-{hashlib.sha1(np.packbits(x).tobytes() + tag).hexdigest()[:16]}.journal"
