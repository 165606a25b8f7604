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
    # u-2 read b in this batch (record() returned it): excluded although not in the table yet
    made, failed = recs.at_session_start(starts, {"u-2": ["b"]}, k=2, now_ms=7)
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


def test_record_returns_the_reads_it_stored() -> None:
    recs = Recommendations(None, {"u-1": b"a\nb"}, {}, 96, 3)  # type: ignore[arg-type]
    view = {"event_type": "article_view", "user_id": "u-1", "article_id": "a"}
    stored = recs.record([view, {**view, "article_id": "c"}, {**view, "user_id": "u-2", "article_id": "d"}])
    assert stored == {"u-1": ["b", "a", "c"], "u-2": ["d"]}
    assert recs.reads == {"u-1": b"b\na\nc", "u-2": b"d"}


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
    made, failed = recs.at_session_start(starts, {"u-1": ["a"]}, k=5, now_ms=7)
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
