"""Session events for the archive tests: hand-made extremes and seeded random ones, all valid.

Every event here passes the ``session_event`` schema (checked as they are made): what the worker
archives is always valid, and the extremes are the schema's own bounds.
"""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa

from stream.clickhouse import EVENT_COLUMNS, ClickHouse
from stream.events.schema import validate
from stream.state.codes import EVENT_TYPES

T_MIN = 946_684_800_000  # 2000-01-01, the schema's minimum
T_MAX = 4_102_444_800_000  # 2100-01-01, its maximum
#: code points a string may hold: controls, JSON's escapes, Latin-1, CJK, combining, RTL, BOM,
#: JSON-in-JavaScript's line separators, astral emoji, the last scalar values
_CHARS = (
    [chr(c) for c in range(0x20)]
    + list("\x7f\"\\/'`{}[],:;=&?%+# aZz09")
    + list("äöüßéñçøÅ€£¥µ°")
    + list("日本語中文한국어")
    + ["\u0301", "\u05d0", "\u0627", "\u200f", "\ufeff", "\u2028", "\u2029", "\ufffd", "\uffff"]
    + ["\U0001f600", "\U0001f1e9", "\U0001f1ea", "\U0010fffd", "\U00020000"]
)


def _valid(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for ev in events:
        validate("session_event", ev)
    return events


def edge_events() -> list[dict[str, Any]]:
    """Events at the schema's bounds, each named by its ``event_id`` (and one with explicit nulls)."""
    base = {"schema_version": 1, "user_id": "u1", "session_id": "s1"}
    valid = _valid(
        [
            {**base, "event_id": "minimal", "event_type": "page_view", "event_time": 1_700_000_000_123},
            {
                **base,
                "event_id": "lowest",
                "event_type": "subscription",
                "event_time": T_MIN,
                "position": 1,
                "duration_ms": 0,
                "revenue": 0.0,
                "device": {"type": "tablet", "os": "", "browser": ""},
                "geo": {"country": "AA", "city": "", "timezone": ""},
            },
            {
                **base,
                "event_id": "highest",
                "event_type": "article_impression",
                "event_time": T_MAX,
                "article_id": "a" * 64,
                "brand": "b" * 64,
                "category": "c" * 64,
                "position": 100,
                "placement": "p" * 64,
                "request_id": "r" * 64,
                "revenue": 1e9,
                "duration_ms": 86_400_000,
                "device": {"type": "desktop", "os": "o" * 32, "browser": "w" * 32},
                "geo": {"country": "ZZ", "city": "y" * 64, "timezone": "z" * 64},
            },
            {
                **base,
                "event_id": "tiny-revenue",
                "event_type": "subscription",
                "event_time": 1_700_000_000_000,
                "revenue": 5e-324,  # the smallest positive double
            },
            {
                **base,
                "event_id": "integer-revenue",
                "event_type": "subscription",
                "event_time": 1_700_000_000_000,
                "revenue": 7,
            },
            {
                **base,
                "event_id": "long-digits",
                "event_type": "subscription",
                "event_time": 1_700_000_000_999,
                "revenue": 999_999_999.9999999,
            },
            {
                "schema_version": 1,
                "event_id": "\U0001f600" * 64,  # 64 code points, 256 bytes
                "event_type": "ad_click",
                "user_id": 'Zoë \u05d0\u0627 日本 \x00\x01\n\t"\\/ \u2028\ufeff',
                "session_id": "e\u0301\U0001f1e9\U0001f1ea",
                "event_time": 1_700_000_000_001,
                "request_id": "req\u00a0\ufffd",
                "placement": "top_banner",
                "device": {"type": "mobile", "os": "iOS\u200f"},
                "geo": {"country": "DE", "city": "Köln", "timezone": "Europe/Berlin"},
            },
            {
                **base,
                "event_id": "only-nested-required",
                "event_type": "page_view",
                "event_time": 1_700_000_000_002,
                "device": {"type": "mobile"},
                "geo": {"country": "FR"},
            },
        ]
    )
    # not valid by the schema (null is no string), but a caller of insert_events may pass it: None = absent
    nulls = {"event_id": "explicit-nulls", "event_type": "page_view", "event_time": 1_700_000_000_003}
    return [*valid, {**base, **nulls, "article_id": None, "revenue": None, "device": None}]


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(rng.randint(lo, hi)))


def random_events(n: int, seed: int, days: int = 250) -> list[dict[str, Any]]:
    """``n`` valid events with random optional fields, strings and numbers, on ``days`` random days of the
    schema's whole time range (each day is a partition of ``{db}.events``: a part per insert)."""
    rng = random.Random(seed)
    day_ms = 86_400_000
    starts = [d * day_ms for d in rng.sample(range(T_MIN // day_ms, T_MAX // day_ms), days)]
    out = []
    for i in range(n):
        kind = rng.choice(EVENT_TYPES)
        ev: dict[str, Any] = {
            "schema_version": 1,
            "event_id": f"r{i}-{_text(rng, 0, 20)}",
            "event_type": kind,
            "user_id": _text(rng, 1, 64),
            "session_id": _text(rng, 1, 10),
            "event_time": rng.choice(starts) + rng.randrange(day_ms),
        }
        maybe = rng.random
        if kind.startswith("article") or maybe() < 0.2:
            ev["article_id"] = _text(rng, 1, 64)
        for name in ("brand", "category"):
            if maybe() < 0.4:
                ev[name] = rng.choice(["news", "sport", _text(rng, 1, 64)])
        if kind == "article_impression" or maybe() < 0.2:
            ev["position"] = rng.randint(1, 100)
        if kind.startswith("ad_") or maybe() < 0.2:
            ev["request_id"] = _text(rng, 1, 64)
        if kind in ("ad_impression", "ad_click") or maybe() < 0.2:
            ev["placement"] = rng.choice(["top_banner", "sidebar", _text(rng, 1, 64)])
        if kind == "subscription" or maybe() < 0.2:
            ev["revenue"] = rng.choice(
                [
                    rng.random() * 10 ** rng.randint(-6, 9),
                    float(rng.randint(0, 10**9)),
                    rng.randint(0, 10**9),
                    round(rng.random() * 1000, 2),
                    rng.uniform(0, 1e-300),
                ]
            )
        if maybe() < 0.3:
            ev["duration_ms"] = rng.randint(0, 86_400_000)
        if maybe() < 0.7:
            ev["device"] = {"type": rng.choice(["desktop", "mobile", "tablet"])}
            for name in ("os", "browser"):
                if maybe() < 0.5:
                    ev["device"][name] = _text(rng, 0, 32)
        if maybe() < 0.7:
            ev["geo"] = {"country": rng.choice(["DE", "FR", "US"]) if maybe() < 0.5 else _upper2(rng)}
            for name in ("city", "timezone"):
                if maybe() < 0.5:
                    ev["geo"][name] = _text(rng, 0, 64)
        out.append(ev)
    return _valid(out)


def _upper2(rng: random.Random) -> str:
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(2))


def stored_events(ch: ClickHouse) -> pa.Table:
    """``{db}.events`` but ``ingested_at``, in ``event_id`` order."""
    return ch.query_arrow("SELECT * EXCEPT ingested_at FROM {db}.events ORDER BY event_id")


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    """Column by column: the same type and the same values, row by row (floats bit for bit)."""
    assert got.column_names == want.column_names == list(EVENT_COLUMNS)
    assert got.num_rows == want.num_rows
    for name in want.column_names:
        assert got.schema.field(name).type == want.schema.field(name).type, name
        g, w = got.column(name).to_pylist(), want.column(name).to_pylist()
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(g, w, strict=True)) if a != b or type(a) is not type(b)]
        assert not diff, f"column {name}: {len(diff)} rows differ, first {diff[:3]}"
