"""Parity: the batch training sets equal what feeding the same events one by one gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batch_training.datasets import build_training_sets, frame_to_evs
from stream.clickhouse import events_to_frame, insert_events
from stream.state import (
    CLICK_FEATURES,
    ENGAGEMENT_FEATURES,
    USER_FEATURES,
    click_features,
    encode_event,
    engagement_features,
    new_article_state,
    new_user_state,
    update_article,
    update_user,
    user_features,
)
from stream.state.labels import CONVERSION_HORIZON_MS, churned, session_engagement
from stream.state.synthetic import generate_events


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return generate_events(n_users=30, days=30, seed=21)


@pytest.fixture(scope="module")
def sets(ch_module, events):
    insert_events(ch_module, events)
    insert_events(ch_module, events[:50])  # replayed duplicates must not change anything
    return build_training_sets(ch_module, users_per_chunk=10)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))


def test_frame_encoding_equals_dict_encoding(events: list[dict]) -> None:
    df = events_to_frame(events[:500])
    df["t"] = [e["event_time"] for e in events[:500]]
    assert frame_to_evs(df) == [encode_event(e) for e in events[:500]]


def test_user_snapshots_equal_streamed_state(sets, events: list[dict]) -> None:
    users = sets.users
    assert len(users) > 50
    end = max(e["event_time"] for e in events)
    assert (users["cutoff_ms"] + CONVERSION_HORIZON_MS <= end).all()
    for _, row in users.sample(25, random_state=1).iterrows():
        uid, c = row["user_id"], int(row["cutoff_ms"])
        mine = [e for e in events if e["user_id"] == uid]
        st = new_user_state()
        for e in mine:
            if e["event_time"] <= c:
                update_user(st, e)
        _same(row[list(USER_FEATURES.names)].to_numpy(dtype=np.float32), user_features(st, c))
        after = [e["event_time"] for e in mine if e["event_time"] > c]
        if not np.isnan(row["churned"]):
            assert row["churned"] == churned(min(after) if after else None, c)
        conv = any(
            c < e["event_time"] <= c + CONVERSION_HORIZON_MS
            and e["event_type"] in ("newsletter_signup", "subscription")
            for e in mine
        )
        assert row["converted"] == conv


def test_click_rows_equal_streamed_state(sets, events: list[dict]) -> None:
    clicks = sets.clicks
    assert len(clicks) == sum(e["event_type"] == "article_impression" for e in events)
    assert 0 < clicks["clicked"].mean() < 0.5
    order = sorted(events, key=lambda e: (e["event_time"], e["event_id"]))
    for _, row in clicks.sample(20, random_state=2).iterrows():
        imp = next(e for e in events if e["event_id"] == row["event_id"])
        user, art = new_user_state(), new_article_state()
        for e in events:
            before = (e["event_time"], e["event_id"]) < (imp["event_time"], imp["event_id"])
            if e["user_id"] == imp["user_id"] and before:
                update_user(user, e)
        for e in order:
            if e is imp:
                break
            if e.get("article_id") == imp["article_id"]:
                update_article(art, e)
        _same(row[list(CLICK_FEATURES.names)].to_numpy(dtype=np.float32), click_features(user, art, imp))
        clicked = any(
            e["event_type"] == "article_click"
            and e["session_id"] == imp["session_id"]
            and e["article_id"] == imp["article_id"]
            and 0 <= e["event_time"] - imp["event_time"] <= 30 * 60_000
            for e in events
        )
        assert row["clicked"] == clicked


def test_engagement_rows_equal_streamed_state(sets, events: list[dict]) -> None:
    eng = sets.engagement
    assert len(eng) == sum(e["event_type"] == "session_start" for e in events)
    for _, row in eng.sample(20, random_state=3).iterrows():
        start = next(e for e in events if e["event_id"] == row["event_id"])
        user = new_user_state()
        for e in events:
            before = (e["event_time"], e["event_id"]) < (start["event_time"], start["event_id"])
            if e["user_id"] == start["user_id"] and before:
                update_user(user, e)
        _same(row[list(ENGAGEMENT_FEATURES.names)].to_numpy(dtype=np.float32), engagement_features(user, start))
        label = session_engagement([e for e in events if e["session_id"] == start["session_id"]])
        assert row["engagement"] == pytest.approx(label)


def test_parallel_build_equals_serial(ch_module, sets) -> None:
    par = build_training_sets(ch_module, users_per_chunk=10, processes=2)
    for a, b in ((sets.users, par.users), (sets.clicks, par.clicks), (sets.engagement, par.engagement)):
        key = [c for c in ("user_id", "cutoff_ms", "event_id") if c in a.columns]
        pd.testing.assert_frame_equal(
            a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
        )
