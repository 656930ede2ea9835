"""Deterministic BraTS-like phantom cases in NIfTI, for runs without real BraTS data.

Each case is an ellipsoidal brain in a dark background with four modalities (t1, t1ce, t2,
flair) and a BraTS 2020 label volume {0, 1, 2, 4}: an oedema ellipsoid (2) around an enhancing
shell (4) around a necrotic core (1), each nested inside the previous one. The volumes are
stored like the real files: int16 images and uint8 labels, left-posterior-superior storage order
(the BraTS affine ``diag(-1, -1, 1)``) with spacing chosen to cover 240 x 240 x 155 mm. Case ``i``
is drawn from its own generator seeded with ``(seed, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

MODALITIES = ("t1", "t1ce", "t2", "flair")
FIELD_OF_VIEW_MM = (240.0, 240.0, 155.0)
# Intensity per tissue and modality: background, brain, oedema (2), enhancing (4), necrosis (1).
INTENSITY = {
    "t1": (0, 420, 330, 380, 250),
    "t1ce": (0, 450, 360, 900, 220),
    "t2": (0, 300, 650, 520, 800),
    "flair": (0, 350, 780, 560, 420),
}
NOISE = 18.0
LABEL_KEY = "seg"


@dataclass(frozen=True)
class Phantom:
    """One case's random geometry, in voxel coordinates of the (X,Y,Z) storage grid."""

    brain_radii: np.ndarray
    centre: np.ndarray
    oedema_radii: np.ndarray
    shell: float
    core: float


def case_name(index: int) -> str:
    return f"BraTS20_Training_{index + 1:03d}"


def _plan(index: int, shape: tuple[int, int, int], seed: int) -> Phantom:
    rng = np.random.default_rng([seed, index])
    size = np.array(shape, dtype=float)
    brain_radii = size * np.array([0.36, 0.42, 0.45]) * rng.uniform(0.92, 1.05, 3)
    offset = rng.uniform(-0.35, 0.35, 3) * brain_radii
    offset[2] = rng.uniform(-0.15, 0.15) * brain_radii[2]
    return Phantom(
        brain_radii=brain_radii,
        centre=size / 2 + offset,
        oedema_radii=brain_radii * rng.uniform(0.32, 0.48, 3),
        shell=float(rng.uniform(0.62, 0.75)),
        core=float(rng.uniform(0.35, 0.5)),
    )


def _radius(grid: tuple[np.ndarray, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Ellipsoidal radius: < 1 inside the ellipsoid."""
    return np.sqrt(sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, centre, radii)))


def render(phantom: Phantom, shape: tuple[int, int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The label volume ({0,1,2,4}, uint8) and one int16 volume per modality."""
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    brain = _radius(grid, np.array(shape) / 2, phantom.brain_radii) < 1
    tumour = _radius(grid, phantom.centre, phantom.oedema_radii)
    labels = np.zeros(shape, np.uint8)
    labels[brain & (tumour < 1)] = 2
    labels[brain & (tumour < phantom.shell)] = 4
    labels[brain & (tumour < phantom.core)] = 1
    tissue = np.select([labels == 1, labels == 4, labels == 2, brain], [4, 3, 2, 1], 0)
    volumes = {LABEL_KEY: labels}
    for modality in MODALITIES:
        levels = np.array(INTENSITY[modality], dtype=np.float32)[tissue]
        noise = rng.normal(0.0, NOISE, shape).astype(np.float32) * brain
        volumes[modality] = np.clip(levels + noise, 0, None).astype(np.int16)
    return volumes


def affine(shape: tuple[int, int, int]) -> np.ndarray:
    """Left-posterior-superior storage, as BraTS files are, covering :data:`FIELD_OF_VIEW_MM`."""
    spacing = np.array(FIELD_OF_VIEW_MM) / np.array(shape)
    matrix = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    matrix[:3, 3] = [spacing[0] * (shape[0] - 1) / 2, spacing[1] * (shape[1] - 1) / 2, -spacing[2] * shape[2] / 2]
    return matrix


def save_volume(data: np.ndarray, matrix: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, matrix)
    image.header.set_xyzt_units("mm")
    image.set_qform(matrix, code=1)
    image.set_sform(matrix, code=1)
    nib.save(image, path)


def generate_brats(dest: Path, cases: int, slices: int, size: int, seed: int, suffixes: dict[str, str]) -> list[str]:
    """Write ``cases`` phantom cases under ``dest``, one file per key of ``suffixes``; return their names."""
    shape = (size, size, slices)
    matrix = affine(shape)
    names = []
    for index in range(cases):
        name = case_name(index)
        folder = Path(dest) / name
        folder.mkdir(parents=True)
        volumes = render(_plan(index, shape, seed), shape, np.random.default_rng([seed, index, 1]))
        for key, data in volumes.items():
            if key in suffixes:
                save_volume(data, matrix, folder / f"{name}_{suffixes[key]}.nii.gz")
        names.append(name)
    return names
