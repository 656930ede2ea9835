"""BraTS NIfTI cases: file naming, validation, canonical axial slices, label maps, write-back.

    root/<case>/<case>_<suffix>.nii.gz   one volume per modality, and the labels ('seg')

Suffixes come from ``data.brats.suffixes`` (BraTS 2020 names them t1/t1ce/t2/flair/seg, BraTS
2023 t1n/t1c/t2w/t2f/seg). Every volume is reoriented to the closest canonical (RAS+) order, so
axis 2 runs inferior -> superior whatever the file's storage order; an axial slice is shown with
anterior at the top (:func:`volume_to_slices`). Intensities are windowed per volume between two
percentiles of the brain voxels and stored as uint8, the same form as the LGG slices, so every
later stage treats both datasets alike. The brain is where any modality rises above its own
minimum (the background is constant: 0 in raw BraTS, a negative constant in z-scored copies).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel import orientations

from glioseg.config.sections import BratsParams
from glioseg.data.intensity import window_to_uint8
from glioseg.errors import DataError, InputWarning

EXTENSIONS = (".nii.gz", ".nii")
LABELS = "seg"
AFFINE_TOLERANCE = 1e-3
CANONICAL = orientations.axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True)
class CaseSlices:
    """One case as axial slices: uint8 images (Z,H,W,C) and class labels (Z,H,W) or None."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None


def volume_to_slices(volume: np.ndarray) -> np.ndarray:
    """(X,Y,Z,...) RAS+ volume -> (Z,Y,X,...) axial slices, anterior at the top of each slice."""
    return np.moveaxis(np.rot90(volume, k=1, axes=(0, 1)), 2, 0)


def slices_to_volume(slices: np.ndarray) -> np.ndarray:
    """The inverse of :func:`volume_to_slices`."""
    return np.rot90(np.moveaxis(slices, 0, 2), k=-1, axes=(0, 1))


def find_file(folder: Path, suffix: str) -> Path | None:
    for extension in EXTENSIONS:
        path = folder / f"{folder.name}_{suffix}{extension}"
        if path.is_file():
            return path
    return None


def case_files(folder: Path, params: BratsParams, with_labels: bool = True) -> dict[str, Path]:
    """{modality or 'seg': path} of one case folder; a missing file is an error naming it."""
    wanted = [*params.modalities, *([LABELS] if with_labels else [])]
    files = {}
    for name in wanted:
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


def load_image(path: Path) -> nib.Nifti1Image:
    """The NIfTI header and lazy data of ``path``; unreadable or non-3-D files are errors naming it.

    A file with neither orientation code (qform and sform codes 0) says nothing of its orientation;
    nibabel then assumes one from the voxel sizes alone, so that is read with a warning.
    """
    try:
        # nib.load is typed as returning any image class; a BraTS case file is a NIfTI one.
        image = cast(nib.Nifti1Image, nib.load(path))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # nibabel raises several types for foreign or truncated files
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if len(image.shape) != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {image.shape}")
    if not image.header["qform_code"] and not image.header["sform_code"]:
        warnings.warn(f"{path}: no orientation (qform_code and sform_code are 0); read as "
                      f"{''.join(nib.aff2axcodes(image.affine))} from its voxel sizes, so left and right may be "
                      "swapped", InputWarning, stacklevel=2)
    return image


def check_geometry(images: dict[str, nib.Nifti1Image], files: dict[str, Path]) -> None:
    """Every volume of a case must share the first one's shape and affine."""
    names = list(images)
    reference = images[names[0]]
    for name in names[1:]:
        image = images[name]
        if image.shape != reference.shape:
            raise DataError(f"{files[name]}: shape {image.shape} differs from {files[names[0]].name} {reference.shape}")
        if not np.allclose(image.affine, reference.affine, atol=AFFINE_TOLERANCE):
            raise DataError(f"{files[name]}: affine differs from {files[names[0]].name}'s")


def _volume_data(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    try:
        return nib.as_closest_canonical(image).get_fdata(dtype=np.float32)
    except Exception as exc:  # truncated gzip streams and bad data offsets surface here
        raise DataError(f"{path}: unreadable NIfTI data ({type(exc).__name__}: {exc})") from None


def axial_slices(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    """A volume's data as float32 canonical axial slices (Z,H,W); non-finite voxels become its finite minimum.

    The download stage reports such voxels (:func:`nonfinite_repairs`); here they are background.
    """
    data = _volume_data(image, path)
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, data[finite].min() if finite.any() else 0.0)
    return volume_to_slices(data)


def nonfinite_repairs(folder: Path, params: BratsParams) -> list[str]:
    """What reading a case's modality volumes repairs: NaN or infinite voxels, set to the volume's finite minimum."""
    files, images = open_case(folder, params, with_labels=False)
    repairs = []
    for name in params.modalities:
        bad = int((~np.isfinite(_volume_data(images[name], files[name]))).sum())
        if bad:
            repairs.append(f"{files[name]}: {bad} non-finite voxels (NaN or infinite) read as the volume's "
                           "lowest finite intensity (background)")
    return repairs


def map_labels(labels: np.ndarray, label_map: dict[int, int], path: Path) -> np.ndarray:
    """File label values -> class indices (uint8); a value outside the map is an error naming the file."""
    values = np.unique(labels)
    rounded = np.rint(values)
    if not np.allclose(values, rounded):
        raise DataError(f"{path}: label volume holds non-integer values such as {values[values != rounded][0]:g}")
    unknown = sorted(set(rounded.astype(int)) - set(label_map))
    if unknown:
        known = ", ".join(str(k) for k in sorted(label_map))
        raise DataError(f"{path}: label value {unknown[0]} is not in data.brats.label_map (keys {known})")
    lookup = np.zeros(max(label_map) + 1, np.uint8)
    for source, target in label_map.items():
        lookup[source] = target
    return lookup[np.rint(labels).astype(np.int64)]


def brain_mask(channels: np.ndarray) -> np.ndarray:
    """Voxels (Z,H,W) where any channel of (C,Z,H,W) rises above that channel's minimum."""
    minima = channels.reshape(len(channels), -1).min(axis=1)
    return np.any(channels > minima[:, None, None, None], axis=0)


def open_case(
    folder: Path, params: BratsParams, with_labels: bool = True
) -> tuple[dict[str, Path], dict[str, nib.Nifti1Image]]:
    """A case's files and their (lazy) images, checked for presence, readability and geometry."""
    files = case_files(Path(folder), params, with_labels)
    images = {name: load_image(path) for name, path in files.items()}
    check_geometry(images, files)
    return files, images


def read_case(folder: Path, params: BratsParams, with_labels: bool = True) -> CaseSlices:
    """Load, check and normalise one case: images uint8 (Z,H,W,C) in ``params.modalities`` order."""
    files, images = open_case(folder, params, with_labels)
    channels = np.stack([axial_slices(images[name], files[name]) for name in params.modalities])
    brain = brain_mask(channels)
    stacked = np.stack([window_to_uint8(c, brain, params.percentiles) for c in channels], axis=-1)
    labels = None
    if with_labels:
        labels = map_labels(axial_slices(images[LABELS], files[LABELS]), params.label_map, files[LABELS])
    return CaseSlices(Path(folder).name, stacked, labels)


def axial_depth(image: nib.Nifti1Image) -> int:
    """Number of axial (inferior-superior) slices, whatever the storage order (from the header)."""
    ornt = orientations.io_orientation(image.affine)
    return int(image.shape[int(np.flatnonzero(ornt[:, 0] == 2)[0])])


def validate_case(folder: Path, params: BratsParams) -> int:
    """Check one case fully (files, geometry, label values); return its number of axial slices."""
    files, images = open_case(folder, params)
    map_labels(np.asarray(images[LABELS].dataobj), params.label_map, files[LABELS])
    return axial_depth(images[params.modalities[0]])


def files_sha256(paths: list[Path]) -> str:
    """One SHA-256 over several files, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def source_labels(label_map: dict[int, int]) -> np.ndarray:
    """Class index -> the smallest file label mapped to it, to write predictions in the files' convention."""
    lookup = np.zeros(max(label_map.values()) + 1, np.int16)
    for source, target in sorted(label_map.items(), reverse=True):
        lookup[target] = source
    return lookup


def write_label_volume(
    labels: np.ndarray, reference: nib.Nifti1Image, path: str | os.PathLike
) -> nib.Nifti1Image:
    """Axial label slices (Z,H,W, canonical) back into ``reference``'s voxel order, affine and header.

    The header is the reference's, qform and sform with their codes included: a file without
    orientation codes gets a prediction without them, not one that claims a scanner frame.
    """
    canonical = slices_to_volume(labels)
    transform = orientations.ornt_transform(CANONICAL, orientations.io_orientation(reference.affine))
    data = orientations.apply_orientation(canonical, transform).astype(np.uint8)
    if data.shape != reference.shape:
        raise DataError(f"{path}: prediction shape {data.shape} does not match the input's {reference.shape}")
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    image = nib.Nifti1Image(data, reference.affine, header)
    image.set_qform(reference.header.get_qform(), code=int(reference.header["qform_code"]))
    image.set_sform(reference.header.get_sform(), code=int(reference.header["sform_code"]))
    nib.save(image, path)
    return image
