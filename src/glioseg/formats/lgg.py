"""The LGG format: Kaggle's kaggle_3m TIF slices (:mod:`glioseg.formats.kaggle3m`), from a folder, its zip or Kaggle.

``data.source`` is ``synthetic`` (:func:`glioseg.formats.synthetic.lgg.generate_lgg`), ``kaggle``
(the ``mateuszbuda/lgg-mri-segmentation`` zip, downloaded with the ``kaggle`` package), a kaggle_3m
folder or a folder that contains ``kaggle_3m/``, or the zip Kaggle ships. That zip holds
``kaggle_3m/`` and often a duplicate ``lgg-mri-segmentation/kaggle_3m/``; the shallowest one is used
and the other never read. New scans are single slices, patient folders or folders of them; a
prediction is a ``<slice>_mask.tif`` (0/255, the input's size) per slice, as Kaggle names masks.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import tifffile
from tqdm import tqdm

from glioseg.errors import DataError, RepairedInput, SkippedInput
from glioseg.formats import archive, kaggle
from glioseg.formats.base import (
    MANIFEST_COLUMNS,
    DataFormat,
    Scan,
    ScanRef,
    SliceRow,
    SyntheticSpec,
    named_from,
    sha256,
)
from glioseg.formats.kaggle3m import (
    is_patient_name,
    list_pairs,
    list_patients,
    pair_names,
    read_image,
    read_mask,
    slice_name,
    unlisted_entries,
    validate_pair,
)
from glioseg.formats.synthetic.lgg import generate_lgg

KAGGLE_DATASET = "mateuszbuda/lgg-mri-segmentation"
LAYOUT = "kaggle_3m"
CHANNELS = 3  # pre-contrast, FLAIR, post-contrast


def is_image_tif(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff") and not path.stem.endswith("_mask")


def truth_path(image: Path) -> Path:
    return image.with_name(f"{image.stem}_mask{image.suffix}")


def _by_slice_number(files: list[Path]) -> list[Path]:
    def key(path: Path) -> tuple[str, int]:
        head, _, tail = path.stem.rpartition("_")
        return (head, int(tail)) if tail.isdigit() else (path.stem, -1)

    return sorted(files, key=key)


def case_slices(folder: Path) -> list[Path]:
    """The image slices of one patient folder, by slice number."""
    return _by_slice_number([p for p in folder.iterdir() if p.is_file() and is_image_tif(p)])


class LGG(DataFormat[None]):
    name = "lgg"
    title = "LGG"
    scans = "TIF slices"
    raw_name = LAYOUT
    upload_help = "its TIF slices (with their *_mask.tif, if any)"
    upload_types = ("tif", "tiff")
    case_noun = "patients"
    slice_noun = "pairs"
    has_sites = True

    def slice_channels(self, settings: None) -> int:
        return CHANNELS

    def param_conflict(self, window: bool, site_split: bool) -> str | None:
        return None

    # The download stage.

    def generate(self, staging: Path, patients: int, synthetic: SyntheticSpec, settings: None) -> None:
        generate_lgg(staging, patients, synthetic.slices, synthetic.size, synthetic.seed)

    def stage(self, source: str, staging: Path, patients: int | None, settings: None) -> str:
        if source == "kaggle":
            with tempfile.TemporaryDirectory(prefix=".kaggle-download.", dir=staging.parent) as download:
                return _extract_zip(
                    kaggle.download_zip(KAGGLE_DATASET, Path(download)), staging, patients, shown=KAGGLE_DATASET
                )
        path = Path(source)
        if path.is_dir():
            return _copy_folder(path / LAYOUT if (path / LAYOUT).is_dir() else path, staging, patients)
        if path.is_file():
            return _extract_zip(path, staging, patients, shown=str(path))
        raise DataError(
            f"data.source: {source}: no such file or folder "
            "(expected 'synthetic', 'kaggle', a kaggle_3m folder or the Kaggle zip)"
        )

    def describe(self, staging: Path, dest: Path, origin: str, settings: None) -> pd.DataFrame:
        rows = []
        pairs = list_pairs(staging)
        for patient, group in tqdm(pairs.groupby("patient", sort=False), desc="validate", unit="patient"):
            for pair in group.itertuples(index=False):
                try:
                    repairs = validate_pair(pair.image, pair.mask)
                except DataError as exc:
                    raise DataError(named_from(origin, staging, str(exc))) from None
                for repair in repairs:
                    warnings.warn(named_from(origin, staging, repair), RepairedInput, stacklevel=2)
                rows.append(
                    {
                        "patient": patient,
                        "slice": pair.slice,
                        "image": (dest / patient / pair.image.name).as_posix(),
                        "mask": (dest / patient / pair.mask.name).as_posix(),
                        "image_sha256": sha256(pair.image),
                        "mask_sha256": sha256(pair.mask),
                    }
                )
        return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)

    def read_rows(self, rows: pd.DataFrame, settings: None) -> Iterator[tuple[SliceRow, np.ndarray, np.ndarray]]:
        for row in rows.itertuples():
            yield row, read_image(row.image), read_mask(row.mask)

    # New scans.

    def holds_scans(self, source: Path) -> bool:
        if source.is_file():
            return is_image_tif(source)
        return source.is_dir() and any(is_image_tif(p) for p in [*source.glob("*.tif*"), *source.glob("*/*.tif*")])

    def find_scans(self, source: Path) -> list[ScanRef]:
        """One TIF slice, a patient folder of slices, or a folder of patient folders."""
        if not source.exists():
            raise DataError(f"{source}: input not found")
        if source.is_file():
            if not is_image_tif(source):
                raise DataError(f"{source}: expected a .tif image slice (not a mask)")
            return [ScanRef(source.parent.name, source.parent, (source,))]
        direct = case_slices(source)
        nested = [ScanRef(p.name, p, tuple(case_slices(p))) for p in sorted(source.iterdir()) if p.is_dir()]
        found = [ref for ref in nested if ref.files]
        if direct and found:  # either reading alone would silently leave the other's slices out
            raise DataError(
                f"{source}: holds both slices ({direct[0].name}{', ...' if len(direct) > 1 else ''}) "
                f"and patient folders of slices ({found[0].name}, ...); move the loose slices out, or "
                "give one patient folder"
            )
        if not (direct or found):
            raise DataError(f"{source}: no .tif image slices found")
        return [ScanRef(source.name, source, tuple(direct))] if direct else found

    def is_case(self, folder: Path) -> bool:
        return folder.is_dir() and bool(case_slices(folder))

    def read_scan(self, ref: ScanRef, settings: None) -> Scan:
        images = tuple(read_image(path) for path in ref.files)
        truths = tuple(_read_truth(truth_path(path), image.shape[:2]) for path, image in zip(ref.files, images))
        return Scan(ref, tuple(p.stem for p in ref.files), tuple(p.stem for p in ref.files), ref.files, images, truths)

    def case_files(self, ref: ScanRef, settings: None) -> list[Path]:
        return [*ref.files, *(mask for mask in map(truth_path, ref.files) if mask.is_file())]

    def write_prediction(self, scan: Scan, labels: list[np.ndarray], folder: Path, settings: None) -> list[Path]:
        written = []
        for name, mask in zip(scan.names, labels):
            path = folder / f"{name}_mask.tif"
            tifffile.imwrite(path, (mask > 0).astype(np.uint8) * 255, photometric="minisblack")
            written.append(path)
        return written

    def upload_case(self, names: list[str]) -> str | None:
        """``<patient>`` from Kaggle slice names ``<patient>_<n>.tif``; ``upload`` for other TIF names."""
        stems = sorted(Path(name).stem for name in names if is_image_tif(Path(name)))
        if not stems:
            return None
        head, _, tail = stems[0].rpartition("_")
        return head if head and tail.isdigit() else "upload"

    def accepts_upload(self, name: str) -> bool:
        return Path(name).suffix.lower() in (".tif", ".tiff")


def _read_truth(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    truth = read_mask(path)
    if truth.shape != shape:
        raise DataError(f"{path}: mask is {truth.shape[0]}x{truth.shape[1]} but its image is {shape[0]}x{shape[1]}")
    return truth


def _copy_folder(root: Path, staging: Path, patients: int | None) -> str:
    chosen = list_patients(root)[:patients]
    for path in unlisted_entries(root, chosen):
        warnings.warn(
            f"{path}: not a <patient>/<patient>_<n>[_mask].tif slice of {LAYOUT}; skipped", SkippedInput, stacklevel=2
        )
    pairs = list_pairs(root, chosen)
    for patient, group in tqdm(pairs.groupby("patient", sort=False), desc="copy", unit="patient"):
        folder = staging / patient
        folder.mkdir(parents=True)
        for path in [*group["image"], *group["mask"]]:
            shutil.copy2(path, folder / path.name)
    return str(root)


def _zip_layout(zipped: zipfile.ZipFile, shown: str) -> tuple[str, dict[str, dict[str, str]]]:
    """The shallowest ``.../kaggle_3m`` folder in the archive: its path and {patient: {file name: member}}.

    Every other member is reported as skipped (:class:`SkippedInput`), as the folder path reports
    what it leaves out, except those of deeper ``kaggle_3m`` copies (Kaggle's duplicate, by design
    never read) and hidden names. Absolute and ``..`` members never count as part of a layout.
    """
    layouts: dict[str, dict[str, dict[str, str]]] = {}
    others: list[str] = []
    for member in zipped.namelist():
        parts = PurePosixPath(member).parts
        if member.endswith("/") or parts[-1].startswith(".") or archive.is_unsafe(member, shown):
            continue
        is_slice = (
            len(parts) >= 3
            and parts[-3] == LAYOUT
            and is_patient_name(parts[-2])
            and slice_name(parts[-2], parts[-1]) is not None
        )
        if is_slice:
            layouts.setdefault("/".join(parts[:-2]), {}).setdefault(parts[-2], {})[parts[-1]] = member
        else:
            others.append(member)
    if not layouts:
        raise DataError(f"{shown}: no {LAYOUT}/<patient>/<patient>_<n>.tif files in the zip")
    folder = min(layouts, key=lambda f: (f.count("/"), f))
    for member in others:
        if member.startswith(f"{folder}/"):
            warnings.warn(
                f"{shown}:{member}: not a <patient>_<n>[_mask].tif slice; skipped", SkippedInput, stacklevel=2
            )
        elif not any(member.startswith(f"{copy}/") for copy in layouts):
            warnings.warn(
                f"{shown}:{member}: outside {folder}/, the {LAYOUT} folder read; skipped", SkippedInput, stacklevel=2
            )
    return folder, layouts[folder]


def _extract_zip(path: Path, staging: Path, patients: int | None, *, shown: str) -> str:
    """Stream the selected patients' TIFs out of the zip; ``shown`` names the zip in messages."""
    with archive.open_zip(path, shown) as zipped:
        folder, layout = _zip_layout(zipped, shown)
        origin = f"{shown}:{folder}"
        for patient in tqdm(sorted(layout)[:patients], desc="extract", unit="patient"):
            members = layout[patient]
            (staging / patient).mkdir(parents=True)
            for _, image, mask in pair_names(PurePosixPath(origin, patient), members):
                for name in (image, mask):
                    archive.extract(zipped, members[name], staging / patient / name)
    return origin
