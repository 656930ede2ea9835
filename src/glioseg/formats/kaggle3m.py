"""The Kaggle LGG "kaggle_3m" layout: listing image/mask pairs, reading and validating TIFs.

    root/<patient>/<patient>_<n>.tif        RGB image, uint8 (pre-contrast, FLAIR, post-contrast)
    root/<patient>/<patient>_<n>_mask.tif   tumour mask, uint8 0/255

Anything else under ``root`` (Kaggle ships a README and ``data.csv`` beside the patient folders)
is ignored. The LGG format, with its sources, is :mod:`glioseg.formats.lgg`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
import tifffile

from glioseg.errors import DataError

PAIR_COLUMNS = ["patient", "slice", "image", "mask"]

_SLICE_SUFFIX = re.compile(r"_(?P<slice>\d+)(?P<mask>_mask)?\.tif")


def slice_name(patient: str, name: str) -> tuple[int, bool] | None:
    """``(n, is_mask)`` for ``<patient>_<n>.tif`` / ``<patient>_<n>_mask.tif``; None for other names."""
    if not name.startswith(patient):
        return None
    match = _SLICE_SUFFIX.fullmatch(name, len(patient))
    if match is None:
        return None
    return int(match["slice"]), match["mask"] is not None


def is_patient_name(name: str) -> bool:
    """A usable patient folder name: one path component that is not hidden (no ``.``/``..``)."""
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


def pair_names(folder: PurePath, names: Iterable[str]) -> list[tuple[int, str, str]]:
    """``(n, image name, mask name)`` for the slices among ``names`` of patient folder ``folder``.

    ``folder`` only names the patient (its last component) and the files in error messages, so
    it may point inside an archive. Sorted by slice number; names that are not slices are ignored.
    """
    patient = folder.name
    images: dict[int, str] = {}
    masks: dict[int, str] = {}
    for name in names:
        parsed = slice_name(patient, name)
        if parsed is not None:
            n, is_mask = parsed
            (masks if is_mask else images)[n] = name
    for n, image in images.items():
        if n not in masks:
            raise DataError(f"{folder / f'{patient}_{n}_mask.tif'}: mask missing for image {image}")
    for n, mask in masks.items():
        if n not in images:
            raise DataError(f"{folder / f'{patient}_{n}.tif'}: image missing for mask {mask}")
    return [(n, images[n], masks[n]) for n in sorted(images)]


def _slice_files(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if slice_name(folder.name, name) is not None]


def list_patients(root: Path) -> list[str]:
    """Sorted names of the patient folders under ``root`` (those holding ``<patient>_<n>`` TIFs)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    patients = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and is_patient_name(entry.name) and _slice_files(Path(entry.path))
    )
    if not patients:
        raise DataError(f"{root}: no patient folders (expected <patient>/<patient>_<n>.tif)")
    return patients


def list_pairs(root: Path, patients: Sequence[str] | None = None) -> pd.DataFrame:
    """Every image/mask pair under ``root`` (or of ``patients`` only), by patient then slice number."""
    root = Path(root)
    rows = []
    for patient in list_patients(root) if patients is None else patients:
        folder = root / patient
        for n, image, mask in pair_names(folder, _slice_files(folder)):
            rows.append({"patient": patient, "slice": n, "image": folder / image, "mask": folder / mask})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS).astype({"slice": int})


def _read_tif(path: str | os.PathLike) -> np.ndarray:
    try:
        return tifffile.imread(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    # Corrupt or truncated files make the decoders raise many exception types; all mean "unreadable".
    except Exception as exc:
        raise DataError(f"{path}: not a readable TIF ({exc})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image slice as an (H, W, 3) uint8 array."""
    image = _read_tif(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise DataError(f"{path}: expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _read_mask_values(path: str | os.PathLike) -> np.ndarray:
    mask = _read_tif(path)
    if mask.dtype != np.uint8 or mask.ndim != 2 or mask.size == 0:
        raise DataError(f"{path}: expected a single-channel uint8 mask (H, W), got {mask.dtype} {mask.shape}")
    return mask


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask as an (H, W) uint8 array in {0, 1}: any nonzero pixel on disk (normally 255) is tumour."""
    return (_read_mask_values(path) > 0).astype(np.uint8)


def mask_repair(values: np.ndarray, path: str | os.PathLike) -> str | None:
    """What reading a mask repairs: values other than Kaggle's 0 and 255 (each nonzero one becomes tumour)."""
    odd = sorted(set(np.unique(values).tolist()) - {0, 255})
    if not odd:
        return None
    shown = ", ".join(str(v) for v in odd[:3]) + (", ..." if len(odd) > 3 else "")
    return f"{path}: mask values other than 0 and 255 ({shown}); every nonzero pixel is taken as tumour"


def validate_pair(image_path: str | os.PathLike, mask_path: str | os.PathLike) -> list[str]:
    """Raise DataError unless both files read as valid slices with the same height and width.

    Returns what reading them repairs (:func:`mask_repair`), for the download stage to report.
    """
    image = read_image(image_path)
    mask = _read_mask_values(mask_path)
    if mask.shape != image.shape[:2]:
        raise DataError(
            f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is {image.shape[0]}x{image.shape[1]}"
        )
    repair = mask_repair(mask, mask_path)
    return [repair] if repair else []


def unlisted_entries(root: Path, patients: Sequence[str]) -> list[Path]:
    """What listing ``root`` leaves out: entries that are not patient folders, and files in the
    ``patients``' folders whose names are not ``<patient>_<n>[_mask].tif`` (hidden names aside)."""
    root = Path(root)
    chosen = set(patients)
    listed = set(list_patients(root))
    left_out = [root / name for name in sorted(os.listdir(root)) if not name.startswith(".") and name not in listed]
    for patient in sorted(chosen):
        left_out += [
            root / patient / name
            for name in sorted(os.listdir(root / patient))
            if not name.startswith(".") and slice_name(patient, name) is None
        ]
    return left_out
