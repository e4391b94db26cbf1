"""SIDD loaders (folder + validation .mat), bundled photographs, patching and leakage-free splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qprune.errors import QpruneError
from qprune.problems import sidd
from qprune.problems.denoise import DenoiseProblem

SCENES = (
    "0001_001_S6_00100_00060_3200_L",
    "0002_001_GP_00100_00020_3200_N",
    "0003_002_IP_00100_00060_4400_H",
    "0004_003_N6_00400_00050_5500_L",
    "0005_004_G4_00800_00100_4400_N",
)


def _write_scene(d: Path, rng: np.random.Generator, size: int = 32, which: tuple[str, ...] = ("GT", "NOISY")) -> None:
    d.mkdir(parents=True, exist_ok=True)
    clean = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    noisy = np.clip(clean.astype(int) + rng.integers(-20, 21, clean.shape), 0, 255).astype(np.uint8)
    if "GT" in which:
        Image.fromarray(clean).save(d / sidd.GT_NAME)
    if "NOISY" in which:
        Image.fromarray(noisy).save(d / sidd.NOISY_NAME)


@pytest.fixture
def sidd_root(tmp_path: Path) -> Path:
    """A tiny SIDD-Small sRGB tree: root/Data/<scene>/{GT,NOISY}_SRGB_010.PNG + Scene_Instances.txt."""
    rng = np.random.default_rng(0)
    root = tmp_path / "SIDD_Small_sRGB_Only"
    for name in SCENES:
        _write_scene(root / "Data" / name, rng)
    (root / "Scene_Instances.txt").write_text("\n".join(SCENES) + "\n")
    return root


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


# --------------------------------------------------------------------------- folder layout


def test_reads_folder_from_root_or_data(sidd_root: Path) -> None:
    pairs = sidd.read_sidd_folder(sidd_root)
    assert [p.name for p in pairs] == list(SCENES)
    assert [p.group for p in pairs] == list(SCENES)
    for p in pairs:
        assert p.clean.shape == p.noisy.shape == (32, 32, 3) and p.clean.dtype == np.uint8
    again = sidd.read_sidd(sidd_root / "Data")
    assert all(np.array_equal(a.noisy, b.noisy) for a, b in zip(pairs, again))
    first = pairs[0]
    assert np.array_equal(first.clean, np.asarray(Image.open(sidd_root / "Data" / SCENES[0] / sidd.GT_NAME)))


def test_group_by_scene_uses_the_scene_field(sidd_root: Path) -> None:
    pairs = sidd.read_sidd_folder(sidd_root, group_by="scene")
    assert [p.group for p in pairs] == ["001", "001", "002", "003", "004"]
    assert sidd.sidd_scene_id("my_photo") == "my_photo"


@pytest.mark.parametrize("case", ["missing", "file", "empty", "no_scenes", "no_noisy", "no_gt"])
def test_bad_layouts_name_the_expected_layout(tmp_path: Path, case: str) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "sidd"
    if case == "file":
        root.write_text("not a folder")
    elif case == "empty":
        root.mkdir()
    elif case == "no_scenes":
        (root / "Data").mkdir(parents=True)
    elif case == "no_noisy":
        _write_scene(root / "Data" / SCENES[0], rng)
        _write_scene(root / "Data" / SCENES[1], rng, which=("GT",))
    elif case == "no_gt":
        _write_scene(root / "Data" / SCENES[0], rng, which=("NOISY",))
    with pytest.raises(QpruneError) as err:
        sidd.read_sidd_folder(root)
    msg = str(err.value)
    assert "Data/<scene>/GT_SRGB_010.PNG" in msg and "NOISY_SRGB_010.PNG" in msg
    assert str(root) in msg or case in ("no_noisy", "no_gt")
    if case == "no_noisy":
        assert SCENES[1] in msg and "lacks NOISY_SRGB_010.PNG" in msg
    if case == "no_gt":
        assert "lacks GT_SRGB_010.PNG" in msg


def test_bad_layout_reaches_the_user_through_the_problem(tmp_path: Path) -> None:
    problem = DenoiseProblem(width=4, data=str(tmp_path / "nowhere"))
    with pytest.raises(QpruneError, match="does not exist"):
        problem.test_batches()


# --------------------------------------------------------------------------- validation .mat


def _write_mat(folder: Path, n_img: int = 3, n_blocks: int = 2, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    rng = np.random.default_rng(2)
    gt = rng.integers(0, 256, (n_img, n_blocks, size, size, 3), dtype=np.uint8)
    noisy = np.clip(gt.astype(int) + rng.integers(-10, 11, gt.shape), 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(folder / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": noisy})
    scipy.io.savemat(folder / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": gt})
    return gt, noisy


def test_reads_validation_mat_blocks(tmp_path: Path) -> None:
    gt, noisy = _write_mat(tmp_path / "val")
    for path in (tmp_path / "val", tmp_path / "val" / "ValidationNoisyBlocksSrgb.mat"):
        pairs = sidd.read_sidd(path)
        assert len(pairs) == 6
        assert [p.group for p in pairs] == ["val00", "val00", "val01", "val01", "val02", "val02"]
        assert np.array_equal(pairs[3].clean, gt[1, 1]) and np.array_equal(pairs[3].noisy, noisy[1, 1])
    problem = DenoiseProblem(width=4, data=str(tmp_path / "val"), patch=8, batch_size=4)
    splits = problem.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "val": 8, "test": 8}  # 1 image = 2 blocks x 4


def test_mat_errors(tmp_path: Path) -> None:
    import scipy.io

    folder = tmp_path / "val"
    folder.mkdir()
    scipy.io.savemat(folder / "ValidationNoisyBlocksSrgb.mat", {"wrong": np.zeros((1, 1, 8, 8, 3), np.uint8)})
    with pytest.raises(QpruneError, match="has no array 'ValidationNoisyBlocksSrgb'"):
        sidd.read_sidd(folder)
    scipy.io.savemat(folder / "ValidationNoisyBlocksSrgb.mat",
                     {"ValidationNoisyBlocksSrgb": np.zeros((1, 1, 8, 8, 3), np.uint8)})
    with pytest.raises(QpruneError, match="missing .*ValidationGtBlocksSrgb.mat"):
        sidd.read_sidd(folder)


# --------------------------------------------------------------------------- patches and splits


def test_quadrants_and_tiles(sidd_root: Path) -> None:
    pairs = sidd.read_sidd_folder(sidd_root)
    q = sidd.make_patches(pairs, mode="quadrants", patch=16)
    assert q.clean.shape == (20, 3, 16, 16)
    # Native-size quadrants are exact crops, in reading order.
    assert np.array_equal(q.noisy[1], pairs[0].noisy[:16, 16:].transpose(2, 0, 1))
    assert np.array_equal(q.clean[3], pairs[0].clean[16:, 16:].transpose(2, 0, 1))
    assert sidd.make_patches(pairs, mode="quadrants", patch=8).clean.shape == (20, 3, 8, 8)  # resized
    t = sidd.make_patches(pairs, mode="tiles", patch=8)
    assert t.clean.shape == (80, 3, 8, 8) and list(t.group[:16]) == [0] * 16
    with pytest.raises(QpruneError, match="multiple of 8"):
        sidd.make_patches(pairs, patch=12)
    with pytest.raises(QpruneError, match="smaller --patch"):
        sidd.make_patches(pairs, mode="tiles", patch=64)


def test_split_by_group_is_seeded_and_leak_free() -> None:
    groups = [f"scene{i:03d}" for i in range(160)]
    a = sidd.split_groups(groups, seed=0)
    assert [len(a[k]) for k in ("train", "val", "test")] == [128, 16, 16]  # the paper's 512/64/64 quadrants
    assert not set(a["train"]) & set(a["val"]) and not set(a["train"]) & set(a["test"])
    assert not set(a["val"]) & set(a["test"])
    assert a == sidd.split_groups(list(reversed(groups)), seed=0)
    assert a != sidd.split_groups(groups, seed=1)
    assert sidd.split_counts(16, (0.8, 0.1, 0.1)) == (12, 2, 2)  # val/test round up: >= 1 group each
    assert sidd.split_counts(40, (0.8, 0.1, 0.1)) == (32, 4, 4)
    with pytest.raises(QpruneError, match="at least 3"):
        sidd.split_counts(2, (0.8, 0.1, 0.1))
    with pytest.raises(QpruneError, match="sum"):
        sidd.split_counts(10, (0.8, 0.1))


def test_problem_splits_keep_scenes_apart(sidd_root: Path) -> None:
    problem = DenoiseProblem(width=4, data=str(sidd_root), patch=16, batch_size=4)
    splits = problem.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "val": 4, "test": 4}
    owners = {k: {v.groups[g] for g in v.group} for k, v in splits.items()}
    assert all(len(o) == n for o, n in zip(owners.values(), (3, 1, 1)))
    assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"])
    x, y = problem.test_batches()[0]
    assert x.shape == y.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_training_flips_input_and_target_together(sidd_root: Path) -> None:
    problem = DenoiseProblem(width=4, data=str(sidd_root), patch=16, batch_size=8, augment=3)
    train = problem.splits()["train"]
    clean = torch.from_numpy(train.clean).float() / 255
    noisy = torch.from_numpy(train.noisy).float() / 255
    batches = list(problem._train_epoch_batches(0, np.random.default_rng(0)))
    assert sum(len(x) for x, _ in batches) == 3 * len(train)
    assert len(batches) == problem._train_epoch_len() == 5  # 36 patches in batches of 8
    flipped = 0
    for x, y in batches:
        for xi, yi in zip(x, y):
            hits = [(j, dims) for dims in ((), (-1,), (-2,), (-1, -2)) for j in range(len(train))
                    if torch.equal(xi, noisy[j].flip(dims) if dims else noisy[j])]
            assert hits, "an augmented input is not a flipped training patch"
            j, dims = hits[0]
            assert torch.equal(yi, clean[j].flip(dims) if dims else clean[j])
            flipped += bool(dims)
    assert flipped > 0


# --------------------------------------------------------------------------- bundled photographs


def test_bundled_pairs_are_deterministic_sensor_noise() -> None:
    names = ("astronaut", "camera", "coffee")
    a = sidd.bundled_pairs(names, seed=0, max_side=128)
    b = sidd.bundled_pairs(names, seed=0, max_side=128)
    c = sidd.bundled_pairs(names, seed=1, max_side=128)
    assert [p.group for p in a] == list(names)
    for pa, pb, pc in zip(a, b, c):
        assert pa.clean.shape[2] == 3 and max(pa.clean.shape[:2]) == 128
        assert np.array_equal(pa.noisy, pb.noisy) and not np.array_equal(pa.noisy, pc.noisy)
        assert 24 < _psnr(pa.clean, pa.noisy) < 36  # SIDD-like noise level (real SIDD: 29.3 dB mean)
    dark = sidd.bundled_pairs(("astronaut",), photons=30, max_side=128)[0]
    assert _psnr(dark.clean, dark.noisy) < _psnr(a[0].clean, a[0].noisy) - 5


def test_bundled_default_list_is_available_offline() -> None:
    problem = DenoiseProblem(width=4)
    splits = problem.splits()
    assert len(splits["val"].groups) == len(sidd.BUNDLED_IMAGES)
    used = {k: {v.groups[g] for g in v.group} for k, v in splits.items()}
    assert [len(used[k]) for k in ("train", "val", "test")] == [12, 2, 2]
    assert not (used["train"] & used["test"]) and not (used["val"] & used["test"])
    assert len(problem.test_batches()) >= 4


def test_unknown_bundled_image(tmp_path: Path) -> None:
    with pytest.raises(QpruneError, match="no sample image 'nope'"):
        sidd.bundled_pairs(("nope",))


# --------------------------------------------------------------------------- the real copy


def test_reads_the_shared_sidd_folder_unchanged(shared_data: Path) -> None:
    root = shared_data / "sidd_small_256"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    pairs = sidd.read_sidd(root)
    assert len(pairs) == 160 and all(p.clean.shape == (256, 256, 3) for p in pairs)
    mean_psnr = np.mean([_psnr(p.clean, p.noisy) for p in pairs])
    assert 28.5 < mean_psnr < 30.0  # the data README: 29.3 dB
    problem = DenoiseProblem(width=4, data=str(root))
    splits = problem.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 512, "val": 64, "test": 64}
    assert splits["test"].clean.shape[1:] == (3, 128, 128)
    owners = {k: {v.groups[g] for g in v.group} for k, v in splits.items()}
    assert not (owners["train"] & owners["test"]) and not (owners["train"] & owners["val"])
    # group_by="scene": captures of one physical scene (any phone, ISO) stay in one split.
    regrouped = [sidd.ImagePair(p.name, sidd.sidd_scene_id(p.name), p.clean, p.noisy) for p in pairs]
    scenes = sidd.split_patches(sidd.make_patches(regrouped), seed=0)
    by_scene = {k: {v.groups[g] for g in v.group} for k, v in scenes.items()}
    assert len(set().union(*by_scene.values())) == 10
    assert not (by_scene["train"] & by_scene["test"]) and not (by_scene["train"] & by_scene["val"])
