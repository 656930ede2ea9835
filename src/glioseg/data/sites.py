"""Acquiring sites: the kaggle_3m patient id ``TCGA_<site>_<id>_<date>`` names the institution.

Leave-one-site-out folds number the sites in sorted order; the split deals patients by them and
evaluation records which site a fold held out.
"""

from __future__ import annotations

import re

from glioseg.errors import DataError

SITE_ID = re.compile(r"TCGA_([A-Za-z0-9]+)_")


def patient_site(patient: str) -> str:
    """The acquiring site of a kaggle_3m patient id (``TCGA_<site>_<id>_<date>``)."""
    match = SITE_ID.match(patient)
    if match is None:
        raise DataError(
            f"split.by: site: patient '{patient}' is not a TCGA_<site>_<id>_<date> id, so its "
            "acquiring site is unknown (use split.by: patient)"
        )
    return match.group(1)


def sites(patients) -> list[str]:
    """The distinct sites of ``patients``, in fold order (sorted)."""
    return sorted({patient_site(str(patient)) for patient in patients})


def held_out_site(patients, fold: int) -> str:
    """The site that fold ``fold`` of a leave-one-site-out split tests on."""
    known = sites(patients)
    if fold >= len(known):
        raise DataError(
            f"split.fold is {fold}, but the data has {len(known)} sites ({', '.join(known)}): "
            f"split.by: site takes split.fold 0..{len(known) - 1}"
        )
    return known[fold]
