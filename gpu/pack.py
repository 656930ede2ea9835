"""Pack what a lent GPU machine needs for glioseg's GPU checks: ``python -m gpu.pack``.

The machine (the device tool's KINDS.md) has Python 3.12 with torch, timm, opencv, tifffile,
pandas, scipy, matplotlib, typer and pytest, but not segmentation-models-pytorch,
albumentations (with albucore, stringzilla, simsimd), pydantic or nibabel; it reaches no
package registry, and one call carries at most 64 MiB. This writes into a git-ignored folder
(default ``carry/gpu``):

- ``wheels/``: those packages at requirements.lock's versions, for CPython 3.12 on manylinux x86-64;
- ``lgg.zip``: the LGG slices resized to the seed protocol's size by the pipeline's own
  preprocess step (images INTER_AREA, masks INTER_NEAREST: what the cache stage stores), as
  ``<patient>/<slice>.webp`` (lossless) and ``<slice>_mask.png``, each checked to decode to the
  same pixels, stored uncompressed in one zip;
- ``manifest.json``: counts, sizes, versions, and the slices whose tumour vanishes at that size
  (their diagnosis label would differ from the full-size pipeline's).

Slices the clean stage removes at full size (mean intensity below the params'
``clean.min_mean_intensity``) are left out of the kit: at 128 px rounding moves a few
near-black means across the threshold, and the kit should keep exactly the full-size pipeline's
slices. The manifest names them, and any kept slice that the clean stage would still drop at
the packed size.

``bash gpu/run.sh`` unpacks them on the machine and runs the checks (gpu/README.md).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from glioseg.config.compose import compose_params
from glioseg.config.schema import parse_params
from glioseg.data.clean import mean_intensity
from glioseg.data.transforms import preprocess_pipeline
from glioseg.errors import GliosegError
from glioseg.formats.kaggle3m import list_pairs, read_image, read_mask
from glioseg.io import atomic_path

REPO = Path(__file__).resolve().parents[1]
# What the machine lacks of glioseg's training, evaluation and benchmark imports (KINDS.md's package
# list), and typing_extensions, which it has but maybe older than pydantic-core's needs (Sentinel).
MISSING_PACKAGES = (
    "segmentation_models_pytorch",
    "albumentations",
    "albucore",
    "stringzilla",
    "simsimd",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_inspection",
    "typing_extensions",
    "nibabel",
)
DEVICE_PYTHON = "3.12"
# pip matches each manylinux tag exactly: the tags the device README names.
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
WEBP_LOSSLESS = [cv2.IMWRITE_WEBP_QUALITY, 101]  # OpenCV: quality above 100 is lossless


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def pinned_versions(lock: Path, names: tuple[str, ...] = MISSING_PACKAGES) -> dict[str, str]:
    """``name==version`` of each package in ``names`` from a pip lock file; a missing one is an error."""
    pins = {}
    for line in lock.read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[canonical(name)] = version.split(";")[0].strip()
    missing = [name for name in names if canonical(name) not in pins]
    if missing:
        raise GliosegError(f"{lock}: no pinned version for {', '.join(missing)}")
    return {name: pins[canonical(name)] for name in names}


def download_command(pins: dict[str, str], dest: Path, python: str = DEVICE_PYTHON) -> list[str]:
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(dest),
        *(f"{name}=={version}" for name, version in pins.items()),
    ]


def download_wheels(dest: Path, lock: Path = REPO / "requirements.lock") -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(download_command(pinned_versions(lock), dest), capture_output=True, text=True)
    if result.returncode != 0:
        raise GliosegError(f"pip download failed: {result.stderr.strip().splitlines()[-1]}")
    return sorted(p.name for p in dest.glob("*.whl"))


def encode_lossless(array: np.ndarray, extension: str, params: list[int] | None = None) -> bytes:
    ok, encoded = cv2.imencode(extension, array, params or [])
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if ok else None
    if decoded is None or not np.array_equal(decoded, array):
        raise GliosegError(f"{extension}: encoding did not decode to the same pixels")
    return encoded.tobytes()


def pack_lgg(source: Path, dest: Path, size: int, min_mean_intensity: float) -> dict[str, Any]:
    """The slices of the kaggle_3m folder ``source`` that the clean stage keeps, resized as the cache
    stage does, into the zip ``dest``."""
    pairs = list_pairs(source)
    if pairs.empty:
        raise GliosegError(f"{source}: no LGG slices found")
    resize = preprocess_pipeline(size)
    dropped_dark, dark_when_small, lost_tumour = [], [], []
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as archive:  # WebP and PNG are compressed already
        for row in tqdm(pairs.itertuples(), total=len(pairs), desc="pack", unit="slice"):
            image, mask = read_image(row.image), read_mask(row.mask)
            stem = Path(row.image).stem
            if mean_intensity(image) < min_mean_intensity:
                dropped_dark.append(stem)
                continue
            small = resize(image=image, mask=mask)
            if mean_intensity(small["image"]) < min_mean_intensity:
                dark_when_small.append(stem)
            if mask.any() and not small["mask"].any():
                lost_tumour.append(stem)
            archive.writestr(f"{row.patient}/{stem}.webp", encode_lossless(small["image"], ".webp", WEBP_LOSSLESS))
            archive.writestr(f"{row.patient}/{stem}_mask.png", encode_lossless(small["mask"] * 255, ".png"))
    return {
        "patients": int(pairs["patient"].nunique()),
        "slices": len(pairs) - len(dropped_dark),
        "image_size": size,
        "min_mean_intensity": min_mean_intensity,
        "left_out_as_dark_at_full_size": dropped_dark,
        "kept_but_dark_at_this_size": dark_when_small,
        "slices_whose_tumour_vanishes_at_this_size": lost_tumour,
    }


def mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gpu.pack", description=__doc__.splitlines()[0])
    parser.add_argument("--lgg", type=Path, required=True, help="a kaggle_3m folder (python ../shared/lgg/restore.py)")
    parser.add_argument("--out", type=Path, default=REPO / "carry" / "gpu", help="the kit folder (git-ignored)")
    parser.add_argument(
        "--params",
        type=Path,
        default=REPO / "profiles" / "seed-gpu.yaml",
        help="the protocol's params: augment.image_size and clean.min_mean_intensity",
    )
    parser.add_argument("--no-wheels", dest="wheels", action="store_false", help="pack the data only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            params = parse_params(compose_params(args.params))
            lgg = pack_lgg(args.lgg, tmp / "lgg.zip", params.augment.image_size, params.clean.min_mean_intensity)
            manifest = {"params": str(args.params), "lgg": lgg, "lgg_mib": mib(tmp / "lgg.zip")}
            if args.wheels:
                manifest["wheels"] = download_wheels(tmp / "wheels")
                manifest["wheels_mib"] = mib(tmp / "wheels")
                manifest["python"] = DEVICE_PYTHON
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except GliosegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lgg = manifest["lgg"]
    print(
        f"wrote {args.out}: {lgg['slices']} slices ({manifest['lgg_mib']} MiB; "
        f"{len(lgg['left_out_as_dark_at_full_size'])} left out as dark), "
        f"{len(manifest.get('wheels', []))} wheels ({manifest.get('wheels_mib', 0)} MiB); at {lgg['image_size']} px "
        f"{len(lgg['kept_but_dark_at_this_size'])} kept slices turn dark and "
        f"{len(lgg['slices_whose_tumour_vanishes_at_this_size'])} lose their tumour"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
