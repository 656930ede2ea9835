"""The base of every params model: unknown keys, infinities, NaN and true/false given for a number are errors.

YAML reads ``epochs: true`` as a boolean, which pydantic would take as 1; ``lr: .inf`` as a float
that would train to a NaN loss. The params sections (:mod:`glioseg.config`) and each data format's
own settings (:mod:`glioseg.formats`) build on it.
"""

from __future__ import annotations

from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _numeric(annotation: Any) -> bool:
    """Whether a field holds a number (``int``, ``float``, or one of them or None)."""
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return (
        bool(options)
        and all(option in (int, float, type(None)) for option in options)
        and any(option in (int, float) for option in options)
    )


class Strict(BaseModel):
    """A frozen pydantic model that refuses unknown keys, infinities, NaN and booleans for numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None  # always set for a field validator
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not true/false")
        return value
