"""Noisy/clean image pairs for the denoising problem, and the paper's preprocessing.

Three sources, all returning a list of :class:`ImagePair` (uint8 HxWx3 arrays plus the *group* the
pair belongs to, i.e. the unit that a train/val/test split may not cut through):

* :func:`read_sidd_folder` -- SIDD-Small sRGB in its original layout
  ``Data/<scene>/GT_SRGB_010.PNG`` + ``Data/<scene>/NOISY_SRGB_010.PNG``.
* :func:`read_sidd_mat` -- SIDD's validation blocks ``ValidationNoisyBlocksSrgb.mat`` /
  ``ValidationGtBlocksSrgb.mat`` (arrays of shape [images, blocks, 256, 256, 3], uint8).
* :func:`bundled_pairs` -- photographs shipped inside the scikit-image wheel with synthetic
  Poisson-Gaussian sensor noise, so everything works on a fresh machine without any dataset.

:func:`make_patches` cuts pairs into patches (the paper's four quadrants, or a grid of tiles) and
:func:`split_groups` assigns whole groups to train/val/test with a fixed seed, so no scene (or
image) contributes patches to two splits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from qprune.errors import QpruneError

GT_NAME = "GT_SRGB_010.PNG"
NOISY_NAME = "NOISY_SRGB_010.PNG"
MAT_NOISY = "ValidationNoisyBlocksSrgb"
MAT_GT = "ValidationGtBlocksSrgb"
SIDD_LAYOUT = (
    f"expected SIDD-Small sRGB layout <root>/Data/<scene>/{GT_NAME} and "
    f"<root>/Data/<scene>/{NOISY_NAME} (or a folder holding {MAT_NOISY}.mat and {MAT_GT}.mat)"
)

# Colour and grey photographs that ship inside the scikit-image wheel (checked on 0.26: no pooch
# download needed). Sources that are mostly text, drawings or tiny thumbnails are left out.
BUNDLED_IMAGES: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle_left",
    "hubble_deep_field", "retina", "camera", "moon", "grass", "gravel", "brick", "coins", "cell",
    "clock",
)


@dataclass
class ImagePair:
    """One noisy/clean pair. ``group`` is the split unit: pairs sharing it stay in one split."""

    name: str
    group: str
    clean: np.ndarray  # uint8 [H, W, 3]
    noisy: np.ndarray  # uint8 [H, W, 3]


# --------------------------------------------------------------------------- SIDD folder


_SIDD_DIR = re.compile(r"^(\d+)_(\d+)_")


def sidd_scene_id(dirname: str) -> str:
    """The physical scene of a SIDD instance directory (``0001_001_S6_...`` -> ``"001"``).

    SIDD names instances ``<instance>_<scene>_<phone>_<ISO>_<shutter>_<temp>_<brightness>``; the
    same scene is photographed by several phones and exposures. Non-SIDD names are their own scene.
    """
    m = _SIDD_DIR.match(dirname)
    return m.group(2) if m else dirname


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise QpruneError(f"cannot read image {path}: {exc}") from exc
    return arr


def _sidd_data_dir(root: Path) -> Path:
    """``root/Data`` if present, else ``root`` itself when it directly holds scene folders."""
    if not root.exists():
        raise QpruneError(f"SIDD data path {root} does not exist; {SIDD_LAYOUT}")
    if not root.is_dir():
        raise QpruneError(f"SIDD data path {root} is not a directory; {SIDD_LAYOUT}")
    data = root / "Data"
    if data.is_dir():
        return data
    # Accept the Data folder itself, recognised by a scene folder holding a GT image.
    if any((d / GT_NAME).is_file() or (d / NOISY_NAME).is_file() for d in root.iterdir() if d.is_dir()):
        return root
    raise QpruneError(f"no Data/ folder with scene directories under {root}; {SIDD_LAYOUT}")


def read_sidd_folder(root: str | Path, *, group_by: str = "image", limit: int | None = None) -> list[ImagePair]:
    """Read every scene of a SIDD-Small sRGB folder (``root`` or ``root/Data``).

    ``group_by="image"`` makes each capture its own split unit (the paper's counts: 128/16/16 of
    160); ``"scene"`` groups captures of the same physical scene (stricter, uneven split sizes).
    Raises :class:`QpruneError` naming the expected layout when the folder, the scene folders or
    one of the two PNGs of a scene is missing.
    """
    if group_by not in ("image", "scene"):
        raise QpruneError(f"group_by must be 'image' or 'scene', got {group_by!r}")
    data = _sidd_data_dir(Path(root))
    scenes = sorted(d for d in data.iterdir() if d.is_dir())
    if not scenes:
        raise QpruneError(f"no scene directories in {data}; {SIDD_LAYOUT}")
    if limit is not None:
        scenes = scenes[:limit]
    pairs = []
    for d in scenes:
        gt, noisy = d / GT_NAME, d / NOISY_NAME
        missing = [p.name for p in (gt, noisy) if not p.is_file()]
        if missing:
            raise QpruneError(f"scene {d} lacks {' and '.join(missing)}; {SIDD_LAYOUT}")
        clean_img, noisy_img = _read_png(gt), _read_png(noisy)
        if clean_img.shape != noisy_img.shape:
            raise QpruneError(
                f"scene {d}: {GT_NAME} is {clean_img.shape[:2]} but {NOISY_NAME} is {noisy_img.shape[:2]}"
            )
        group = d.name if group_by == "image" else sidd_scene_id(d.name)
        pairs.append(ImagePair(d.name, group, clean_img, noisy_img))
    return pairs


# --------------------------------------------------------------------------- SIDD .mat blocks


def _mat_array(path: Path, key: str) -> np.ndarray:
    import scipy.io

    if not path.is_file():
        raise QpruneError(f"missing {path}; {SIDD_LAYOUT}")
    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5, which loadmat refuses
        raise QpruneError(f"{path} is a MATLAB v7.3 (HDF5) file; re-save it with -v7: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise QpruneError(f"cannot read {path} as a .mat file: {exc}") from exc
    if key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise QpruneError(f"{path} has no array {key!r} (found {keys}); {SIDD_LAYOUT}")
    arr = np.asarray(mat[key])
    if arr.ndim != 5 or arr.shape[-1] != 3:
        raise QpruneError(f"{path}: {key} has shape {arr.shape}, expected [images, blocks, H, W, 3]")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255)
        arr = arr.astype(np.uint8)
    return arr


def sidd_mat_paths(path: str | Path) -> tuple[Path, Path] | None:
    """(noisy, gt) .mat paths if ``path`` is one of SIDD's validation .mat files or a folder of them."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".mat":
        folder = p.parent
    elif p.is_dir() and (p / f"{MAT_NOISY}.mat").is_file():
        folder = p
    else:
        return None
    return folder / f"{MAT_NOISY}.mat", folder / f"{MAT_GT}.mat"


def read_sidd_mat(path: str | Path, *, limit: int | None = None) -> list[ImagePair]:
    """Read SIDD's validation blocks; every block of image i belongs to group ``"val<i>"``.

    ``path`` is either .mat file or the folder holding both. Blocks of one source image share a
    group, so a split never puts crops of the same photograph on both sides.
    """
    paths = sidd_mat_paths(path)
    if paths is None:
        raise QpruneError(f"{path} is not a SIDD validation .mat file or a folder holding {MAT_NOISY}.mat")
    noisy = _mat_array(paths[0], MAT_NOISY)
    clean = _mat_array(paths[1], MAT_GT)
    if noisy.shape != clean.shape:
        raise QpruneError(f"{MAT_NOISY} has shape {noisy.shape} but {MAT_GT} has {clean.shape}")
    n_img = noisy.shape[0] if limit is None else min(limit, noisy.shape[0])
    return [
        ImagePair(f"val{i:02d}_b{b:02d}", f"val{i:02d}", clean[i, b], noisy[i, b])
        for i in range(n_img)
        for b in range(noisy.shape[1])
    ]


def read_sidd(path: str | Path, *, group_by: str = "image", limit: int | None = None) -> list[ImagePair]:
    """Dispatch on the layout: validation .mat blocks if present, else the ``Data/<scene>`` folder."""
    if sidd_mat_paths(path) is not None:
        return read_sidd_mat(path, limit=limit)
    return read_sidd_folder(path, group_by=group_by, limit=limit)


# --------------------------------------------------------------------------- bundled photographs


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def sensor_noise(clean: np.ndarray, rng: np.random.Generator, *, photons: float = 300.0,
                 read_noise: float = 0.004) -> np.ndarray:
    """Add Poisson-Gaussian noise in linear light to an sRGB uint8 image; returns uint8 sRGB.

    The sensor sees linear intensity: shot noise is Poisson with ``photons`` expected photons at
    full white, read noise is Gaussian with std ``read_noise`` (fraction of full scale). Doing it
    before the sRGB curve makes shadows noisier than highlights, as in real phone images, and the
    final 8-bit quantisation matches PNG data such as SIDD's.
    """
    if photons <= 0 or read_noise < 0:
        raise QpruneError(f"noise needs photons > 0 and read_noise >= 0, got {photons}, {read_noise}")
    lin = _srgb_to_linear(clean.astype(np.float64) / 255.0)
    noisy = rng.poisson(lin * photons) / photons + rng.normal(0.0, read_noise, size=lin.shape)
    return np.rint(_linear_to_srgb(noisy) * 255.0).astype(np.uint8)


def _bundled_image(name: str) -> np.ndarray:
    import skimage.data

    try:
        if name in ("motorcycle_left", "motorcycle_right"):
            left, right, _ = skimage.data.stereo_motorcycle()
            img = left if name == "motorcycle_left" else right
        else:
            img = getattr(skimage.data, name)()
    except AttributeError as exc:
        raise QpruneError(f"scikit-image has no sample image {name!r}") from exc
    except (ImportError, OSError, ValueError) as exc:  # needs pooch / a download in this version
        raise QpruneError(f"scikit-image sample image {name!r} is not bundled offline: {exc}") from exc
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64) * (255.0 if img.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def bundled_pairs(names: Sequence[str] = BUNDLED_IMAGES, *, seed: int = 0, photons: float = 300.0,
                  read_noise: float = 0.004, max_side: int = 512) -> list[ImagePair]:
    """scikit-image's bundled photographs with synthetic sensor noise, one group per photograph.

    Large images are first downsized (clean, antialiased) so that the longer side is at most
    ``max_side``: big frames would otherwise dominate the patch count. Noise comes from a generator
    seeded by (seed, image index), so it is the same whatever subset is later used.
    """
    pairs = []
    for i, name in enumerate(names):
        clean = _bundled_image(name)
        h, w = clean.shape[:2]
        if max(h, w) > max_side:
            s = max_side / max(h, w)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            clean = np.asarray(Image.fromarray(clean).resize(size, Image.Resampling.LANCZOS))
        rng = np.random.default_rng([seed, i])
        noisy = sensor_noise(clean, rng, photons=photons, read_noise=read_noise)
        pairs.append(ImagePair(name, name, clean, noisy))
    return pairs


# --------------------------------------------------------------------------- preprocessing


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))


def _cuts(pair: ImagePair, mode: str, patch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    h, w = pair.clean.shape[:2]
    if mode == "quadrants":
        # The paper: four quadrants, each resized to one patch (a no-op for the 256x256 copy).
        hh, hw = h // 2, w // 2
        boxes = [(0, 0), (0, hw), (hh, 0), (hh, hw)]
        return [(_resize(pair.clean[y:y + hh, x:x + hw], patch), _resize(pair.noisy[y:y + hh, x:x + hw], patch))
                for y, x in boxes]
    if mode == "tiles":
        # Non-overlapping crops at native resolution: keeps the noise statistics untouched.
        return [(pair.clean[y:y + patch, x:x + patch], pair.noisy[y:y + patch, x:x + patch])
                for y in range(0, h - patch + 1, patch) for x in range(0, w - patch + 1, patch)]
    raise QpruneError(f"patch mode must be 'quadrants' or 'tiles', got {mode!r}")


@dataclass
class Patches:
    """Patches as uint8 arrays [n, 3, p, p] (clean and noisy) with the group index of each."""

    clean: np.ndarray
    noisy: np.ndarray
    group: np.ndarray  # int [n], index into ``groups``
    groups: list[str]

    def subset(self, idx: np.ndarray) -> "Patches":
        """The patches at ``idx`` (same group list)."""
        return Patches(self.clean[idx], self.noisy[idx], self.group[idx], self.groups)

    def __len__(self) -> int:
        return int(self.clean.shape[0])


def make_patches(pairs: Sequence[ImagePair], *, mode: str = "quadrants", patch: int = 128) -> Patches:
    """Cut every pair into patches (see :func:`_cuts`); patch must be a multiple of 8 (the UNet)."""
    if patch < 8 or patch % 8:
        raise QpruneError(f"patch size must be a positive multiple of 8, got {patch}")
    groups = sorted({p.group for p in pairs})
    gidx = {g: i for i, g in enumerate(groups)}
    clean, noisy, group = [], [], []
    for pair in pairs:
        for c, n in _cuts(pair, mode, patch):
            clean.append(c.transpose(2, 0, 1))
            noisy.append(n.transpose(2, 0, 1))
            group.append(gidx[pair.group])
    if not clean:
        raise QpruneError(f"no {patch}x{patch} patch fits in the images (mode {mode!r}); use a smaller --patch")
    return Patches(np.stack(clean), np.stack(noisy), np.asarray(group, dtype=np.int64), groups)


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) group counts: val and test round up so each gets at least one group."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise QpruneError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    if n < 3:
        raise QpruneError(f"need at least 3 images/scenes to make train/val/test splits, got {n}")
    n_val = max(1, math.ceil(fractions[1] * n - 1e-9))
    n_test = max(1, math.ceil(fractions[2] * n - 1e-9))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise QpruneError(f"split {list(fractions)} of {n} groups leaves no training data")
    return n_train, n_val, n_test


def split_groups(groups: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 seed: int = 0) -> dict[str, list[str]]:
    """Assign whole groups to ``train``/``val``/``test`` by a seeded permutation of the sorted names."""
    names = sorted(set(groups))
    n_train, n_val, _ = split_counts(len(names), fractions)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train:n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val:]),
    }


def split_patches(patches: Patches, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> dict[str, Patches]:
    """Split patches by group (see :func:`split_groups`), keeping the original patch order."""
    assignment = split_groups(patches.groups, fractions, seed)
    out = {}
    for split, names in assignment.items():
        members = np.isin(np.asarray(patches.groups)[patches.group], names)
        out[split] = patches.subset(np.flatnonzero(members))
    return out
