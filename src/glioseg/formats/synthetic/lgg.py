"""A deterministic LGG-like data set in the kaggle_3m layout, for runs without the real data.

Each patient is a small volume: a head-shaped ellipse whose size follows the slice position,
smooth tissue texture with a different contrast in each channel (pre-contrast, FLAIR,
post-contrast), scanner-like background noise, near-black slices at both ends, and tumour blobs
(bright in FLAIR) on a contiguous run of middle slices. A tumour is an irregular ellipsoid, so
its cross-section grows and shrinks across the run; smaller "satellite" ellipsoids beside it
give some slices two or more separate tumour regions.

Patient ``i`` is drawn from its own generator seeded with ``(seed, i)``: it does not depend on
how many patients are generated, so generating N patients gives the first N of any larger set.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile


def _per_channel(*values: float) -> np.ndarray:
    """A (3, 1, 1) column that broadcasts over channel-first (3, H, W) slices."""
    return np.array(values, dtype=np.float32)[:, None, None]


# Per channel (pre-contrast, FLAIR, post-contrast): tissue level, texture gains, structure contrasts.
TISSUE = _per_channel(95.0, 85.0, 100.0)
TEXTURE_GAINS = (_per_channel(12.0, 6.0, 9.0), _per_channel(4.0, 16.0, -7.0))  # one per texture field
SCALP = _per_channel(60.0, 20.0, 70.0)
VENTRICLE = _per_channel(-50.0, -45.0, -55.0)
TUMOUR = _per_channel(-20.0, 85.0, 10.0)
TISSUE_NOISE = 2.5
# Background levels 0..3 like scanner noise (about |N(0, 1.2)| rounded): P(value <= k) for k = 0, 1, 2.
# Mean about 0.9, so an empty slice is "dark" (mean < 2) without being exactly zero.
BACKGROUND_CDF = np.array([0.32, 0.79, 0.96], dtype=np.float32)
TUMOUR_FREE_EVERY = 5  # one patient in five has no tumour, so any five consecutive patients include one
PATIENTS_PER_SITE = 4  # the kaggle_3m id names the acquiring site; leave-one-site-out needs several
WAVES = 4  # plane waves per texture field
HARMONICS = np.arange(2, 5)  # of a tumour outline's wobble
WOBBLE_MAX = 0.08  # amplitude per harmonic
OUTLINE_REACH = 1 + len(HARMONICS) * WOBBLE_MAX  # the outline's furthest point, in radii


@dataclass(frozen=True)
class Blob:
    """An ellipsoid (pixels, slices) with a wobbly outline: one tumour region."""

    centre: tuple[float, float, float]  # x, y, slice
    radii: tuple[float, float, float]
    wobble: np.ndarray  # (len(HARMONICS), 2): amplitude, phase

    def section(self, coords: np.ndarray, z: int) -> np.ndarray | None:
        """The blob's pixels on slice ``z`` (pixel coordinates ``coords``), or None if it misses the slice."""
        dz = (z - self.centre[2]) / self.radii[2]
        if abs(dz) >= 1:
            return None
        scale = np.sqrt(1 - dz**2)
        rx, ry = self.radii[0] * scale, self.radii[1] * scale
        cols, rows = _window(self.centre[0], rx, coords), _window(self.centre[1], ry, coords)
        dx = (coords[cols] - self.centre[0])[None, :] / rx
        dy = (coords[rows] - self.centre[1])[:, None] / ry
        angle = np.arctan2(dy, dx)
        outline = 1 + sum(a * np.cos(k * angle + p) for k, (a, p) in zip(HARMONICS, self.wobble))
        section = np.zeros((len(coords), len(coords)), dtype=bool)
        section[rows, cols] = np.hypot(dx, dy) < outline
        return section


def _window(centre: float, radius: float, coords: np.ndarray) -> slice:
    """The pixel range a blob's outline can reach along one axis (computing only there is cheap)."""
    reach = OUTLINE_REACH * radius + 1
    return slice(max(int(centre - reach), 0), min(int(centre + reach) + 2, len(coords)))


@dataclass(frozen=True)
class Volume:
    """Everything random about one patient, drawn up front; slices are rendered from it."""

    name: str
    first: int  # first and last slice showing the head; those outside are near-black
    last: int
    centre: tuple[float, float]
    axes: tuple[float, float]  # head semi-axes at the widest slice, pixels
    waves: np.ndarray  # (2 fields, WAVES, 4): x and y frequency (cycles/image), slice phase step, phase
    blobs: tuple[Blob, ...]

    def head_scale(self, z: int) -> float:
        """Head size on slice ``z`` relative to the widest slice: a sphere-like profile, 0 off the head."""
        if not self.first <= z <= self.last:
            return 0.0
        span = max(self.last - self.first, 1)
        u = 0.9 * (2 * (z - self.first) / span - 1)
        return float(np.sqrt(1 - u**2))


def site_code(index: int) -> str:
    """Patient ``index``'s acquiring site: consecutive blocks of :data:`PATIENTS_PER_SITE` patients
    (AA, AB, ...), so sorting the ids keeps the patients in generation order."""
    block = index // PATIENTS_PER_SITE
    return chr(ord("A") + block // 26) + chr(ord("A") + block % 26)


def _patient_name(index: int, rng: np.random.Generator) -> str:
    scanned = dt.date(1995, 1, 1) + dt.timedelta(days=int(rng.integers(0, 15 * 365)))
    return f"TCGA_{site_code(index)}_{index + 1:04d}_{scanned:%Y%m%d}"


def _wobble(rng: np.random.Generator) -> np.ndarray:
    amplitudes = rng.uniform(0, WOBBLE_MAX, len(HARMONICS))
    return np.stack([amplitudes, rng.uniform(0, 2 * np.pi, len(HARMONICS))], axis=1)


def _tumour_run(rng: np.random.Generator, first: int, last: int) -> tuple[int, int]:
    """First slice and length of the tumour's run, around the middle of the head."""
    extent = last - first + 1
    length = min(extent, max(2, round(extent * rng.uniform(0.35, 0.65))))
    start = first + (extent - length) // 2 + int(rng.integers(-1, 2))
    return int(np.clip(start, first, last - length + 1)), length


def _place(
    rng: np.random.Generator,
    centre: tuple[float, float],
    reach: float,
    radius: float,
    taken: list[tuple[float, float, float]],
) -> tuple[float, float] | None:
    """A blob centre within ``reach`` of the head centre, clear of the blobs in ``taken`` (x, y, radius).

    Centres are spaced by the outlines' full reach plus 3 px, so blobs never touch in-plane.
    """
    for _ in range(50):
        angle, dist = rng.uniform(0, 2 * np.pi), reach * np.sqrt(rng.uniform())
        x, y = centre[0] + dist * np.cos(angle), centre[1] + dist * np.sin(angle)
        if all(np.hypot(x - tx, y - ty) > OUTLINE_REACH * (radius + tr) + 3 for tx, ty, tr in taken):
            return x, y
    return None


def _tumour(rng: np.random.Generator, volume: Volume, size: int) -> tuple[Blob, ...]:
    """A main blob over the whole run plus 0-2 satellites over parts of it, all inside the head."""
    start, length = _tumour_run(rng, volume.first, volume.last)
    smallest_head = min(volume.axes) * min(volume.head_scale(z) for z in range(start, start + length))
    radius = min(size * rng.uniform(0.04, 0.11), 0.3 * smallest_head)
    aspect = rng.uniform(0.75, 1.3)
    placed = _place(rng, volume.centre, 0.35 * smallest_head, radius, [])
    assert placed is not None  # nothing to avoid: always placed
    x, y = placed
    mid = start + (length - 1) / 2
    blobs = [Blob((x, y, mid), (radius * aspect, radius / aspect, length / 2 + 0.5), _wobble(rng))]
    taken = [(x, y, radius * max(aspect, 1 / aspect))]
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        sat_radius = radius * rng.uniform(0.3, 0.6)
        spot = _place(rng, volume.centre, 0.55 * smallest_head, sat_radius, taken)
        if spot is None:
            continue
        sat_length = max(1.0, length * rng.uniform(0.25, 0.6))
        sat_mid = rng.uniform(start, start + length - 1)
        blobs.append(Blob((*spot, sat_mid), (sat_radius, sat_radius, sat_length / 2 + 0.5), _wobble(rng)))
        taken.append((*spot, sat_radius))
    return tuple(blobs)


def _plan(index: int, slices: int, size: int, seed: int) -> Volume:
    rng = np.random.default_rng([seed, index])
    name = _patient_name(index, rng)
    dark_cap = (slices - 2) // 2  # keep at least two head slices
    dark_first, dark_last = (min(int(d), dark_cap) for d in rng.integers(1, 3, size=2))
    waves = np.concatenate(
        [
            rng.uniform(1, 5, (2, WAVES, 2)) * rng.choice([-1, 1], (2, WAVES, 2)),
            rng.uniform(0, 0.6, (2, WAVES, 1)),
            rng.uniform(0, 2 * np.pi, (2, WAVES, 1)),
        ],
        axis=2,
    )
    volume = Volume(
        name=name,
        first=dark_first,
        last=slices - 1 - dark_last,
        centre=tuple(size / 2 + size * rng.uniform(-0.03, 0.03, size=2)),
        axes=(size * rng.uniform(0.30, 0.35), size * rng.uniform(0.36, 0.42)),
        waves=waves,
        blobs=(),
    )
    if (index + seed) % TUMOUR_FREE_EVERY == TUMOUR_FREE_EVERY - 1:
        return volume
    return dataclasses.replace(volume, blobs=_tumour(rng, volume, size))


def _texture(waves: np.ndarray, z: int, coords: np.ndarray) -> np.ndarray:
    """A smooth field in about [-1, 1]: a sum of plane waves.

    cos(a(y) + b(x)) = cos a cos b - sin a sin b, so each wave is two outer products of 1-D
    vectors rather than a cosine per pixel.
    """
    unit = 2 * np.pi * coords / len(coords)
    field = np.zeros((len(coords), len(coords)), dtype=np.float32)
    for fx, fy, fz, phase in waves:
        a = (fy * unit).astype(np.float32)
        b = (fx * unit + fz * z + phase).astype(np.float32)
        field += np.outer(np.cos(a), np.cos(b))
        field -= np.outer(np.sin(a), np.sin(b))
    return field / np.float32(np.sqrt(len(waves)))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    uniform = rng.random((3, size, size), dtype=np.float32)
    levels = sum((uniform > p).astype(np.uint8) for p in BACKGROUND_CDF)
    return levels.astype(np.float32)


def _tumour_mask(volume: Volume, z: int, coords: np.ndarray) -> np.ndarray:
    mask = np.zeros((len(coords), len(coords)), dtype=bool)
    for blob in volume.blobs:
        section = blob.section(coords, z)
        if section is not None:
            mask |= section
    return mask


def _ellipse_radius2(coords: np.ndarray, centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    """Squared normalised radius of every pixel for an axis-aligned ellipse (1 on its outline)."""
    dx2 = ((coords - centre[0]) / axes[0]) ** 2
    dy2 = ((coords - centre[1]) / axes[1]) ** 2
    return dy2[:, None] + dx2[None, :]


def _render(volume: Volume, z: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``z`` as an (H, W, 3) uint8 image and an (H, W) bool tumour mask.

    Works channel-first, (3, H, W), where per-channel constants broadcast cheaply.
    """
    image = _background(rng, size)
    coords = np.arange(size, dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    scale = volume.head_scale(z)
    if scale > 0:
        head_axes = (scale * volume.axes[0], scale * volume.axes[1])
        radius = np.sqrt(_ellipse_radius2(coords, volume.centre, head_axes))
        tissue = TISSUE + sum(g * _texture(w, z, coords) for g, w in zip(TEXTURE_GAINS, volume.waves))
        tissue += SCALP * ((radius > 0.88) & (radius < 1))
        ventricle_size = max(0.0, (scale - 0.7) / 0.3)  # only in the widest slices
        ventricle_axes = (0.12 * volume.axes[0], 0.3 * volume.axes[1])
        tissue += VENTRICLE * (_ellipse_radius2(coords, volume.centre, ventricle_axes) < ventricle_size**2)
        mask = _tumour_mask(volume, z, coords) & (radius < 0.85)
        tissue += TUMOUR * mask
        tissue += TISSUE_NOISE * rng.standard_normal(tissue.shape, dtype=np.float32)
        image += np.clip((1 - radius) / 0.03, 0, 1) * tissue  # a soft head outline
    image = np.round(np.clip(image, 0, 255)).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(image, 0, -1)), mask


def generate_lgg(dest: Path, patients: int, slices: int, size: int = 256, seed: int = 0) -> None:
    """Write ``patients`` synthetic volumes of ``slices`` slices (``size`` px) under ``dest``.

    ``dest`` becomes a kaggle_3m root: ``dest/<patient>/<patient>_<n>.tif`` and ``_<n>_mask.tif``,
    with n from 1. The same arguments always give byte-identical files.
    """
    if slices < 4:
        raise ValueError(f"need at least 4 slices per patient (two dark ends, two head slices), got {slices}")
    dest = Path(dest)
    for index in range(patients):
        volume = _plan(index, slices, size, seed)
        folder = dest / volume.name
        folder.mkdir(parents=True, exist_ok=True)
        noise = np.random.default_rng([seed, index, 1])  # apart from the plan's, so either can change alone
        for z in range(slices):
            image, mask = _render(volume, z, noise, size)
            stem = folder / f"{volume.name}_{z + 1}"
            tifffile.imwrite(f"{stem}.tif", image, photometric="rgb")
            tifffile.imwrite(f"{stem}_mask.tif", mask.astype(np.uint8) * 255, photometric="minisblack")
