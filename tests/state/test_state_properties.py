"""Order, duplicates and serialization: properties that must hold for any input (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.state import (
    USER_FEATURES,
    ArticleState,
    Outcome,
    StateConfig,
    UserState,
    apply_user,
    new_article_state,
    new_user_state,
    update_article,
    update_user,
    user_features,
)
from stream.state.codes import EVENT_TYPES

BASE = 1_735_689_600_000
LATENESS = 300_000
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def user_events(draw: st.DrawFn, max_size: int = 60) -> list[dict]:
    """A user's events: a few sessions, random types and attributes, times in ms (may tie)."""
    n = draw(st.integers(1, max_size))
    t = BASE + draw(st.integers(0, 10**9))
    out = []
    for i in range(n):
        t += draw(st.sampled_from([0, 1, 999, 30_000, 200_000, 3_600_000, 86_400_000, 9 * 86_400_000]))
        kind = draw(st.sampled_from(EVENT_TYPES))
        ev = {
            "schema_version": 1,
            "event_id": f"e{i}",
            "event_type": kind,
            "user_id": "u",
            "session_id": f"s{draw(st.integers(0, 4))}",
            "event_time": t,
            "device": {
                "type": draw(st.sampled_from(["desktop", "mobile", "tablet"])),
                "os": draw(st.sampled_from(["iOS", "Android", "Windows", "Plan9"])),
            },
            "geo": {
                "country": draw(st.sampled_from(["DE", "FR", "US", "JP", "BR", "IN"])),
                "city": draw(st.sampled_from(["a", "b", "c", "d", "e", "f"])),
                "timezone": "Europe/Berlin",
            },
        }
        if kind in ("article_view", "article_click", "article_impression", "video_play"):
            ev.update(
                article_id=f"a{draw(st.integers(0, 3))}",
                brand=f"b{draw(st.integers(0, 30))}",
                category=f"c{draw(st.integers(0, 40))}",
            )
        if kind == "article_impression":
            ev["position"] = draw(st.integers(1, 10))
        if kind == "session_end":
            ev["duration_ms"] = draw(st.integers(0, 3_600_000))
        if kind == "subscription":
            ev["revenue"] = draw(st.sampled_from([4.99, 9.99]))
        out.append(ev)
    return out


def _feed(events: list[dict], cfg: StateConfig = StateConfig()) -> UserState:
    s = new_user_state()
    for e in events:
        update_user(s, e, cfg)
    return s


def _within_lateness(events: list[dict], delays: list[int]) -> list[dict]:
    """Arrival order by time + delay with 0 <= delay <= lateness: no event arrives too late."""
    order = sorted(range(len(events)), key=lambda i: (events[i]["event_time"] + delays[i], i))
    return [events[i] for i in order]


@SETTINGS
@given(user_events(), st.data())
def test_any_order_within_lateness_gives_identical_state(events: list[dict], data: st.DataObject) -> None:
    delays = data.draw(st.lists(st.integers(0, LATENESS), min_size=len(events), max_size=len(events)))
    a = _feed(events)
    b = _feed(_within_lateness(events, delays))
    assert b.late == 0
    assert a.to_bytes() == b.to_bytes()
    t = max(e["event_time"] for e in events) + 1000
    np.testing.assert_array_equal(user_features(a, t), user_features(b, t))


@SETTINGS
@given(user_events(), st.data())
def test_duplicates_change_nothing(events: list[dict], data: st.DataObject) -> None:
    once = _feed(events)
    s = new_user_state()
    for i, e in enumerate(events):
        update_user(s, e)
        # re-deliver one of the recent events (within the dedup horizon)
        j = data.draw(st.integers(max(0, i - 8), i))
        assert apply_user(s, events[j]) is Outcome.DUPLICATE
    assert s.to_bytes() == once.to_bytes()


@SETTINGS
@given(user_events(), st.integers(0, 10**7))
def test_serialization_round_trip_is_exact(events: list[dict], extra_ms: int) -> None:
    s = new_user_state()
    for e in events:
        update_user(s, e)
        back = UserState.from_bytes(s.to_bytes())
        assert back.to_bytes() == s.to_bytes()
    t = events[-1]["event_time"] + extra_ms
    np.testing.assert_array_equal(user_features(back, t), user_features(s, t))
    assert len(user_features(s, t)) == len(USER_FEATURES)


@SETTINGS
@given(user_events())
def test_too_late_events_are_ignored_and_counted(events: list[dict]) -> None:
    s = _feed(events)
    before = s.to_bytes()
    late = dict(events[0], event_id="late-1", event_time=s.max_t - LATENESS - 1)
    assert apply_user(s, late) is Outcome.LATE
    assert s.late == 1
    s.late = 0
    assert s.to_bytes() == before


@SETTINGS
@given(user_events(), st.data())
def test_article_state_is_order_independent_and_round_trips(events: list[dict], data: st.DataObject) -> None:
    delays = data.draw(st.lists(st.integers(0, LATENESS), min_size=len(events), max_size=len(events)))
    a, b = new_article_state(), new_article_state()
    for e in events:
        update_article(a, e)
    for e in _within_lateness(events, delays):
        update_article(b, e)
    assert a.to_bytes() == b.to_bytes() and b.late == 0
    assert ArticleState.from_bytes(a.to_bytes()) == a


def test_zero_lateness_still_deduplicates() -> None:
    cfg = StateConfig(lateness_ms=0)
    s = new_user_state()
    ev = {"event_id": "x", "event_type": "page_view", "user_id": "u", "session_id": "s", "event_time": BASE}
    assert apply_user(s, ev, cfg) is Outcome.APPLIED
    assert apply_user(s, ev, cfg) is Outcome.DUPLICATE
    assert apply_user(s, dict(ev, event_id="y", event_time=BASE - 1), cfg) is Outcome.LATE


@SETTINGS
@given(user_events(), st.data())
def test_rows_after_every_event_equal_a_fresh_decode(events: list[dict], data: st.DataObject) -> None:
    """The session view a state keeps up to date equals one rebuilt from scratch, in any arrival order.

    A decoded state has no view yet and builds it from ``sess`` and the buffered events; the live
    state advanced its view event by event (or dropped it after an out-of-order event).
    """
    delays = data.draw(st.lists(st.integers(0, LATENESS), min_size=len(events), max_size=len(events)))
    s = new_user_state()
    for i, e in enumerate(_within_lateness(events, delays)):
        update_user(s, e)
        if data.draw(st.booleans(), label=f"row after event {i}"):  # a row builds the view
            t = s.max_t + data.draw(st.sampled_from([0, 1, 600_000]))
            fresh = UserState.from_bytes(s.to_bytes())
            np.testing.assert_array_equal(user_features(s, t), user_features(fresh, t))
