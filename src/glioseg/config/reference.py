"""The params reference, docs/reference/params.md, and params.yaml, both written from the schema.

Each param is described once, by its ``Field(description=...)`` in :mod:`glioseg.config.schema` (a
section by its class docstring). ``python -m glioseg.config.reference`` writes both files from those
descriptions: the reference as a table per params group (key, type, default, description), and
params.yaml as ``glioseg params`` writes it (the schema's defaults, commented with the descriptions).
tests/test_reference.py fails when either file is stale.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from glioseg.config.compose import (
    compose_params,
    inline_yaml,
    params_command,
    params_yaml,
    schema_defaults,
    section_model,
)
from glioseg.config.schema import Params

PARAMS = Path("params.yaml")
REFERENCE = Path("docs/reference/params.md")
GENERATOR = "python -m glioseg.config.reference"


def entry_model(field: FieldInfo) -> type[BaseModel] | None:
    """The schema class of each entry of a free-form mapping of models (``sweeps``), else None."""
    if get_origin(field.annotation) is dict:
        value = get_args(field.annotation)[1]
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value
    return None


def fields(model: type[BaseModel] = Params, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every field of the schema as (dotted key, field), depth first; ``sweeps.NAME.loss`` for entries."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, field
        inner = section_model(field)
        if inner is not None:
            yield from fields(inner, f"{key}.")
        entry = entry_model(field)
        if entry is not None:
            yield from fields(entry, f"{key}.NAME.")


def choices(annotation: Any) -> tuple[Any, ...]:
    """The values a Literal type (or a Literal or None) allows; () for any other type."""
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return tuple(value for option in options if get_origin(option) is Literal for value in get_args(option))


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        return " or ".join(_type_name(arg) for arg in args if arg is not NoneType) + (
            " or null" if NoneType in args else ""
        )
    if origin is Literal:
        return "one of " + ", ".join(f"`{inline_yaml(value)}`" for value in args)
    if origin is tuple:
        return (
            f"list of {_type_name(args[0])}"
            if args[1:] == (Ellipsis,)
            else ("[" + ", ".join(_type_name(arg) for arg in args) + "]")
        )
    if origin is dict:
        return f"mapping {_type_name(args[0])} -> {_type_name(args[1])}"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    """The field's numeric bounds and length limits: ``>= 1``, ``in [0, 1]``, ``(0, 1)``, ``1 or more``."""
    low = high = None
    notes = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge | annotated_types.Gt):
            low = ("[", item.ge) if isinstance(item, annotated_types.Ge) else ("(", item.gt)
        elif isinstance(item, annotated_types.Le | annotated_types.Lt):
            high = ("]", item.le) if isinstance(item, annotated_types.Le) else (")", item.lt)
        elif isinstance(item, annotated_types.MinLen):
            notes.append(f"{item.min_length} or more")
    if low and high:
        notes.insert(0, f"in {low[0]}{low[1]}, {high[1]}{high[0]}")
    elif low:
        notes.insert(0, f"{'>=' if low[0] == '[' else '>'} {low[1]}")
    elif high:
        notes.insert(0, f"{'<=' if high[0] == ']' else '<'} {high[1]}")
    return ", ".join(notes)


def type_text(field: FieldInfo) -> str:
    """The field's type as the reference shows it: ``int >= 1``, ``float in [0, 1]``, ``one of `a`, `b```."""
    bounds = _bounds(field)
    return _type_name(field.annotation) + (f", {bounds}" if bounds else "")


def _markdown(text: str) -> str:
    """Text for a Markdown table cell: what Markdown would read as markup escaped outside `code`."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    return "".join(part if part.startswith("`") else re.sub(r"([|<*~])", r"\\\1", part) for part in parts)


def _table(model: type[BaseModel], prefix: str, defaults: Mapping[str, Any] | None) -> list[str]:
    """The table of a group's own keys (its sections get their own tables)."""
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if section_model(field) is not None or entry_model(field) is not None:
            continue
        default = f"`{inline_yaml(defaults[name] if defaults is not None else field.default)}`"
        rows.append(f"| `{prefix}{name}` | {type_text(field)} | {default} | {_markdown(field.description or '')} |")
    return rows


def _groups(model: type[BaseModel], prefix: str, defaults: Mapping[str, Any]) -> list[str]:
    """The sections below ``model``, depth first: a heading, the section's description and its table."""
    lines: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        inner, entry = section_model(field), entry_model(field)
        if inner is not None:
            lines += [
                "",
                f"## `{key}`",
                "",
                _paragraphs(field.description or ""),
                "",
                *_table(inner, f"{key}.", defaults[name]),
                *_groups(inner, f"{key}.", defaults[name]),
            ]
        elif entry is not None:
            default = ", ".join(
                f"`{inline_yaml(entry_name)}: {inline_yaml(value)}`" for entry_name, value in defaults[name].items()
            )
            lines += [
                "",
                f"## `{key}`",
                "",
                _paragraphs(field.description or ""),
                "",
                f"Default: {default}.",
                "",
                _paragraphs(inspect.cleandoc(entry.__doc__ or "")),
                "",
                *_table(entry, f"{key}.NAME.", None),
            ]
    return lines


def _paragraphs(text: str) -> str:
    return "\n\n".join(_markdown(paragraph) for paragraph in text.split("\n\n"))


def reference_markdown() -> str:
    """docs/reference/params.md: the schema's description, then a table per params group."""
    defaults = schema_defaults()
    lines = [
        "# Params reference",
        "",
        f"<!-- Written by `{GENERATOR}` from src/glioseg/config/schema.py, whose field descriptions and "
        "docstrings these are: edit them there and rerun it (tests/test_reference.py fails while this file "
        "or params.yaml is stale). -->",
        "",
        _paragraphs(inspect.cleandoc(Params.__doc__ or "")),
        "",
        "Every key of params.yaml, by group, with its type (and bounds), its default and what it means; "
        "params.yaml carries the same descriptions as comments. A profile (profiles/, ci/profile-*.yaml) "
        "holds only its differences from these defaults, and `glioseg params PROFILE... [--set KEY=VALUE]` "
        "composes the full file.",
        "",
        "## Top level",
        "",
        *_table(Params, "", defaults),
        *_groups(Params, "", defaults),
    ]
    return "\n".join(lines) + "\n"


def params_text() -> str:
    """params.yaml as ``glioseg params`` writes it: the schema's defaults with their descriptions."""
    return params_yaml(compose_params(), params_command())


def outputs() -> dict[Path, str]:
    """Each generated file (relative to the repository root) and the text it must hold."""
    return {PARAMS: params_text(), REFERENCE: reference_markdown()}


def main(root: Path = Path(".")) -> list[Path]:
    """Write both files under ``root``; returns those whose text changed."""
    from glioseg.io import write_text

    changed = []
    for path, text in outputs().items():
        target = root / path
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text(target, text)
            changed.append(path)
    return changed


if __name__ == "__main__":
    written = main()
    print("wrote " + ", ".join(map(str, written)) if written else "params.yaml and the reference are up to date")
