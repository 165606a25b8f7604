"""stream.worker.processor.BatchProcessor on plain-dict stores with real (small) XGBoost models.

No Kafka: records are built here the way the events agent builds them from consumed messages.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from simulator import generate
from stream.events.schema import validate
from stream.models.scoring import LoadedModel
from stream.state import new_user_state
from stream.worker.processor import (
    BatchProcessor,
    Outputs,
    ProcessorConfig,
    Record,
    Stores,
    merged_counts,
    pack_user,
    unpack_user,
)
from tests.support.models import offline_scores
from tests.unit.conftest import SIM

TOPIC = "session-events"
NOW_MS = 1_736_500_000_000
PLACEMENTS = ("top_banner", "sidebar", "in_article", "footer")
TRIGGER_OF = {"click": "article_impression", "engagement": "session_start", "churn": "session_end"}


def new_stores() -> Stores:
    return Stores(users={}, ad_pending={}, articles={}, bandit={})


def to_records(
    payloads: Iterable[tuple[bytes | None, bytes | None]],
    partition: int = 0,
    first_offset: int = 0,
    timestamps: Iterable[int | None] | None = None,
) -> list[Record]:
    ts = iter(timestamps) if timestamps is not None else None
    return [
        Record(key, value, TOPIC, partition, first_offset + i, next(ts) if ts is not None else None)
        for i, (key, value) in enumerate(payloads)
    ]


def event_records(events: Sequence[Mapping[str, Any]], first_offset: int = 0) -> list[Record]:
    return to_records(
        ((e["user_id"].encode(), orjson.dumps(e)) for e in events),
        first_offset=first_offset,
        timestamps=(e["event_time"] for e in events),
    )


def run(processor: BatchProcessor, records: Sequence[Record], stores: Stores, batch: int) -> list[Outputs]:
    return [processor.process(records[i : i + batch], stores, now_ms=NOW_MS) for i in range(0, len(records), batch)]


def predictions(outs: Iterable[Outputs]) -> list[dict[str, Any]]:
    return [p for o in outs for p in o.predictions]


def scores_by_key(preds: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[float]]:
    """(model, event_id) -> sorted scores (a duplicate delivery is scored once per delivery)."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for p in preds:
        out[(p["model_name"], p["event_id"])].append(p["score"])
    return {k: sorted(v) for k, v in out.items()}


def processor(models: Mapping[str, LoadedModel], **kwargs: Any) -> BatchProcessor:
    return BatchProcessor(models, PLACEMENTS, ProcessorConfig(**kwargs))


# --- (a) dead letters -------------------------------------------------------------------------


def _event(**fields: Any) -> dict[str, Any]:
    base = {
        "schema_version": 1,
        "event_id": "e-x",
        "event_type": "page_view",
        "user_id": "u-x",
        "session_id": "s-x",
        "event_time": 1_736_200_000_000,
    }
    return {**base, **fields}


def test_rejected_records_become_dead_letters_and_valid_ones_are_still_processed(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    valid = sim_events[:60]
    assert {"session_start", "article_impression"} <= {e["event_type"] for e in valid}
    oversized = orjson.dumps(_event(event_id="e-big", user_id="ghost-big")) + b" " * 3000  # valid JSON, too long
    bad: list[tuple[bytes | None, bytes | None, str]] = [
        (b"k-tomb", None, "malformed"),  # a tombstone (null value)
        (b"k-empty", b"", "malformed"),
        (b"k-trunc", b'{"schema_version": 1, "event_id": "e-1", "event_ty', "malformed"),
        (None, b"[1, 2, 3]", "malformed"),
        (b"k-notutf8", b"\xff\xfe\x00garbage", "malformed"),
        (b"k-big", oversized, "oversized"),
        (b"k-tap", orjson.dumps(_event(event_type="tap", user_id="ghost-tap")), "unknown_type"),
        (b"k-notype", orjson.dumps(_event(event_type=17, user_id="ghost-17")), "unknown_type"),
        (b"k-time", orjson.dumps(_event(event_time="yesterday", user_id="ghost-time")), "invalid"),
        (
            b"k-noart",
            orjson.dumps(_event(event_type="article_impression", position=1, user_id="ghost-art")),
            "invalid",
        ),  # article_impression requires article_id
        (b"k-extra", orjson.dumps(_event(user_id="ghost-extra", colour="red")), "invalid"),
    ]
    # Interleave: bad record j goes after valid event 5 * j.
    payloads: list[tuple[bytes | None, bytes | None]] = []
    expected_dead: list[tuple[int, bytes | None, bytes | None, str]] = []  # (offset, key, value, kind)
    it = iter(bad)
    for i, ev in enumerate(valid):
        payloads.append((ev["user_id"].encode(), orjson.dumps(ev)))
        if i % 5 == 0:
            nxt = next(it, None)
            if nxt is not None:
                expected_dead.append((len(payloads), *nxt))
                payloads.append((nxt[0], nxt[1]))
    assert len(expected_dead) == len(bad)
    records = to_records(payloads, partition=2, first_offset=1000, timestamps=range(len(payloads)))

    proc = processor(models, max_event_bytes=2048)
    stores = new_stores()
    out = proc.process(records, stores, now_ms=NOW_MS)

    assert len(out.dead_letters) == len(bad)
    for (key, env), (pos, raw_key, raw_value, kind) in zip(out.dead_letters, expected_dead, strict=True):
        assert key == raw_key
        assert env["error_kind"] == kind
        assert base64.b64decode(env["value_b64"]) == (raw_value or b"")
        assert env["key_b64"] == (None if raw_key is None else base64.b64encode(raw_key).decode())
        assert (env["source_topic"], env["source_partition"], env["source_offset"]) == (TOPIC, 2, 1000 + pos)
        assert env["source_timestamp"] == pos
        assert env["received_at"] == NOW_MS
        assert env["reason"]
        validate("dead_letter", env)
    kinds = Counter(kind for *_, kind in bad)
    for kind, n in kinds.items():
        assert proc.metrics.value("stream_invalid_events_total", reason=kind) == n

    # The valid records of the same batch are processed as if the rejects were not there.
    n_scorable = sum(e["event_type"] in TRIGGER_OF.values() for e in valid)
    assert len(out.predictions) == n_scorable
    assert set(stores.users) == {e["user_id"] for e in valid}
    alone = processor(models).process(event_records(valid), new_stores(), now_ms=NOW_MS)
    assert scores_by_key(out.predictions) == scores_by_key(alone.predictions)


def test_size_limit_is_inclusive(models: dict[str, LoadedModel]) -> None:
    raw = orjson.dumps(_event())
    exact = processor(models, max_event_bytes=len(raw)).process(to_records([(b"k", raw)]), new_stores())
    assert exact.dead_letters == []
    over = processor(models, max_event_bytes=len(raw) - 1).process(to_records([(b"k", raw)]), new_stores())
    assert [env["error_kind"] for _, env in over.dead_letters] == ["oversized"]


# --- (b) predictions --------------------------------------------------------------------------


def test_exactly_one_prediction_per_scorable_event(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    outs = run(processor(models), event_records(sim_events), new_stores(), batch=100)
    preds = predictions(outs)
    by_id = {e["event_id"]: e for e in sim_events}
    for model, trigger in TRIGGER_OF.items():
        expected = Counter(e["event_id"] for e in sim_events if e["event_type"] == trigger)
        got = Counter(p["event_id"] for p in preds if p["model_name"] == model)
        assert expected, f"no {trigger} in the simulated history"
        assert got == expected, model
    assert len(preds) == sum(e["event_type"] in TRIGGER_OF.values() for e in sim_events)
    for p in preds:
        ev = by_id[p["event_id"]]
        assert p["model_version"] == "1"
        assert p["feature_version"] == models[p["model_name"]].feature_version
        assert (p["user_id"], p["session_id"], p["event_time"]) == (ev["user_id"], ev["session_id"], ev["event_time"])
        assert p["article_id"] == ev.get("article_id")
        assert np.isfinite(p["score"])
        if p["model_name"] in ("churn", "click"):  # binary:logistic
            assert 0.0 < p["score"] < 1.0
        validate("prediction", p)
    assert len({p["prediction_id"] for p in preds}) == len(preds)


def test_prediction_id_depends_on_event_and_model_version_only(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    records = event_records(sim_events[:300])

    def ids(ms: Mapping[str, LoadedModel], batch: int) -> dict[tuple[str, str], str]:
        outs = run(processor(ms, seed=batch), records, new_stores(), batch=batch)
        return {(p["model_name"], p["event_id"]): p["prediction_id"] for p in predictions(outs)}

    first = ids(models, 50)
    assert ids(models, 50) == first  # same events, same versions
    assert ids(models, 7) == first  # batching and seed do not matter
    bumped = {name: dataclasses.replace(m, version="2") for name, m in models.items()}
    second = ids(bumped, 50)
    assert second.keys() == first.keys()
    assert all(second[k] != first[k] for k in first)
    # Only the bumped model's ids change.
    click_only = {**models, "click": bumped["click"]}
    mixed = ids(click_only, 50)
    assert all((mixed[k] != first[k]) == (k[0] == "click") for k in first)


def test_churn_and_engagement_scores_match_an_independent_replay(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel], models_dir: Path
) -> None:
    """``offline_scores`` rebuilds rows from ``stream.state`` directly and predicts with a DMatrix.

    (Click rows also need the article table, which this processor run leaves empty.)
    """
    outs = run(processor(models), event_records(sim_events), new_stores(), batch=128)
    events: list[Mapping[str, Any]] = list(sim_events)
    offline = offline_scores(models_dir, events)
    got = scores_by_key(predictions(outs))
    for model in ("churn", "engagement"):
        assert offline[model]
        for event_id, score in offline[model].items():
            assert got[(model, event_id)] == [pytest.approx(score, abs=1e-6)]


def test_events_without_a_loaded_model_are_counted_not_scored(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    proc = processor({"churn": models["churn"]})
    outs = run(proc, event_records(sim_events), new_stores(), batch=200)
    assert {p["model_name"] for p in predictions(outs)} == {"churn"}
    n_impressions = sum(e["event_type"] == "article_impression" for e in sim_events)
    n_starts = sum(e["event_type"] == "session_start" for e in sim_events)
    assert proc.metrics.value("stream_unscored_events_total", model="click") == n_impressions
    assert proc.metrics.value("stream_unscored_events_total", model="engagement") == n_starts


# --- (c) batching does not change results -----------------------------------------------------


@pytest.fixture(scope="module")
def messy_records() -> list[Record]:
    """The same small history with late and duplicate deliveries and malformed records mixed in."""
    cfg = dataclasses.replace(SIM, late_share=0.05, late_max_ms=120_000, duplicate_share=0.05, malformed_share=0.01)
    return to_records(generate(cfg).iter_payloads(), timestamps=None)


@pytest.mark.parametrize("batch", [7, 500])
def test_batch_size_does_not_change_state_or_scores(
    messy_records: list[Record], models: dict[str, LoadedModel], batch: int
) -> None:
    one_stores, big_stores = new_stores(), new_stores()
    one = run(processor(models), messy_records, one_stores, batch=1)
    big = run(processor(models), messy_records, big_stores, batch=batch)

    assert one_stores.users == big_stores.users  # byte for byte
    assert one_stores.bandit == big_stores.bandit
    assert len(one_stores.users) >= 10  # the comparison is not vacuous

    one_scores, big_scores = scores_by_key(predictions(one)), scores_by_key(predictions(big))
    assert one_scores.keys() == big_scores.keys()
    for key, scores in one_scores.items():
        np.testing.assert_allclose(big_scores[key], scores, rtol=0, atol=1e-6, err_msg=str(key))
    assert sum(len(o.dead_letters) for o in one) == sum(len(o.dead_letters) for o in big) > 0


# --- (d) replays ------------------------------------------------------------------------------


def test_stored_offset_is_the_last_offset_applied_per_user(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    records = event_records(sim_events, first_offset=500)
    stores = new_stores()
    run(processor(models), records, stores, batch=64)
    last: dict[str, int] = {}
    for rec, ev in zip(records, sim_events, strict=True):
        last[ev["user_id"]] = rec.offset
    assert {uid: unpack_user(raw)[0] for uid, raw in stores.users.items()} == last


def _replay_setup(sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]) -> Any:
    records = event_records(sim_events)
    half = len(records) // 2
    reference = new_stores()  # everything once, in order
    run(processor(models), records, reference, batch=50)
    stores = new_stores()
    proc = processor(models)
    original = {
        (p["model_name"], p["event_id"]): p["prediction_id"]
        for p in predictions(run(proc, records[:half], stores, batch=50))
    }
    return records, half, reference, stores, proc, original


def test_replayed_records_after_a_crash_are_scored_but_do_not_change_state(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    records, half, reference, stores, _, original = _replay_setup(sim_events, models)
    replay_from = half - 150
    before = dict(stores.users)
    proc = processor(models)  # a crash: the in-memory caches are gone, the table (changelog) survived
    replayed = run(proc, records[replay_from:half], stores, batch=40)

    assert stores.users == before
    replayed_preds = predictions(replayed)
    n_scorable = sum(e["event_type"] in TRIGGER_OF.values() for e in sim_events[replay_from:half])
    assert n_scorable > 20
    assert len(replayed_preds) == n_scorable  # scored again: downstream dedups by prediction_id
    assert all(p["prediction_id"] == original[(p["model_name"], p["event_id"])] for p in replayed_preds)
    assert proc.metrics.value("stream_duplicate_events_total") == 0  # skipped by offset, not by event id

    # Carrying on from the replay ends in exactly the state of the uninterrupted run.
    run(proc, records[half:], stores, batch=50)
    assert stores.users == reference.users


def test_predictions_scored_from_a_state_that_already_holds_their_event_are_marked_replayed(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel], models_dir: Path
) -> None:
    """After a crash, click and engagement rows (built before their event is applied) see the
    stored state, which holds the event; a churn row sees it with the user's later events. Those
    predictions say ``"replayed": true`` so that ClickHouse keeps the first, exact score."""
    records, half, _ref, stores, _, _ = _replay_setup(sim_events, models)
    first = predictions(run(processor(models), records, new_stores(), batch=50))  # no crash
    replay_from = half - 150
    proc = processor(models)  # a restart after a crash: same tables, fresh process
    replayed = predictions(run(proc, records[replay_from:half], stores, batch=40))
    after = predictions(run(proc, records[half:], stores, batch=50))

    last_stored = {ev["user_id"]: rec.offset for rec, ev in zip(records[:half], sim_events[:half], strict=True)}
    offset_of = {ev["event_id"]: rec.offset for rec, ev in zip(records, sim_events, strict=True)}
    user_of = {ev["event_id"]: ev["user_id"] for ev in sim_events}

    def held_later(p: Mapping[str, Any]) -> bool:
        """Whether the stored state holds an event of the user after this one (written by hand)."""
        return offset_of[p["event_id"]] < last_stored[user_of[p["event_id"]]]

    assert not any("replayed" in p for p in first + after)
    for p in replayed:
        validate("prediction", p)
        want = p["model_name"] in ("click", "engagement") or held_later(p)
        assert p.get("replayed", False) is want, p
    assert {p["model_name"] for p in replayed if p.get("replayed")} == {"click", "engagement", "churn"}
    assert any(p["model_name"] == "churn" and "replayed" not in p for p in replayed)

    # Unmarked predictions have the exact score (churn and engagement: functions of the user state);
    # marked ones include some that differ, which is why the mark matters.
    offline = offline_scores(models_dir, list(sim_events))
    exact = [p for p in replayed + after if "replayed" not in p and p["model_name"] != "click"]
    assert exact and all(p["score"] == pytest.approx(offline[p["model_name"]][p["event_id"]], abs=1e-6) for p in exact)
    assert any(
        abs(p["score"] - offline[p["model_name"]][p["event_id"]]) > 1e-6
        for p in replayed
        if p.get("replayed") and p["model_name"] != "click"
    )


def test_records_delivered_again_to_the_same_process_are_skipped(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    """faust can hand a record to the stream twice (seek at the end of a recovery): no second
    prediction, whose score would come from state that already includes later events."""
    records, half, reference, stores, proc, _ = _replay_setup(sim_events, models)
    before = dict(stores.users)
    # A batch that goes on past the handled records, then jumps back into them (as seen live).
    batch = records[half : half + 30] + records[half - 100 : half + 40]
    out = proc.process(batch, stores, now_ms=NOW_MS)
    fresh = {e["event_id"] for e in sim_events[half : half + 40]}
    assert {p["event_id"] for p in out.predictions} <= fresh
    n_new = sum(e["event_type"] in TRIGGER_OF.values() for e in sim_events[half : half + 40])
    assert len(out.predictions) == n_new
    assert proc.metrics.value("stream_redelivered_events_total") == 100 + 30
    assert stores.users != before
    run(proc, records[half + 40 :], stores, batch=50)
    assert stores.users == reference.users

    # After a revocation the partition's mark is forgotten: a later owner's replay is scored.
    proc.forget_partitions({records[0].partition})
    again = proc.process(records[half - 10 : half], stores, now_ms=NOW_MS)
    assert len(again.predictions) == sum(e["event_type"] in TRIGGER_OF.values() for e in sim_events[half - 10 : half])


def test_records_skipped_before_a_redelivery_are_still_processed(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    """Only offsets actually handled are skipped: a gap in an earlier delivery is filled later."""
    records, half, _ref, stores, proc, _ = _replay_setup(sim_events, models)
    gap = records[half + 10 : half + 20]
    first = proc.process(records[half : half + 10] + records[half + 20 : half + 30], stores, now_ms=NOW_MS)
    again = proc.process(records[half : half + 40], stores, now_ms=NOW_MS)  # the gap and 10 new ones
    scored = {p["event_id"] for p in first.predictions} | {p["event_id"] for p in again.predictions}
    expected = {e["event_id"] for e in sim_events[half : half + 40] if e["event_type"] in TRIGGER_OF.values()}
    assert scored == expected
    assert {p["event_id"] for p in again.predictions} >= {
        orjson.loads(r.value)["event_id"] for r in gap if orjson.loads(r.value)["event_type"] in TRIGGER_OF.values()
    }
    assert proc.metrics.value("stream_redelivered_events_total") == 20


def test_replay_of_a_batch_mixing_old_and_new_records(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    """A batch that straddles the stored offsets: old records are skipped, new ones applied."""
    records = event_records(sim_events)
    reference = new_stores()
    run(processor(models), records, reference, batch=len(records))

    stores = new_stores()
    run(processor(models), records[:400], stores, batch=100)
    run(processor(models), records[300:], stores, batch=len(records))  # 100 replayed, then new ones
    assert stores.users == reference.users


def test_a_state_ahead_of_the_record_is_not_overwritten(models: dict[str, LoadedModel]) -> None:
    """The stored offset, not the event content, decides: offset <= stored -> state untouched."""
    ev = _event(event_type="session_start", user_id="u1", event_id="late-start")
    stores = new_stores()
    marker = pack_user(10, new_user_state())
    stores.users["u1"] = marker
    out = processor(models).process([Record(b"u1", orjson.dumps(ev), TOPIC, 0, 10, None)], stores, now_ms=NOW_MS)
    assert stores.users["u1"] == marker
    assert [p["model_name"] for p in out.predictions] == ["engagement"]
    out = processor(models).process([Record(b"u1", orjson.dumps(ev), TOPIC, 0, 11, None)], stores, now_ms=NOW_MS)
    offset, state = unpack_user(stores.users["u1"])
    assert offset == 11
    assert state != new_user_state()


# --- (e) ad events -> bandit counts -------------------------------------------------------------

T0 = 1_736_300_000_000
WINDOW = 60_000


_AD_EVENT_IDS = itertools.count()


def _ad(
    kind: str, rid: str, placement: str, t: int, *, user: str = "u1", device: str | None = "mobile"
) -> dict[str, Any]:
    ev = _event(
        event_type=kind,
        event_id=f"ad-{next(_AD_EVENT_IDS)}",
        user_id=user,
        session_id=f"s-{user}",
        event_time=t,
        request_id=rid,
        placement=placement,
    )
    if device is not None:
        ev["device"] = {"type": device}
    return ev


def ad_script() -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """Ad events and the bandit counts they must produce, worked out by hand."""
    events = [
        _ad("ad_impression", "r1", "top_banner", T0),  # trial    mobile|top_banner
        _ad("ad_click", "r1", "top_banner", T0 + 30_000),  # success  mobile|top_banner
        _ad("ad_impression", "r2", "sidebar", T0 + 1_000),  # trial    mobile|sidebar
        _ad("ad_click", "r2", "top_banner", T0 + 2_000),  # other placement: no success
        _ad("ad_impression", "r3", "top_banner", T0 + 3_000),  # trial    mobile|top_banner
        _ad("ad_click", "r3", "top_banner", T0 + 3_000 + WINDOW + 1),  # 1 ms outside the window: nothing
        _ad("ad_impression", "r4", "in_article", T0 + 4_000),  # trial    mobile|in_article
        _ad("ad_click", "r4", "in_article", T0 + 4_000 + WINDOW),  # exactly at the window edge: success
        _ad("ad_click", "r5", "footer", T0 + 5_000),  # no impression: nothing
        _ad("ad_click", "r1", "top_banner", T0 + 40_000),  # second click on r1: nothing
        _ad("ad_impression", "r1", "top_banner", T0 + 41_000),  # duplicate impression: nothing
        _ad("ad_impression", "r6", "popup", T0 + 6_000),  # unknown placement: nothing
        _ad("ad_click", "r6", "popup", T0 + 7_000),  # unknown placement: nothing
        _ad("ad_impression", "r7", "top_banner", T0 + 8_000, user="u2", device="tablet"),  # tablet|top_banner
        _ad("ad_click", "r7", "top_banner", T0 + 9_000, user="u1"),  # u1 never saw r7: nothing
        _ad("ad_impression", "r8", "footer", T0 + 10_000, user="u3", device=None),  # unknown|footer
        _ad("ad_click", "r8", "footer", T0 + 11_000, user="u3", device=None),  # success unknown|footer
    ]
    expected = {
        "0|mobile|top_banner": [2, 1],
        "0|mobile|sidebar": [1, 0],
        "0|mobile|in_article": [1, 1],
        "0|tablet|top_banner": [1, 0],
        "0|unknown|footer": [1, 1],
    }
    return events, expected


def _decoded(bandit: Mapping[str, bytes]) -> dict[str, list[int]]:
    """The table's counts by ``partition|context|arm``, from its one record per partition."""
    return {f"{k}|{key}": counts for k, v in bandit.items() for key, counts in orjson.loads(v).items()}


@pytest.mark.parametrize("batch", [1, 3, 100])
def test_ad_impressions_and_joined_clicks_update_bandit_counts(models: dict[str, LoadedModel], batch: int) -> None:
    events, expected = ad_script()
    events = sorted(events, key=lambda e: e["event_time"])  # delivered in event-time order
    stores = new_stores()
    run(processor(models, click_join_window_ms=WINDOW), event_records(events), stores, batch=batch)
    assert _decoded(stores.bandit) == expected


def test_click_joins_an_impression_of_an_earlier_batch_after_a_crash(models: dict[str, LoadedModel]) -> None:
    """The pending impression lives in the ad_pending store, not only in the processor's memory."""
    imp = _ad("ad_impression", "r1", "sidebar", T0)
    click = _ad("ad_click", "r1", "sidebar", T0 + 10_000)
    stores = new_stores()
    processor(models, click_join_window_ms=WINDOW).process(event_records([imp]), stores, now_ms=NOW_MS)
    assert _decoded(stores.bandit) == {"0|mobile|sidebar": [1, 0]}
    processor(models, click_join_window_ms=WINDOW).process(
        event_records([click], first_offset=1), stores, now_ms=NOW_MS
    )
    assert _decoded(stores.bandit) == {"0|mobile|sidebar": [1, 1]}


def test_bandit_counts_add_to_what_the_store_already_holds(models: dict[str, LoadedModel]) -> None:
    stores = new_stores()
    stores.bandit["0"] = orjson.dumps({"mobile|footer": [10, 3], "tablet|top_banner": [2, 1]})
    stores.bandit["1"] = orjson.dumps({"mobile|footer": [5, 5]})  # another partition's record: left alone
    events = [_ad("ad_impression", "r1", "footer", T0), _ad("ad_click", "r1", "footer", T0 + 1)]
    processor(models, click_join_window_ms=WINDOW).process(event_records(events), stores, now_ms=NOW_MS)
    assert _decoded(stores.bandit) == {
        "0|mobile|footer": [11, 4],
        "0|tablet|top_banner": [2, 1],
        "1|mobile|footer": [5, 5],
    }


def test_bandit_counts_continue_from_a_table_of_per_key_records(models: dict[str, LoadedModel]) -> None:
    """A table written before one record per partition: its partition's counts continue from its keys."""
    stores = new_stores()
    stores.bandit["0|mobile|footer"] = orjson.dumps([10, 3])
    stores.bandit["0|tablet|top_banner"] = orjson.dumps([2, 1])
    stores.bandit["1|mobile|footer"] = orjson.dumps([5, 5])  # another partition's: left alone
    events = [_ad("ad_impression", "r1", "footer", T0), _ad("ad_click", "r1", "footer", T0 + 1)]
    proc = processor(models, click_join_window_ms=WINDOW)
    proc.process(event_records(events), stores, now_ms=NOW_MS)
    assert orjson.loads(stores.bandit["0"]) == {"mobile|footer": [11, 4], "tablet|top_banner": [2, 1]}
    expected = {"mobile": {"footer": (16, 9)}, "tablet": {"top_banner": (2, 1)}}
    assert merged_counts(stores.bandit) == proc.posterior_snapshot(stores) == expected


def test_bandit_context_none_pools_devices(models: dict[str, LoadedModel]) -> None:
    events = [
        _ad("ad_impression", "r1", "footer", T0, device="mobile"),
        _ad("ad_impression", "r2", "footer", T0 + 1, device="desktop", user="u2"),
    ]
    stores = new_stores()
    processor(models, bandit_context="none").process(event_records(events), stores, now_ms=NOW_MS)
    assert _decoded(stores.bandit) == {"0|all|footer": [2, 0]}


# --- (f) decisions ----------------------------------------------------------------------------


def _requests(n: int, device: str = "mobile") -> list[dict[str, Any]]:
    return [
        _event(
            event_type="ad_request",
            event_id=f"req-{device}-{i}",
            request_id=f"rid-{device}-{i}",
            user_id=f"u{i % 5}",
            event_time=T0 + i,
            device={"type": device},
        )
        for i in range(n)
    ]


def test_one_decision_per_ad_request(sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]) -> None:
    outs = run(processor(models, seed=11), event_records(sim_events), new_stores(), batch=100)
    decisions = [d for o in outs for d in o.decisions]
    requests = [e for e in sim_events if e["event_type"] == "ad_request"]
    assert len(requests) > 50
    assert [d["request_id"] for d in decisions] == [e["request_id"] for e in requests]
    assert [d["event_id"] for d in decisions] == [e["event_id"] for e in requests]
    assert [d["user_id"] for d in decisions] == [e["user_id"] for e in requests]
    assert [d["context"] for d in decisions] == [e["device"]["type"] for e in requests]
    for d in decisions:
        assert d["placement"] in PLACEMENTS
        assert 0.0 < d["propensity"] <= 1.0
        assert d["decided_at"] == NOW_MS
        validate("bandit_decision", d)
    assert len({d["decision_id"] for d in decisions}) == len(decisions)
    assert len({d["placement"] for d in decisions}) > 1


def test_decisions_are_reproducible_with_the_same_seed(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    records = event_records(sim_events)

    def decide(seed: int) -> list[dict[str, Any]]:
        return [d for o in run(processor(models, seed=seed), records, new_stores(), batch=100) for d in o.decisions]

    first = decide(11)
    assert decide(11) == first
    other = decide(12)
    assert [d["placement"] for d in other] != [d["placement"] for d in first]
    assert [d["decision_id"] for d in other] == [d["decision_id"] for d in first]  # id: policy + request only


def test_decisions_without_counts_are_uniform(models: dict[str, LoadedModel]) -> None:
    out = processor(models, seed=3).process(event_records(_requests(200)), new_stores(), now_ms=NOW_MS)
    assert len(out.decisions) == 200
    for d in out.decisions:
        assert d["propensity"] == pytest.approx(1 / len(PLACEMENTS), abs=1e-6)
        assert d["arm_means"] == dict.fromkeys(PLACEMENTS, 0.5)
    shares = Counter(d["placement"] for d in out.decisions)
    assert set(shares) == set(PLACEMENTS)
    assert max(shares.values()) < 200 * 0.4  # 50 expected per arm


def test_decisions_use_the_counts_of_their_context(models: dict[str, LoadedModel]) -> None:
    stores = new_stores()
    # mobile: in_article clearly best (200/1000 vs 10/1000), counted on two partitions.
    stores.bandit.update(
        {
            "0|mobile|in_article": orjson.dumps([600, 120]),
            "3|mobile|in_article": orjson.dumps([400, 80]),
            "0|mobile|top_banner": orjson.dumps([1000, 10]),
            "0|mobile|sidebar": orjson.dumps([1000, 10]),
            "0|mobile|footer": orjson.dumps([1000, 10]),
        }
    )
    reqs = _requests(30, "mobile") + _requests(30, "desktop")
    out = processor(models, seed=5).process(event_records(reqs), stores, now_ms=NOW_MS)
    mobile = [d for d in out.decisions if d["context"] == "mobile"]
    desktop = [d for d in out.decisions if d["context"] == "desktop"]
    assert len(mobile) == len(desktop) == 30
    for d in mobile:
        assert d["placement"] == "in_article"
        assert d["propensity"] > 0.99
        assert d["arm_means"]["in_article"] == pytest.approx(201 / 1002)
        assert d["arm_means"]["footer"] == pytest.approx(11 / 1002)
    for d in desktop:  # no desktop counts: the prior
        assert d["propensity"] == pytest.approx(0.25, abs=1e-6)


def test_decisions_use_the_counts_as_of_the_batch_first_request(models: dict[str, LoadedModel]) -> None:
    """No look-ahead: ad events after a batch's first request do not reach that batch's decisions."""
    wins = []
    for i in range(40):  # 40 footer impressions, all clicked: footer becomes the clear favourite
        wins += [
            _ad("ad_impression", f"w{i}", "footer", T0 + 10 * i),
            _ad("ad_click", f"w{i}", "footer", T0 + 10 * i + 1),
        ]
    first, second, third = (_requests(3)[i] for i in range(3))
    stores = new_stores()
    proc = processor(models, seed=1)
    out = proc.process(event_records([first, *wins, second]), stores, now_ms=NOW_MS)
    assert [d["propensity"] for d in out.decisions] == [pytest.approx(0.25, abs=1e-6)] * 2
    assert _decoded(stores.bandit) == {"0|mobile|footer": [40, 40]}
    # The next batch sees them; so does a request that comes after them within its batch. Footer is
    # then Beta(41, 1) against three Beta(1, 1): P(footer wins) = int 41 x^40 * x^3 dx = 41/44, and
    # each other arm wins with (1 - 41/44) / 3 = 1/44.
    later = proc.process(event_records([third], first_offset=100), stores, now_ms=NOW_MS).decisions
    same_batch = processor(models, seed=1).process(event_records([*wins, first]), new_stores(), now_ms=NOW_MS).decisions
    for d in later + same_batch:
        assert d["arm_means"]["footer"] == pytest.approx(41 / 42)
        assert d["propensity"] == pytest.approx(41 / 44 if d["placement"] == "footer" else 1 / 44, abs=1e-6)


def test_scored_matrices_are_kept_only_when_asked_and_match_the_predictions(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    """``keep_scored`` (STREAM_MONITORING): each model's rows and scores, in its predictions' order."""
    records = event_records(sim_events[:400])
    off = BatchProcessor(models, ["a", "b"])
    assert off.process(records, new_stores()).scored == []
    on = BatchProcessor(models, ["a", "b"])
    on.keep_scored = True
    out = on.process(records, new_stores())
    assert (
        {s.model for s in out.scored} == {p["model_name"] for p in out.predictions} == {"click", "engagement", "churn"}
    )
    for s in out.scored:
        preds = [p for p in out.predictions if p["model_name"] == s.model]
        assert s.version == models[s.model].version and len(s.x) == len(preds)
        assert s.scores.tolist() == [p["score"] for p in preds]
        assert s.event_time_ms.tolist() == [p["event_time"] for p in preds]
        assert np.array_equal(models[s.model].predict(s.x), s.scores)
