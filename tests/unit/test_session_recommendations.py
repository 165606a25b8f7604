"""Recommendations at session_start, in process: the ranking-to-record function, one ranking per
batch, per-record failures, and the article-stats keys that are no article."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import orjson
import pytest

from stream.events import schema
from stream.models.recommend import RecommendModel
from stream.worker.parsing import Record
from stream.worker.recommendations import RecommendationFailed, Recommendations, recommendation_record
from tests.unit.test_recommend import HOUR, T0, _article, _recs

START = {
    "schema_version": 1,
    "event_id": "e-17",
    "event_type": "session_start",
    "user_id": "u-3",
    "session_id": "s-9",
    "event_time": 1_767_225_600_000,
}


def test_the_record_of_a_ranking() -> None:
    ranked = [
        {"article_id": "a-2", "score": 0.91, "reason": "collaborative"},
        {"article_id": "a-7", "score": 0.4, "reason": "popular"},
    ]
    rec = recommendation_record(START, ranked, "4", reads=12, k=10, now_ms=1_767_225_600_123)
    # the id: blake2b-128 of the JSON array of its parts, written out here (stream/events/ids.py)
    want_id = hashlib.blake2b(b'["recommendation","u-3","e-17"]', digest_size=16).hexdigest()
    assert rec == {
        "schema_version": 1,
        "recommendation_id": want_id,
        "user_id": "u-3",
        "session_id": "s-9",
        "event_id": "e-17",
        "event_time": 1_767_225_600_000,
        "model_version": "4",
        "k": 10,
        "reads": 12,
        "recommendations": [
            {"article_id": "a-2", "score": 0.91, "reason": "collaborative"},
            {"article_id": "a-7", "score": 0.4, "reason": "popular"},
        ],
        "recommended_at": 1_767_225_600_123,
    }
    schema.validate("recommendation", rec)
    # a replayed session_start gets the same id; another user's event of the same id another one
    assert recommendation_record(START, [], None, 0, 10, 5)["recommendation_id"] == want_id
    other = recommendation_record({**START, "user_id": "u-4"}, [], None, 0, 10, 5)
    assert other["recommendation_id"] != want_id
    schema.validate("recommendation", other)  # no model, nothing to recommend: still a valid record


def _record(offset: int) -> Record:
    return Record(b"u", b"{}", "session-events", 0, offset, None)


def _start(uid: str, n: int) -> dict[str, Any]:
    return {**START, "user_id": uid, "event_id": f"e-{n}", "session_id": f"s-{n}"}


def _articles() -> dict[bytes, bytes]:
    t0 = T0 // HOUR * HOUR
    newest = t0 + 20 * HOUR + 5
    return {
        # 1 impression + 3 views in the 2 whole hours since it was first seen: 2 an hour (the view in
        # the newest event's hour does not count yet)
        b"a": _article([newest - HOUR] * 3 + [newest], t0 + 18 * HOUR),
        b"b": _article([newest - 2 * HOUR] * 2, t0),  # 2 views in the 12-hour window: 1/6 an hour
        b"c": _article([newest - 3 * HOUR] * 1, t0),  # 1/12 an hour
        # an article partition's folded watermarks live in the same table (agents/watermarks.py)
        b"\x00wm:0": orjson.dumps({"0": [newest, False]}),
    }


def test_session_starts_get_the_popular_articles_they_have_not_read() -> None:
    recs = _recs(None, _articles(), 96)
    recs.reads = {"u-1": b"a"}  # stored earlier: u-1 read a
    starts = [(_record(1), _start("u-1", 1)), (_record(2), _start("u-2", 2)), (_record(3), _start("u-2", 3))]
    # u-2 read b in this batch before both (record() returned it): excluded although not in the table yet
    reads_at = {id(starts[1][1]): ["b"], id(starts[2][1]): ["b"]}
    made, failed = recs.at_session_start(starts, reads_at, k=2, now_ms=7)
    assert failed == []
    assert [(r["user_id"], r["event_id"], [a["article_id"] for a in r["recommendations"]]) for r in made] == [
        ("u-1", "e-1", ["b", "c"]),
        ("u-2", "e-2", ["a", "c"]),
        ("u-2", "e-3", ["a", "c"]),
    ]
    assert [r["reads"] for r in made] == [1, 1, 1] and {r["model_version"] for r in made} == {None}
    # exposure only, relative to the best rate the user has left: a (2/h) over c (1/12 h), b (1/6 h) over c
    assert [[a["score"] for a in r["recommendations"]] for r in made][:2] == [
        [pytest.approx(1.01, abs=1e-6), pytest.approx(0.51, abs=1e-6)],  # scores have 6 decimals
        [pytest.approx(1.01, abs=1e-6), pytest.approx(1 / 24 + 0.01, abs=1e-6)],
    ]


def test_record_stores_the_reads_and_returns_each_session_starts_reads_up_to_it() -> None:
    recs = Recommendations(None, {"u-1": b"a\nb"}, {}, 96, 3)  # type: ignore[arg-type]
    view = {"event_type": "article_view", "user_id": "u-1", "article_id": "a"}
    first, second, other = _start("u-1", 1), _start("u-1", 2), _start("u-3", 3)
    events = [first, view, {**view, "article_id": "c"}, second, {**view, "user_id": "u-2", "article_id": "d"}, other]
    at = recs.record(events, at_starts=True)
    assert recs.reads == {"u-1": b"b\na\nc", "u-2": b"d"}
    # first: what was stored before the batch; second: with the batch's two reads before it; u-3: none
    assert at == {id(first): ["a", "b"], id(second): ["b", "a", "c"], id(other): []}
    assert recs.record(events) == {}  # not asked for: nothing returned, the reads stored again (idempotent)
    assert recs.reads == {"u-1": b"b\na\nc", "u-2": b"d"}


def test_a_session_start_is_ranked_without_the_reads_after_it_as_one_event_per_batch_ranks_it() -> None:
    view = {"event_type": "article_view", "user_id": "u-1", "article_id": "b"}
    events = [
        view,
        _start("u-1", 1),  # u-1 has read a (stored) and b (this batch) by now, not c
        {**view, "article_id": "c"},
        _start("u-2", 2),  # u-2 has read nothing by now
        {**view, "user_id": "u-2", "article_id": "a"},
        _start("u-1", 3),  # u-1 has read a, b and c by now
    ]
    records = [_record(i) for i in range(len(events))]

    def starts_of(idx: range) -> list[tuple[Record, dict[str, Any]]]:
        return [(records[i], events[i]) for i in idx if events[i]["event_type"] == "session_start"]

    batch = _recs(None, _articles(), 96)
    batch.reads = {"u-1": b"a"}
    made, failed = batch.at_session_start(starts_of(range(6)), batch.record(events, True), k=2, now_ms=7)
    assert failed == []
    got = [(r["event_id"], r["reads"], [a["article_id"] for a in r["recommendations"]]) for r in made]
    # exposure rates a 2/h, b 1/6 h, c 1/12 h (_articles): the best two not read by then
    assert got == [("e-1", 2, ["c"]), ("e-2", 0, ["a", "b"]), ("e-3", 3, [])]
    # one event per batch gives the same records
    alone = _recs(None, _articles(), 96)
    alone.reads = {"u-1": b"a"}
    one_by_one = []
    for i in range(6):
        at = alone.record(events[i : i + 1], True)
        one_by_one += alone.at_session_start(starts_of(range(i, i + 1)), at, k=2, now_ms=7)[0]
    assert one_by_one == made
    assert alone.reads == batch.reads == {"u-1": b"a\nb\nc", "u-2": b"a"}


def test_a_ranking_that_fails_fails_its_session_start_only() -> None:
    # the model knows article a alone, with a NaN factor, and a is no candidate: u-1, who read a,
    # cannot be folded in (NNLS refuses the NaN); u-2, who read nothing, is ranked by exposure
    model = RecommendModel.from_params(
        "1",
        {"weights": {"cf": 0.5, "content": 0.25, "popularity": 0.25}, "item_ids": ["a"], "item_factors": [[np.nan]]},
    )
    arts = _articles()
    recs = _recs(model, {k: v for k, v in arts.items() if k != b"a"}, 96)
    recs.reads = {}
    starts = [(_record(1), _start("u-1", 1)), (_record(2), _start("u-2", 2))]
    made, failed = recs.at_session_start(starts, {id(starts[0][1]): ["a"]}, k=5, now_ms=7)
    assert [r["user_id"] for r in made] == ["u-2"]
    # without a, the newest event is b's view, whose hour is not complete yet: c (1/12 an hour) over b (0)
    assert [a["article_id"] for a in made[0]["recommendations"]] == ["c", "b"]
    [(rec, exc)] = failed
    assert rec.offset == 1 and isinstance(exc, RecommendationFailed)
    assert str(exc).startswith("recommendations at session_start: ValueError: ")


def test_an_article_state_that_cannot_be_read_fails_the_session_starts_not_the_worker() -> None:
    recs = _recs(None, {**_articles(), b"bad": b"\xff not an article state"}, 96)
    recs.reads = {}
    starts = [(_record(1), _start("u-1", 1)), (_record(2), _start("u-2", 2))]
    made, failed = recs.at_session_start(starts, {}, k=2, now_ms=7)
    assert made == []
    assert [rec.offset for rec, _ in failed] == [1, 2]  # each to the dead-letter topic, with its reason
    assert all(str(exc).startswith("recommendations at session_start: ") for _, exc in failed)


class _BrokenRegistry:
    """A registry whose alias cannot be read (a model store gone away)."""

    def alias_token(self, name: str) -> object:
        raise OSError(f"models directory unreadable ({name})")


def test_an_unreadable_registry_keeps_the_loaded_model() -> None:
    model = RecommendModel.from_params(
        "3", {"weights": {"cf": 0.5, "content": 0.25, "popularity": 0.25}, "item_ids": ["a"], "item_factors": [[1.0]]}
    )
    recs = Recommendations(_BrokenRegistry(), {}, _articles(), 96, 50)  # type: ignore[arg-type]
    recs.model = model
    recs.refresh_model(force=True)  # logs a warning, raises nothing
    assert recs.model is model
    made, failed = recs.at_session_start([(_record(1), _start("u-1", 1))], {}, k=2, now_ms=7)
    assert failed == [] and made[0]["model_version"] == "3"


class _CountingRegistry:
    """A registry with no recommendation model, counting how often its alias is checked."""

    def __init__(self) -> None:
        self.checks = 0

    def alias_token(self, name: str) -> object:
        self.checks += 1
        return None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("refresh_s", "at", "checks"), [(30.0, [0, 5, 29.9, 30, 45, 60], [1, 1, 1, 2, 2, 3]), (0.0, [0, 0, 1], [1, 2, 3])]
)
def test_the_models_alias_is_checked_as_often_as_the_refresh_setting_says(
    refresh_s: float, at: list[float], checks: list[int]
) -> None:
    registry, clock = _CountingRegistry(), _Clock()
    recs = Recommendations(registry, {}, {}, 96, 50, refresh_s=refresh_s, clock=clock)  # type: ignore[arg-type]
    seen = []
    for t in at:
        clock.now = 1000.0 + t
        recs.refresh_model()
        seen.append(registry.checks)
    assert seen == checks
