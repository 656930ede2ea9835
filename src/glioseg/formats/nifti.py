"""NIfTI volumes of any format: reading with one-line errors, canonical axial slices, geometry, write-back.

Every volume is reoriented to the closest canonical (RAS+) order, so axis 2 runs inferior ->
superior whatever the file's storage order; an axial slice is shown with anterior at the top
(:func:`volume_to_slices`). A prediction is written back in the reference file's own voxel order,
affine and header (:func:`write_label_volume`).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel import orientations

from glioseg.errors import DataError, InputWarning

EXTENSIONS = (".nii.gz", ".nii")
AFFINE_TOLERANCE = 1e-3
CANONICAL = orientations.axcodes2ornt(("R", "A", "S"))


def is_nifti(path: Path) -> bool:
    return path.name.endswith(EXTENSIONS)


def stem(name: str) -> str:
    """A file name without its ``.nii`` or ``.nii.gz`` extension."""
    return name.removesuffix(".gz").removesuffix(".nii")


def volume_to_slices(volume: np.ndarray) -> np.ndarray:
    """(X,Y,Z,...) RAS+ volume -> (Z,Y,X,...) axial slices, anterior at the top of each slice."""
    return np.moveaxis(np.rot90(volume, k=1, axes=(0, 1)), 2, 0)


def slices_to_volume(slices: np.ndarray) -> np.ndarray:
    """The inverse of :func:`volume_to_slices`."""
    return np.rot90(np.moveaxis(slices, 0, 2), k=-1, axes=(0, 1))


def load_image(path: Path) -> nib.Nifti1Image:
    """The NIfTI header and lazy data of ``path``; unreadable or non-3-D files are errors naming it.

    A file with neither orientation code (qform and sform codes 0) says nothing of its orientation;
    nibabel then assumes one from the voxel sizes alone, so that is read with a warning.
    """
    try:
        # nib.load is typed as returning any image class; a case file is a NIfTI one.
        image = cast(nib.Nifti1Image, nib.load(path))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # nibabel raises several types for foreign or truncated files
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if len(image.shape) != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {image.shape}")
    if not image.header["qform_code"] and not image.header["sform_code"]:
        warnings.warn(
            f"{path}: no orientation (qform_code and sform_code are 0); read as "
            f"{''.join(nib.aff2axcodes(image.affine))} from its voxel sizes, so left and right may be "
            "swapped",
            InputWarning,
            stacklevel=2,
        )
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


def open_volumes(files: dict[str, Path]) -> dict[str, nib.Nifti1Image]:
    """The (lazy) images of one case's files, checked for readability and shared geometry."""
    images = {name: load_image(path) for name, path in files.items()}
    check_geometry(images, files)
    return images


def volume_data(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    """A volume's voxels as float32 in canonical (RAS+) order."""
    try:
        return nib.as_closest_canonical(image).get_fdata(dtype=np.float32)
    except Exception as exc:  # truncated gzip streams and bad data offsets surface here
        raise DataError(f"{path}: unreadable NIfTI data ({type(exc).__name__}: {exc})") from None


def axial_slices(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    """A volume's data as float32 canonical axial slices (Z,H,W); non-finite voxels become its finite minimum.

    The download stage reports such voxels (:func:`nonfinite_repair`); here they are background.
    """
    data = volume_data(image, path)
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, data[finite].min() if finite.any() else 0.0)
    return volume_to_slices(data)


def nonfinite_repair(image: nib.Nifti1Image, path: Path) -> str | None:
    """What reading an intensity volume repairs: NaN or infinite voxels, set to the volume's finite minimum."""
    bad = int((~np.isfinite(volume_data(image, path))).sum())
    if not bad:
        return None
    return (
        f"{path}: {bad} non-finite voxels (NaN or infinite) read as the volume's lowest finite intensity (background)"
    )


def label_values(labels: np.ndarray, path: Path) -> np.ndarray:
    """The distinct integer values of a label volume; a non-integer value is an error naming the file."""
    values = np.unique(labels)
    rounded = np.rint(values)
    if not np.allclose(values, rounded):
        raise DataError(f"{path}: label volume holds non-integer values such as {values[values != rounded][0]:g}")
    return rounded.astype(int)


def axial_depth(image: nib.Nifti1Image) -> int:
    """Number of axial (inferior-superior) slices, whatever the storage order (from the header)."""
    ornt = orientations.io_orientation(image.affine)
    return int(image.shape[int(np.flatnonzero(ornt[:, 0] == 2)[0])])


def voxel_ml(image: nib.Nifti1Image) -> float:
    """The volume of one voxel in millilitres."""
    return float(np.prod(image.header.get_zooms()[:3])) / 1000.0


def files_sha256(paths: list[Path]) -> str:
    """One SHA-256 over several files, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def write_label_volume(labels: np.ndarray, reference: nib.Nifti1Image, path: str | os.PathLike) -> nib.Nifti1Image:
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
