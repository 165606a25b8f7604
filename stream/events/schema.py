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
stream.events.schema.EventRejected: field 'event_type': value 'tap' is not one of ['session_start', ...]
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any, get_args

import jsonschema_rs
import orjson
from jsonschema import Draft202012Validator, ValidationError

from stream.config import ROOT
from stream.errors import SchemaError
from stream.events.records import DeadLetterRecord, ErrorKind

SCHEMA_DIR = ROOT / "schemas" / "json"
SCHEMAS: tuple[str, ...] = ("session_event", "prediction", "bandit_decision", "dead_letter", "recommendation")
SCHEMA_VERSION = 1

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


Check = Callable[[Any], bool]


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def _checker(name: str) -> Check:
    """Accept/reject test for schema ``name`` in the worker's hot loop.

    jsonschema-rs answers valid/invalid in ~2 µs per session event (the pure-Python validator
    takes ~200 µs); jsonschema describes what is wrong once a record is rejected.
    """
    return jsonschema_rs.validator_for(_schema(name)).is_valid


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
        raise SchemaError(_describe(name, _validator(name).iter_errors(record), record))


def _describe(name: str, errors: Iterable[ValidationError], record: Any = None) -> str:
    """One line for the most useful error; errors of ``if``/``then`` rules come after direct ones."""
    ranked = sorted(errors, key=lambda e: ("then" in e.schema_path, len(e.absolute_path)))
    if not ranked:
        return _describe_rs(name, record)
    message = _message(name, ranked[0])
    if len(ranked) > 1:
        message += f" (and {len(ranked) - 1} more error{'s' if len(ranked) > 2 else ''})"
    return message


def _describe_rs(name: str, record: Any) -> str:
    """The error as jsonschema-rs, which rejected the record, sees it.

    The two validators can disagree: Python's ``re`` lets ``$`` match before a final newline, so
    jsonschema accepts ``"DE\\n"`` for the pattern ``^[A-Z]{2}$`` that jsonschema-rs refuses.
    """
    for error in jsonschema_rs.validator_for(_schema(name)).iter_errors(record):
        path = ".".join(str(p) for p in error.instance_path)
        return f"{f'field {path!r}' if path else 'record'}: {error.message}"
    return f"record does not match schema {name!r}"  # pragma: no cover - only called for invalid records


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


# --- The worker's fast path ----------------------------------------------------------------


def parse_event(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    """Decode and validate one raw session event, or raise :class:`EventRejected` with its kind."""
    if not raw:
        what = "no value (a tombstone)" if raw is None else "an empty value"
        raise EventRejected("malformed", f"record has {what}, expected a JSON session event")
    if len(raw) > max_bytes:
        raise EventRejected("oversized", f"record is {len(raw)} bytes, more than the limit of {max_bytes}")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventRejected("malformed", _not_json(raw, exc)) from None
    if not isinstance(event, dict):
        raise EventRejected("malformed", f"record is a JSON {type(event).__name__}, expected an object")
    if _checker("session_event")(event):
        # JSON Schema's "integer" admits 1.5e12; downstream every time is integer milliseconds.
        for name in _INTEGER_FIELDS:
            value = event.get(name)
            if value.__class__ is float:
                event[name] = int(value)
        return event
    event_type = event.get("event_type")
    if "event_type" in event and (not isinstance(event_type, str) or event_type not in _event_types()):
        expected = list(_schema("session_event")["properties"]["event_type"]["enum"])
        raise EventRejected(
            "unknown_type", f"field 'event_type': value {_short(event_type)} is not one of {expected!r}"
        )
    errors = _validator("session_event").iter_errors(event)
    raise EventRejected("invalid", _describe("session_event", errors, event))


#: session_event fields of JSON Schema type "integer", which a valid event may carry as 3.0
_INTEGER_FIELDS = ("event_time", "position", "duration_ms")


def _not_json(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    """Why ``raw`` is not JSON; orjson reports invalid UTF-8 as "surrogates not allowed" at 1:1."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"record is not valid UTF-8: byte 0x{raw[bad.start]:02x} at offset {bad.start} "
            f"({bad.reason}), expected a UTF-8 JSON session event"
        )
    return f"record is not valid JSON: {exc}"


def dead_letter_envelope(
    raw_value: bytes,
    raw_key: bytes | None,
    reason: str,
    kind: ErrorKind,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    *,
    received_at_ms: int | None = None,
) -> DeadLetterRecord:
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


#: bytes of the original value (and of a long key) that a shrunk dead letter keeps
DEAD_LETTER_PREFIX_BYTES = 4096


def fit_dead_letter(envelope: DeadLetterRecord, key: bytes | None, max_bytes: int) -> tuple[bytes | None, bytes, bool]:
    """The dead letter's Kafka key and JSON value, together at most ``max_bytes``, and whether it was shrunk.

    An envelope that does not fit (an original of about 750 KB or more, base64 adding a third,
    or a larger one that arrived compressed) is shrunk by :func:`shrink_dead_letter`; its key
    is cut like its ``key_b64``.
    """
    value = orjson.dumps(envelope)
    size = len(value) + (len(key) if key else 0)
    if size <= max_bytes:
        return key, value, False
    shrunk = shrink_dead_letter(envelope, size, max_bytes)
    if key is not None and shrunk.get("key_truncated"):
        key = key[:DEAD_LETTER_PREFIX_BYTES]
    value = orjson.dumps(shrunk)
    if len(value) + (len(key) if key else 0) > max_bytes:  # only below the smallest limit the settings allow
        raise ValueError(f"a shrunk dead letter takes {len(value)} bytes, more than the limit of {max_bytes}")
    return key, value, True


def shrink_dead_letter(envelope: DeadLetterRecord, size: int, max_bytes: int) -> DeadLetterRecord:
    """``envelope`` as an ``oversized`` dead letter holding the first bytes of the original.

    The value (and a key longer than :data:`DEAD_LETTER_PREFIX_BYTES`) keeps its first
    :data:`DEAD_LETTER_PREFIX_BYTES` bytes, with its size and SHA-256; the reason says why and
    keeps the original kind and reason.

    >>> big = dead_letter_envelope(b"x" * 10_000, None, "too big", "oversized", "t", 0, 5, None, received_at_ms=1)
    >>> small = shrink_dead_letter(big, 13_500, 8_000)
    >>> small["value_size"], small["value_truncated"], len(base64.b64decode(small["value_b64"]))
    (10000, True, 4096)
    >>> small["error_kind"], small["reason"][:59]
    ('oversized', 'dead letter of 13500 bytes is over the record limit of 8000')
    >>> small["reason"][-36:]
    'original reason (oversized): too big'
    """
    out = envelope.copy()
    cut = ["value"]
    raw_value = base64.b64decode(envelope["value_b64"])
    out["value_b64"], out["value_size"], out["value_sha256"] = _prefix(raw_value)
    out["value_truncated"] = True
    key_b64 = envelope.get("key_b64")
    raw_key = None if key_b64 is None else base64.b64decode(key_b64)
    if raw_key is not None and len(raw_key) > DEAD_LETTER_PREFIX_BYTES:
        out["key_b64"], out["key_size"], out["key_sha256"] = _prefix(raw_key)
        out["key_truncated"] = True
        cut.append("key")
    out["error_kind"] = "oversized"
    out["reason"] = (
        f"dead letter of {size} bytes is over the record limit of {max_bytes}: kept the first "
        f"{DEAD_LETTER_PREFIX_BYTES} bytes of the {' and '.join(cut)}, its size and SHA-256; "
        f"original reason ({envelope['error_kind']}): {envelope['reason']}"
    )[:2000]
    return out


def _prefix(raw: bytes) -> tuple[str, int, str]:
    """(base64 of the first bytes, size, SHA-256) of a value or key too long to keep whole."""
    return (base64.b64encode(raw[:DEAD_LETTER_PREFIX_BYTES]).decode("ascii"), len(raw), hashlib.sha256(raw).hexdigest())
