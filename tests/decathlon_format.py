"""A third data format, for tests only: single-modality NIfTI volumes with a binary label, as in the
Medical Segmentation Decathlon's binary tasks, one folder per case.

    root/<case>/image.nii.gz   one 3-D intensity volume
    root/<case>/label.nii.gz   its tumour label, 0/1 (optional for new scans)

It is written only against :mod:`glioseg.formats` (the seam and the NIfTI helpers): registering
it is the one other step a format needs (``FORMATS["decathlon"] = Decathlon()``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from glioseg.errors import DataError
from glioseg.formats import nifti
from glioseg.formats.base import MANIFEST_COLUMNS, DataFormat, Scan, ScanRef, SliceRow, named_from, sha256
from glioseg.formats.intensity import window_to_uint8

IMAGE, LABEL, PREDICTION = "image.nii.gz", "label.nii.gz", "prediction.nii.gz"
PERCENTILES = (0.5, 99.5)


def _cases(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{root}: no such folder of Decathlon cases")
    cases = sorted(p for p in root.iterdir() if (p / IMAGE).is_file())
    if not cases:
        raise DataError(f"{root}: no case folders (expected <case>/{IMAGE})")
    return cases


def _read(folder: Path, with_label: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 axial slices (Z,H,W,1), windowed between two percentiles, and 0/1 labels (Z,H,W) or None."""
    files = {"image": folder / IMAGE, **({"label": folder / LABEL} if with_label else {})}
    volumes = nifti.open_volumes(files)
    image = nifti.axial_slices(volumes["image"], files["image"])
    slices = window_to_uint8(image, None, PERCENTILES)[..., None]
    if not with_label:
        return slices, None
    labels = nifti.axial_slices(volumes["label"], files["label"])
    values = set(nifti.label_values(labels, files["label"]).tolist())
    if not values <= {0, 1}:
        raise DataError(f"{files['label']}: label values {sorted(values)}; a binary label holds only 0 and 1")
    return slices, np.rint(labels).astype(np.uint8)


class Decathlon(DataFormat[None]):
    name = "decathlon"
    title = "Decathlon"
    scans = "single-modality NIfTI cases"
    raw_name = "decathlon"
    overlay_every_slice = False

    def slice_channels(self, settings: None) -> int:
        return 1

    def stage(self, source: str, staging: Path, patients: int | None, settings: None) -> str:
        for case in _cases(Path(source))[:patients]:
            (staging / case.name).mkdir(parents=True)
            for name in (IMAGE, LABEL):
                if not (case / name).is_file():
                    raise DataError(f"{case / name}: file not found")
                shutil.copy2(case / name, staging / case.name / name)
        return source

    def describe(self, staging: Path, dest: Path, origin: str, settings: None) -> pd.DataFrame:
        rows = []
        for case in _cases(staging):
            try:
                images, _ = _read(case, with_label=True)
            except DataError as exc:
                raise DataError(named_from(origin, staging, str(exc))) from None
            image_sha, label_sha = sha256(case / IMAGE), sha256(case / LABEL)
            rows += [
                {
                    "patient": case.name,
                    "slice": z,
                    "image": (dest / case.name).as_posix(),
                    "mask": (dest / case.name / LABEL).as_posix(),
                    "image_sha256": image_sha,
                    "mask_sha256": label_sha,
                }
                for z in range(len(images))
            ]
        return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)

    def read_rows(self, rows: pd.DataFrame, settings: None) -> Iterator[tuple[SliceRow, np.ndarray, np.ndarray]]:
        for folder, group in rows.groupby("image", sort=False):
            images, labels = _read(Path(folder), with_label=True)
            assert labels is not None
            for row in group.itertuples():
                yield row, images[int(row.slice)], labels[int(row.slice)]

    def holds_scans(self, source: Path) -> bool:
        return (source / IMAGE).is_file() or any(source.glob(f"*/{IMAGE}"))

    def find_scans(self, source: Path) -> list[ScanRef]:
        folders = [source] if (source / IMAGE).is_file() else _cases(source)
        return [ScanRef(folder.name, folder) for folder in folders]

    def is_case(self, folder: Path) -> bool:
        return (folder / IMAGE).is_file()

    def read_scan(self, ref: ScanRef, settings: None) -> Scan:
        images, labels = _read(ref.folder, with_label=(ref.folder / LABEL).is_file())
        depth = len(images)
        truths = tuple(labels) if labels is not None else (None,) * depth
        image = ref.folder / IMAGE
        return Scan(
            ref,
            tuple(f"{ref.name}_{z:03d}" for z in range(depth)),
            tuple(range(depth)),
            (image,) * depth,
            tuple(images),
            truths,
            nifti.voxel_ml(nifti.load_image(image)),
        )

    def case_files(self, ref: ScanRef, settings: None) -> list[Path]:
        return [path for path in (ref.folder / IMAGE, ref.folder / LABEL) if path.is_file()]

    def write_prediction(self, scan: Scan, labels: list[np.ndarray], folder: Path, settings: None) -> list[Path]:
        path = folder / PREDICTION
        nifti.write_label_volume(np.stack(labels), nifti.load_image(scan.ref.folder / IMAGE), path)
        return [path]


def write_cases(root: Path, count: int, size: int = 48, depth: int = 6, seed: int = 0) -> list[str]:
    """``count`` cases of noise with a bright ball as the tumour; every third case has none."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (size, size, depth)), indexing="ij"), axis=-1)
    names = []
    for index in range(count):
        image = rng.normal(100.0, 10.0, (size, size, depth)).astype(np.float32)
        label = np.zeros((size, size, depth), np.uint8)
        if index % 3:
            centre = np.array([*rng.integers(14, size - 14, 2), depth / 2])
            radius = rng.uniform(6, 10)
            label[(((grid - centre) * (1, 1, 3)) ** 2).sum(-1) < radius**2] = 1
            image[label > 0] += 120.0
        name = f"case_{index:02d}"
        (root / name).mkdir(parents=True)
        affine = np.diag([-1.0, -1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / name / IMAGE)
        nib.save(nib.Nifti1Image(label, affine), root / name / LABEL)
        names.append(name)
    return names
