"""JSON Schema validation of the project's records, and the worker's fast path for raw events.

Every schema in ``schemas/json/<name>.v1.json`` is compiled once (Draft 2020-12, with format
checking). Valid records take the cheap ``is_valid`` path; the detailed error, which names the
field, the value and what was expected, is computed only when a record fails.

>>> validate("session_event", {"schema_version": 1, "event_id": "e1", "event_type": "page_view",
...                            "user_id": "u1", "session_id": "s1", "event_time": 1_700_000_000_000})
>>> is_valid("session_event", {"event_type": "page_view"})
False
>>> parse_event(b'{"event_type": "tap"}', max_bytes=1024)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
stream.schemas.EventRejected: field 'event_type': value 'tap' is not one of ['session_start', ...]
"""

from __future__ import annotations

import base64
import copy
import json
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any, Literal, get_args

import orjson
from jsonschema import Draft202012Validator, ValidationError

from stream.config import ROOT
from stream.errors import SchemaError

SCHEMA_DIR = ROOT / "schemas" / "json"
SCHEMAS: tuple[str, ...] = ("session_event", "prediction", "bandit_decision", "dead_letter")
SCHEMA_VERSION = 1

ErrorKind = Literal["malformed", "oversized", "unknown_type", "invalid"]
ERROR_KINDS: tuple[str, ...] = get_args(ErrorKind)

_MAX_VALUE_REPR = 80


class EventRejected(SchemaError):
    """A raw event the worker cannot accept; ``kind`` is the dead-letter ``error_kind``."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


# --- Loading -------------------------------------------------------------------------------


@cache
def _schema(name: str) -> dict[str, Any]:
    if name not in SCHEMAS:
        raise SchemaError(f"unknown schema {name!r}; valid names are {list(SCHEMAS)}")
    path = SCHEMA_DIR / f"{name}.v{SCHEMA_VERSION}.json"
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read schema {name!r} from {path}: {exc}") from exc
    Draft202012Validator.check_schema(schema)
    return schema


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``name`` as a dict (a copy: callers may change it)."""
    return copy.deepcopy(_schema(name))


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def _checker(name: str) -> Check:
    """The fastest accept/reject test for schema ``name``: compiled if possible, else jsonschema's."""
    try:
        return _compile(_schema(name))
    except _Unsupported:
        return _validator(name).is_valid


@cache
def _event_types() -> frozenset[str]:
    return frozenset(_schema("session_event")["properties"]["event_type"]["enum"])


# --- Validation ----------------------------------------------------------------------------


def is_valid(name: str, record: Mapping[str, Any]) -> bool:
    """Whether ``record`` matches schema ``name``."""
    return _checker(name)(record)


def validate(name: str, record: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaError` naming field, value and expectation if ``record`` is invalid."""
    if not _checker(name)(record):
        raise SchemaError(_describe(name, _validator(name).iter_errors(record)))


def _describe(name: str, errors: Iterable[ValidationError]) -> str:
    """One line for the most useful error; errors of ``if``/``then`` rules come after direct ones."""
    ranked = sorted(errors, key=lambda e: ("then" in e.schema_path, len(e.absolute_path)))
    if not ranked:  # pragma: no cover - only called for invalid records
        return f"record does not match schema {name!r}"
    message = _message(name, ranked[0])
    if len(ranked) > 1:
        message += f" (and {len(ranked) - 1} more error{'s' if len(ranked) > 2 else ''})"
    return message


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_REPR else text[: _MAX_VALUE_REPR - 3] + "..."


def _message(name: str, error: ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    prefix = f"{path}." if path else ""
    expected: Any = error.validator_value
    instance: Any = error.instance
    if error.validator == "required":
        missing = [f for f in expected if f not in instance]
        where = _condition(name, error, instance)
        return f"missing required field '{prefix}{missing[0]}'{where}"
    if error.validator == "additionalProperties":
        schema: Any = error.schema
        known = schema.get("properties", {})
        extra = [f for f in instance if f not in known]
        return f"unexpected field '{prefix}{extra[0]}' (allowed fields are {sorted(known)})"
    field = f"field '{path}'" if path else "record"
    value = _short(instance)
    expectation = {
        "minimum": f"is less than the minimum of {expected!r}",
        "maximum": f"is greater than the maximum of {expected!r}",
        "exclusiveMinimum": f"is not greater than the exclusive minimum of {expected!r}",
        "exclusiveMaximum": f"is not less than the exclusive maximum of {expected!r}",
        "enum": f"is not one of {expected!r}",
        "const": f"is not the constant {expected!r}",
        "type": f"is not of type {expected!r}",
        "minLength": f"is shorter than the minimum length of {expected!r}",
        "maxLength": f"is longer than the maximum length of {expected!r}",
        "pattern": f"does not match the pattern {expected!r}",
    }.get(str(error.validator))
    if expectation is None:
        return f"{field}: {error.message}"
    return f"{field}: value {value} {expectation}"


def _condition(name: str, error: ValidationError, instance: Mapping[str, Any]) -> str:
    """For a field required by an ``if``/``then`` rule, say which values made it required."""
    schema_path = list(error.schema_path)
    if "then" not in schema_path:
        return ""
    node: Any = _schema(name)
    for key in schema_path[: schema_path.index("then")]:
        node = node[key]
    condition = node.get("if", {}).get("properties", {})
    parts = [f"{f} {instance[f]!r}" for f in condition if f in instance]
    return f" (required for {', '.join(parts)})" if parts else ""


# --- A compiled checker for the keywords our schemas use ---------------------------------------
#
# jsonschema's validator runs at ~5k events/s on a session event, too slow for the worker's hot
# loop. The schemas use a small subset of JSON Schema, which compiles to nested closures that only
# answer valid/invalid (~30x faster). A schema with any other keyword falls back to jsonschema, and
# tests check that both agree on every example and on generated mutations.

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "contentEncoding", "examples"})
_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}


class _Unsupported(Exception):  # internal signal, never escapes this module
    """The schema uses a keyword the compiler does not handle."""


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _scalar_key(v: object) -> tuple[str, object]:
    """A hashable key under which JSON-equal scalars are equal (1 == 1.0, but True != 1)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return (type(v).__name__, v)
    if _is_number(v):
        return ("number", v)
    raise _Unsupported(f"enum/const value {v!r}")


def _compile(schema: Any) -> Check:
    if schema is True:
        return lambda v: True
    if schema is False:
        return lambda v: False
    unknown = set(schema) - _ANNOTATIONS - {
        "type", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "minLength", "maxLength", "pattern", "properties", "required", "additionalProperties",
        "allOf", "if", "then", "else",
    }  # fmt: skip
    if unknown:
        raise _Unsupported(f"keywords {sorted(unknown)}")
    leaf = _leaf(schema)
    if leaf is not None:
        return leaf
    checks: list[Check] = []
    if "type" in schema:
        names = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        tests = [_TYPES[n] for n in names]
        checks.append(tests[0] if len(tests) == 1 else lambda v: any(t(v) for t in tests))
    if "enum" in schema:
        checks.append(_one_of(schema["enum"]))
    if "const" in schema:
        checks.append(_one_of([schema["const"]]))
    for key, ok in _BOUNDS.items():
        if key in schema:
            checks.append(_bounded(_is_number, _same, ok, schema[key]))
    if "minLength" in schema:
        checks.append(_bounded(_is_str, len, operator.ge, schema["minLength"]))
    if "maxLength" in schema:
        checks.append(_bounded(_is_str, len, operator.le, schema["maxLength"]))
    if "pattern" in schema:
        search = re.compile(schema["pattern"]).search
        checks.append(lambda v: not isinstance(v, str) or search(v) is not None)
    if "required" in schema:
        required = frozenset(schema["required"])
        checks.append(lambda v: not isinstance(v, dict) or v.keys() >= required)
    properties = {k: _compile(sub) for k, sub in schema.get("properties", {}).items()}
    extra = _compile(schema["additionalProperties"]) if "additionalProperties" in schema else None
    if extra is not None:
        checks.append(lambda v: not isinstance(v, dict) or _check_members(v, properties, extra))
    elif properties:
        checks.append(lambda v: not isinstance(v, dict) or _check_present(v, properties))
    checks.extend(_compile(sub) for sub in schema.get("allOf", []))
    if "if" in schema:
        test, then = _compile(schema["if"]), _compile(schema.get("then", True))
        otherwise = _compile(schema.get("else", True))
        checks.append(lambda v: then(v) if test(v) else otherwise(v))
    return _all(checks)


def _leaf(schema: dict[str, Any]) -> Check | None:
    """One closure for the commonest leaves (bounded strings and integers, string enums), or None."""
    keys = set(schema) - _ANNOTATIONS
    if schema.get("type") == "string" and keys <= {"type", "minLength", "maxLength", "pattern"}:
        low, high = schema.get("minLength", 0), schema.get("maxLength", math.inf)
        if "pattern" not in schema:
            return lambda v: isinstance(v, str) and low <= len(v) <= high
        search = re.compile(schema["pattern"]).search
        return lambda v: isinstance(v, str) and low <= len(v) <= high and search(v) is not None
    if schema.get("type") == "integer" and keys <= {"type", "minimum", "maximum"}:
        least, most = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
        return lambda v: _TYPES["integer"](v) and least <= v <= most
    if keys == {"enum"} and all(isinstance(x, str) for x in schema["enum"]):
        names = frozenset(schema["enum"])
        return lambda v: isinstance(v, str) and v in names
    return None


def _all(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]

    def check_all(v: Any) -> bool:
        for check in checks:  # noqa: SIM110 - a loop beats all(genexpr) in the hot loop
            if not check(v):
                return False
        return True

    return check_all


_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "minimum": operator.ge,
    "maximum": operator.le,
    "exclusiveMinimum": operator.gt,
    "exclusiveMaximum": operator.lt,
}


def _same(v: Any) -> Any:
    return v


def _is_str(v: object) -> bool:
    return isinstance(v, str)


def _bounded(
    applies: Callable[[Any], bool], measure: Callable[[Any], Any], ok: Callable[[Any, Any], bool], bound: Any
) -> Check:
    """A check that ``ok(measure(v), bound)`` holds for every ``v`` it ``applies`` to."""
    return lambda v: not applies(v) or ok(measure(v), bound)


def _one_of(values: list[Any]) -> Check:
    allowed = frozenset(_scalar_key(x) for x in values)
    return lambda v: _key_or_none(v) in allowed


def _key_or_none(v: object) -> tuple[str, object] | None:
    try:
        return _scalar_key(v)
    except _Unsupported:
        return None


def _check_members(record: dict[str, Any], properties: dict[str, Check], extra: Check) -> bool:
    for key, value in record.items():  # noqa: SIM110 - as above
        if not properties.get(key, extra)(value):
            return False
    return True


def _check_present(record: dict[str, Any], properties: dict[str, Check]) -> bool:
    for key, check in properties.items():  # noqa: SIM110 - as above
        if key in record and not check(record[key]):
            return False
    return True


# --- The worker's fast path ----------------------------------------------------------------


def parse_event(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """Decode and validate one raw session event, or raise :class:`EventRejected` with its kind."""
    if len(raw) > max_bytes:
        raise EventRejected("oversized", f"record is {len(raw)} bytes, more than the limit of {max_bytes}")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventRejected("malformed", f"record is not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise EventRejected("malformed", f"record is a JSON {type(event).__name__}, expected an object")
    if _checker("session_event")(event):
        return event
    event_type = event.get("event_type")
    if "event_type" in event and (not isinstance(event_type, str) or event_type not in _event_types()):
        expected = list(_schema("session_event")["properties"]["event_type"]["enum"])
        raise EventRejected(
            "unknown_type", f"field 'event_type': value {_short(event_type)} is not one of {expected!r}"
        )
    errors = _validator("session_event").iter_errors(event)
    raise EventRejected("invalid", _describe("session_event", errors))


def dead_letter_envelope(
    raw_value: bytes,
    raw_key: bytes | None,
    reason: str,
    kind: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    *,
    received_at_ms: int | None = None,
) -> dict[str, Any]:
    """A ``dead_letter`` v1 record carrying the original bytes (base64) and where they came from."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"unknown dead-letter kind {kind!r}; valid kinds are {list(ERROR_KINDS)}")
    return {
        "schema_version": SCHEMA_VERSION,
        "reason": (reason or "unspecified")[:2000],
        "error_kind": kind,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "source_timestamp": timestamp_ms,
        "key_b64": None if raw_key is None else base64.b64encode(raw_key).decode("ascii"),
        "value_b64": base64.b64encode(raw_value).decode("ascii"),
        "received_at": time.time_ns() // 1_000_000 if received_at_ms is None else received_at_ms,
    }
