"""Composing params: profiles and overrides laid over the schema's defaults, written back as params.yaml."""

from __future__ import annotations

import copy
import inspect
import os
import re
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from glioseg.config.schema import Params, _validate
from glioseg.errors import ConfigError
from glioseg.io import read_yaml

# --------------------------------------------------------------------------- composing params
#
# A full params file is composed, never copied: the schema's defaults (which params.yaml equals),
# then overlays (profiles: only their differences from the defaults) in order, then dotted
# ``key=value`` overrides. Sections (the schema's nested models: data, train, ...) merge key by key;
# every other value, lists and free-form mappings alike (sweeps, data.brats.label_map, regions,
# suffixes), is replaced whole, so a profile's ``sweeps`` are its sweeps, however few. An override
# changes the one entry its dotted key names, even inside such a mapping.

Overlay = str | os.PathLike | Mapping[str, Any]


# YAML 1.1 (PyYAML) reads 5e-4 or 1e3 as strings; profiles and overrides mean numbers.
_BARE_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what YAML writes and reads back."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _numbers(value: Any) -> Any:
    """``value`` with YAML 1.1's exponent-without-dot strings read as floats, recursively."""
    if isinstance(value, Mapping):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    if isinstance(value, str) and _BARE_EXPONENT.fullmatch(value):
        return float(value)
    return value


def schema_defaults() -> dict[str, Any]:
    """The schema's defaults as a params tree: what params.yaml holds, key for key (a test checks it).

    Built without validation, so ``model.in_channels``/``classes`` stay null (the dataset fills
    them), and each sweep lists only what it sets, as params.yaml writes them.
    """
    tree = _plain(Params.model_construct().model_dump(exclude={"sweeps"}))
    tree["sweeps"] = {name: run.model_dump(exclude_none=True) for name, run in Params().sweeps.items()}
    return tree


def section_model(field: FieldInfo) -> type[BaseModel] | None:
    """The schema class of a section field (merged key by key, written as a block), else None."""
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _section(model: type[BaseModel], key: Any) -> type[BaseModel] | None:
    return section_model(model.model_fields[key])


def _dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def _merge(
    tree: Mapping, overlay: Mapping, source: str, model: type[BaseModel] = Params, prefix: tuple = ()
) -> dict[str, Any]:
    """``tree`` with ``overlay`` applied: sections key by key, any other value replaced whole."""
    merged = dict(tree)
    for key, value in overlay.items():
        path = (*prefix, key)
        if key not in model.model_fields:
            raise ConfigError(f"{source}: unknown key '{_dotted(path)}'")
        section = _section(model, key)
        if section is not None and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value, source, section, path)
        else:
            merged[key] = value
    return merged


def _assign(
    tree: Mapping, path: tuple, value: Any, source: str, model: type[BaseModel] | None = Params, prefix: tuple = ()
) -> dict[str, Any]:
    """``tree`` with the entry at ``path`` set to ``value`` (merged into it if both are sections)."""
    key, rest = path[0], path[1:]
    if not rest:
        return _merge(tree, {key: value}, source, model, prefix) if model is not None else {**tree, key: value}
    if model is not None and key not in model.model_fields:
        raise ConfigError(f"{source}: unknown key '{_dotted((*prefix, key))}'")
    inner = tree.get(key)
    section = _section(model, key) if model is not None else None
    return {
        **tree,
        key: _assign(inner if isinstance(inner, Mapping) else {}, rest, value, source, section, (*prefix, key)),
    }


def _read_overlay(overlay: Overlay, position: int) -> tuple[str, Mapping[str, Any]]:
    """An overlay's name (for errors) and its mapping; a file is read as YAML, empty meaning no change."""
    if isinstance(overlay, Mapping):
        return f"overlay {position}", copy.deepcopy(overlay)  # the composed tree shares nothing with the caller's
    raw = read_yaml(overlay, "params profile")
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"{overlay}: expected a mapping of params at the top level")
    return str(overlay), _numbers(raw or {})


def _parse_override(item: str) -> tuple[str, tuple, Any]:
    """``key=value`` as its name for errors, the key's path and the value read as YAML (as dvc exp run -S)."""
    source = f"--set {item}"
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: expected key=value, e.g. --set lr=0.0005")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: value is not valid YAML ({str(exc).splitlines()[0]})") from None
    path = tuple(int(part) if part.isdigit() else part for part in key.strip().split("."))
    return source, path, _numbers(value)


def _touches(overlay: Any, loc: tuple) -> bool:
    """Whether ``overlay`` sets the value at ``loc``, a value inside it, or one that contains it."""
    for part in loc:
        if not isinstance(overlay, Mapping):
            return True
        if part not in overlay:
            return False
        overlay = overlay[part]
    return True


def compose_params(*overlays: Overlay, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The full params tree: the schema defaults, each overlay in order, then ``key=value`` overrides.

    Overlays are profile files (paths) or mappings holding only differences from the defaults.
    The result is validated; an error names the profile file or ``--set`` item at fault and the key.
    """
    tree = schema_defaults()
    applied: list[tuple[str, Any]] = []
    for position, overlay in enumerate(overlays, 1):
        source, mapping = _read_overlay(overlay, position)
        tree = _merge(tree, mapping, source)
        applied.append((source, mapping))
    for item in overrides:
        source, path, value = _parse_override(item)
        tree = _assign(tree, path, value, source)
        applied.append((source, _assign({}, path, value, source, None)))

    def blame(loc: tuple) -> str:
        touching = [source for source, mapping in applied if _touches(mapping, loc)]
        return ", ".join(dict.fromkeys(touching or [source for source, _ in applied])) or "schema defaults"

    _validate(tree, blame)
    return tree


# --------------------------------------------------------------------------- writing params.yaml
#
# The comments of a written params file are the schema's descriptions (src/glioseg/config/schema.py):
# the file's head is Params' docstring, a top-level section's comment block its class docstring, and
# every other key's trailing comment its field's description. `python -m glioseg.config.reference`
# writes params.yaml so, and docs/reference/params.md from the same descriptions.

COMMENT_COLUMN = 24  # where trailing comments start, or further right to align a block's lines up to ALIGNED
ALIGNED = 32
TRAILING = 48  # a key line longer than this has its comment above it instead
WIDTH = 110  # comment lines wrap here


def inline_yaml(value: Any) -> str:
    """``value`` as one line of flow-style YAML: ``0.001``, ``[t1ce, flair]``, ``{loss: wbce}``."""
    lines = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=2**31).splitlines()
    return lines[0] if lines[1:] in ([], ["..."]) else "\n".join(lines)


def _is_block(value: Any, section: type[BaseModel] | None) -> bool:
    """Whether ``value`` is written as a block mapping: a section, or a mapping of collections (sweeps,
    regions); mappings of scalars (suffixes, label_map, a sweep) and lists are written on one line."""
    if not isinstance(value, Mapping) or not value:
        return False
    return section is not None or any(isinstance(item, Mapping | list) for item in value.values())


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(" ".join(text.split()), max(width, 40), break_long_words=False, break_on_hyphens=False)


def _comment_block(text: str, indent: str) -> list[str]:
    """``text`` as comment lines above a key, wrapped, its paragraphs kept."""
    paragraphs = [_wrap(paragraph, WIDTH - len(indent) - 2) for paragraph in text.split("\n\n")]
    return [
        f"{indent}#{' ' + line if line else ''}"
        for paragraph in paragraphs
        for line in ([""] if paragraph is not paragraphs[0] else []) + paragraph
    ]


def _mapping_lines(tree: Mapping[str, Any], model: type[BaseModel] | None, depth: int) -> list[str]:
    """The lines of one block mapping, each key commented with its schema description (none for the
    entries of a free-form mapping such as sweeps or regions)."""
    indent = "  " * depth
    entries = []  # (the key's line, its description, the lines of its block)
    for key, value in tree.items():
        field = model.model_fields.get(key) if model is not None else None
        section = _section(model, key) if model is not None and field is not None else None
        if _is_block(value, section):
            entries.append(
                (f"{indent}{inline_yaml(key)}:", field and field.description, _mapping_lines(value, section, depth + 1))
            )
        else:
            entries.append((f"{indent}{inline_yaml(key)}: {inline_yaml(value)}", field and field.description, []))
    column = max(
        [COMMENT_COLUMN, *(len(line) + 2 for line, comment, _ in entries if comment and len(line) + 2 <= ALIGNED)]
    )
    lines: list[str] = []
    for line, comment, block in entries:
        if comment and ((block and depth == 0) or len(line) + 2 > TRAILING):
            # a top-level group or a long line: the description above it (a group after a blank line)
            lines += ([""] if block else []) + _comment_block(comment, indent) + [line]
        elif comment:
            start = max(column, len(line) + 2)
            wrapped = _wrap(comment, WIDTH - start - 2)
            lines += [f"{line.ljust(start)}# {wrapped[0]}", *(f"{' ' * start}# {more}" for more in wrapped[1:])]
        else:
            lines.append(line)
        lines += block
    return lines


def params_command(profiles: Iterable[str | os.PathLike] = (), overrides: Iterable[str] = ()) -> str:
    """The ``glioseg params`` command line that composes these profiles and overrides."""
    return " ".join(["glioseg params", *map(str, profiles), *(f"--set {item}" for item in overrides)])


def params_yaml(tree: Mapping[str, Any], command: str | None = None) -> str:
    """A params tree as YAML text, in the tree's key order, commented with the schema's descriptions.

    ``command``, when given, heads the text as what wrote it (``glioseg params PROFILE --set ...``).
    """
    head = (
        [
            f"# Written by `{command}`.",
            *_comment_block(
                "The comments are the schema's descriptions (src/glioseg/config/schema.py), as is "
                "docs/reference/params.md.",
                "",
            ),
            "#",
        ]
        if command
        else []
    )
    head += _comment_block(inspect.cleandoc(Params.__doc__ or ""), "")
    body = _mapping_lines(tree, Params, 0)
    return "\n".join([*head, *([""] if body and body[0] else []), *body]) + "\n"
