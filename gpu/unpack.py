"""Turn the kit's LGG zip back into a kaggle_3m tree of TIFs: ``python -m gpu.unpack KIT/lgg.zip DEST``.

Images become RGB uint8 TIFs and masks 0/255 TIFs, as Kaggle ships them, at the packed size, so
glioseg's data stages and the naive benchmark loop read them as they read the original set.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import tifffile

from glioseg.errors import GliosegError


def decode(data: bytes, name: str) -> np.ndarray:
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise GliosegError(f"{name}: not a readable packed slice")
    return decoded


def unpack_lgg(kit: Path, dest: Path) -> int:
    """Write ``dest/<patient>/<slice>.tif`` and ``<slice>_mask.tif`` for every packed slice; return the count."""
    if not kit.is_file() or not zipfile.is_zipfile(kit):
        raise GliosegError(f"{kit}: not a packed LGG zip; run python -m gpu.pack first")
    with zipfile.ZipFile(kit) as archive:
        names = set(archive.namelist())
        images = sorted(name for name in names if name.endswith(".webp"))
        if not images:
            raise GliosegError(f"{kit}: no packed slices (<patient>/<slice>.webp)")
        for name in images:
            mask_name = name.removesuffix(".webp") + "_mask.png"
            if mask_name not in names:
                raise GliosegError(f"{kit}: {name} has no {mask_name}")
            image = decode(archive.read(name), f"{kit}:{name}")
            mask = decode(archive.read(mask_name), f"{kit}:{mask_name}")
            target = dest / name.removesuffix(".webp")
            target.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(target.with_name(f"{target.name}.tif"), image, photometric="rgb")
            tifffile.imwrite(target.with_name(f"{target.name}_mask.tif"), mask, photometric="minisblack")
    return len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu.unpack", description=__doc__.splitlines()[0])
    parser.add_argument("kit", type=Path, help="the kit's lgg.zip")
    parser.add_argument("dest", type=Path, help="the kaggle_3m folder to write")
    args = parser.parse_args(argv)
    try:
        count = unpack_lgg(args.kit, args.dest)
    except GliosegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"unpacked {count} slices into {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
