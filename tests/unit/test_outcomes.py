"""The online join of click and engagement predictions with their outcomes (stream/worker/outcomes.py).

Expected labels are written out by hand from batch training's definitions (an article_click of the
same user, session and article within the window; the engagement points of the session's events).
"""

from __future__ import annotations

from typing import Any

import pytest

from stream.state.labels import CLICK_WINDOW_MS
from stream.worker.outcomes import Joined, OutcomeJoiner

W = CLICK_WINDOW_MS


def ev(kind: str, t: int, user: str = "u1", session: str = "s1", article: str | None = None, **kw: Any) -> dict:
    return {"event_type": kind, "user_id": user, "session_id": session, "article_id": article, "event_time": t, **kw}


def pred(model: str, event: dict, score: float, version: str = "7", **kw: Any) -> dict:
    return {
        "model_name": model,
        "model_version": version,
        "prediction_id": f"{model}:{event['user_id']}:{event['event_time']}",
        "user_id": event["user_id"],
        "session_id": event["session_id"],
        "article_id": event["article_id"],
        "event_time": event["event_time"],
        "score": score,
        **kw,
    }


def test_the_click_window_is_the_batch_training_label_window() -> None:
    import inspect

    from batch_training.datasets import build_training_sets

    assert inspect.signature(build_training_sets).parameters["click_window_ms"].default == CLICK_WINDOW_MS == 1_800_000


def test_a_click_of_the_same_user_session_and_article_within_the_window_is_positive() -> None:
    j = OutcomeJoiner()
    imp = ev("article_impression", 1_000, article="a1")
    click = ev("article_click", 1_000 + W, article="a1")  # the window's last millisecond still counts
    assert j.join(0, [pred("click", imp, 0.8)], [imp]) == []
    assert j.pending == 1
    assert j.join(0, [], [click]) == [Joined("click", "7", 1.0, 0.8, 1_000 + W)]
    assert j.pending == 0


def test_impression_and_click_in_one_batch_join() -> None:
    j = OutcomeJoiner()
    imp = ev("article_impression", 1_000, article="a1")
    out = j.join(0, [pred("click", imp, 0.3)], [imp, ev("page_view", 2_000), ev("article_click", 3_000, article="a1")])
    assert out == [Joined("click", "7", 1.0, 0.3, 3_000)]


@pytest.mark.parametrize(
    "other",
    [
        ev("article_click", 5_000, article="a2"),  # another article
        ev("article_click", 5_000, session="s2", article="a1"),  # another session
        ev("article_click", 5_000, user="u2", article="a1"),  # another user
    ],
)
def test_a_click_on_something_else_does_not_join(other: dict) -> None:
    j = OutcomeJoiner()
    imp = ev("article_impression", 1_000, article="a1")
    assert j.join(0, [pred("click", imp, 0.5)], [imp, other]) == []
    assert j.pending == 1


def test_negative_once_a_later_event_of_the_user_is_past_the_window() -> None:
    j = OutcomeJoiner()
    imp = ev("article_impression", 1_000, article="a1")
    j.join(0, [pred("click", imp, 0.4)], [imp])
    assert j.join(0, [], [ev("page_view", 1_000 + W)]) == []  # not past it yet
    late_click = ev("article_click", 1_001 + W, article="a1")
    assert j.join(0, [], [late_click]) == [Joined("click", "7", 0.0, 0.4, 1_001 + W)]
    assert j.pending == 0


def test_negative_at_the_end_of_the_impressions_session() -> None:
    j = OutcomeJoiner()
    imp = ev("article_impression", 1_000, article="a1")
    other = ev("article_impression", 1_500, session="s2", article="a2")
    j.join(0, [pred("click", imp, 0.1), pred("click", other, 0.2)], [imp, other])
    assert j.join(0, [], [ev("session_end", 2_000, duration_ms=1_000)]) == [Joined("click", "7", 0.0, 0.1, 2_000)]
    assert j.pending == 1  # the other session's impression still waits


def test_a_quiet_users_clicks_close_when_the_partitions_event_time_passes_window_and_lateness() -> None:
    j = OutcomeJoiner(lateness_ms=60_000)
    imp = ev("article_impression", 0, article="a1")
    j.join(0, [pred("click", imp, 0.6)], [imp])
    assert j.join(0, [], [ev("page_view", W + 60_000, user="u2")]) == []  # within the lateness
    out = j.join(0, [], [ev("page_view", W + 60_000 + 61_000, user="u2")])
    assert out == [Joined("click", "7", 0.0, 0.6, W)]
    assert j.join(1, [], [ev("page_view", 10 * W, user="u3")]) == []  # another partition's time


def test_engagement_is_the_sessions_points_at_session_end() -> None:
    j = OutcomeJoiner()
    start = ev("session_start", 0)
    batch1 = [start, ev("article_view", 10_000, article="a1"), ev("article_click", 20_000, article="a1")]
    batch2 = [
        ev("video_play", 30_000),
        ev("page_view", 40_000, session="s2"),  # another session of the user: not counted
        ev("article_view", 50_000, article="a2"),
        ev("session_end", 60_000, duration_ms=4 * 60_000),
    ]
    assert j.join(0, [pred("engagement", start, 9.5)], batch1) == []
    # 2 + 4 + 5 + 2 points, and 4 minutes at 0.5 a minute
    assert j.join(0, [], batch2) == [Joined("engagement", "7", 15.0, 9.5, 60_000)]
    assert j.pending == 0


def test_engagement_without_duration_uses_the_span_of_the_sessions_events() -> None:
    j = OutcomeJoiner()
    start = ev("session_start", 0)
    out = j.join(0, [pred("engagement", start, 1.0)], [start, ev("session_end", 2 * 60_000)])
    assert out == [Joined("engagement", "7", 1.0, 1.0, 2 * 60_000)]


def test_a_session_that_never_ends_is_dropped_unlabelled() -> None:
    j = OutcomeJoiner(lateness_ms=0, session_timeout_ms=60_000)
    start = ev("session_start", 0)
    j.join(0, [pred("engagement", start, 1.0)], [start])
    assert j.join(0, [], [ev("page_view", 10 * 60_000, user="u2")]) == []
    assert j.pending == 0 and j.dropped == {"no_session_end": 1}


def test_revoke_drops_that_partitions_pending_predictions_only() -> None:
    j = OutcomeJoiner()
    a = ev("article_impression", 0, article="a1")
    b = ev("session_start", 0, user="u2")
    j.join(0, [pred("click", a, 0.5)], [a])
    j.join(1, [pred("engagement", b, 3.0)], [b])
    assert j.forget({0}) == 1
    assert j.pending == 1 and j.dropped == {"revoked": 1}
    assert j.join(0, [], [ev("article_click", 10, article="a1")]) == []  # the new owner's business now
    assert j.join(1, [], [ev("session_end", 60_000, user="u2", duration_ms=0)]) == [
        Joined("engagement", "7", 0.0, 3.0, 60_000)
    ]


def test_replayed_and_other_models_predictions_are_not_joined_and_a_duplicate_waits_once() -> None:
    j = OutcomeJoiner()
    imp = ev("article_impression", 0, article="a1")
    end = ev("session_end", 0)
    preds = [pred("click", imp, 0.5, replayed=True), pred("churn", end, 0.2)]
    assert j.join(0, preds, [imp]) == [] and j.pending == 0
    j.join(0, [pred("click", imp, 0.5), pred("click", imp, 0.5)], [imp])
    assert j.pending == 1
    assert j.join(0, [], [ev("article_click", 5, article="a1")]) == [Joined("click", "7", 1.0, 0.5, 5)]


def test_at_most_max_pending_predictions_wait() -> None:
    j = OutcomeJoiner(max_pending=2)
    imps = [ev("article_impression", i, article=f"a{i}") for i in range(3)]
    j.join(0, [pred("click", e, 0.5) for e in imps], imps)
    assert j.pending == 2 and j.dropped == {"full": 1}
