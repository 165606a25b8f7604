"""stream.events.schema against hand-written examples, and parse_event / dead_letter_envelope contracts.

Examples live in ``schemas/examples/<schema>/valid/<case>.json`` (a bare record) and
``schemas/examples/<schema>/invalid/<case>.json`` (``{"record": ..., "expect": "<message fragment>"}``,
plus ``"kind"``, the parse_event error kind, for session events). Expected values are written by
hand in those files and below, never computed by the code under test.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
from jsonschema import Draft202012Validator

from stream.errors import SchemaError
from stream.events import records
from stream.events import schema as schemas
from stream.events.schema import EventRejected, dead_letter_envelope, parse_event
from stream.models.recommend import REASONS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "schemas" / "examples"
SCHEMA_FILES = ROOT / "schemas" / "json"
MAX_BYTES = 16_384


def _examples(kind: str) -> list[Any]:
    return [
        pytest.param(path.parent.parent.name, json.loads(path.read_text()), id=f"{path.parent.parent.name}/{path.stem}")
        for path in sorted(EXAMPLES.glob(f"*/{kind}/*.json"))
    ]


def _raw_schema(name: str) -> dict[str, Any]:
    """The schema read straight from its file, independently of stream.events.schema."""
    return json.loads((SCHEMA_FILES / f"{name}.v1.json").read_text())


# --- Examples ------------------------------------------------------------------------------


def test_every_schema_has_valid_and_invalid_examples() -> None:
    assert schemas.SCHEMAS == ("session_event", "prediction", "bandit_decision", "dead_letter", "recommendation")
    for name in schemas.SCHEMAS:
        assert len(list((EXAMPLES / name / "valid").glob("*.json"))) >= 2, name
        assert len(list((EXAMPLES / name / "invalid").glob("*.json"))) >= 4, name


def test_every_session_event_type_has_a_valid_example() -> None:
    types = set(_raw_schema("session_event")["properties"]["event_type"]["enum"])
    assert len(types) == 12
    seen = {json.loads(p.read_text())["event_type"] for p in (EXAMPLES / "session_event" / "valid").glob("*.json")}
    assert types - seen == set()


@pytest.mark.parametrize(("name", "record"), _examples("valid"))
def test_valid_example_passes(name: str, record: dict[str, Any]) -> None:
    schemas.validate(name, record)
    assert schemas.is_valid(name, record)


@pytest.mark.parametrize(("name", "case"), _examples("invalid"))
def test_invalid_example_fails_with_its_message(name: str, case: dict[str, Any]) -> None:
    assert not schemas.is_valid(name, case["record"])
    with pytest.raises(SchemaError) as info:
        schemas.validate(name, case["record"])
    assert case["expect"] in str(info.value)


@pytest.mark.parametrize(("name", "record"), [p for p in _examples("valid") if p.values[0] == "session_event"])
def test_parse_event_accepts_valid_events(name: str, record: dict[str, Any]) -> None:
    assert parse_event(orjson.dumps(record), MAX_BYTES) == record


@pytest.mark.parametrize(("name", "case"), [p for p in _examples("invalid") if p.values[0] == "session_event"])
def test_parse_event_classifies_invalid_events(name: str, case: dict[str, Any]) -> None:
    with pytest.raises(EventRejected) as info:
        parse_event(orjson.dumps(case["record"]), MAX_BYTES)
    assert info.value.kind == case["kind"]
    assert case["expect"] in str(info.value)


# --- parse_event ---------------------------------------------------------------------------

PAGE_VIEW = (
    b'{"schema_version":1,"event_id":"e-1","event_type":"page_view","user_id":"u-1",'
    b'"session_id":"s-1","event_time":1767225600000}'
)


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (b"not json", "record is not valid JSON"),
        (b"", "record has an empty value, expected a JSON session event"),
        (None, "record has no value (a tombstone), expected a JSON session event"),
        (b'{"event_type": "page_view"', "record is not valid JSON"),
        (b"\xff\xfe{}", "record is not valid UTF-8: byte 0xff at offset 0 (invalid start byte)"),
        (
            b'{"event_id": "caf\xc3(", "x": 1}',
            "record is not valid UTF-8: byte 0xc3 at offset 17 (invalid continuation byte)",
        ),
        (b"[1, 2]", "record is a JSON list, expected an object"),
        (b'"page_view"', "record is a JSON str, expected an object"),
        (b"null", "record is a JSON NoneType, expected an object"),
    ],
)
def test_parse_event_malformed(raw: bytes | None, expect: str) -> None:
    with pytest.raises(EventRejected) as info:
        parse_event(raw, MAX_BYTES)
    assert info.value.kind == "malformed"
    assert expect in str(info.value)


def test_parse_event_oversized_is_checked_before_parsing() -> None:
    assert len(PAGE_VIEW) == 124
    assert parse_event(PAGE_VIEW, 124)["event_type"] == "page_view"
    with pytest.raises(EventRejected) as info:
        parse_event(PAGE_VIEW, 123)
    assert info.value.kind == "oversized"
    assert str(info.value) == "record is 124 bytes, more than the limit of 123"
    with pytest.raises(EventRejected, match="record is 300 bytes") as info:
        parse_event(b"x" * 300, 256)
    assert info.value.kind == "oversized"


def test_parse_event_unknown_type_and_invalid() -> None:
    with pytest.raises(EventRejected) as info:
        parse_event(PAGE_VIEW.replace(b"page_view", b"scroll"), MAX_BYTES)
    assert info.value.kind == "unknown_type"
    assert str(info.value).startswith("field 'event_type': value 'scroll' is not one of ['session_start',")
    with pytest.raises(EventRejected) as info:
        parse_event(PAGE_VIEW.replace(b'"u-1"', b'""'), MAX_BYTES)
    assert info.value.kind == "invalid"
    assert str(info.value) == "field 'user_id': value '' is shorter than the minimum length of 1"


def test_parse_event_makes_integral_float_times_integers() -> None:
    """JSON Schema's "integer" admits 1.5e12; predictions must carry integer milliseconds."""
    raw = PAGE_VIEW.replace(b"1767225600000", b"1.7672256e12")
    event = parse_event(raw, MAX_BYTES)
    assert event["event_time"] == 1_767_225_600_000 and type(event["event_time"]) is int
    impression = orjson.loads(PAGE_VIEW)
    impression.update(event_type="article_impression", article_id="a-1", position=3.0)
    event = parse_event(orjson.dumps(impression), MAX_BYTES)
    assert event["position"] == 3 and type(event["position"]) is int
    end = orjson.loads(PAGE_VIEW)
    end.update(event_type="session_end", duration_ms=6e4)
    assert type(parse_event(orjson.dumps(end), MAX_BYTES)["duration_ms"]) is int


def test_event_rejected_is_a_schema_error() -> None:
    with pytest.raises(SchemaError):
        parse_event(b"{}", MAX_BYTES)


# --- The compiled checker agrees with jsonschema -------------------------------------------

ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 1.0, 1.5, 2**63, "", "x", "DE", "de", "a" * 65, "a" * 64,
    [], {}, {"type": "mobile"}, {"country": "DE"}, 946684800000, 946684799999, 4102444800000.0,
    4102444800001, "mobile", "page_view", 100, 101, 86400000, 86400001,
]  # fmt: skip


def _mutations(record: dict[str, Any]) -> list[Any]:
    out: list[Any] = [record, [record], "record", None]
    for key in record:
        out.append({k: v for k, v in record.items() if k != key})
        out.extend({**record, key: value} for value in ODD_VALUES)
    out.extend({**record, key: value} for key in ("position", "device", "geo", "unknown") for value in ODD_VALUES)
    out.append({**record, "device": {"type": "tablet", "os": "x" * 33}})
    out.append({**record, "arm_means": {"a": 0.5, "b": True}})
    return out


@pytest.mark.parametrize(("name", "record"), _examples("valid"))
def test_fast_checker_agrees_with_jsonschema(name: str, record: dict[str, Any]) -> None:
    reference = Draft202012Validator(_raw_schema(name))
    for mutant in _mutations(record):
        assert schemas.is_valid(name, mutant) == reference.is_valid(mutant), mutant


# --- Loading -------------------------------------------------------------------------------


def test_load_schema_returns_a_copy_and_unknown_names_are_named() -> None:
    schema = schemas.load_schema("prediction")
    assert schema == _raw_schema("prediction")
    schema["required"].clear()
    assert schemas.load_schema("prediction")["required"] == _raw_schema("prediction")["required"]
    with pytest.raises(SchemaError, match=r"unknown schema 'predictions'; valid names are \['session_event'"):
        schemas.load_schema("predictions")


def test_validate_does_not_mutate_its_input() -> None:
    record = json.loads((EXAMPLES / "session_event" / "valid" / "session_start.json").read_text())
    before = copy.deepcopy(record)
    schemas.validate("session_event", record)
    assert record == before


# --- the record types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "record_type"),
    [
        ("prediction", records.PredictionRecord),
        ("bandit_decision", records.DecisionRecord),
        ("dead_letter", records.DeadLetterRecord),
        ("recommendation", records.RecommendationRecord),
    ],
)
def test_record_types_have_their_schema_keys(name: str, record_type: Any) -> None:
    """A TypedDict key is required exactly when its schema requires it, and has no key the schema lacks."""
    schema = _raw_schema(name)
    assert set(record_type.__required_keys__) == set(schema["required"])
    assert set(record_type.__required_keys__) | set(record_type.__optional_keys__) == set(schema["properties"])


def test_recommended_article_type_has_its_schema_keys() -> None:
    item = _raw_schema("recommendation")["properties"]["recommendations"]["items"]
    assert set(records.RecommendedArticle.__required_keys__) == set(item["required"]) == set(item["properties"])
    reasons = set(get_args(records.RecommendedArticle.__annotations__["reason"]))
    assert reasons == set(item["properties"]["reason"]["enum"]) == set(REASONS)


def test_error_kinds_are_the_schema_enum() -> None:
    assert set(get_args(records.ErrorKind)) == set(_raw_schema("dead_letter")["properties"]["error_kind"]["enum"])


# --- dead_letter_envelope ------------------------------------------------------------------


def test_dead_letter_envelope_validates_and_round_trips_bytes() -> None:
    value = b"\xff\x00{not json"
    envelope = dead_letter_envelope(
        value, b"u-1", "record is not valid JSON", "malformed", "session-events", 2, 41, 1767225600000,
        received_at_ms=1767225600123,
    )  # fmt: skip
    assert Draft202012Validator(_raw_schema("dead_letter")).is_valid(envelope)
    schemas.validate("dead_letter", envelope)
    assert envelope == {
        "schema_version": 1,
        "reason": "record is not valid JSON",
        "error_kind": "malformed",
        "source_topic": "session-events",
        "source_partition": 2,
        "source_offset": 41,
        "source_timestamp": 1767225600000,
        "key_b64": "dS0x",
        "value_b64": "/wB7bm90IGpzb24=",
        "received_at": 1767225600123,
    }
    assert base64.b64decode(envelope["value_b64"]) == value
    assert json.loads(orjson.dumps(envelope)) == envelope


def test_dead_letter_envelope_without_key_timestamp_or_reason() -> None:
    envelope = dead_letter_envelope(b"hello", None, "", "oversized", "t", 0, 0, None)
    schemas.validate("dead_letter", envelope)
    assert envelope["key_b64"] is None
    assert envelope["source_timestamp"] is None
    assert envelope["value_b64"] == "aGVsbG8="
    assert envelope["reason"] == "unspecified"
    assert envelope["received_at"] > 1_700_000_000_000


def test_dead_letter_envelope_of_a_real_rejection() -> None:
    raw = b"x" * 5000
    with pytest.raises(EventRejected) as info:
        parse_event(raw, 4096)
    envelope = dead_letter_envelope(raw, None, str(info.value) * 100, info.value.kind, "events", 0, 7, None)
    schemas.validate("dead_letter", envelope)
    assert len(envelope["reason"]) == 2000
    assert base64.b64decode(envelope["value_b64"]) == raw


def test_dead_letter_envelope_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"unknown dead-letter kind 'timeout'"):
        dead_letter_envelope(b"x", None, "r", "timeout", "t", 0, 0, None)


# --- fit_dead_letter: an envelope always fits in one record ---------------------------------


def _envelope(value: bytes, key: bytes | None = b"u-1", reason: str = "record is too big") -> dict[str, Any]:
    return dead_letter_envelope(
        value, key, reason, "oversized", "session-events", 3, 77, 1767225600000, received_at_ms=1767225600123
    )


def test_a_dead_letter_that_fits_is_sent_whole() -> None:
    envelope = _envelope(b"x" * 20_000)
    key, value, shrunk = schemas.fit_dead_letter(envelope, b"u-1", 1_047_552)
    assert (key, value, shrunk) == (b"u-1", orjson.dumps(envelope), False)


def test_the_limit_is_exact() -> None:
    envelope = _envelope(b"x" * 30_000)
    size = len(orjson.dumps(envelope)) + len(b"u-1")
    assert schemas.fit_dead_letter(envelope, b"u-1", size)[2] is False
    assert schemas.fit_dead_letter(envelope, b"u-1", size - 1)[2] is True


def test_an_oversized_dead_letter_keeps_size_hash_prefix_and_the_original_reason() -> None:
    raw = bytes(range(256)) * 5000  # 1.28 MB: its base64 alone is over 1 MiB
    envelope = _envelope(raw, reason="record is 1280000 bytes, more than the limit of 16384")
    key, value, shrunk = schemas.fit_dead_letter(envelope, b"u-1", 1_047_552)
    assert shrunk and key == b"u-1"
    assert len(value) + len(key) <= 1_047_552
    out = json.loads(value)
    assert Draft202012Validator(_raw_schema("dead_letter")).is_valid(out)
    schemas.validate("dead_letter", out)
    assert out["error_kind"] == "oversized"
    assert out["value_truncated"] is True
    assert out["value_size"] == 1_280_000
    assert out["value_sha256"] == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(out["value_b64"]) == raw[:4096]
    assert out["reason"].startswith(
        f"dead letter of {len(orjson.dumps(envelope)) + 3} bytes is over the record "
        "limit of 1047552: kept the first 4096 bytes of the value"
    )
    assert out["reason"].endswith("original reason (oversized): record is 1280000 bytes, more than the limit of 16384")
    # where it came from is unchanged
    for field in ("source_topic", "source_partition", "source_offset", "source_timestamp", "key_b64", "received_at"):
        assert out[field] == envelope[field]
    assert "key_truncated" not in out


def test_a_long_key_is_cut_like_the_value() -> None:
    long_key = b"k" * 100_000
    envelope = _envelope(b"{}", long_key)
    key, value, shrunk = schemas.fit_dead_letter(envelope, long_key, 65_536 - 1024)
    assert shrunk and key == long_key[:4096]
    out = json.loads(value)
    schemas.validate("dead_letter", out)
    assert base64.b64decode(out["key_b64"]) == long_key[:4096]
    assert (out["key_size"], out["key_truncated"]) == (100_000, True)
    assert base64.b64decode(out["value_b64"]) == b"{}" and out["value_size"] == 2
    assert "of the value and key" in out["reason"]


def test_the_largest_shrunk_dead_letter_fits_the_smallest_allowed_limit() -> None:
    from stream.kafka.limits import MIN_MAX_MESSAGE_BYTES, record_budget

    worst = dead_letter_envelope(
        b"\x00" * 2_000_000, b"\x01" * 2_000_000, "\x02" * 5000, "invalid", "t" * 249, 2**31 - 1, 2**63 - 1, 2**63 - 1
    )
    budget = record_budget(MIN_MAX_MESSAGE_BYTES)
    key, value, shrunk = schemas.fit_dead_letter(worst, b"\x01" * 2_000_000, budget)
    assert shrunk and len(value) + len(key or b"") <= budget
    assert json.loads(value)["reason"].count("\x02") > 1000  # control characters, escaped 6 bytes each
