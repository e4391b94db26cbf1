"""Pack what the TT benchmarks (``tt_scorer.py``, ``tt_refine.py``) need on an offline GPU machine (``make gpu-bundle``; not a test).

GPU machines often cannot reach a package index, and come with their own Python, a CUDA build of
PyTorch, JAX, SciPy, scikit-image and torchmetrics. This folder carries the rest:

* ``wheels/`` -- qprune itself, built from this checkout, and the runtime packages such an image
  lacks (``dimod``, ``dwave-samplers``, ``torch-pruning``, ``protes``), each at the version installed
  here (the versions the test suite ran), downloaded for the target's Python and platform;
* ``checkpoint.pt`` -- the model (``--checkpoint``, else what ``tt_refine.py`` would pick);
* ``data/`` -- a copy of the dataset folder the checkpoint was trained on, when it names one;
* ``bundle.json`` -- what is in it and where it came from.

On the GPU machine: ``bash benchmarks/gpu_tt.sh BUNDLE OUTDIR [options]`` (``SCRIPT=tt_refine.py`` for the other benchmark). The folder
is built beside ``--out`` and moved into place only when complete, so a failed run leaves no
half-made bundle.
"""

from __future__ import annotations

import argparse
import json
import shutil
import stat
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

# helper module beside this script (benchmarks/): the checkpoint tt_refine.py would pick
from common import ROOT, pick_checkpoint

#: What qprune's TT benchmark imports that a CUDA PyTorch/JAX image does not ship.
PACKAGES = ("dimod", "dwave-samplers", "torch-pruning", "protes")
#: manylinux tags pip must be told one by one (it matches ``manylinux_2_N`` exactly).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"gpu_bundle: `{' '.join(cmd)}` failed:\n{run.stderr[-3000:]}")


def pinned(packages: tuple[str, ...]) -> list[str]:
    """``name==version`` for each package, at the version installed in this environment."""
    out = []
    for name in packages:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError as exc:
            raise SystemExit(f"gpu_bundle: {name!r} is not installed here (run `make install`)") from exc
    return out


def build(out: Path, python: str, checkpoint: Path, why: str, packages: tuple[str, ...],
          platforms: tuple[str, ...]) -> dict:
    """Write the bundle into ``out`` (which must not exist) and return its manifest."""
    from qprune.errors import QpruneError
    from qprune.problems import read_checkpoint

    try:
        data = read_checkpoint(checkpoint)["config"].get("data")
    except QpruneError as exc:
        raise SystemExit(f"gpu_bundle: {exc}") from exc
    data_dir = Path(data) if isinstance(data, str) and data not in ("bundled",) else None
    if data_dir is not None and not data_dir.is_dir():
        raise SystemExit(f"gpu_bundle: {checkpoint} was trained on {data_dir}, which is not a folder here")

    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    print(f"building the qprune wheel from {ROOT}", flush=True)
    _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT))
    pins = pinned(packages)
    if pins:
        print(f"downloading {', '.join(pins)} for CPython {python}", flush=True)
        plat = [a for p in platforms for a in ("--platform", p)]
        _pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python,
             "--implementation", "cp", *plat, "-d", str(wheels), *pins)
    shutil.copy2(checkpoint, out / "checkpoint.pt")
    if data_dir is not None:
        print(f"copying {data_dir}", flush=True)
        shutil.copytree(data_dir, out / "data")
        # a read-only source (a shared data mount) would make the copy undeletable by a re-run
        for path in [out / "data", *(out / "data").rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "made": time.strftime("%Y-%m-%d %H:%M:%S"),
        "qprune_commit": commit or None,
        "python": python,
        "platforms": list(platforms),
        "packages": pins,
        "wheels": sorted(p.name for p in wheels.iterdir()),
        "checkpoint": {"from": str(checkpoint), "why": why},
        "data": str(data_dir) if data_dir is not None else None,
    }


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / ".gpu"), help="bundle folder (replaced; default .gpu)")
    ap.add_argument("--python", default="3.12", help="the GPU machine's Python version, e.g. 3.12")
    ap.add_argument("--checkpoint", help="denoise checkpoint (default: what tt_refine.py would pick)")
    ap.add_argument("--only-qprune", action="store_true",
                    help="bundle qprune's wheel alone (the target already has the other packages)")
    args = ap.parse_args(argv)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        ap.error(f"--checkpoint {args.checkpoint!r} is not a file")
    if not all(part.isdigit() for part in args.python.split(".")) or args.python.count(".") != 1:
        ap.error(f"--python {args.python!r} is not a version like 3.12")
    checkpoint, why = pick_checkpoint(args.checkpoint)

    out = Path(args.out).resolve()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = build(tmp, args.python, checkpoint, why, () if args.only_qprune else PACKAGES, PLATFORMS)
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"bundle: {out} ({folder_bytes(out) / 2**20:.1f} MiB: {len(manifest['wheels'])} wheels, "
          f"checkpoint {checkpoint.name}{', data ' + manifest['data'] if manifest['data'] else ''})")
    print(f"on the GPU machine: bash benchmarks/gpu_tt.sh {out.name} OUTDIR [options]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
