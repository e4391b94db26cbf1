"""Every classification model torchvision builds, as a user would bring it.

Each one either prunes (the model with the units removed computes what the gated model computes,
and the parameters and MACs the filter space predicted are what the pruned model measures), or
fails with one short ``QpruneError`` line; where only some layers are the problem (ShuffleNet's
channel shuffle), the rest prunes and those layers are listed as excluded with the reason. Nothing
else may escape. The fast subset runs in ``make test``; the whole list is ``make test-slow``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from qprune.errors import QpruneError
from qprune.model.masking import equivalence_error, prune_model
from qprune.model.space import build_space
from qprune.model.stats import count_macs, count_params
from qprune.solve.budgets.budget import CostModel
from qprune.torchvision_compat import prepare_torchvision

prepare_torchvision()
torchvision = pytest.importorskip("torchvision")

ZOO = sorted(torchvision.models.list_models(module=torchvision.models))
# one small model of each kind of structure: plain convs, fire modules, inverted residuals with
# squeeze-excite, residual adds, channel shuffles
FAST = ("alexnet", "squeezenet1_1", "mnasnet0_5", "mobilenet_v3_small", "resnet18", "shufflenet_v2_x0_5")
# the smallest input each family runs at (64 x 64 unless it needs more)
SIDE = {"inception_v3": 75, "maxvit_t": 224}
# families with layers a channel cut cannot follow: they prune the rest, those layers listed as excluded
PARTIAL = ("shufflenet",)
# what the README says stops, in one line, instead of pruning (the cut leaves shapes a module cannot take)
STOPS = {"levit_128s"}
MAX_LINE = 240


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model as a user builds it (10 classes, random weights) and a batch it accepts."""
    kwargs: dict = {"num_classes": 10}
    side = SIDE.get(name, 64)
    if name.startswith("vit"):
        kwargs["image_size"] = 56 if name.endswith("14") else 64
        side = kwargs["image_size"]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet / inception: init default notice
        model = getattr(torchvision.models, name)(**kwargs).eval()
    return model, torch.randn(2, 3, side, side)


def prune_or_explain(name: str) -> dict:
    """What a user gets: the pruned model's checks, or the one-line reason it cannot be pruned."""
    model, x = build(name)
    try:
        space = build_space(model, x[:1])
    except QpruneError as exc:
        return {"prunes": False, "reason": str(exc)}
    mask = space.random_mask(0.3, seed=0)
    try:
        err, scale = equivalence_error(model, space, mask, x)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a params mismatch warning fails the model
            pruned = prune_model(model, space, mask, (x[:1],))
    except QpruneError as exc:
        return {"prunes": False, "reason": str(exc)}
    return {
        "prunes": True, "space": space, "k": int(mask.sum()), "rel_err": err / max(scale, 1e-12),
        "params": (int(round(CostModel.build(space, "params").of_mask(mask))), count_params(pruned)),
        "macs": (int(round(CostModel.build(space, "macs").of_mask(mask))), count_macs(pruned, x[:1])),
    }


def check(name: str) -> None:
    got = prune_or_explain(name)
    if not got["prunes"]:
        reason = got["reason"]
        assert reason and "\n" not in reason and len(reason) <= MAX_LINE, reason
        assert name in STOPS, f"{name} was expected to prune: {reason}"
        return
    assert name not in STOPS, f"{name} prunes now: the README and STOPS should say so"
    space = got["space"]
    assert got["k"] > 0 and space.N > 0
    assert got["rel_err"] < 1e-4, f"{name}: removed differs from gated by {got['rel_err']:.2e}"
    assert got["params"][0] == got["params"][1], f"{name}: params predicted vs measured {got['params']}"
    assert got["macs"][0] == got["macs"][1], f"{name}: MACs predicted vs measured {got['macs']}"
    if name.startswith(PARTIAL):
        assert space.excluded, f"{name}: the channel-shuffle layers should be listed as excluded"
        assert all(why and "\n" not in why for why in space.excluded.values())
        assert "excluded" in space.summary()


def test_the_zoo_is_the_whole_classification_list() -> None:
    assert len(ZOO) >= 70 and set(FAST) <= set(ZOO)
    assert not any(n.startswith(("fasterrcnn", "deeplab", "raft", "r3d")) for n in ZOO)


@pytest.mark.parametrize("name", FAST)
def test_small_model_of_each_kind(name: str) -> None:
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ZOO if n not in FAST])
def test_every_torchvision_classifier(name: str) -> None:
    check(name)


# timm, where installed: one model of each family a user is likely to bring (its list is too long to walk)
TIMM = ("resnet18", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "regnetx_002", "ghostnet_100",
        "densenet121", "dla34", "rexnet_100", "cspresnet50", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
        "swin_tiny_patch4_window7_224", "mixer_s16_224", "poolformer_s12", "mobilevit_xxs", "levit_128s")
TIMM_SIDE = {"swin_tiny_patch4_window7_224": 224, "levit_128s": 224, "mixer_s16_224": 224}


def timm_model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A timm model with 10 classes and random weights, and a batch it accepts (64 x 64 where it can)."""
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    side = TIMM_SIDE.get(name, 64)
    kwargs = {"img_size": side} if name.startswith(("vit", "deit")) else {}
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval(), torch.randn(2, 3, side, side)


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM)
def test_timm_families(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "build", lambda _: timm_model(name))
    check(name)


def test_a_model_that_cannot_run_at_the_given_size_is_one_line() -> None:
    model, _ = build("maxvit_t")  # its window partition needs 224 x 224
    with pytest.raises(QpruneError) as exc:
        build_space(model, torch.randn(1, 3, 64, 64))
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) <= MAX_LINE
    assert "does not run on example inputs of shape (1, 3, 64, 64)" in msg and "RuntimeError" in msg
