"""The seam every data format implements, one class per format (nnU-Net's reader/writers, MONAI's readers).

A format stages and validates a source into ``data/raw`` with its manifest, reads manifest rows
into slices, finds and reads new scans for predict and the viewer, writes a prediction back in its
own files, and says which channels, classes and evaluation regions it implies. Everything else in
glioseg asks the format (:func:`glioseg.formats.get_format`) and never branches on the dataset.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

import numpy as np
import pandas as pd
from pydantic import BaseModel

from glioseg.errors import DataError
from glioseg.io import atomic_path, write_csv

MANIFEST_COLUMNS = ["patient", "slice", "image", "mask", "image_sha256", "mask_sha256"]
TUMOUR_REGIONS: dict[str, tuple[int, ...]] = {"tumour": (1,)}  # the one region of a binary format
SliceRow = Any  # a row of ``DataFrame.itertuples``: patient, slice, image, mask, ...

S = TypeVar("S", bound=BaseModel | None)


class SyntheticSpec(Protocol):
    """How much synthetic data to generate (``data.synthetic``)."""

    @property
    def patients(self) -> int: ...
    @property
    def slices(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def seed(self) -> int: ...


@dataclass(frozen=True)
class DataCard:
    """What a checkpoint carries to read and score new cases like its training data.

    ``settings`` are the format's own settings (``data.<dataset>``) as JSON, None for a format
    without any; stored under the dataset's name, so model files written before the card was typed
    still load.
    """

    dataset: str
    regions: dict[str, tuple[int, ...]]
    context: int = 0
    window: tuple[float, float] | None = None
    settings: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        card: dict[str, Any] = {
            "dataset": self.dataset,
            "regions": {name: list(members) for name, members in self.regions.items()},
            "context": self.context,
        }
        if self.window is not None:
            card["window"] = list(self.window)
        if self.settings is not None:
            card[self.dataset] = self.settings
        return card

    @classmethod
    def from_json(cls, card: Mapping[str, Any]) -> DataCard:
        window = card.get("window")
        return cls(
            str(card["dataset"]),
            {name: tuple(members) for name, members in card["regions"].items()},
            int(card.get("context", 0)),
            None if window is None else (float(window[0]), float(window[1])),
            card.get(str(card["dataset"])),
        )


@dataclass(frozen=True)
class ScanRef:
    """A case of new input found under a source: its name, its folder and, for a format of one file per
    slice, its slice files in order."""

    name: str
    folder: Path
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Scan:
    """A case of new input, read: per slice its name, its id in predict's tables, the file it came from,
    its uint8 image (H,W,C) and its class labels (H,W) where the case has a truth, else None."""

    ref: ScanRef
    names: tuple[str, ...]
    ids: tuple[int | str, ...]
    sources: tuple[Path, ...]
    images: tuple[np.ndarray, ...]
    truths: tuple[np.ndarray | None, ...]
    voxel_ml: float | None = None  # a voxel's volume, where the format knows it


class DataFormat(ABC, Generic[S]):
    """One data format. ``S`` is the type of its settings (``data.<name>``), or None without any."""

    name: ClassVar[str]  # the value of the ``dataset`` param
    title: ClassVar[str]  # how messages name the format
    scans: ClassVar[str]  # what its new inputs are, for messages
    raw_name: ClassVar[str]  # its folder under data/raw
    upload_help: ClassVar[str] = ""  # what the viewer asks for an upload of one case; "" takes no uploads
    upload_types: ClassVar[tuple[str, ...]] = ()  # the uploads' file extensions
    case_noun: ClassVar[str] = "cases"  # what the download stage's summary counts
    slice_noun: ClassVar[str] = "slices"
    settings_model: ClassVar[type[BaseModel] | None] = None  # the model of its settings, ``data.<name>``
    has_sites: ClassVar[bool] = False  # whether its patient ids name the acquiring site (split.by: site)
    overlay_every_slice: ClassVar[bool] = True  # predict's overlays: every slice, or those with tumour

    def card(self, settings: S, context: int, window: tuple[float, float] | None) -> DataCard:
        """The data card of a model trained on this format with these settings."""
        stored = None if settings is None else settings.model_dump(mode="json")
        return DataCard(self.name, self.regions(settings), context, window, stored)

    def card_settings(self, card: DataCard) -> S:
        """The format's settings a model's data card holds."""
        if self.settings_model is None:
            return cast(S, None)
        return cast(S, self.settings_model.model_validate(card.settings or {}))

    # What the format implies for the model and the scores.

    @abstractmethod
    def slice_channels(self, settings: S) -> int:
        """Channels of one slice."""

    def output_channels(self, settings: S) -> int:
        """The model's outputs: 1 (a sigmoid tumour map) or one softmax channel per class."""
        return 1

    def regions(self, settings: S) -> dict[str, tuple[int, ...]]:
        """The evaluation regions (sets of class labels)."""
        return dict(TUMOUR_REGIONS)

    def class_names(self, settings: S) -> tuple[str, ...]:
        """A name per class label for a multi-class format (background first); () for a binary one."""
        return ()

    def param_conflict(self, window: bool, site_split: bool) -> str | None:
        """Why params that set ``data.window`` or ``split.by: site`` do not fit this format, or None."""
        if site_split and not self.has_sites:
            return (
                f"split.by: site needs patient ids that name the acquiring site (TCGA_<site>_<id>_<date>); "
                f"{self.title} case names carry no acquiring site, so dataset {self.name} splits by patient"
            )
        return None

    # The download stage.

    def fetch(
        self,
        source: str,
        dest: Path,
        manifest_path: Path,
        *,
        patients: int | None,
        synthetic: SyntheticSpec,
        settings: S,
    ) -> pd.DataFrame:
        """Put the cases of ``source`` at ``dest`` and write the manifest (also returned).

        Built in a temporary sibling of ``dest`` and renamed onto it only once every case has been
        validated, so a failure leaves neither a half-written ``dest`` nor a manifest.
        """
        with atomic_path(Path(dest)) as staging:
            if source == "synthetic":
                count = synthetic.patients if patients is None else min(patients, synthetic.patients)
                self.generate(staging, count, synthetic, settings)
                origin = "synthetic"
            else:
                origin = self.stage(source, staging, patients, settings)
            manifest = self.describe(staging, Path(dest), origin, settings)
        write_csv(manifest_path, manifest)
        return manifest

    def generate(self, staging: Path, patients: int, synthetic: SyntheticSpec, settings: S) -> None:
        """Write ``patients`` synthetic cases into ``staging``."""
        raise DataError(f"data.source: dataset {self.name} has no synthetic data; give a folder or zip of cases")

    @abstractmethod
    def stage(self, source: str, staging: Path, patients: int | None, settings: S) -> str:
        """Copy or extract the first ``patients`` cases of ``source`` into ``staging``; return how to name
        where a staged file came from in messages."""

    @abstractmethod
    def describe(self, staging: Path, dest: Path, origin: str, settings: S) -> pd.DataFrame:
        """Validate every staged case and return its manifest rows (:data:`MANIFEST_COLUMNS`), with paths as
        they will be under ``dest``; errors name files by ``origin``, not the staging copy."""

    # Slices of the manifest.

    @abstractmethod
    def read_rows(self, rows: pd.DataFrame, settings: S) -> Iterator[tuple[SliceRow, np.ndarray, np.ndarray]]:
        """``(row, uint8 image (H,W,C), uint8 class labels (H,W))`` for every manifest row."""

    # New scans: predict and the viewer.

    @abstractmethod
    def holds_scans(self, source: Path) -> bool:
        """Whether ``source`` (a file or folder) holds input of this format, at its top or one folder down."""

    @abstractmethod
    def find_scans(self, source: Path) -> list[ScanRef]:
        """The cases under ``source``: one file, one case folder or a folder of them; none is an error."""

    @abstractmethod
    def is_case(self, folder: Path) -> bool:
        """Whether ``folder`` is one case of this format (the viewer's list)."""

    @abstractmethod
    def read_scan(self, ref: ScanRef, settings: S) -> Scan:
        """A case's slices as training read them, with the truth where the case has one."""

    @abstractmethod
    def case_files(self, ref: ScanRef, settings: S) -> list[Path]:
        """The files of a case, its truth included: predict never writes over one of them."""

    @abstractmethod
    def write_prediction(self, scan: Scan, labels: list[np.ndarray], folder: Path, settings: S) -> list[Path]:
        """Write a case's predicted class labels (per slice, at the input's size) into ``folder`` in the
        format's own files; returns them."""

    def upload_case(self, names: list[str]) -> str | None:
        """The case name of uploaded files of this format, None when none of them is; an error when they
        cannot be one case."""
        return None

    def accepts_upload(self, name: str) -> bool:
        """Whether an uploaded file of this name belongs in a case of this format."""
        return False


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def named_from(origin: str, staging: Path, message: str) -> str:
    """A message about a staged file, naming where the file came from instead."""
    return message.replace(str(staging), origin)
