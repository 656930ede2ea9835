"""The BraTS format: one folder per case, one NIfTI volume per modality and a label volume.

    root/<case>/<case>_<suffix>.nii.gz   one volume per modality, and the labels ('seg')

Suffixes come from ``data.brats.suffixes`` (BraTS 2020 names them t1/t1ce/t2/flair/seg, BraTS
2023 t1n/t1c/t2w/t2f/seg). Volumes become canonical axial slices (:mod:`glioseg.formats.nifti`);
intensities are windowed per volume between two percentiles of the brain voxels and stored as
uint8, the same form as the LGG slices, so every later stage treats both datasets alike. The brain
is where any modality rises above its own minimum (the background is constant: 0 in raw BraTS, a
negative constant in z-scored copies). ``data.source`` is ``synthetic`` (phantoms), a folder of case
folders, or a zip holding one; a prediction is ``<case>_pred.nii.gz`` in the input's geometry with
the files' own label values.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator
from tqdm import tqdm

from glioseg.errors import DataError, RepairedInput, SkippedInput
from glioseg.formats import archive, nifti
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
from glioseg.formats.intensity import check_percentiles, window_to_uint8
from glioseg.formats.synthetic.brats import MODALITIES as SYNTHETIC_MODALITIES
from glioseg.formats.synthetic.brats import generate_brats
from glioseg.strict import Strict

LABELS = "seg"
BRATS_2020_LABELS = {0: 0, 1: 1, 2: 2, 4: 3}
STRAY = "not a <case>_<suffix>.nii[.gz] volume of data.brats.suffixes; skipped"


class BratsParams(Strict):
    """How BraTS NIfTI cases (`<case>/<case>_<suffix>.nii.gz`) become 2-D slices and class labels (used
    when `dataset: brats`)."""

    modalities: tuple[str, ...] = Field(
        ("t1ce", "flair"), min_length=1, description="input channels, in this order (default: the seeds' choice)"
    )
    suffixes: dict[str, str] = Field(
        {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
        description="file-name suffix per modality and for the label volume (seg); BraTS 2023 "
        "names them t1n, t1c, t2w, t2f",
    )
    label_map: dict[int, int] = Field(
        BRATS_2020_LABELS,
        description="every label value of the files -> class index 0..C-1, a value not listed being an error; "
        "BraTS 2015 files: {0: 0, 1: 1, 2: 2, 3: 1, 4: 3}",
    )
    class_names: tuple[str, ...] = Field(
        ("background", "necrotic_core", "oedema", "enhancing"),
        description="a name per class index, background (0) first",
    )
    regions: dict[str, tuple[int, ...]] = Field(
        {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)},
        description="evaluation regions as sets of tumour classes, each scored per case; their mean Dice is "
        "the headline",
    )
    slice_range: tuple[int, int] | None = Field(
        None, description="[first, stop) axial slices kept (the seeds keep [60, 135]); null: all"
    )
    percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="per-volume intensity window inside the brain, mapped to 0..255"
    )

    @field_validator("percentiles")
    @classmethod
    def _percentiles_in_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        return check_percentiles(value)

    @model_validator(mode="after")
    def _consistent(self) -> BratsParams:
        missing = [name for name in (*self.modalities, "seg") if name not in self.suffixes]
        if missing:
            raise ValueError(f"no file suffix for {', '.join(missing)} in data.brats.suffixes")
        classes = sorted(set(self.label_map.values()))
        if classes != list(range(len(classes))) or len(classes) < 2:
            raise ValueError(f"label_map values must be the classes 0..C-1 (C >= 2), got {classes}")
        if len(self.class_names) != len(classes):
            raise ValueError(f"class_names has {len(self.class_names)} names for {len(classes)} classes")
        for name, members in self.regions.items():
            if not members or not set(members) <= set(range(1, len(classes))):
                raise ValueError(f"region '{name}' must list tumour classes 1..{len(classes) - 1}")
        if self.slice_range is not None and not 0 <= self.slice_range[0] < self.slice_range[1]:
            raise ValueError(f"slice_range must be [first, stop) with 0 <= first < stop, got {self.slice_range}")
        return self

    @property
    def classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class CaseSlices:
    """One case as axial slices: uint8 images (Z,H,W,C) and class labels (Z,H,W) or None."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None


def find_file(folder: Path, suffix: str) -> Path | None:
    for extension in nifti.EXTENSIONS:
        path = folder / f"{folder.name}_{suffix}{extension}"
        if path.is_file():
            return path
    return None


def case_files(folder: Path, params: BratsParams, with_labels: bool = True) -> dict[str, Path]:
    """{modality or 'seg': path} of one case folder; a missing file is an error naming it."""
    files = {}
    for name in [*params.modalities, *([LABELS] if with_labels else [])]:
        path = find_file(folder, params.suffixes[name])
        if path is None:
            raise DataError(
                f"{folder}: case {folder.name} has no {name} volume ({folder.name}_{params.suffixes[name]}.nii.gz)"
            )
        files[name] = path
    return files


def is_case_folder(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith(f"{folder.name}_") for p in folder.glob("*.nii*"))


def list_cases(root: Path) -> list[Path]:
    """Case folders under ``root`` (folders holding ``<folder>_*.nii[.gz]`` files), sorted by name."""
    if not Path(root).is_dir():
        raise DataError(f"{root}: no such folder of BraTS cases")
    cases = sorted((p for p in Path(root).iterdir() if is_case_folder(p)), key=lambda p: p.name)
    if not cases:
        raise DataError(f"{root}: no BraTS case folders (expected <case>/<case>_<modality>.nii.gz)")
    return cases


def map_labels(labels: np.ndarray, label_map: dict[int, int], path: Path) -> np.ndarray:
    """File label values -> class indices (uint8); a value outside the map is an error naming the file."""
    unknown = sorted(set(nifti.label_values(labels, path)) - set(label_map))
    if unknown:
        known = ", ".join(str(k) for k in sorted(label_map))
        raise DataError(f"{path}: label value {unknown[0]} is not in data.brats.label_map (keys {known})")
    lookup = np.zeros(max(label_map) + 1, np.uint8)
    for source, target in label_map.items():
        lookup[source] = target
    return lookup[np.rint(labels).astype(np.int64)]


def source_labels(label_map: dict[int, int]) -> np.ndarray:
    """Class index -> the smallest file label mapped to it, to write predictions in the files' convention."""
    lookup = np.zeros(max(label_map.values()) + 1, np.int16)
    for source, target in sorted(label_map.items(), reverse=True):
        lookup[target] = source
    return lookup


def brain_mask(channels: np.ndarray) -> np.ndarray:
    """Voxels (Z,H,W) where any channel of (C,Z,H,W) rises above that channel's minimum."""
    minima = channels.reshape(len(channels), -1).min(axis=1)
    return np.any(channels > minima[:, None, None, None], axis=0)


def open_case(
    folder: Path, params: BratsParams, with_labels: bool = True
) -> tuple[dict[str, Path], dict[str, nib.Nifti1Image]]:
    """A case's files and their (lazy) images, checked for presence, readability and geometry."""
    files = case_files(Path(folder), params, with_labels)
    return files, nifti.open_volumes(files)


def read_case(folder: Path, params: BratsParams, with_labels: bool = True) -> CaseSlices:
    """Load, check and normalise one case: images uint8 (Z,H,W,C) in ``params.modalities`` order."""
    files, images = open_case(folder, params, with_labels)
    channels = np.stack([nifti.axial_slices(images[name], files[name]) for name in params.modalities])
    brain = brain_mask(channels)
    stacked = np.stack([window_to_uint8(c, brain, params.percentiles) for c in channels], axis=-1)
    labels = None
    if with_labels:
        labels = map_labels(nifti.axial_slices(images[LABELS], files[LABELS]), params.label_map, files[LABELS])
    return CaseSlices(Path(folder).name, stacked, labels)


def validate_case(folder: Path, params: BratsParams) -> tuple[int, list[str]]:
    """Check one case fully (files, geometry, label values): its number of axial slices and what reading
    its modality volumes repairs (non-finite voxels)."""
    files, images = open_case(folder, params)
    map_labels(np.asarray(images[LABELS].dataobj), params.label_map, files[LABELS])
    repairs = [nifti.nonfinite_repair(images[name], files[name]) for name in params.modalities]
    return nifti.axial_depth(images[params.modalities[0]]), [r for r in repairs if r]


def file_names(case: str, params: BratsParams) -> set[str]:
    """The file names a case folder may hold: ``<case>_<suffix>.nii[.gz]`` for every suffix of ``params``.

    Those of modalities not asked for are left out quietly, like the patients beyond ``data.patients``.
    """
    return {f"{case}_{suffix}{extension}" for suffix in params.suffixes.values() for extension in nifti.EXTENSIONS}


class Brats(DataFormat[BratsParams]):
    name = "brats"
    title = "BraTS"
    scans = "NIfTI cases"
    raw_name = "brats"
    settings_model = BratsParams
    overlay_every_slice = False
    upload_help = "its BraTS volumes <case>_<modality>.nii.gz (with <case>_seg, if any)"
    upload_types = ("nii", "gz")

    def slice_channels(self, settings: BratsParams) -> int:
        return len(settings.modalities)

    def output_channels(self, settings: BratsParams) -> int:
        return settings.classes

    def regions(self, settings: BratsParams) -> dict[str, tuple[int, ...]]:
        return dict(settings.regions)

    def class_names(self, settings: BratsParams) -> tuple[str, ...]:
        return settings.class_names

    def param_conflict(self, window: bool, site_split: bool) -> str | None:
        if window:
            return "data.window applies to LGG slices; BraTS volumes are always windowed, by data.brats.percentiles"
        return super().param_conflict(window, site_split)

    # The download stage.

    def generate(self, staging: Path, patients: int, synthetic: SyntheticSpec, settings: BratsParams) -> None:
        unknown = sorted(set(settings.modalities) - set(SYNTHETIC_MODALITIES))
        if unknown:
            raise DataError(
                f"data.brats.modalities: synthetic phantoms have {', '.join(SYNTHETIC_MODALITIES)}, not {unknown[0]}"
            )
        wanted = {name: settings.suffixes[name] for name in (*settings.modalities, LABELS)}
        generate_brats(staging, patients, synthetic.slices, synthetic.size, synthetic.seed, wanted)

    def stage(self, source: str, staging: Path, patients: int | None, settings: BratsParams) -> str:
        path = Path(source)
        if path.is_dir():
            for case in list_cases(path)[:patients]:
                for name in sorted(set(os.listdir(case)) - file_names(case.name, settings)):
                    if not name.startswith("."):
                        warnings.warn(f"{case / name}: {STRAY}", SkippedInput, stacklevel=2)
                (staging / case.name).mkdir(parents=True)
                for file in case_files(case, settings).values():
                    shutil.copy2(file, staging / case.name / file.name)
            return str(path)
        if path.is_file():
            return _extract_zip(path, staging, patients, settings)
        raise DataError(
            f"data.source: {source}: no such file or folder (expected 'synthetic', a folder or zip of BraTS cases)"
        )

    def describe(self, staging: Path, dest: Path, origin: str, settings: BratsParams) -> pd.DataFrame:
        rows = []
        for case in tqdm(list_cases(staging), desc="validate", unit="case"):
            try:
                depth, repairs = validate_case(case, settings)
            except DataError as exc:
                raise DataError(named_from(origin, staging, str(exc))) from None
            for repair in repairs:
                warnings.warn(named_from(origin, staging, repair), RepairedInput, stacklevel=2)
            first, stop = settings.slice_range or (0, depth)
            if first >= depth:
                raise DataError(
                    f"{origin}/{case.name}: data.brats.slice_range starts at {first} but the case has {depth} slices"
                )
            files = case_files(case, settings)
            images_sha = nifti.files_sha256([files[name] for name in settings.modalities])
            labels_sha = sha256(files[LABELS])
            rows += [
                {
                    "patient": case.name,
                    "slice": z,
                    "image": (dest / case.name).as_posix(),
                    "mask": (dest / case.name / files[LABELS].name).as_posix(),
                    "image_sha256": images_sha,
                    "mask_sha256": labels_sha,
                }
                for z in range(first, min(stop, depth))
            ]
        return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)

    def read_rows(self, rows: pd.DataFrame, settings: BratsParams) -> Iterator[tuple[SliceRow, np.ndarray, np.ndarray]]:
        """A case's volumes are decoded once for all its rows: ``image`` names the case folder and ``slice``
        the axial index; rows come case by case, in order of each case's first row."""
        for folder, group in rows.groupby("image", sort=False):
            case = read_case(Path(folder), settings)
            assert case.labels is not None  # read with its labels
            for row in group.itertuples():
                yield row, case.images[int(row.slice)], case.labels[int(row.slice)]

    # New scans.

    def holds_scans(self, source: Path) -> bool:
        if source.is_file():
            return nifti.is_nifti(source)
        return source.is_dir() and any(nifti.is_nifti(p) for p in [*source.glob("*.nii*"), *source.glob("*/*.nii*")])

    def find_scans(self, source: Path) -> list[ScanRef]:
        """Case folders for a NIfTI file (its folder), a case folder, or a folder of case folders."""
        if not source.exists():
            raise DataError(f"{source}: input not found")
        if source.is_file():
            if not nifti.is_nifti(source):
                raise DataError(f"{source}: expected a NIfTI file (.nii or .nii.gz) of a BraTS case")
            folders = [source.parent]
        else:
            folders = [source] if is_case_folder(source) else list_cases(source)
        return [ScanRef(folder.name, folder) for folder in folders]

    def is_case(self, folder: Path) -> bool:
        return is_case_folder(folder)

    def read_scan(self, ref: ScanRef, settings: BratsParams) -> Scan:
        has_truth = find_file(ref.folder, settings.suffixes[LABELS]) is not None
        case = read_case(ref.folder, settings, with_labels=has_truth)
        depth = len(case.images)
        reference = self._reference(ref, settings)
        truths = tuple(case.labels) if case.labels is not None else (None,) * depth
        return Scan(
            ref,
            tuple(f"{ref.name}_{z:03d}" for z in range(depth)),
            tuple(range(depth)),
            (reference,) * depth,
            tuple(case.images),
            truths,
            nifti.voxel_ml(nifti.load_image(reference)),
        )

    def case_files(self, ref: ScanRef, settings: BratsParams) -> list[Path]:
        truth = find_file(ref.folder, settings.suffixes[LABELS])
        return [*case_files(ref.folder, settings, with_labels=False).values(), *([truth] if truth else [])]

    def write_prediction(self, scan: Scan, labels: list[np.ndarray], folder: Path, settings: BratsParams) -> list[Path]:
        path = folder / f"{scan.ref.name}_pred.nii.gz"
        file_labels = source_labels(settings.label_map)[np.stack(labels)]
        nifti.write_label_volume(file_labels, nifti.load_image(self._reference(scan.ref, settings)), path)
        return [path]

    def upload_case(self, names: list[str]) -> str | None:
        """``<case>`` from BraTS file names ``<case>_<modality>.nii[.gz]``; one case per upload."""
        volumes = [Path(name).name for name in names if nifti.is_nifti(Path(name))]
        if not volumes:
            return None
        cases = {name.rpartition("_")[0] for name in volumes}
        if len(cases) != 1 or "" in cases:
            found = ", ".join(sorted(cases - {""})) or "none"
            raise DataError(f"upload: NIfTI files must be named <case>_<modality>.nii.gz for one case (cases: {found})")
        return cases.pop()

    def accepts_upload(self, name: str) -> bool:
        return nifti.is_nifti(Path(name))

    @staticmethod
    def _reference(ref: ScanRef, settings: BratsParams) -> Path:
        """The file whose affine, header and voxel order a predicted label volume takes (its first modality)."""
        return case_files(ref.folder, settings, with_labels=False)[settings.modalities[0]]


def _extract_zip(path: Path, staging: Path, patients: int | None, params: BratsParams) -> str:
    """Extract the wanted files of the first ``patients`` cases (``.../<case>/<case>_<suffix>.nii.gz``)."""
    suffixes = {params.suffixes[name] for name in (*params.modalities, LABELS)}
    shown = str(path)
    with archive.open_zip(path, shown) as zipped:
        cases: dict[str, list[str]] = {}
        strays: dict[str, list[str]] = {}
        for member in zipped.namelist():
            parts = PurePosixPath(member).parts
            if len(parts) < 2 or archive.is_unsafe(member, shown):
                continue
            case, name = parts[-2:]
            if name.endswith(nifti.EXTENSIONS) and nifti.stem(name).removeprefix(f"{case}_") in suffixes:
                cases.setdefault(case, []).append(member)
            elif not (member.endswith("/") or name.startswith(".") or name in file_names(case, params)):
                strays.setdefault(case, []).append(member)
        if not cases:
            raise DataError(f"{shown}: no <case>/<case>_<modality>.nii.gz files in the zip")
        for case in sorted(cases)[:patients]:
            for member in strays.get(case, []):
                warnings.warn(f"{shown}:{member}: {STRAY}", SkippedInput, stacklevel=2)
            (staging / case).mkdir(parents=True)
            for member in cases[case]:
                archive.extract(zipped, member, staging / case / PurePosixPath(member).name)
    return shown
