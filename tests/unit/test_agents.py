"""The faust agents without a broker: ``agent.test_context()`` on the app ``create_app`` builds.

What is real: the faust app, its RocksDB / in-memory tables (under ``tmp_path``), the agents'
micro-batching (agents/batching.py), the publisher's publish / delivery / ack logic and its poll thread.
What is fake: the confluent-kafka producer (:class:`FakeProducer`, which records ``produce()``
calls and serves delivery reports from ``poll()`` like librdkafka) and the consumer's delivery
of messages (:func:`feed` puts them on the agent's channel, taking the reference faust's
conductor takes for the stream).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from faust.types import TP, Message

from stream.config import Settings, load_settings
from stream.kafka.limits import DEFAULT_MAX_MESSAGE_BYTES, producer_max_bytes, record_budget
from stream.kafka.partitioner import partition_for
from stream.models.scoring import LoadedModel
from stream.state import new_article_state, update_article
from stream.worker.app import create_app
from stream.worker.processor import BatchProcessor, Record, Stores, merged_counts
from stream.worker.publisher import OutputError
from tests.support.aio import settle, wait_until

PARTITIONS = 4
BATCH = 50
TRIGGERS = {"article_impression": "click", "session_start": "engagement", "session_end": "churn"}
ARTICLE_EVENTS = ("article_impression", "article_click", "article_view")


class FakeMessage:
    """The part of ``confluent_kafka.Message`` a delivery callback sees."""

    def __init__(self, topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        self._topic, self._partition, self._key, self._value = topic, partition, key, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value


class NoHoles:
    """``GapFiller`` stand-in for input fed without holes, on partitions whose log starts at 0."""

    def reading_start(self, topic: str, partition: int) -> int:
        return 0  # no committed offset, and the log starts at 0

    def fetch(self, topic: str, partition: int, gaps: list[tuple[int, int]]) -> list[Any]:
        raise AssertionError(f"no hole expected, got {gaps}")

    def close(self) -> None:
        pass


class FakeProducer:
    """``confluent_kafka.Producer`` stand-in: delivery reports are served by ``poll()`` once released.

    Like librdkafka it refuses, at ``produce()``, a record whose key and value exceed ``max_bytes``
    (its ``message.max.bytes``). ``raises`` are raised by the next ``produce()`` calls, in order;
    ``fail`` decides a delivery report's error per message.
    """

    def __init__(self, deliver: bool = True, max_bytes: int = producer_max_bytes(DEFAULT_MAX_MESSAGE_BYTES)) -> None:
        self.lock = threading.Lock()
        self.produced: list[FakeMessage] = []
        self.queued: list[tuple[FakeMessage, Callable[[Any, Any], None] | None]] = []
        self.deliver = threading.Event()
        if deliver:
            self.deliver.set()
        self.max_bytes = max_bytes
        self.fail_topics: set[str] = set()
        self.fail: Callable[[FakeMessage], KafkaError | None] = lambda m: (
            KafkaError(KafkaError._TRANSPORT, "broker down") if m.topic() in self.fail_topics else None
        )
        self.raises: list[BaseException] = []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Callable[[Any, Any], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.raises:
            raise self.raises.pop(0)
        if len(value or b"") + len(key or b"") > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))
        msg = FakeMessage(topic, partition, key, value or b"")
        with self.lock:
            self.produced.append(msg)
            self.queued.append((msg, on_delivery))

    def poll(self, timeout: float = 0.0) -> int:
        if not self.deliver.is_set():
            time.sleep(timeout)
            return 0
        with self.lock:
            queued, self.queued = self.queued, []
        for msg, cb in queued:
            if cb is not None:
                cb(self.fail(msg), msg)
        if not queued:
            time.sleep(timeout)
        return len(queued)

    def flush(self, timeout: float | None = None) -> int:
        return 0

    def __len__(self) -> int:
        with self.lock:
            return len(self.queued)

    def on(self, topic: str) -> list[FakeMessage]:
        with self.lock:
            return [m for m in self.produced if m.topic() == topic]


@dataclass
class Worker:
    app: Any
    rt: Any
    producer: FakeProducer
    settings: Settings
    errors: list[BaseException] = field(default_factory=list)
    #: what Publisher.fail handed to on_fatal (the real app crashes itself there)
    fatal: list[BaseException] = field(default_factory=list)

    def topic(self, name: str) -> str:
        return str(self.rt.topic_names[name])

    def metrics_value(self, name: str, **labels: str) -> float:
        return float(self.rt.metrics.value(name, **labels))


@pytest.fixture
async def worker(tmp_path: Path, models_dir: Path) -> AsyncIterator[Worker]:
    settings = load_settings(
        models_dir=models_dir,
        state_dir=tmp_path / "state",
        worker_web_port=0,
        worker_id="unit-worker",
        topic_prefix="unit.",
        topic_partitions=PARTITIONS,
        score_batch_size=BATCH,
        score_batch_ms=20,
        score_batch_urgent_ads=False,  # these tests feed whole batches of BATCH events (ad_requests included)
        placements=("top_banner", "sidebar", "in_article", "footer"),
        bandit_context="device",
        article_wait_ms=0,
    )  # no article agent runs here: nothing to wait for (watermarks.py)
    app, rt = create_app(settings, "127.0.0.1:1", clickhouse=False)
    producer = FakeProducer()
    rt.producer = producer  # the real one never produced anything; dropping it destroys it
    rt.gap_filler = NoHoles()  # type: ignore[assignment]
    w = Worker(app, rt, producer, settings)
    rt.on_fatal = w.fatal.append
    try:
        yield w
    finally:
        rt.close()


def _on_error(w: Worker) -> Callable[[Any, BaseException], Any]:
    async def on_error(agent: Any, exc: BaseException) -> None:
        w.errors.append(exc)

    return on_error


async def feed(
    tc: Any,
    payloads: Sequence[tuple[bytes | None, bytes]],
    partition: int = 0,
    first_offset: int = 0,
    timestamps: Sequence[float] | None = None,
) -> list[Message]:
    """Deliver records to the agent as the consumer would (one stream reference per message)."""
    channel = tc.stream().channel
    messages = []
    for i, (key, value) in enumerate(payloads):
        msg = tc.to_message(
            key,
            value,
            partition=partition,
            offset=first_offset + i,
            timestamp=timestamps[i] if timestamps is not None else None,
        )
        msg.incref()
        messages.append(msg)
        await channel.put(await channel.decode(msg))
    return messages


def ended(tc: Any) -> bool:
    """The agent's actors have all returned: nothing after this is read from the stream."""
    actors = list(tc._actors)  # private: faust has no public view of whether an actor ended
    return bool(actors) and all(a.actor_task is not None and a.actor_task.done() for a in actors)


def payloads_of(events: Sequence[Mapping[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


def forwarded_article_events(w: Worker) -> list[tuple[int, dict[str, Any]]]:
    """(partition, event) per article event forwarded by the events agent, in produce order."""
    out: list[tuple[int, dict[str, Any]]] = []
    for m in w.producer.on(w.topic("article_events")):
        decoded = orjson.loads(m.value())
        assert isinstance(decoded, list) and m.partition() >= 0  # a JSON array per explicit partition
        out.extend((m.partition(), ev) for ev in decoded)
    return out


async def test_events_agent_outputs_state_and_acks(
    worker: Worker, sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    w = worker
    events = sim_events[:400]
    bad = [(b"bad-1", b"{not json"), (None, orjson.dumps({**events[0], "event_type": "tap"}))]
    payloads = payloads_of(events[:200]) + bad + payloads_of(events[200:])
    timestamps = (
        [e["event_time"] / 1000 for e in events[:200]] + [1.0, 1.0] + [e["event_time"] / 1000 for e in events[200:]]
    )
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        messages = await feed(tc, payloads, partition=1, timestamps=timestamps)
        key = (w.topic("events"), 1)
        await wait_until(lambda: w.rt.positions.get(key) == len(payloads) - 1)
        await asyncio.wait_for(w.rt.drain(), 10)
        assert w.errors == []

        # Every input message is acked once its batch's outputs were delivered.
        assert all(m.acked and m.refcount == 0 for m in messages)

        # Predictions: exactly one per scorable event, keyed by user.
        preds = [(m.key(), orjson.loads(m.value())) for m in w.producer.on(w.topic("predictions"))]
        expected = Counter((TRIGGERS[e["event_type"]], e["event_id"]) for e in events if e["event_type"] in TRIGGERS)
        assert Counter((p["model_name"], p["event_id"]) for _, p in preds) == expected
        assert all(k == p["user_id"].encode() for k, p in preds)
        assert {p["model_version"] for _, p in preds} == {"1"}

        # Decisions: one per ad request.
        decisions = [orjson.loads(m.value()) for m in w.producer.on(w.topic("decisions"))]
        requests = [e["request_id"] for e in events if e["event_type"] == "ad_request"]
        assert requests
        assert sorted(d["request_id"] for d in decisions) == sorted(requests)

        # Dead letters: the two bad records, with their source position.
        dead = [(m.key(), orjson.loads(m.value())) for m in w.producer.on(w.topic("dead_letter"))]
        assert [(k, d["error_kind"], d["source_partition"], d["source_offset"]) for k, d in dead] == [
            (b"bad-1", "malformed", 1, 200),
            (None, "unknown_type", 1, 201),
        ]

        # Article events: each forwarded once, to the partition its article_id hashes to.
        forwarded = forwarded_article_events(w)
        assert sorted(ev["event_id"] for _, ev in forwarded) == sorted(
            e["event_id"] for e in events if e["event_type"] in ARTICLE_EVENTS
        )
        assert all(p == partition_for(ev["article_id"].encode(), PARTITIONS) for p, ev in forwarded)

        # The users table holds what the processor computes on plain dicts for the same records.
        reference = Stores(users={}, ad_pending={}, articles={}, bandit={})
        records = [Record(k, v, "t", 1, i, None) for i, (k, v) in enumerate(payloads)]
        BatchProcessor(models, w.settings.placements).process(records, reference)
        users = w.rt.tables["users"]
        assert len(reference.users) > 5
        for uid, raw in reference.users.items():
            assert users.get(uid) == raw, uid

        # Bandit counts went to the bandit table, as this partition's one record.
        bandit = {
            (k.decode() if isinstance(k, bytes) else k): orjson.loads(v)  # raw keys come back as bytes
            for k, v in w.rt.tables["bandit"].items()
        }
        assert bandit == {k: orjson.loads(v) for k, v in reference.bandit.items()}
        assert list(bandit) == ["1"] and bandit["1"]
        # The posterior the next decisions use counts every impression once: the table's entries
        # (bytes keys) and the worker's own newer counts (str keys) are one entry per key.
        stores = Stores(
            users=users,
            ad_pending=w.rt.tables["ad_pending"],
            articles=w.rt.tables["articles"],
            bandit=w.rt.tables["bandit"],
        )
        assert w.rt.processor.posterior_snapshot(stores) == merged_counts(reference.bandit)


async def test_input_is_acked_only_after_outputs_are_delivered(
    worker: Worker, sim_events: list[dict[str, Any]]
) -> None:
    w = worker
    w.producer.deliver.clear()  # Kafka does not acknowledge anything yet
    events = sim_events[: 2 * BATCH]
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        messages = await feed(tc, payloads_of(events))
        key = (w.topic("events"), 0)
        await wait_until(lambda: w.rt.positions.get(key) == len(events) - 1)  # the last batch reached publish
        await settle()  # all that is left of publish runs on the loop; an early ack would happen now
        assert w.producer.produced, "outputs were produced"
        assert not any(m.acked for m in messages), "acked before Kafka confirmed the outputs"
        assert all(m.refcount == 1 for m in messages)
        assert w.rt.ledger.committable(key) == 0, "committable before Kafka confirmed the outputs"

        w.producer.deliver.set()
        await asyncio.wait_for(w.rt.drain(), 10)
        assert all(m.acked for m in messages)
        assert w.rt.ledger.committable(key) == len(events)
        assert w.errors == []


async def test_failed_delivery_keeps_the_batch_unacked_and_stops_the_worker(
    worker: Worker, sim_events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    w = worker
    w.producer.fail_topics.add(w.topic("predictions"))
    first = sim_events[:BATCH]  # exactly one batch
    assert any(e["event_type"] in TRIGGERS for e in first)
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        batch1 = await feed(tc, payloads_of(first))
        # reported at once, with no later record needed (before: only when the next batch came)
        await wait_until(lambda: bool(w.fatal))
        assert isinstance(w.fatal[0], OutputError)
        assert w.rt.failure is w.fatal[0]
        assert w.metrics_value("stream_fatal_errors_total", topic=w.topic("predictions"), error="_TRANSPORT") == 1
        lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(lines) == 1
        assert w.topic("predictions") in lines[0] and "_TRANSPORT" in lines[0] and "uncommitted" in lines[0]

        # A later batch of the partition is not published, and nothing is acked.
        produced = len(w.producer.produced)
        batch2 = await feed(tc, payloads_of(sim_events[BATCH : 2 * BATCH]), first_offset=BATCH)
        await wait_until(lambda: ended(tc))
        assert len(w.producer.produced) == produced
        assert not any(m.acked for m in batch1 + batch2)
        assert len(w.fatal) == 1


async def test_a_later_batch_is_not_acked_before_an_earlier_one_that_failed(
    worker: Worker, sim_events: list[dict[str, Any]]
) -> None:
    """faust commits the first run of consecutive acked offsets, even past an unacked one.

    Both batches are in flight when the first one's dead letter is refused; the second one's
    outputs are all delivered. Acking it would let faust commit past the first batch.
    """
    w = worker
    w.producer.deliver.clear()
    w.producer.fail_topics.add(w.topic("dead_letter"))
    first = [*payloads_of(sim_events[: BATCH - 1]), (b"u-bad", b"{not json")]
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        batch1 = await feed(tc, first)
        batch2 = await feed(tc, payloads_of(sim_events[BATCH : 2 * BATCH]), first_offset=BATCH)
        key = (w.topic("events"), 0)
        await wait_until(lambda: w.rt.positions.get(key) == 2 * BATCH - 1)
        w.producer.deliver.set()
        await asyncio.wait_for(w.rt.drain(), 10)
        assert not any(m.acked for m in batch2)
        assert not any(m.acked for m in batch1)
        assert [type(e) for e in w.fatal] == [OutputError]


async def test_an_error_raised_by_produce_stops_the_worker_and_a_full_queue_is_retried(
    worker: Worker, sim_events: list[dict[str, Any]]
) -> None:
    w = worker
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        w.producer.raises = [KafkaException(KafkaError(KafkaError._QUEUE_FULL)), BufferError("queue full")]
        batch1 = await feed(tc, payloads_of(sim_events[:BATCH]))
        await wait_until(lambda: all(m.acked for m in batch1))  # retried until librdkafka took them

        w.producer.raises = [KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC, "Unknown topic"))]
        batch2 = await feed(tc, payloads_of(sim_events[BATCH : 2 * BATCH]), first_offset=BATCH)
        await wait_until(lambda: bool(w.fatal))
        assert isinstance(w.fatal[0], OutputError) and w.fatal[0].error == "_UNKNOWN_TOPIC"
        await wait_until(lambda: ended(tc))
        assert not any(m.acked for m in batch2)
        assert w.errors == []  # the agent ended instead of crashing (faust would restart it)


async def test_a_failing_batch_stops_the_worker_instead_of_a_restart_past_it(
    worker: Worker, sim_events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """faust restarts a crashed actor on the same stream; the new actor acked later records, so
    faust committed past the failed batch. Now the agent ends and the worker stops."""
    w = worker

    async def broken(records: Any, stores: Any, **kwargs: Any) -> Any:
        raise RuntimeError("RocksDB is gone")

    monkeypatch.setattr(w.rt.processor, "process_stepped", broken)  # what the agent calls
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        batch1 = await feed(tc, payloads_of(sim_events[:10]))  # cut by time: no later record follows
        await wait_until(lambda: bool(w.fatal))
        assert [str(e) for e in w.fatal] == ["RocksDB is gone"]
        assert w.metrics_value("stream_fatal_errors_total", topic="", error="RuntimeError") == 1
        monkeypatch.undo()
        batch2 = await feed(tc, payloads_of(sim_events[10:20]), first_offset=10)
        await wait_until(lambda: ended(tc))
        assert not any(m.acked for m in batch1 + batch2)  # nothing processed or acked after it
        assert w.producer.produced == []
        assert w.errors == []  # ended, not crashed: faust's supervisor does not restart it


async def test_an_oversized_dead_letter_is_shrunk_and_the_partition_goes_on(
    worker: Worker, sim_events: list[dict[str, Any]]
) -> None:
    w = worker
    huge = orjson.dumps({"schema_version": 1, "event_id": "big", "pad": "x" * 900_000})
    payloads = [*payloads_of(sim_events[:10]), (b"u-big", huge), *payloads_of(sim_events[10:30])]
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        messages = await feed(tc, payloads)
        await wait_until(lambda: all(m.acked for m in messages))
    assert w.fatal == [] and w.errors == []
    [dead] = w.producer.on(w.topic("dead_letter"))
    assert dead.key() == b"u-big"
    assert len(dead.value()) + len(dead.key()) <= record_budget(DEFAULT_MAX_MESSAGE_BYTES)
    envelope = orjson.loads(dead.value())
    assert envelope["error_kind"] == "oversized" and envelope["source_offset"] == 10
    assert envelope["value_size"] == len(huge)
    assert envelope["value_sha256"] == hashlib.sha256(huge).hexdigest()
    assert w.metrics_value("stream_dead_letters_shrunk_total") == 1


async def test_a_stalled_partition_is_reported_and_draining_is_bounded(
    worker: Worker, sim_events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    w = worker
    w.producer.deliver.clear()  # Kafka never confirms
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        messages = await feed(tc, payloads_of(sim_events[:BATCH]), partition=2)
        await wait_until(lambda: (w.topic("events"), 2) in w.rt.unconfirmed())
        labels = {"topic": w.topic("events"), "partition": "2"}
        limit = w.settings.stall_warning_s
        later = time.monotonic() + limit + 1
        assert w.rt.check_stalls(later)[(w.topic("events"), 2)] > limit
        assert w.metrics_value("stream_unconfirmed_batch_age_seconds", **labels) > limit
        w.rt.check_stalls(later + 1)  # logged once per STREAM_STALL_WARNING_S
        stalls = [r.getMessage() for r in caplog.records if "makes no progress" in r.getMessage()]
        assert len(stalls) == 1 and f"{w.topic('events')}[2]" in stalls[0]

        t0 = time.monotonic()
        assert await w.rt.drain(0.3) is False
        assert time.monotonic() - t0 < 2
        assert any("still unconfirmed at the end of the wait" in r.getMessage() for r in caplog.records)
        assert not any(m.acked for m in messages)

        w.producer.deliver.set()
        assert await asyncio.wait_for(w.rt.drain(), 10) is True
        assert all(m.acked for m in messages)
        w.rt.check_stalls()
        assert w.metrics_value("stream_unconfirmed_batch_age_seconds", **labels) == 0


async def test_article_agent_folds_forwarded_events_into_the_article_table(
    worker: Worker, sim_events: list[dict[str, Any]]
) -> None:
    w = worker
    events = sim_events[:600]
    async with w.app.agents["session-events"].test_context(on_error=_on_error(w)) as tc:
        await feed(tc, payloads_of(events))
        key = (w.topic("events"), 0)
        await wait_until(lambda: w.rt.positions.get(key) == len(events) - 1)
        await asyncio.wait_for(w.rt.drain(), 10)
    produced = w.producer.on(w.topic("article_events"))
    assert produced

    async with w.app.agents["article-stats"].test_context(on_error=_on_error(w)) as tc:
        by_partition: dict[int, list[FakeMessage]] = {}
        for m in produced:
            by_partition.setdefault(m.partition(), []).append(m)
        delivered: list[Message] = []
        for part, msgs in sorted(by_partition.items()):
            # one partition at a time: test_context runs a single actor, whose batches could
            # otherwise mix partitions (with isolated_partitions faust never does that)
            fed = await feed(tc, [(m.key(), m.value()) for m in msgs], partition=part)
            await wait_until(lambda fed=fed: all(m.acked for m in fed))
            assert w.rt.ledger.committable((w.topic("article_events"), part)) == len(msgs)
            delivered += fed
        # faust hands records fetched before the seek that ends a recovery over once more: the
        # redelivered ones are folded once (the ledger still ends at the partition's last offset)
        part, msgs = next(iter(sorted(by_partition.items())))
        again = await feed(tc, [(m.key(), m.value()) for m in msgs[-3:]], partition=part, first_offset=len(msgs) - 3)
        await wait_until(lambda: all(m.acked for m in again))
        assert w.rt.ledger.committable((w.topic("article_events"), part)) == len(msgs)
        assert w.errors == []

    # Expected: each article's events folded in delivery order (one partition per article).
    expected: dict[str, Any] = {}
    for e in events:
        if e["event_type"] in ARTICLE_EVENTS:
            aid = e["article_id"]
            expected[aid] = update_article(expected.get(aid) or new_article_state(), e)
    articles = w.rt.tables["articles"]
    assert len(expected) > 5
    for aid, state in expected.items():
        assert articles.get(aid) == state.to_bytes(), aid

    # The events agent's click rows read the states this worker owns directly: the same values.
    owned = w.rt.processor.owned_articles
    assert {aid: st.to_bytes() for aid, st in owned.items()} == {aid: st.to_bytes() for aid, st in expected.items()}
    # A revoked article partition is forgotten: its articles are read from the table again.
    gone = next(iter(by_partition))
    w.rt.on_revoked({TP(w.topic("article_events"), gone)})
    left = {aid for aid in expected if partition_for(aid.encode(), PARTITIONS) != gone}
    assert set(owned) == left and len(left) < len(expected)


class _FetchState:
    """aiokafka's state of one assigned partition: records up to ``highwater``, read up to ``position``."""

    def __init__(self, highwater: int, position: int) -> None:
        self.highwater, self.position, self.timestamp = highwater, position, None


def _faust_stall_check(
    w: Worker, tp: TP, fetched: _FetchState, started_s_ago: float, later_s: float = 0.0
) -> list[str]:
    """faust's own per-partition liveness check, run on the worker's app; the ERROR lines it logs.

    The check (``AIOKafkaConsumerThread.verify_event_path``) runs unchanged; what it reads of
    aiokafka's fetcher (a partition with records not yet read) and of its own start time is given.
    """
    from types import SimpleNamespace

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    logged: list[str] = []
    now = time.monotonic() + later_s
    assignment = SimpleNamespace(state_value=lambda aiotp: fetched)
    aiokafka = SimpleNamespace(
        _fetcher=SimpleNamespace(_subscriptions=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)))
    )
    thread = SimpleNamespace(
        consumer=SimpleNamespace(app=w.app),
        time_started=now - started_s_ago,
        tp_stream_timeout_secs=w.app.conf.stream_processing_timeout,
        tp_commit_timeout_secs=w.app.conf.broker_commit_livelock_soft_timeout,
        tp_last_committed_at={tp: now},
        log=SimpleNamespace(error=lambda msg, *args: logged.append(msg % args)),
        _ensure_consumer=lambda: aiokafka,
        _verify_aiokafka_event_path=lambda now, tp: False,
    )
    thread._log_slow_processing_stream = lambda msg, *args: logged.append(msg % args)
    thread._log_slow_processing_commit = lambda msg, *args: logged.append(msg % args)
    AIOKafkaConsumerThread.verify_event_path(thread, now, tp)
    return logged


async def test_faust_stall_check_sees_partitions_that_process(worker: Worker, sim_events: list[dict[str, Any]]) -> None:
    w = worker
    tp = TP(w.topic("events"), 3)
    w.app.on_init_dependencies()  # what starting the app does first: it sets up the sensors
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        w.app.topics.add(w.rt.topics["events"])  # what subscribing does: faust acks the topic, so the check applies
        await w.app.topics._update_indices()
        assert w.app.topics.acks_enabled_for(tp.topic)
        backlog = _FetchState(highwater=10_000, position=BATCH)  # records are waiting to be read
        # Six minutes after the start, no event reached the stream: faust reports it, rightly.
        assert any("has not started processing" in line for line in _faust_stall_check(w, tp, backlog, 360))
        messages = await feed(tc, payloads_of(sim_events[:BATCH]), partition=3)
        await wait_until(lambda: all(m.acked for m in messages))
        # Events are processed: nothing to report (before, this logged "has not started processing").
        assert _faust_stall_check(w, tp, backlog, 360) == []
        # A stream that stops taking events is still reported, once stream_processing_timeout passed.
        timeout = w.app.conf.stream_processing_timeout
        assert _faust_stall_check(w, tp, backlog, 360, later_s=timeout - 5) == []
        assert any(
            "Stream stopped processing" in line for line in _faust_stall_check(w, tp, backlog, 360, later_s=timeout + 5)
        )


def _series(w: Worker, name: str) -> dict[tuple[str, str], float]:
    """Each (topic, partition) series of a per-partition gauge, as the registry exports it."""
    return {
        (s.labels["topic"], s.labels["partition"]): s.value
        for metric in w.rt.metrics.registry.collect()
        for s in metric.samples
        if s.name == name
    }


async def test_a_revoked_partition_is_no_longer_exported(worker: Worker, sim_events: list[dict[str, Any]]) -> None:
    w = worker
    events = w.topic("events")
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        for partition in (1, 2):
            messages = await feed(tc, payloads_of(sim_events[:BATCH]), partition=partition)
            await wait_until(lambda messages=messages: all(m.acked for m in messages))
    assigned = [TP(events, 1), TP(events, 2), TP(events, 3), TP(f"{w.settings.worker_id}-users-changelog", 0)]
    committed = {TP(events, 3): 900}  # partition 3 had no batch yet: its lag counts from its commit
    w.rt.export_lag(assigned, lambda tp: 1000, committed.get)
    w.rt.check_stalls()
    lag, age = "stream_consumer_lag_messages", "stream_unconfirmed_batch_age_seconds"
    assert _series(w, lag) == {(events, "1"): 1000 - BATCH, (events, "2"): 1000 - BATCH, (events, "3"): 100}
    assert _series(w, age) == {(events, "1"): 0, (events, "2"): 0}

    w.rt.on_revoked({TP(events, 2), TP(events, 3)})  # another worker took them
    assert _series(w, lag) == {(events, "1"): 1000 - BATCH}
    assert _series(w, age) == {(events, "1"): 0}
    assert (events, 2) not in w.rt.positions
    w.rt.check_stalls()
    w.rt.export_lag([TP(events, 1)], lambda tp: 1000, committed.get)
    assert set(_series(w, lag)) == set(_series(w, age)) == {(events, "1")}
    # whatever the revocation missed, the next export drops: only assigned partitions have a series
    w.rt.export_lag([], lambda tp: 1000, committed.get)
    assert _series(w, lag) == {}


async def test_a_partition_of_a_new_group_shows_its_lag_before_its_first_batch(worker: Worker) -> None:
    """With nothing committed, the lag counts from the log start: a partition the consumer never
    delivers from is visible (to the stalled-partition detector and /readyz), not absent."""
    w = worker
    events = w.topic("events")
    assigned = [TP(events, 0), TP(events, 1)]
    nothing_committed: dict[Any, int] = {}
    lag = "stream_consumer_lag_messages"
    w.rt.export_lag(assigned, lambda tp: 1000, nothing_committed.get)
    assert _series(w, lag) == {}  # where reading starts is not known yet
    await w.rt.learn_starts(assigned)  # NoHoles: the logs start at offset 0
    w.rt.export_lag(assigned, lambda tp: 1000, nothing_committed.get)
    assert _series(w, lag) == {(events, "0"): 1000, (events, "1"): 1000}
    w.rt.on_revoked({TP(events, 1)})
    w.rt.export_lag([TP(events, 0)], lambda tp: 1000, nothing_committed.get)
    assert _series(w, lag) == {(events, "0"): 1000}


async def test_a_taken_over_partition_is_read_from_the_groups_committed_offset(worker: Worker) -> None:
    """faust learns a newly assigned partition's committed offset only once its seek is done, and
    the partition's first records can come before: where reading began is asked of the broker
    (GapFiller.reading_start), so the offsets below the last owner's commit are not a hole to read
    again (a takeover then published their predictions twice)."""
    w = worker
    events = w.topic("events")

    class Committed(NoHoles):
        def reading_start(self, topic: str, partition: int) -> int:
            return 150  # what the partition's last owner committed

    w.rt.gap_filler = Committed()  # NoHoles.fetch fails the test if offsets 0..149 are asked for
    records = [Record(None, b"{}", events, 0, offset, None) for offset in (150, 151)]
    filled, span = await w.rt.fill(records)
    assert ([r.offset for r in filled], span) == ([150, 151], (150, 151))


async def test_offsets_the_consumer_found_no_record_in_are_no_lag(worker: Worker) -> None:
    """A transaction's commit marker takes the partition's last offset and is never delivered: once
    the consumer has read past it and found no record (``more_after``), it is no lag, so an idle
    input written in transactions neither stalls (/readyz) nor shows a message waiting."""
    w = worker
    events = w.topic("events")
    assigned = [TP(events, 0), TP(events, 1)]
    w.rt.positions[(events, 0)] = 998  # processed up to 998; 999 is a marker
    committed = {TP(events, 1): 999}  # no batch since the assignment: 999 is a marker
    looked: list[tuple[int, int]] = []

    def more_after(tp: Any, offset: int) -> bool:
        looked.append((tp[1], offset))
        return more[tp[1]]

    more = {0: False, 1: False}
    lag = "stream_consumer_lag_messages"
    w.rt.export_lag(assigned, lambda tp: 1000, committed.get, more_after)
    assert _series(w, lag) == {(events, "0"): 0, (events, "1"): 0}
    assert sorted(looked) == [(0, 998), (1, 998)]  # asked after the last offset processed / before the next
    more[1] = True  # a record after 998 waits after all
    w.rt.export_lag(assigned, lambda tp: 1000, committed.get, more_after)
    assert _series(w, lag) == {(events, "0"): 0, (events, "1"): 1}
    w.rt.export_lag(assigned, lambda tp: 1000, committed.get)  # not asked: offsets count
    assert _series(w, lag) == {(events, "0"): 1, (events, "1"): 1}


async def test_a_partition_read_to_its_end_without_a_record_is_not_waiting() -> None:
    """The start-up watch (app._waiting) does not take a trailing transaction marker for a record
    waiting (it would re-join the group every STREAM_START_STALL_S while the input is idle), unless
    the broker has more than the consumer saw."""
    from types import SimpleNamespace

    from stream.worker.app import _waiting
    from stream.worker.health import StartWatch

    tp = ("ev", 0)
    more = [False]
    broker_high = [12]

    def more_after(tp: Any, offset: int) -> bool:
        assert offset == 10
        return more[0]

    consumer = SimpleNamespace(
        _committed_offset={tp: 11},  # offset 11 is the last transaction's commit marker
        highwater=lambda tp: 12,
        more_after=more_after,
    )
    app = SimpleNamespace(consumer=consumer)
    rt = SimpleNamespace(
        topic_names={"events": "ev", "article_events": "ae"},
        gap_filler=SimpleNamespace(watermarks=lambda topic, partition: (0, broker_high[0])),
    )
    watch = StartWatch(1.0)
    watch.assigned([tp])
    assert await _waiting(app, rt, watch, [tp]) == []  # type: ignore[arg-type]
    more[0] = True  # a record after 10 fetched and not delivered
    assert await _waiting(app, rt, watch, [tp]) == [tp]  # type: ignore[arg-type]
    more[0] = False
    broker_high[0] = 13  # the broker has a record the consumer has not seen
    assert await _waiting(app, rt, watch, [tp]) == [tp]  # type: ignore[arg-type]


class HeldSink:
    """ClickHouse sink stand-in whose inserts are confirmed only when the test says so."""

    def __init__(self) -> None:
        self.waits: list[asyncio.Future[None]] = []

    async def put(self, table: str, rows: list[Any]) -> asyncio.Future[None]:
        self.waits.append(asyncio.get_running_loop().create_future())
        return self.waits[-1]

    def confirm(self) -> None:
        for f in self.waits:
            if not f.done():
                f.set_result(None)


async def test_a_prediction_counts_as_published_once_kafka_has_it_not_once_clickhouse_has(
    worker: Worker, sim_events: list[dict[str, Any]]
) -> None:
    """``stream_ingest_to_publish_seconds`` (the demo's ingest -> prediction) ends at Kafka's ack:
    consumers read a prediction from then on; the sink's flush only delays the commit."""
    w = worker
    sink = HeldSink()
    w.rt.sink = sink
    events = sim_events[:BATCH]
    now = time.time()
    agent = w.app.agents["session-events"]
    async with agent.test_context(on_error=_on_error(w)) as tc:
        await feed(tc, payloads_of(events), timestamps=[now] * len(events))
        key = (w.topic("events"), 0)
        predictions = w.topic("predictions")
        await wait_until(lambda: w.metrics_value("stream_ingest_to_publish_seconds_count") > 0)
        n = len(w.producer.on(predictions))
        assert n > 0
        await wait_until(lambda: w.metrics_value("stream_ingest_to_publish_seconds_count") == n)
        assert w.metrics_value("stream_event_to_publish_seconds_count") == n
        assert w.rt.ledger.committable(key) == 0, "committable before ClickHouse confirmed the rows"
        assert w.metrics_value("stream_stage_seconds_count", stage="settle") == 0

        sink.confirm()
        await asyncio.wait_for(w.rt.drain(), 10)
        assert w.rt.ledger.committable(key) == len(events)
        assert w.metrics_value("stream_ingest_to_publish_seconds_count") == n  # counted once
        assert w.errors == []
