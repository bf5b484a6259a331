"""The config schema (workflow/schemas/config.schema.yaml) and what reads it: validation that
fills in each key's default, the --config string coercion, and the refusal of non-finite numbers.
Both the config loader (teddy.config) and the protocol files (teddy.protocols) are validated here,
so this sits below both."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

from teddy.errors import TeddyError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def key_path(path) -> str:
    return ".".join(str(k) for k in path) or "(top level)"


def check_finite(value, path=()) -> None:
    """Refuse NaN and infinities anywhere (YAML's .nan/.inf), naming the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise TeddyError(f"config key {key_path(path)} is {value}: numbers must be finite")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, (*path, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, (*path, i))


def validator_filling_defaults(schema: dict):
    """A Draft 2020-12 validator that writes each property's `default` where the key is absent
    (jsonschema FAQ); nested sections are filled once they exist."""
    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(name, _copy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)


def _copy(value):
    return copy.deepcopy(value)


_SCALARS = {"null": (type(None),), "boolean": (bool,), "integer": (int,), "number": (int, float)}


def _parse_scalar(text: str, types) -> object:
    """`text` as the first of `types` (JSON Schema names) it spells, else unchanged."""
    word = text.strip()
    for kind in ("null", "boolean", "integer", "number"):
        if kind not in types:
            continue
        if kind == "null" and word in ("null", "Null", "NULL", "~"):
            return None
        if kind == "boolean" and word.lower() in ("true", "false"):
            return word.lower() == "true"
        if kind == "integer" and re.fullmatch(r"[-+]?\d+", word):
            return int(word)
        if kind == "number":
            try:
                return float(word)
            except ValueError:
                pass
    return text


def coerce_strings(value, schema: dict, root: dict | None = None):
    """Snakemake's --config reads the values inside a dict as strings (`--config
    'dataset={root: d, download: true}'` gives download 'true'): each string where the schema asks
    for a boolean, integer, number or null (and not a string) becomes one if it spells one.
    Returns the value; dicts and lists are changed in place."""
    root = root or schema
    while isinstance(schema, dict) and "$ref" in schema:  # local references only: #/definitions/<name>
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {})
        schema = target
    if not isinstance(schema, dict):
        return value
    if isinstance(value, str):
        types = schema.get("type")
        types = [types] if isinstance(types, str) else list(types or [])
        if not types and "enum" in schema:
            types = [k for k, t in _SCALARS.items() if any(type(v) in t for v in schema["enum"])]
        if "string" in types or not any(t in _SCALARS for t in types):
            return value
        return _parse_scalar(value, types)
    if isinstance(value, dict):
        properties, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[key] = coerce_strings(item, sub, root)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [coerce_strings(item, schema["items"], root) for item in value]
    return value


def read_schema(schema_path=None) -> dict:
    """The config schema (workflow/schemas/config.schema.yaml unless another file is named)."""
    return yaml.safe_load(Path(schema_path or SCHEMA).read_text())


def validate_schema(cfg: dict, schema_path=None) -> dict:
    """Validate in place against the schema, filling in its defaults; one-line TeddyError."""
    return validate(cfg, read_schema(schema_path))


def validate(cfg: dict, schema: dict) -> dict:
    errors = sorted(validator_filling_defaults(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise TeddyError(f"config key {key_path(e.absolute_path)}: {e.message}")
    return cfg
