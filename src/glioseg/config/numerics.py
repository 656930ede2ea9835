"""What a trained model's numbers depend on beyond its params and data.

The same seeded training gives different numbers in bf16 and in fp32, and under AVX2, AVX512 and
AVX512-with-AMX CPU kernels. Model files record both in their meta, metrics files in their
``protocol``, MLflow runs and registered versions as tags, and check-metrics and promote refuse
to compare across either: such a gate would pass or fail on the machine rather than on the change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TRAINING_NUMERICS = ("training_precision", "training_kernels")
UNKNOWN = "unknown"


def recorded_numerics(meta: Mapping[str, Any]) -> dict[str, str]:
    """Each of :data:`TRAINING_NUMERICS` from a model's meta; ``unknown`` where the model file predates it."""
    return {key: str(meta.get(key, UNKNOWN)) for key in TRAINING_NUMERICS}
