"""Loading a settings file: parse, expand `${VAR}`, validate with paths, decode into `Site`.

Every problem is reported with its path (`systems[2].modules[0]: ...`); a file that
has any problem raises `SettingsError` carrying all of them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.errors import SettingsError
from runtime.model import Site

if TYPE_CHECKING:
    import jsonschema

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
Path_ = tuple[str | int, ...]
_SITE_DECODER = msgspec.json.Decoder(Site)


def format_path(path: Path_) -> str:
    """`('systems', 2, 'modules', 0)` as `systems[2].modules[0]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


@functools.cache
def site_schema() -> dict[str, Any]:
    """The JSON Schema of a settings file, generated from the `Site` Struct."""
    schema = msgspec.json.schema(Site)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "PlaceOS runtime settings"
    return schema


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    # Imported here: jsonschema only explains settings that fail to decode (and it is 4 MB of memory).
    import jsonschema  # noqa: PLC0415

    return jsonschema.Draft202012Validator(site_schema())


def parse_text(text: str | bytes, suffix: str) -> Any:
    """Parse YAML or JSON (chosen by the file suffix)."""
    if suffix.lower() == ".json":
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            raise SettingsError([f"(file): invalid JSON: {exc}"]) from exc
    import yaml  # noqa: PLC0415 - a site with JSON settings never needs the YAML parser

    from runtime import yamlfast  # noqa: PLC0415

    try:
        return yamlfast.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError([f"(file): invalid YAML: {exc}"]) from exc


def expand_env(doc: Any, env: Mapping[str, str]) -> tuple[Any, set[Path_], list[str]]:
    """Expand `${VAR}` in every string; returns the document, the whole-value paths and problems."""
    whole: set[Path_] = set()
    problems: list[str] = []

    def walk(node: Any, path: Path_) -> Any:
        if isinstance(node, str):
            if "${" not in node:
                return node
            missing = [m for m in _VAR.findall(node) if m not in env]
            for name in missing:
                problems.append(f"{format_path(path)}: environment variable {name} is not set")
            if missing:
                return node
            if _VAR.fullmatch(node):
                whole.add(path)
            return _VAR.sub(lambda m: env[m.group(1)], node)
        if isinstance(node, dict):
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        return node

    return walk(doc, ()), whole, problems


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number"}


def _coerce(text: str, wanted: set[str]) -> Any:
    lowered = text.strip().lower()
    if "boolean" in wanted and lowered in ("true", "false"):
        return lowered == "true"
    if "integer" in wanted and re.fullmatch(r"[+-]?\d+", text.strip()):
        return int(text)
    if "number" in wanted:
        try:
            return float(text)
        except ValueError:
            return None
    return None


def _type_errors(error: jsonschema.ValidationError) -> Iterator[jsonschema.ValidationError]:
    if error.validator in ("type", "enum"):
        yield error
    for sub in error.context or ():
        yield from _type_errors(sub)


def _set_at(doc: Any, path: Path_, value: Any) -> None:
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _schema_errors(doc: Any, whole: set[Path_]) -> list[str]:
    validator = _validator()
    for _ in range(20):  # each round converts at least one `${VAR}` or stops
        errors = list(validator.iter_errors(doc))
        changed = False
        for error in errors:
            for type_error in _type_errors(error):
                path = tuple(type_error.absolute_path)
                instance = type_error.instance
                if path in whole and isinstance(instance, str):
                    wanted: Any = type_error.validator_value
                    if type_error.validator == "enum":
                        wanted_set = {_JSON_TYPES.get(type(v), "string") for v in wanted}
                    else:
                        wanted_set = {wanted} if isinstance(wanted, str) else set(wanted)
                    converted = _coerce(instance, wanted_set)
                    if converted is not None:
                        _set_at(doc, path, converted)
                        whole.discard(path)
                        changed = True
        if not changed:
            return [_describe(e) for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))]
    return ["(root): settings could not be validated"]


def _describe(error: jsonschema.ValidationError) -> str:
    path = format_path(tuple(error.absolute_path))
    if error.validator == "additionalProperties":
        return f"{path}: {error.message.replace('Additional properties', 'unknown keys')}"
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{path}: {error.instance!r} is not allowed here (must match {error.validator_value})"
    if error.context:
        from jsonschema.exceptions import best_match  # noqa: PLC0415

        best = best_match(error.context)
        return f"{format_path(tuple(best.absolute_path)) if best.absolute_path else path}: {best.message}"
    return f"{path}: {error.message}"


def load_document(doc: Any, env: Mapping[str, str] | None = None, *, expand: bool = True) -> Site:
    """Validate and decode a parsed settings document (`expand=False`: it has no `${VAR}`)."""
    if not isinstance(doc, dict):
        raise SettingsError(["(root): a settings file must be a mapping"])
    if expand:
        expanded, whole, problems = expand_env(doc, os.environ if env is None else env)
    else:
        expanded, whole, problems = doc, set(), []
    if problems:
        raise SettingsError(problems)
    try:
        # Fast path: the schema is generated from these Structs, so a strict decode that
        # succeeds means the document is valid. jsonschema runs only to explain failures
        # (every error with its path) and to convert whole-value `${VAR}`s.
        return msgspec.convert(expanded, Site)
    except msgspec.ValidationError:
        pass
    problems = _schema_errors(expanded, whole)
    if problems:
        raise SettingsError(problems)
    try:
        return msgspec.convert(expanded, Site)
    except msgspec.ValidationError as exc:
        raise SettingsError([f"(root): {exc}"]) from exc


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Site:
    """Read, expand, validate and decode a settings file (YAML or JSON by extension)."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise SettingsError([f"(file): cannot read {file}: {exc.strerror}"]) from exc
    expand = b"${" in raw
    if not expand and file.suffix.lower() == ".json":
        # Fast path: no variables to expand, so decode straight into the Structs (no document
        # of dicts in between). Any failure takes the full path below, which explains it.
        with contextlib.suppress(msgspec.DecodeError):
            return _SITE_DECODER.decode(raw)
    return load_document(parse_text(raw, file.suffix), env, expand=expand)


def schema_text() -> str:
    """The schema as the text stored in settings/schema.json."""
    return json.dumps(site_schema(), indent=2, sort_keys=True) + "\n"
