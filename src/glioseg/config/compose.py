"""Composing params: profiles and overrides laid over the schema's defaults, written back as params.yaml."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import BaseModel

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


def _section(model: type[BaseModel], key: Any) -> type[BaseModel] | None:
    """The schema class of ``model.key`` when it is a section (merged key by key), else None."""
    annotation = model.model_fields[key].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def _merge(tree: Mapping, overlay: Mapping, source: str, model: type[BaseModel] = Params,
           prefix: tuple = ()) -> dict[str, Any]:
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


def _assign(tree: Mapping, path: tuple, value: Any, source: str, model: type[BaseModel] | None = Params,
            prefix: tuple = ()) -> dict[str, Any]:
    """``tree`` with the entry at ``path`` set to ``value`` (merged into it if both are sections)."""
    key, rest = path[0], path[1:]
    if not rest:
        return _merge(tree, {key: value}, source, model, prefix) if model is not None else {**tree, key: value}
    if model is not None and key not in model.model_fields:
        raise ConfigError(f"{source}: unknown key '{_dotted((*prefix, key))}'")
    inner = tree.get(key)
    section = _section(model, key) if model is not None else None
    return {**tree, key: _assign(inner if isinstance(inner, Mapping) else {}, rest, value, source, section,
                                 (*prefix, key))}


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


class _ParamsDumper(yaml.SafeDumper):
    """Block mappings and one-line lists, as params.yaml is laid out."""


def params_yaml(tree: Mapping[str, Any]) -> str:
    """A params tree as YAML text, in the tree's key order."""
    return yaml.dump(dict(tree), Dumper=_ParamsDumper, sort_keys=False, default_flow_style=False)


_ParamsDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)
