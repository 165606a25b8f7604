"""fold_article_events: the article table's fold, shared by the article agent and the backtest."""

from __future__ import annotations

from typing import Any

from stream.state import ARTICLE_FEATURES, ArticleState, article_features, fold_article_events, new_article_state
from stream.state.config import HOUR_MS

T0 = 1_736_000_000_000


def _ev(i: int, kind: str, article: str, t: int) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": f"e{i}",
        "event_type": kind,
        "user_id": "u",
        "session_id": "s",
        "event_time": t,
        "article_id": article,
        "position": 1,
    }


def _totals(state: ArticleState) -> list[float]:
    """(impressions, clicks, views) as the article features report them once every event is past."""
    v = article_features(state, T0 + 30 * HOUR_MS)  # features count the events before their as-of time
    return [float(v[ARTICLE_FEATURES.names.index(f"art_{k}_total")]) for k in ("impressions", "clicks", "views")]


def test_counts_each_articles_events_and_asks_for_each_state_once() -> None:
    events = [
        _ev(0, "article_impression", "a", T0),
        _ev(1, "article_click", "a", T0 + 1),
        _ev(2, "article_impression", "b", T0 + 2),
        _ev(3, "article_view", "a", T0 + 3),
        _ev(4, "article_impression", "a", T0 + 4),
    ]
    asked: list[str] = []

    def state_of(aid: str) -> ArticleState:
        asked.append(aid)
        return new_article_state()

    touched = fold_article_events(events, state_of)
    assert asked == ["a", "b"]
    assert _totals(touched["a"]) == [2.0, 1.0, 1.0]
    assert _totals(touched["b"]) == [1.0, 0.0, 0.0]


def test_continues_from_the_stored_state() -> None:
    stored = fold_article_events([_ev(0, "article_impression", "a", T0)], lambda _: new_article_state())["a"]
    again = fold_article_events(
        [_ev(1, "article_impression", "a", T0 + 1)], lambda _: ArticleState.from_bytes(stored.to_bytes())
    )
    assert _totals(again["a"]) == [2.0, 0.0, 0.0]


def test_accepts_events_from_partitions_hours_apart() -> None:
    """Merged partitions are skewed: an event 20 h behind the article's newest still counts (a day of lateness)."""
    events = [_ev(0, "article_impression", "a", T0 + 20 * HOUR_MS), _ev(1, "article_impression", "a", T0)]
    state = fold_article_events(events, lambda _: new_article_state())["a"]
    assert state.late == 0
    assert _totals(state) == [2.0, 0.0, 0.0]
