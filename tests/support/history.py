"""A seeded event history that no simulator setting produces: the "foreign" history of a real site.

What sets it apart from ``simulator``:

* no ad events and no video plays at all;
* bursty users: a few bursts of 1-6 days with several sessions a day, separated by long silences
  (many users lapse for good after their last burst);
* every article impression is followed by a click on it (the click label has a single class);
* long reading sessions (a share of them reaches the engagement label's cap);
* any length of history (150 days by default, more than ClickHouse's 100 partitions per insert).

>>> evs = foreign_events(n_users=3, days=20, seed=1)
>>> {e["event_type"] for e in evs} <= set(EVENT_TYPES)
True
>>> from stream.events.schema import is_valid
>>> all(is_valid("session_event", e) for e in evs)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

DAY_MS = 86_400_000
START_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC
EVENT_TYPES = (
    "session_start",
    "page_view",
    "article_impression",
    "article_click",
    "article_view",
    "newsletter_signup",
    "subscription",
    "session_end",
)
_DEVICES = (
    ("mobile", "ios", "safari"),
    ("mobile", "android", "chrome"),
    ("desktop", "windows", "edge"),
    ("desktop", "macos", "safari"),
    ("tablet", "ios", "safari"),
)
_GEO = (("NO", "Oslo", "Europe/Oslo"), ("SE", "Stockholm", "Europe/Stockholm"), ("DK", "Aarhus", "Europe/Copenhagen"))
_BRANDS = ("north", "daily", "sport")
_CATEGORIES = ("news", "sport", "culture", "economy", "weather")


def _session(
    rng: np.random.Generator,
    uid: str,
    sid: str,
    t: int,
    common: dict[str, Any],
    reader: bool,
    articles: list[tuple[str, str, str]],
    taste: np.ndarray,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    t0 = t

    def ev(kind: str, at: int, **extra: Any) -> None:
        out.append(
            {
                "schema_version": 1,
                "event_id": f"{sid}-{len(out) + 1:03d}",
                "event_type": kind,
                "user_id": uid,
                "session_id": sid,
                "event_time": at,
                **common,
                **extra,
            }
        )

    ev("session_start", t)
    ev("page_view", t + 500)
    for pos in range(1, 2 + int(rng.poisson(6.0 if reader else 2.0))):
        aid, brand, cat = articles[int(rng.choice(len(articles), p=taste))]
        art = {"article_id": aid, "brand": brand, "category": cat}
        t += int(rng.integers(2_000, 20_000))
        ev("article_impression", t, **art, position=pos)
        t += int(rng.integers(1_000, 30_000))
        ev("article_click", t, **art, position=pos)  # every impression is clicked
        read = int(rng.exponential(240_000 if reader else 40_000))
        ev("article_view", t + 200, **art, duration_ms=read)
        t += read
    if rng.random() < 0.04:
        ev("newsletter_signup", t + 1_000)
    if rng.random() < 0.01:
        ev("subscription", t + 2_000, revenue=float(rng.choice([4.99, 9.99])))
    ev("session_end", t + 3_000, duration_ms=t + 3_000 - t0)
    return out


def _user_events(
    rng: np.random.Generator, u: int, days: int, articles: list[tuple[str, str, str]], taste: np.ndarray
) -> Iterator[dict[str, Any]]:
    uid = f"user-{u:06d}"
    device, os_, browser = _DEVICES[int(rng.integers(len(_DEVICES)))]
    country, city, tz = _GEO[int(rng.integers(len(_GEO)))]
    common = {
        "device": {"type": device, "os": os_, "browser": browser},
        "geo": {"country": country, "city": city, "timezone": tz},
    }
    reader = bool(rng.random() < 0.5)  # long sessions
    n_bursts = 1 + int(rng.poisson(2.0))
    s = 0
    for start in np.sort(rng.integers(0, days, n_bursts)):
        for day in range(int(start), min(days, int(start) + 1 + int(rng.integers(6)))):
            for _ in range(1 + int(rng.poisson(1.5))):
                t = START_MS + day * DAY_MS + int(rng.integers(6 * 3_600_000, 23 * 3_600_000))
                yield from _session(rng, uid, f"{uid}-s{s:05d}", t, common, reader, articles, taste)
                s += 1


def foreign_events(n_users: int = 150, days: int = 150, seed: int = 0) -> list[dict[str, Any]]:
    """The history, sorted by event time (ties by event id)."""
    rng = np.random.default_rng(seed)
    articles = [(f"art-{i:04d}", _BRANDS[i % len(_BRANDS)], _CATEGORIES[i % len(_CATEGORIES)]) for i in range(80)]
    popularity = rng.dirichlet(np.full(len(articles), 0.5))
    events: list[dict[str, Any]] = []
    for u in range(n_users):
        taste = 0.5 * popularity + 0.5 * rng.dirichlet(np.full(len(articles), 0.3))
        events.extend(_user_events(rng, u, days, articles, taste / taste.sum()))
    events.sort(key=lambda e: (e["event_time"], e["event_id"]))
    return events


#: Records the worker would dead-letter, with the reason kind ``parse_event`` gives them.
BAD_RECORDS: tuple[tuple[bytes, str], ...] = (
    (
        b'{"schema_version": 1, "event_id": "bad-1", "event_type": "tap", "user_id": "u", "session_id": "s", '
        b'"event_time": 1735689600000}',
        "unknown_type",
    ),
    (
        b'{"schema_version": 1, "event_id": "bad-2", "event_type": "page_view", "user_id": "u", '
        b'"event_time": 1735689600000}',
        "invalid",
    ),
    (b'{"schema_version": 1, "event_id": "bad-3"', "malformed"),
)


def write_jsonl(path: Path, events: list[dict[str, Any]], bad_every: int = 0) -> int:
    """Write ``events`` as JSON lines; with ``bad_every`` > 0, a :data:`BAD_RECORDS` line after every
    ``bad_every`` events. Returns how many bad lines were written."""
    bad = 0
    with open(path, "wb") as f:
        for i, e in enumerate(events, 1):
            f.write(orjson.dumps(e) + b"\n")
            if bad_every and i % bad_every == 0:
                f.write(BAD_RECORDS[bad % len(BAD_RECORDS)][0] + b"\n")
                bad += 1
    return bad
