"""One record never costs another: a batch that raises is undone and processed again record by record."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from stream.events.schema import validate
from stream.models.scoring import LoadedModel, ScoreError, ScoreRequest, score_requests
from stream.worker.processor import BatchProcessor, Record, Stores, StoreUnavailable, unpack_user
from tests.unit.test_processor import NOW_MS, PLACEMENTS, event_records, new_stores, scores_by_key

BAD_USER = "u-corrupt"


def _bad_user_events(template: dict[str, Any], n: int) -> list[dict[str, Any]]:
    return [{**template, "user_id": BAD_USER, "event_id": f"bad-{i}"} for i in range(n)]


def test_a_record_that_raises_is_dead_lettered_and_costs_no_other_record(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    valid = sim_events
    assert {"ad_impression", "ad_click", "ad_request"} <= {e["event_type"] for e in valid}
    bad = _bad_user_events(next(e for e in valid if e["event_type"] == "session_start"), 2)
    # One bad record in the middle, one last: the first attempt has changed most users' states by then.
    mid = len(valid) // 2
    mixed = valid[:mid] + bad[:1] + valid[mid:] + bad[1:]
    records = event_records(mixed)
    bad_offsets = [i for i, e in enumerate(mixed) if e["user_id"] == BAD_USER]
    stores = new_stores()
    stores.users[BAD_USER] = b"\x00not a user state"  # e.g. written by an incompatible version
    proc = BatchProcessor(models, PLACEMENTS)

    out = proc.process(records, stores, now_ms=NOW_MS)

    assert [env["source_offset"] for _, env in out.dead_letters] == bad_offsets
    for key, env in out.dead_letters:
        validate("dead_letter", env)
        assert key == BAD_USER.encode()
        assert env["error_kind"] == "processing_error"
        assert env["reason"].startswith("SchemaError: ")  # the exception's type and message
    assert proc.metrics.value("stream_invalid_events_total", reason="processing_error") == 2
    assert proc.metrics.value("stream_processing_errors_total", error="SchemaError") == 2
    assert proc.metrics.value("stream_isolated_batches_total") == 1

    # Everything else is exactly what a run without the bad records gives.
    clean = BatchProcessor(models, PLACEMENTS)
    clean_stores = new_stores()
    alone = clean.process(event_records(valid), clean_stores, now_ms=NOW_MS)
    assert scores_by_key(out.predictions) == scores_by_key(alone.predictions)
    assert len(out.predictions) == len(alone.predictions)
    assert [e for e, _ in out.article_events] == [e for e, _ in alone.article_events]
    states = {u: unpack_user(v)[1].to_bytes() for u, v in stores.users.items() if u != BAD_USER}
    assert states == {u: unpack_user(v)[1].to_bytes() for u, v in clean_stores.users.items()}
    assert stores.users[BAD_USER] == b"\x00not a user state"  # the failed records changed nothing
    # (ad_pending may differ: expired impressions are pruned when a user's ads are read, which
    # record-by-record processing does more often)
    assert stores.bandit == clean_stores.bandit
    assert proc.ads.own == clean.ads.own
    for name in ("stream_duplicate_events_total", "stream_redelivered_events_total"):
        assert proc.metrics.value(name) == clean.metrics.value(name) == 0
    assert proc.metrics.value("stream_events_total", event_type="session_start") == clean.metrics.value(
        "stream_events_total", event_type="session_start"
    )

    # Every record, the dead-lettered ones too, has its output: a redelivery is skipped.
    again = proc.process(records, stores, now_ms=NOW_MS)
    assert (again.predictions, again.dead_letters) == ([], [])
    assert proc.metrics.value("stream_redelivered_events_total") == len(records)


class _FailingWrites(dict):  # type: ignore[type-arg]
    def __setitem__(self, key: Any, value: Any) -> None:
        raise OSError("disk full")


def test_a_failing_store_is_not_blamed_on_a_record(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    records = event_records(sim_events[:50])
    proc = BatchProcessor(models, PLACEMENTS)
    broken = Stores(users=_FailingWrites(), ad_pending={}, articles={}, bandit={})
    with pytest.raises(StoreUnavailable, match="cannot write the worker's tables: OSError: disk full"):
        proc.process(records, broken, now_ms=NOW_MS)
    assert proc.metrics.value("stream_invalid_events_total", reason="processing_error") == 0

    # Nothing of the failed attempt remains: the same records, once the store works, give what a
    # fresh processor gives.
    out = proc.process(records, new_stores(), now_ms=NOW_MS)
    fresh = BatchProcessor(models, PLACEMENTS).process(records, new_stores(), now_ms=NOW_MS)
    assert scores_by_key(out.predictions) == scores_by_key(fresh.predictions)
    assert len(out.predictions) == len(fresh.predictions) > 0
    assert out.dead_letters == fresh.dead_letters == []


class _NaNBooster:
    def predict(self, x: np.ndarray, num_threads: int = 1) -> np.ndarray:
        return np.where(x[:, 0] == 7.0, np.nan, 0.5)


def test_a_score_that_is_not_a_number_names_its_event() -> None:
    model = LoadedModel("click", "3", "lightgbm", _NaNBooster(), "click-v1")
    event = {"event_id": "e-7", "user_id": "u", "event_time": 1}
    requests = [ScoreRequest("click", [1.0], {**event, "event_id": "e-1"}, 0), ScoreRequest("click", [7.0], event, 0)]
    with pytest.raises(ScoreError, match="model click version 3 scored event 'e-7' as nan, expected a finite number"):
        score_requests({"click": model}, requests, 0)
    assert [p["score"] for p in score_requests({"click": model}, requests[:1], 0)] == [0.5]


def test_prediction_ids_tell_users_apart(models: dict[str, LoadedModel]) -> None:
    """An event is (user_id, event_id): two users' events with one event_id are two predictions."""
    base = {
        "schema_version": 1,
        "event_id": "same",
        "event_type": "session_start",
        "session_id": "s",
        "event_time": 1_767_225_600_000,
    }
    records = [
        Record(u.encode(), orjson.dumps({**base, "user_id": u}), "session-events", 0, i, None)
        for i, u in enumerate(["u1", "u2"])
    ]
    out = BatchProcessor(models, PLACEMENTS).process(records, new_stores(), now_ms=NOW_MS)
    assert [p["user_id"] for p in out.predictions] == ["u1", "u2"]
    assert len({p["prediction_id"] for p in out.predictions}) == 2
