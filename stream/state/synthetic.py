"""Seeded synthetic session events for tests and benchmarks of the state (no simulator needed).

Realistic enough to exercise every code path: sessions with start/end, impressions with
positions and later clicks, brands and categories, a mostly-fixed device and place per user,
rare sign-ups and subscriptions, users that stop coming back. Not a stand-in for
``simulator``: no behavioural model, only plausible shapes.

>>> evs = generate_events(n_users=3, days=2, seed=1)
>>> evs == generate_events(n_users=3, days=2, seed=1), all(e["schema_version"] == 1 for e in evs)
(True, True)
"""

from __future__ import annotations

import random
from typing import Any

DAY_MS = 86_400_000
START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z

BRANDS = ("daily", "tech", "sport", "money", "style", "auto")
CATEGORIES = tuple(f"cat{i}" for i in range(18))
PLACES = (
    ("DE", "Berlin", "Europe/Berlin"),
    ("DE", "Munich", "Europe/Berlin"),
    ("GB", "London", "Europe/London"),
    ("US", "New York", "America/New_York"),
    ("US", "Chicago", "America/Chicago"),
    ("FR", "Paris", "Europe/Paris"),
    ("JP", "Tokyo", "Asia/Tokyo"),
)
DEVICES = (
    ("desktop", "Windows", "Chrome"),
    ("desktop", "macOS", "Safari"),
    ("mobile", "iOS", "Safari"),
    ("mobile", "Android", "Chrome"),
    ("tablet", "iPadOS", "Safari"),
    ("mobile", "Android", "Samsung Internet"),
)


def generate_events(
    n_users: int = 100, days: int = 30, seed: int = 0, start_ms: int = START_MS, n_articles: int = 400
) -> list[dict[str, Any]]:
    """Events of ``n_users`` over ``days`` days, sorted by (event_time, event_id)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for u in range(n_users):
        _user(rng, f"u{u:06d}", days, start_ms, n_articles, out)
    out.sort(key=lambda e: (e["event_time"], e["event_id"]))
    return out


def _user(rng: random.Random, uid: str, days: int, start_ms: int, n_articles: int, out: list[dict[str, Any]]) -> None:
    rate = rng.choice((0.1, 0.3, 0.7, 1.5, 3.0))  # sessions per day
    stop = start_ms + int(rng.uniform(0.2, 1.5) * days * DAY_MS)  # some users churn
    place = rng.choice(PLACES)
    dev = rng.choice(DEVICES)
    fav = rng.sample(BRANDS, 2)
    n = 0
    t = start_ms + int(rng.expovariate(rate) * DAY_MS)
    s = 0
    subscribed = False
    while t < min(stop, start_ms + days * DAY_MS):
        sid = f"{uid}-s{s}"
        s += 1
        d = dev if rng.random() < 0.9 else rng.choice(DEVICES)
        p = place if rng.random() < 0.95 else rng.choice(PLACES)
        base = {
            "schema_version": 1,
            "user_id": uid,
            "session_id": sid,
            "device": {"type": d[0], "os": d[1], "browser": d[2]},
            "geo": {"country": p[0], "city": p[1], "timezone": p[2]},
        }

        def emit(kind: str, at: int, extra: dict[str, Any] | None = None, base: dict[str, Any] = base) -> None:
            nonlocal n
            ev = dict(base, event_id=f"{uid}-{n}", event_type=kind, event_time=at, **(extra or {}))
            n += 1
            out.append(ev)

        t0 = t
        emit("session_start", t)
        for _ in range(rng.randint(1, 12)):
            t += rng.randint(3_000, 90_000)
            r = rng.random()
            brand = rng.choice(fav) if rng.random() < 0.7 else rng.choice(BRANDS)
            art: dict[str, Any] = {
                "article_id": f"a{min(int(rng.paretovariate(1.2)), n_articles)}",
                "brand": brand,
                "category": rng.choice(CATEGORIES),
            }
            if r < 0.45:
                pos = rng.randint(1, 10)
                emit("article_impression", t, {"position": pos, **art})
                if rng.random() < 0.3 / pos:
                    t += rng.randint(1_000, 20_000)
                    emit("article_click", t, art)
                    t += rng.randint(1_000, 5_000)
                    emit("article_view", t, art)
            elif r < 0.7:
                emit("article_view", t, art)
            elif r < 0.8:
                emit("page_view", t)
            elif r < 0.88:
                emit("video_play", t, art)
            else:
                req = f"{uid}-r{n}"
                emit("ad_request", t, {"request_id": req})
                emit("ad_impression", t + 200, {"request_id": req, "placement": "sidebar"})
                if rng.random() < 0.05:
                    emit("ad_click", t + rng.randint(1_000, 9_000), {"request_id": req, "placement": "sidebar"})
                    t += 10_000
        if rng.random() < 0.02:
            emit("newsletter_signup", t + 1_000)
        if not subscribed and rng.random() < 0.005:
            subscribed = True
            emit("subscription", t + 2_000, {"revenue": 9.99})
        t += 5_000
        if rng.random() < 0.9:
            emit("session_end", t, {"duration_ms": t - t0})
        t += int(rng.expovariate(rate) * DAY_MS) + 60_000
