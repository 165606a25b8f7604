"""``python -m stream replay``: events from a file or a topic range into a topic, resumable.

What a replay guarantees:

* Keys are kept, and each record goes to the partition Kafka's default (murmur2) partitioner
  would choose for its key, computed here and passed explicitly: per-key order is the source
  order, and the offline backtest partitions exactly the same way
  (:func:`stream.kafka.partitioner.record_partition`).
* Pacing: as fast as possible, or ``speed`` times real time by event timestamps
  (:class:`Pacer`, on an injected clock).
* Resumable without skips or duplicates. A checkpoint file records the source position *and*
  the destination's end offsets, and is written only after the producer confirmed delivery of
  everything before it. On resume, records the previous run delivered after its last checkpoint
  (a crash between flushes) are found on the destination: for each partition, the first ``n``
  records the resumed run would send there are compared byte for byte with the ``n`` records
  already there and skipped. This needs the replay to be the only writer of the destination.

A checkpoint cycle, every ``checkpoint_every`` records and at the end:

1. ``flush()`` the idempotent producer (``enable.idempotence=true``: no duplicates, no
   reordering within the run) and fail on any delivery error;
2. take the destination offsets from the delivery reports;
3. write ``{source, position, destination offsets}`` atomically (temporary file + rename).

Sources: a simulator dataset directory, an ``events.parquet`` (flat columns) or ``events.jsonl``
file, or a topic between offsets or times (partitions merged by record timestamp; a
deterministic merge, so a resumed run continues the same sequence).
"""

from __future__ import annotations

import heapq
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.clock import SYSTEM, Clock
from stream.config import Settings, make_writable_dir
from stream.errors import ConfigError, InfraError, StreamError
from stream.kafka.clients import cluster_metadata, kafka_config
from stream.kafka.io import produce_blocking, read_to_end
from stream.kafka.partitioner import record_partition

CHECKPOINT_FORMAT = 1


# --- sources ------------------------------------------------------------------------------------
@dataclass
class Item:
    key: bytes | None
    value: bytes
    timestamp_ms: int | None


class Source:
    """Records in a fixed order; ``position`` is JSON-serializable and points after the last item."""

    position: Any
    total: int | None = None

    def fingerprint(self) -> str:
        raise NotImplementedError

    def items(self, position: Any) -> Iterator[Item]:
        """Items after ``position`` (None = from the start), updating ``self.position`` as it goes."""
        raise NotImplementedError


def _event_time(value: bytes) -> int | None:
    try:
        t = orjson.loads(value).get("event_time")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return t if isinstance(t, int) else None


class FileSource(Source):
    """A simulator dataset directory, an ``events.parquet`` or an ``events.jsonl`` (delivery order).

    A dataset directory is read when its records or their count are first asked for (a minute for
    a few hundred MB), so that a replay checks its destination and checkpoint first.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ConfigError(f"no such file or directory: {str(self.path)!r}")
        if self.path.is_file() and self.path.suffix not in (".parquet", ".jsonl"):
            raise ConfigError(
                f"unknown event file {str(self.path)!r}; expected a .parquet or .jsonl file "
                "or a simulator dataset directory"
            )
        self.position = 0
        self._dataset: Any = None
        self._total: int | None = None

    @property
    def total(self) -> int | None:
        if self.path.is_dir():
            self._total = len(self._read()) + len(self._read().malformed)
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value

    def _read(self) -> Any:
        if self._dataset is None:
            from simulator.dataset import Dataset

            self._dataset = Dataset.read(self.path)
        return self._dataset

    def fingerprint(self) -> str:
        files = sorted(self.path.glob("*")) if self.path.is_dir() else [self.path]
        stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
        return f"file:{self.path.resolve()}:{stats}"

    def _payloads(self) -> Iterator[tuple[bytes | None, bytes]]:
        if self.path.is_dir():
            for key, value in self._read().iter_payloads():
                yield key or None, value
        elif self.path.suffix == ".jsonl":
            with open(self.path, "rb") as f:
                for line in f:
                    line = line.rstrip(b"\n")
                    if line:
                        yield _key_of(line), line
        else:
            import pyarrow.parquet as pq

            from stream.clickhouse import frame_to_events

            pf = pq.ParquetFile(self.path)
            self.total = pf.metadata.num_rows
            for batch in pf.iter_batches(batch_size=65_536):
                for ev in frame_to_events(batch.to_pandas()):
                    yield ev["user_id"].encode(), orjson.dumps(ev)

    def items(self, position: Any) -> Iterator[Item]:
        start = int(position or 0)
        self.position = start
        for i, (key, value) in enumerate(self._payloads()):
            if i < start:
                continue
            self.position = i + 1
            yield Item(key, value, _event_time(value))


def _key_of(value: bytes) -> bytes | None:
    try:
        uid = orjson.loads(value).get("user_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return uid.encode() if isinstance(uid, str) and uid else None


class TopicSource(Source):
    """A topic between offsets (``[from_offset, to_offset)`` in every partition) or times (ms).

    Partitions are merged by (record timestamp, partition, offset), a deterministic merge, so the
    position ``{partition: next offset}`` resumes exactly the same sequence.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        from_offset: int | None = None,
        to_offset: int | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        settings: Settings | None = None,
        idle_timeout_s: float = 30.0,
    ) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.bootstrap, self.topic = bootstrap, topic
        self.conf = kafka_config(
            bootstrap,
            settings,
            **{
                "group.id": f"replay-{os.getpid()}-{time.time_ns()}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            },
        )
        self.idle_timeout_s = idle_timeout_s
        self.spec = {"from_offset": from_offset, "to_offset": to_offset, "from_ms": from_ms, "to_ms": to_ms}
        consumer = Consumer(self.conf)
        try:
            parts = _partitions(consumer, topic)
            self.start: dict[int, int] = {}
            self.end: dict[int, int] = {}
            starts_by_time = ends_by_time = None
            # offsets_for_times may answer in another order than asked: index by partition.
            if from_ms is not None:
                starts_by_time = {
                    tp.partition: tp
                    for tp in consumer.offsets_for_times([TopicPartition(topic, p, from_ms) for p in parts], 30)
                }
            if to_ms is not None:
                ends_by_time = {
                    tp.partition: tp
                    for tp in consumer.offsets_for_times([TopicPartition(topic, p, to_ms) for p in parts], 30)
                }
            for p in parts:
                lo, hi = _watermarks(consumer, topic, p)
                if from_offset is not None:
                    lo = max(lo, from_offset)
                if to_offset is not None:
                    hi = min(hi, to_offset)
                if starts_by_time is not None:
                    o = starts_by_time[p].offset
                    lo = max(lo, hi if o < 0 else o)
                if ends_by_time is not None:
                    o = ends_by_time[p].offset
                    hi = min(hi, hi if o < 0 else o)
                self.start[p], self.end[p] = lo, max(lo, hi)
        finally:
            consumer.close()
        self.total = sum(self.end[p] - self.start[p] for p in self.start)
        self.position = {str(p): o for p, o in self.start.items()}

    def fingerprint(self) -> str:
        return f"topic:{self.bootstrap}:{self.topic}:{sorted(self.start.items())}:{sorted(self.end.items())}"

    def items(self, position: Any) -> Iterator[Item]:
        from confluent_kafka import Consumer, TopicPartition

        pos = {int(p): int(o) for p, o in (position or self.position).items()}
        self.position = {str(p): o for p, o in pos.items()}
        live = {p for p, o in pos.items() if o < self.end[p]}
        self.total = sum(self.end[p] - pos[p] for p in live)
        if not live:
            return
        consumer = Consumer(self.conf)
        consumer.assign([TopicPartition(self.topic, p, pos[p]) for p in sorted(live)])
        buffers: dict[int, deque[Any]] = {p: deque() for p in live}
        heads: list[tuple[int, int, int]] = []
        fetched = dict(pos)  # next offset not yet buffered, per partition
        try:
            while live or heads:
                idle_since = time.monotonic()
                while any(not buffers[p] and fetched[p] < self.end[p] for p in live):
                    msgs = consumer.consume(500, 0.5)
                    for msg in msgs:
                        if msg.error() is not None:
                            raise InfraError(f"reading {self.topic!r}: {msg.error()}")
                        p, o = int(msg.partition() or 0), int(msg.offset() or 0)
                        if p not in live or o < fetched[p] or o >= self.end[p]:
                            continue
                        fetched[p] = o + 1
                        if not buffers[p]:
                            heads_push(heads, msg)
                        buffers[p].append(msg)
                    if msgs:
                        idle_since = time.monotonic()
                        continue
                    for tp in consumer.position([TopicPartition(self.topic, p) for p in live]):
                        if tp.offset >= self.end[tp.partition]:  # gaps: compaction, transaction markers
                            fetched[tp.partition] = self.end[tp.partition]
                    if time.monotonic() - idle_since > self.idle_timeout_s:
                        raise InfraError(
                            f"no records from {self.topic!r} for {self.idle_timeout_s:.0f}s "
                            f"while partitions {sorted(live)} are not at their end offsets"
                        )
                live = {p for p in live if buffers[p] or fetched[p] < self.end[p]}
                if not heads:
                    break
                _, p, _ = heapq.heappop(heads)
                msg = buffers[p].popleft()
                if buffers[p]:
                    heads_push(heads, buffers[p][0])
                self.position[str(p)] = msg.offset() + 1
                ts_type, ts = msg.timestamp()
                yield Item(msg.key(), msg.value() or b"", ts if ts_type else None)
        finally:
            consumer.close()


def heads_push(heads: list[tuple[int, int, int]], msg: Any) -> None:
    heapq.heappush(heads, (msg.timestamp()[1], msg.partition(), msg.offset()))


def _watermarks(consumer: Any, topic: str, partition: int, timeout_s: float = 30.0) -> tuple[int, int]:
    """(low, high) offsets; retries while a new topic's leader is still being elected."""
    from confluent_kafka import KafkaException, TopicPartition

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            return int(low), int(high)
        except KafkaException as exc:
            if time.monotonic() > deadline or (not exc.args[0].retriable() and "leader" not in str(exc).lower()):
                raise
            time.sleep(0.2)


def _partitions(client: Any, topic: str) -> list[int]:
    md = client.list_topics(topic, timeout=30)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        known = sorted(n for n in client.list_topics(timeout=30).topics if not n.startswith("__"))
        shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        raise ConfigError(f"unknown topic {topic!r}; existing topics: {shown or 'none'}")
    return sorted(t.partitions)


# --- checkpoint ---------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """How far a replay got: the source position and the destination offsets after it."""

    source: str
    topic: str
    position: Any
    offsets: dict[int, int]
    produced: int = 0
    done: bool = False

    def write(self, path: Path) -> None:
        data = {
            "format": CHECKPOINT_FORMAT,
            "source": self.source,
            "topic": self.topic,
            "position": self.position,
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "produced": self.produced,
            "done": self.done,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        try:
            d = json.loads(path.read_text())
            if d.get("format") != CHECKPOINT_FORMAT:
                raise ConfigError(
                    f"checkpoint {str(path)!r} has format {d.get('format')!r}, expected {CHECKPOINT_FORMAT}"
                )
            return cls(
                d["source"],
                d["topic"],
                d["position"],
                {int(p): int(o) for p, o in d["offsets"].items()},
                int(d.get("produced", 0)),
                bool(d.get("done", False)),
            )
        except (OSError, AttributeError, KeyError, TypeError, ValueError) as exc:  # ValueError: bad JSON too
            raise ConfigError(f"checkpoint {str(path)!r} is not a replay checkpoint: {exc}") from exc


# --- the replay ---------------------------------------------------------------------------------
@dataclass
class ReplayResult:
    produced: int = 0
    skipped_already_delivered: int = 0
    complete: bool = False
    seconds: float = 0.0
    per_partition: dict[int, int] = field(default_factory=dict)


def _destination_tail(
    conf: dict[str, Any], topic: str, since: dict[int, int], until: dict[int, int]
) -> dict[int, deque[tuple[bytes | None, bytes]]]:
    """Records on the destination between the checkpoint's offsets and the current end offsets."""
    from confluent_kafka import Consumer

    start = {p: since.get(p, 0) for p in until}
    out: dict[int, deque[tuple[bytes | None, bytes]]] = {p: deque() for p, hi in until.items() if hi > start[p]}
    if not out:
        return out
    consumer = Consumer({**conf, "group.id": f"replay-resume-{time.time_ns()}", "enable.auto.commit": False})
    try:
        msgs = read_to_end(consumer, topic, start=start, end=until, timeout_s=60)
    except InfraError as exc:
        raise InfraError(f"could not read back the tail of {topic!r} to resume: {exc}") from None
    finally:
        consumer.close()
    for msg in msgs:
        out[int(msg.partition() or 0)].append((msg.key(), msg.value() or b""))
    return out


class Pacer:
    """Holds each record until ``speed`` times its event-time offset from the first paced record has passed.

    The offsets count from the first record with a timestamp, and the elapsed time from ``start``
    (the replay's start on ``clock``): time spent producing counts against the wait.
    """

    #: the longest single wait, so the producer keeps serving delivery reports while pacing
    max_wait_s = 0.1

    def __init__(self, speed: float, clock: Clock, start: float) -> None:
        self.speed = speed
        self.clock = clock
        self.start = start
        self.first_ms: int | None = None

    def ahead(self, timestamp_ms: int) -> float:
        """Seconds until the record with this event time is due (<= 0: due now)."""
        if self.first_ms is None:
            self.first_ms = timestamp_ms
        return (timestamp_ms - self.first_ms) / 1000 / self.speed - (self.clock.monotonic() - self.start)

    def wait_for(self, timestamp_ms: int, wait: Callable[[float], object]) -> None:
        """Call ``wait(seconds)``, ``max_wait_s`` at most at a time, until the record is due."""
        while (left := self.ahead(timestamp_ms)) > 0:
            wait(min(left, self.max_wait_s))


def run_replay(
    source: Source,
    bootstrap: str,
    topic: str,
    *,
    speed: float | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    max_events: int | None = None,
    checkpoint_every: int = 5000,
    timestamps: str = "now",
    progress: bool = True,
    settings: Settings | None = None,
    clock: Clock = SYSTEM,
) -> ReplayResult:
    """Replay ``source`` into ``topic``. See the module docstring for the guarantees.

    ``speed``: None or 0 = as fast as possible, else that many times real time.
    ``timestamps``: ``now`` (record time = produce time) or ``event`` (the source's timestamps).
    ``max_events``: stop (cleanly, checkpointed) after producing that many records in this run.
    ``settings``: the cluster's security settings (None: a plaintext listener, e.g. the embedded broker).
    ``clock``: paces the records and times the run.
    """
    from confluent_kafka import Consumer, KafkaException, Producer

    check_options(
        speed=speed,
        checkpoint_path=checkpoint_path,
        resume=resume,
        max_events=max_events,
        checkpoint_every=checkpoint_every,
        timestamps=timestamps,
    )
    conf = kafka_config(bootstrap, settings)
    meta = Consumer({**conf, "group.id": f"replay-meta-{time.time_ns()}"})
    try:
        parts = _partitions(meta, topic)
        ends = {p: _watermarks(meta, topic, p)[1] for p in parts}
    except KafkaException as exc:
        raise InfraError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    finally:
        meta.close()
    n_parts = len(parts)

    # Step 1. Where to start: the checkpoint, reconciled with what the destination already has.
    ckpt: Checkpoint | None = None
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        ckpt = Checkpoint.read(checkpoint_path)
        if ckpt.source != source.fingerprint() or ckpt.topic != topic:
            raise ConfigError(
                f"checkpoint {str(checkpoint_path)!r} belongs to another replay "
                f"({ckpt.source} -> {ckpt.topic}); remove it or pass another --checkpoint"
            )
    result = ReplayResult()
    if ckpt is not None and ckpt.done:
        result.complete = True
        return result
    position = ckpt.position if ckpt else None
    tail = _destination_tail(conf, topic, ckpt.offsets, ends) if ckpt else {}
    offsets = dict(ckpt.offsets) if ckpt else dict(ends)
    produced_before = ckpt.produced if ckpt else 0
    ckpt = Checkpoint(
        source.fingerprint(), topic, position if position is not None else source.position, offsets, produced_before
    )
    if checkpoint_path is not None:
        ckpt.write(checkpoint_path)

    # Step 2. Produce, pacing and checkpointing.
    producer = Producer(
        {
            **conf,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 10,
            # No compression: aiokafka (the worker's client) cannot decode lz4 without an extra library.
            "queue.buffering.max.messages": 500_000,
        }
    )
    errors: list[str] = []
    delivered: dict[int, int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            if len(errors) < 5:
                errors.append(str(err))
            return
        p = msg.partition()
        delivered[p] = max(delivered.get(p, -1), msg.offset() + 1)

    def checkpoint(done: bool = False) -> None:
        left = producer.flush(120)
        if errors or left:
            raise InfraError(f"{left} records not delivered to {topic!r} at {bootstrap}: {errors[:1]}")
        ckpt.position = source.position
        for p, o in delivered.items():
            ckpt.offsets[p] = max(ckpt.offsets.get(p, 0), o)
        ckpt.produced = produced_before + result.produced
        ckpt.done = done
        if checkpoint_path is not None:
            ckpt.write(checkpoint_path)

    bar = _progress(source.total, progress)
    began = clock.monotonic()
    pacer = Pacer(speed, clock, began) if speed else None
    seen = 0
    try:
        for item in source.items(position):
            seen += 1
            p = record_partition(item.key, item.value, n_parts)
            pending = tail.get(p)
            if pending:
                key, value = pending.popleft()
                if key != item.key or value != item.value:
                    raise StreamError(
                        f"cannot resume: partition {p} of {topic!r} holds a record that is not the "
                        "next one of this replay (another writer?); remove the checkpoint to start over"
                    )
                ckpt.offsets[p] = ckpt.offsets.get(p, 0) + 1
                result.skipped_already_delivered += 1
                bar.update(1)
                continue
            if pacer is not None and item.timestamp_ms is not None:
                pacer.wait_for(item.timestamp_ms, producer.poll)  # poll: serve delivery reports while waiting
            kwargs: dict[str, Any] = {}
            if timestamps == "event" and item.timestamp_ms is not None:
                kwargs["timestamp"] = item.timestamp_ms
            produce_blocking(producer, topic, item.value, item.key, partition=p, on_delivery=on_delivery, **kwargs)
            result.produced += 1
            result.per_partition[p] = result.per_partition.get(p, 0) + 1
            bar.update(1)
            if result.produced % 1000 == 0:
                producer.poll(0)
            if result.produced % checkpoint_every == 0:
                checkpoint()
            if max_events is not None and result.produced >= max_events:
                checkpoint()
                result.seconds = clock.monotonic() - began
                return result
        if seen == 0 and produced_before == 0:
            raise StreamError(f"nothing to replay: the source {source.fingerprint().split(':')[0]} range is empty")
        checkpoint(done=True)
        result.complete = True
    except KafkaException as exc:
        raise InfraError(f"producing to {topic!r} at {bootstrap} failed: {exc}") from exc
    finally:
        bar.close()
    result.seconds = clock.monotonic() - began
    return result


def check_options(
    *,
    speed: float | None,
    checkpoint_path: Path | None,
    resume: bool,
    max_events: int | None,
    checkpoint_every: int,
    timestamps: str,
) -> None:
    """Refuse bad replay options with one line, before anything is read or loaded."""
    if timestamps not in ("now", "event"):
        raise ConfigError(f"unknown timestamps option {timestamps!r}; expected 'now' or 'event'")
    if speed is not None and not speed >= 0:  # also refuses NaN
        raise ConfigError(f"bad --speed {speed}; expected a number >= 0 (0 = as fast as possible)")
    if max_events is not None and max_events < 1:
        raise ConfigError(f"bad --max-events {max_events}; expected a positive number of records")
    if checkpoint_every < 1:
        raise ConfigError(f"bad --checkpoint-every {checkpoint_every}; expected a positive number of records")
    if checkpoint_path is None:
        if resume:
            raise ConfigError("--resume needs --checkpoint FILE: the checkpoint is what it resumes from")
        return
    if checkpoint_path.exists() and not checkpoint_path.is_file():
        raise ConfigError(f"bad --checkpoint {str(checkpoint_path)!r}; expected a file, not a directory")
    if checkpoint_path.exists() and not resume:
        raise ConfigError(
            f"checkpoint {str(checkpoint_path)!r} exists: pass --resume to continue it, or remove it to start over"
        )
    problem = make_writable_dir(checkpoint_path.parent)
    if problem:
        raise ConfigError(
            f"bad --checkpoint {str(checkpoint_path)!r}: {problem}; expected a file in a writable directory"
        )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, file=sys.stderr, smoothing=0.1, desc="replay")


# --- CLI ----------------------------------------------------------------------------------------
def time_ms(text: str | None) -> int | None:
    """Epoch ms or an ISO-8601 time (UTC unless it names an offset)."""
    if text is None:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"bad time {text!r}; expected epoch ms or ISO-8601 like 2025-01-06T12:00") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def check_source_args(args: Any, verb: str = "replayed") -> None:
    """Source options the chosen source ignores, or that no source accepts (replay's and ingest's CLI)."""
    if args.from_file:
        given = [
            opt
            for opt, v in (
                ("--from-offset", args.from_offset),
                ("--to-offset", args.to_offset),
                ("--from-time", args.from_time),
                ("--to-time", args.to_time),
            )
            if v is not None
        ]
        if given:
            raise ConfigError(f"{given[0]} applies to --from-topic only; a --from-file source is {verb} whole")
    for opt, v in (("--from-offset", args.from_offset), ("--to-offset", args.to_offset)):
        if v is not None and v < 0:
            raise ConfigError(f"bad {opt} {v}; expected an offset >= 0")
    time_ms(args.from_time)
    time_ms(args.to_time)


def source_from_args(args: Any, settings: Settings, bootstrap: str | None) -> Source:
    """The source ``--from-file`` or ``--from-topic`` (with its range options) names (replay's and ingest's CLI)."""
    if args.from_file:
        return FileSource(args.from_file)
    if args.from_topic is None:
        raise ConfigError("nothing to read: pass --from-file PATH or --from-topic NAME")
    if not bootstrap:
        raise ConfigError("no Kafka address: pass --bootstrap HOST:PORT or set STREAM_KAFKA_BOOTSTRAP")
    return TopicSource(
        bootstrap,
        settings.topic(args.from_topic),
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        from_ms=time_ms(args.from_time),
        to_ms=time_ms(args.to_time),
        settings=settings,
    )


def _check_args(args: Any) -> None:
    """The CLI's checks: the source options, then :func:`check_options`."""
    check_source_args(args)
    check_options(
        speed=args.speed,
        checkpoint_path=Path(args.checkpoint) if args.checkpoint else None,
        resume=args.resume,
        max_events=args.max_events,
        checkpoint_every=args.checkpoint_every,
        timestamps=args.timestamps,
    )


def cmd_replay(args: Any) -> int:
    from stream.config import load_settings

    _check_args(args)  # every option, before a source is opened
    settings = load_settings()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    if not bootstrap:
        raise ConfigError("no Kafka address: pass --bootstrap HOST:PORT or set STREAM_KAFKA_BOOTSTRAP")
    cluster_metadata(bootstrap, settings)  # a wrong password or address: one line, before reading any source
    source = source_from_args(args, settings, bootstrap)
    if isinstance(source, TopicSource) and source.total == 0:
        raise StreamError(
            f"nothing to replay: topic {settings.topic(args.from_topic)!r} has no records in the requested range"
        )
    topic = settings.topic(args.to_topic)
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    res = run_replay(
        source,
        bootstrap,
        topic,
        speed=args.speed,
        checkpoint_path=ckpt,
        resume=args.resume,
        max_events=args.max_events,
        checkpoint_every=args.checkpoint_every,
        timestamps=args.timestamps,
        progress=not args.quiet,
        settings=settings,
    )
    state = "complete" if res.complete else "stopped early (resume with --resume)"
    print(
        f"replayed {res.produced} records to {topic} in {res.seconds:.1f}s"
        + (f", skipped {res.skipped_already_delivered} already delivered" if res.skipped_already_delivered else "")
        + f": {state}"
    )
    return 0


def register(sub: Any) -> None:
    """Add ``replay`` to the CLI (called by :func:`stream.cli.build_parser`)."""
    p = sub.add_parser("replay", help="replay events from a file or a topic range into a topic (resumable)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-file", metavar="PATH", help="simulator dataset dir, events.parquet or events.jsonl")
    src.add_argument("--from-topic", metavar="NAME", help="source topic (STREAM_TOPIC_PREFIX applies)")
    p.add_argument("--from-offset", type=int, help="first offset per partition (topic source)")
    p.add_argument("--to-offset", type=int, help="end offset per partition, exclusive (topic source)")
    p.add_argument("--from-time", help="first record time, epoch ms or ISO-8601 (topic source)")
    p.add_argument("--to-time", help="end record time, exclusive (topic source)")
    p.add_argument("--to-topic", default="session-events", help="destination topic (default session-events)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: STREAM_KAFKA_BOOTSTRAP)")
    p.add_argument("--speed", type=float, default=0.0, help="k x real time by event timestamps (0 = max)")
    p.add_argument(
        "--timestamps",
        choices=["now", "event"],
        default="now",
        help="record timestamps: produce time (default) or the source's",
    )
    p.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (needed by --resume)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--max-events", type=int, help="stop after this many records (checkpointed)")
    p.add_argument("--checkpoint-every", type=int, default=5000, help="records between checkpoints (default 5000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)


class PayloadSource(Source):
    """In-memory ``(key, value)`` records (e.g. ``Dataset.iter_payloads()``), for the backtest and tests."""

    def __init__(self, payloads: list[tuple[bytes | None, bytes]], name: str = "payloads") -> None:
        import hashlib

        self.payloads = payloads
        self.total = len(payloads)
        self.position = 0
        digest = hashlib.blake2b(digest_size=8)
        for key, value in payloads:
            digest.update(key or b"")
            digest.update(value)
        self.name = f"{name}:{len(payloads)}:{digest.hexdigest()}"

    def fingerprint(self) -> str:
        return f"memory:{self.name}"

    def items(self, position: Any) -> Iterator[Item]:
        start = int(position or 0)
        self.position = start
        for i in range(start, len(self.payloads)):
            key, value = self.payloads[i]
            self.position = i + 1
            yield Item(key or None, value, _event_time(value))
