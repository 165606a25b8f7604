"""Label definitions shared by the simulator (ground truth), batch training and backtests.

One definition, so that the simulator's "expected engagement" is the expectation of exactly the
quantity the engagement model is trained on, and churn means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

DAY_MS = 86_400_000

#: Churned = no activity at all in the 30 days after the cut-off (the original system's definition).
CHURN_HORIZON_MS = 30 * DAY_MS
#: Converted = a newsletter sign-up or a subscription within this horizon after the cut-off.
CONVERSION_HORIZON_MS = 14 * DAY_MS
#: Clicked = an article_click of the same user, session and article at most this long after the
#: article_impression (batch training's click label and the worker's online join).
CLICK_WINDOW_MS = 30 * 60_000

#: Engagement points per event type; session duration adds points per minute (capped).
ENGAGEMENT_WEIGHTS: Mapping[str, float] = {
    "article_view": 2.0,
    "article_click": 4.0,
    "video_play": 5.0,
    "newsletter_signup": 15.0,
    "subscription": 25.0,
}
ENGAGEMENT_POINTS_PER_MINUTE = 0.5
ENGAGEMENT_MAX_MINUTES = 60.0
ENGAGEMENT_CAP = 100.0


def engagement_score(counts: Mapping[str, int], duration_ms: int) -> float:
    """Engagement of one session from its event counts by type and its duration.

    >>> engagement_score({"article_view": 3, "article_click": 1}, duration_ms=4 * 60_000)
    12.0
    """
    return engagement_of_points(sum(ENGAGEMENT_WEIGHTS.get(kind, 0.0) * n for kind, n in counts.items()), duration_ms)


def engagement_of_points(points: float, duration_ms: int) -> float:
    """:func:`engagement_score` from the session's event points (weights times counts, summed in order)."""
    minutes = min(max(duration_ms, 0) / 60_000.0, ENGAGEMENT_MAX_MINUTES)
    return float(min(points + ENGAGEMENT_POINTS_PER_MINUTE * minutes, ENGAGEMENT_CAP))


def session_engagement(events: Iterable[Mapping[str, Any]]) -> float:
    """Engagement of one session from its events.

    Duration is the ``duration_ms`` of its ``session_end`` if there is one, else the span of
    event times.
    """
    counts: dict[str, int] = {}
    first = last = None
    end_duration = None
    for ev in events:
        kind = ev["event_type"]
        counts[kind] = counts.get(kind, 0) + 1
        t = ev["event_time"]
        first = t if first is None else min(first, t)
        last = t if last is None else max(last, t)
        if kind == "session_end" and ev.get("duration_ms") is not None:
            end_duration = int(ev["duration_ms"])
    duration = end_duration if end_duration is not None else (0 if first is None else last - first)
    return engagement_score(counts, duration)


def session_engagement_frame(events: pd.DataFrame, time_col: str = "event_time") -> pd.Series:
    """:func:`session_engagement` of every session in ``events`` at once, indexed by session_id.

    Needs columns ``session_id``, ``event_type``, ``duration_ms`` and ``time_col`` (epoch ms).
    """
    kinds = events["event_type"].astype(str)
    points = kinds.map(dict(ENGAGEMENT_WEIGHTS)).fillna(0.0).astype(float)
    g = pd.DataFrame(
        {
            "s": events["session_id"].astype(str).to_numpy(),
            "pts": points.to_numpy(),
            "t": events[time_col].astype("int64").to_numpy(),
            "dur": events["duration_ms"]
            .astype("Float64")
            .where(kinds == "session_end")
            .to_numpy(dtype=float, na_value=float("nan")),
        }
    )
    agg = g.groupby("s", sort=False).agg(pts=("pts", "sum"), t0=("t", "min"), t1=("t", "max"), dur=("dur", "max"))
    dur = agg["dur"].fillna(agg["t1"] - agg["t0"]).astype(float).clip(lower=0)
    minutes = (dur / 60_000.0).clip(upper=ENGAGEMENT_MAX_MINUTES)
    return (agg["pts"] + ENGAGEMENT_POINTS_PER_MINUTE * minutes).clip(upper=ENGAGEMENT_CAP)


def churned(next_event_time_ms: int | None, cutoff_ms: int) -> bool:
    """True if the user's first event after ``cutoff_ms`` is more than 30 days later (or never).

    >>> churned(None, 0), churned(CHURN_HORIZON_MS, 0), churned(CHURN_HORIZON_MS + 1, 0)
    (True, False, True)
    """
    return next_event_time_ms is None or next_event_time_ms - cutoff_ms > CHURN_HORIZON_MS
