"""Schema-valid events with extreme values, through the whole BatchProcessor (hypothesis).

The strategy reads every bound from ``session_event.v1.json`` itself, so a field the schema leaves
unbounded is generated up to the largest float: whatever the schema admits, the worker must
process without a processing_error, and every output must be publishable.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.events.schema import is_valid, load_schema, validate
from stream.models.scoring import LoadedModel
from stream.worker.processor import BatchProcessor, ProcessorConfig, Record, Stores, unpack_user

SCHEMA = load_schema("session_event")
PROPS: dict[str, Any] = SCHEMA["properties"]
EVENT_TYPES: list[str] = PROPS["event_type"]["enum"]
PLACEMENTS = ("top_banner", "sidebar", "in_article", "footer")
TRIGGERS = {"article_impression", "session_start", "session_end"}
SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Any code point JSON can carry (no lone surrogates), control characters included.
CHARS = st.characters(blacklist_categories=("Cs",))


def _text(spec: Mapping[str, Any]) -> st.SearchStrategy[str]:
    lo, hi = spec.get("minLength", 0), spec.get("maxLength", 200)
    return st.one_of(st.text(CHARS, min_size=lo, max_size=hi), st.just("x" * hi), st.just("é" * hi))


def _integer(spec: Mapping[str, Any]) -> st.SearchStrategy[int | float]:
    lo, hi = spec.get("minimum", -(2**63)), spec.get("maximum", 2**63 - 1)
    ints = st.one_of(st.sampled_from([lo, hi]), st.integers(lo, hi))
    # JSON Schema's "integer" also admits a float with no fractional part (exact in float64 here)
    return st.one_of(ints, ints.filter(lambda v: abs(v) < 2**53).map(float))


def _number(spec: Mapping[str, Any]) -> st.SearchStrategy[float]:
    lo, hi = spec.get("minimum", -sys.float_info.max), spec.get("maximum", sys.float_info.max)
    edges = [v for v in (lo, hi, 0.0, 5e-324, 1e-300, 0.005, 0.015, 1e9, 1e20, 1e308) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.floats(lo, hi, allow_nan=False, allow_infinity=False))


def _field(name: str) -> st.SearchStrategy[Any]:
    spec = PROPS[name]
    kind = spec.get("type")
    if kind == "string":
        return _text(spec)
    if kind == "integer":
        return _integer(spec)
    return _number(spec)


@st.composite
def extreme_event(draw: st.DrawFn, user_ids: list[str], request_ids: list[str]) -> dict[str, Any]:
    kind = draw(st.sampled_from(EVENT_TYPES))
    ev: dict[str, Any] = {
        "schema_version": 1,
        "event_id": draw(_field("event_id")),
        "event_type": kind,
        "user_id": draw(st.sampled_from(user_ids)),
        "session_id": draw(_field("session_id")),
        "event_time": draw(_field("event_time")),
    }
    for name in ("article_id", "brand", "category", "position", "placement", "revenue", "duration_ms"):
        if draw(st.booleans()):
            ev[name] = draw(_field(name))
    if kind in ("article_view", "article_impression", "article_click"):
        ev["article_id"] = draw(st.one_of(_field("article_id"), st.sampled_from(["a1", "a2"])))
    if kind == "article_impression":
        ev["position"] = draw(_field("position"))
    if kind in ("ad_request", "ad_impression", "ad_click"):
        ev["request_id"] = draw(st.one_of(_field("request_id"), st.sampled_from(request_ids)))
    if kind in ("ad_impression", "ad_click"):
        ev["placement"] = draw(st.one_of(st.sampled_from(PLACEMENTS), _field("placement")))
    if kind == "subscription":
        ev["revenue"] = draw(_field("revenue"))
    if draw(st.booleans()):
        device = PROPS["device"]["properties"]
        ev["device"] = {"type": draw(st.sampled_from(device["type"]["enum"]))}
        for name in ("os", "browser"):
            if draw(st.booleans()):
                ev["device"][name] = draw(_text(device[name]))
    if draw(st.booleans()):
        geo = PROPS["geo"]["properties"]
        ev["geo"] = {"country": draw(st.from_regex(r"\A[A-Z]{2}\Z"))}
        for name in ("city", "timezone"):
            if draw(st.booleans()):
                ev["geo"][name] = draw(st.one_of(_text(geo[name]), st.sampled_from(["Europe/Berlin", "Asia/Kolkata"])))
    return ev


HISTORIES = st.lists(extreme_event(["u1", "u2", "ü" * 64], ["r1", "r2"]), min_size=1, max_size=40)


@SETTINGS
@given(events=HISTORIES, batch=st.sampled_from([1, 7, 500]))
def test_schema_valid_extremes_are_processed_without_error(
    models: dict[str, LoadedModel], events: list[dict[str, Any]], batch: int
) -> None:
    assert all(is_valid("session_event", e) for e in events)  # the strategy makes valid events only
    records = [
        Record(e["user_id"].encode(), orjson.dumps(e), "session-events", 0, i, None) for i, e in enumerate(events)
    ]
    stores = Stores(users={}, ad_pending={}, articles={}, bandit={})
    proc = BatchProcessor(models, PLACEMENTS, ProcessorConfig(max_event_bytes=1 << 20))
    outs = [
        proc.process(records[i : i + batch], stores, now_ms=1_767_225_600_000) for i in range(0, len(records), batch)
    ]

    assert [env for o in outs for _, env in o.dead_letters] == []
    assert proc.metrics.value("stream_isolated_batches_total") == 0
    predictions = [p for o in outs for p in o.predictions]
    assert len(predictions) == sum(e["event_type"] in TRIGGERS for e in events)
    decisions = [d for o in outs for d in o.decisions]
    assert len(decisions) == sum(e["event_type"] == "ad_request" for e in events)
    for record, schema in [(p, "prediction") for p in predictions] + [(d, "bandit_decision") for d in decisions]:
        validate(schema, orjson.loads(orjson.dumps(record)))
        assert type(record["event_time"]) is int  # integer milliseconds, never 1.5e12 as a float
    for raw in stores.users.values():
        unpack_user(raw)  # the stored state reads back
