"""Replay: keys, per-key order, exact resume after a clean stop and after a crash, one-line errors."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from simulator import SimConfig, generate
from stream.cli import main
from stream.kafka.io import read_topic
from stream.kafka.partitioner import record_partition
from stream.tools.replay import FileSource, Item, PayloadSource, TopicSource, run_replay
from tests.support.waits import topic_size, wait

PARTITIONS = 4


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = generate(SimConfig(n_users=150, days=2, seed=21, malformed_share=0.01, late_share=0.02, duplicate_share=0.01))
    return ds.write(tmp_path_factory.mktemp("ds"), formats=("parquet", "jsonl"))


def _topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result()
    return name


def _read(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes]]:
    """Every record on the topic (the replay has flushed), in (partition, offset) order."""
    msgs = sorted(read_topic(bootstrap, topic, timeout_s=30), key=lambda m: (m.partition(), m.offset()))
    return [(m.partition(), m.key(), m.value()) for m in msgs]


def _per_key(records: list[tuple[bytes | None, bytes]]) -> dict[bytes | None, list[bytes]]:
    d: dict[bytes | None, list[bytes]] = defaultdict(list)
    for k, v in records:
        d[k].append(v)
    if None in d:  # keyless (malformed) records have no order to keep: compare them as a multiset
        d[None].sort()
    return d


def _expected(dataset_dir: Path) -> list[tuple[bytes | None, bytes]]:
    return [(i.key, i.value) for i in FileSource(dataset_dir).items(None)]


@pytest.mark.kafka
def test_replay_preserves_keys_and_per_key_order(kafka_bootstrap: str, dataset_dir: Path, unique: str) -> None:
    topic = _topic(kafka_bootstrap, f"replay-order-{unique}")
    expected = _expected(dataset_dir)
    res = run_replay(FileSource(dataset_dir), kafka_bootstrap, topic, progress=False)
    assert res.complete and res.produced == len(expected)
    got = _read(kafka_bootstrap, topic)
    assert len(got) == len(expected)
    for p, k, v in got:  # Kafka's own partitioner would have put it there
        assert p == record_partition(k, v, PARTITIONS)
    assert _per_key([(k, v) for _, k, v in got]) == _per_key(expected)
    # Parquet and JSONL sources give the same events for the same keys
    jsonl = [(i.key, i.value) for i in FileSource(dataset_dir / "events.jsonl").items(None)]
    assert [k for k, _ in jsonl] == [k for k, _ in expected if k is not None]


@pytest.mark.kafka
def test_replay_paced_by_event_time(kafka_bootstrap: str, unique: str) -> None:
    topic = _topic(kafka_bootstrap, f"replay-pace-{unique}")
    payloads = [(b"u1", b'{"user_id":"u1","event_time":%d}' % (1_000_000 + i * 100)) for i in range(11)]
    res = run_replay(PayloadSource(payloads), kafka_bootstrap, topic, speed=1.0, progress=False)
    assert 0.95 <= res.seconds <= 3.0  # 1 s of event time at 1x
    res = run_replay(PayloadSource(payloads), kafka_bootstrap, topic, speed=10.0, progress=False)
    assert res.seconds <= 0.6


class Crash(Exception):
    pass


class CrashingSource(FileSource):
    """Stops the run abruptly after ``at`` items, once the destination holds ``delivered`` records.

    librdkafka delivers in the background: the crash comes after delivery, but with no flush and
    no checkpoint of the run's own.
    """

    def __init__(self, path: Path, at: int, bootstrap: str, topic: str, delivered: int) -> None:
        super().__init__(path)
        self.at = at
        self.bootstrap, self.topic, self.delivered = bootstrap, topic, delivered

    def items(self, position: Any) -> Iterator[Item]:
        for n, item in enumerate(super().items(position)):
            if n == self.at:
                wait(
                    lambda: topic_size(self.bootstrap, self.topic) >= self.delivered,
                    30,
                    f"{self.delivered} records on {self.topic}",
                    every_s=0.05,
                )
                raise Crash
            yield item


@pytest.mark.kafka
def test_resume_neither_skips_nor_duplicates(
    kafka_bootstrap: str, dataset_dir: Path, unique: str, tmp_path: Path
) -> None:
    topic = _topic(kafka_bootstrap, f"replay-resume-{unique}")
    ckpt = tmp_path / "replay.ckpt"
    expected = _expected(dataset_dir)
    n = len(expected)

    # 1. a clean stop after 700 records (checkpointed)
    r1 = run_replay(
        FileSource(dataset_dir),
        kafka_bootstrap,
        topic,
        checkpoint_path=ckpt,
        max_events=700,
        checkpoint_every=250,
        progress=False,
    )
    assert r1.produced == 700 and not r1.complete
    # 2. a crash: 900 more records handed to the producer, the last checkpoint 150 records before it
    with pytest.raises(Crash):
        run_replay(
            CrashingSource(dataset_dir, 900, kafka_bootstrap, topic, delivered=700 + 900),
            kafka_bootstrap,
            topic,
            checkpoint_path=ckpt,
            resume=True,
            checkpoint_every=250,
            progress=False,
        )
    # 3. resume to the end: the 150 delivered-but-not-checkpointed records are found and skipped
    r3 = run_replay(
        FileSource(dataset_dir),
        kafka_bootstrap,
        topic,
        checkpoint_path=ckpt,
        resume=True,
        checkpoint_every=250,
        progress=False,
    )
    assert r3.complete
    assert r3.skipped_already_delivered == 150
    assert 700 + 900 + r3.produced == n
    # 4. once complete, resuming again is a no-op
    assert (
        run_replay(
            FileSource(dataset_dir), kafka_bootstrap, topic, checkpoint_path=ckpt, resume=True, progress=False
        ).produced
        == 0
    )

    got = _read(kafka_bootstrap, topic)
    assert len(got) == n
    assert sorted((k or b"", v) for _, k, v in got) == sorted((k or b"", v) for k, v in expected)  # exact multiset
    assert _per_key([(k, v) for _, k, v in got]) == _per_key(expected)  # per-key order


@pytest.mark.kafka
def test_topic_source_range_and_cli_errors(
    kafka_bootstrap: str, unique: str, dataset_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _topic(kafka_bootstrap, f"replay-src-{unique}")
    dst = _topic(kafka_bootstrap, f"replay-dst-{unique}")
    payloads = [
        (f"u{i % 7}".encode(), b'{"user_id":"u%d","event_time":%d,"i":%d}' % (i % 7, 1000 + i, i)) for i in range(200)
    ]
    run_replay(PayloadSource(payloads), kafka_bootstrap, src, timestamps="event", progress=False)
    source = TopicSource(kafka_bootstrap, src, from_offset=5, to_offset=20)
    in_range = sum(min(20, c) - 5 for c in _counts(payloads).values() if c > 5)
    assert source.total == in_range
    run_replay(source, kafka_bootstrap, dst, progress=False)
    got = _read(kafka_bootstrap, dst)
    assert len(got) == in_range
    by_time = TopicSource(kafka_bootstrap, src, from_ms=1000 + 50, to_ms=1000 + 60)
    assert by_time.total == 10

    assert (
        main(
            [
                "replay",
                "--from-file",
                str(dataset_dir),
                "--to-topic",
                f"nope-{unique}",
                "--bootstrap",
                kafka_bootstrap,
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: unknown topic 'nope-{unique}'") and "\n" not in err
    assert (
        main(
            [
                "replay",
                "--from-topic",
                src,
                "--from-offset",
                "500",
                "--to-topic",
                dst,
                "--bootstrap",
                kafka_bootstrap,
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nothing to replay") and "\n" not in err


def _counts(payloads: list[tuple[bytes, bytes]]) -> dict[int, int]:
    c: dict[int, int] = defaultdict(int)
    for k, v in payloads:
        c[record_partition(k, v, PARTITIONS)] += 1
    return c


@pytest.fixture
def dataset_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The dataset directories read from now on (the real reader, observed)."""
    from simulator.dataset import Dataset

    read = Dataset.read.__func__  # type: ignore[attr-defined]
    calls: list[Path] = []

    def observed(cls: type[Dataset], directory: str | Path) -> Dataset:
        calls.append(Path(directory))
        return read(cls, directory)  # type: ignore[no-any-return]

    monkeypatch.setattr(Dataset, "read", classmethod(observed))
    return calls


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--speed", "-1"], "error: bad --speed -1.0; expected a number >= 0"),
        (["--speed", "nan"], "error: bad --speed nan; expected a number >= 0"),
        (["--resume"], "error: --resume needs --checkpoint FILE"),
        (["--checkpoint-every", "0"], "error: bad --checkpoint-every 0; expected a positive number"),
        (["--max-events", "0"], "error: bad --max-events 0; expected a positive number"),
        (["--from-offset", "10"], "error: --from-offset applies to --from-topic only"),
        (["--to-time", "2025-01-07T00:00"], "error: --to-time applies to --from-topic only"),
        (["--checkpoint", "{tmp}"], "error: bad --checkpoint '{tmp}'; expected a file, not a directory"),
        (["--checkpoint", "{tmp}/existing.ckpt"], "error: checkpoint '{tmp}/existing.ckpt' exists: pass --resume"),
    ],
)
def test_options_are_checked_before_the_dataset_is_loaded(
    dataset_dir: Path,
    dataset_reads: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    expected: str,
) -> None:
    (tmp_path / "existing.ckpt").write_text("{}")
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    # No broker at this address: a replay that got past its checks would fail there instead.
    code = main(["replay", "--from-file", str(dataset_dir), "--bootstrap", "127.0.0.1:1", "--quiet", *options])
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected.replace("{tmp}", str(tmp_path))) and "\n" not in err, err
    assert code == 2
    assert dataset_reads == []


@pytest.mark.kafka
def test_unknown_destination_is_reported_before_the_dataset_is_loaded(
    kafka_bootstrap: str, dataset_dir: Path, dataset_reads: list[Path], unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "replay",
                "--from-file",
                str(dataset_dir),
                "--to-topic",
                f"nope-{unique}",
                "--bootstrap",
                kafka_bootstrap,
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: unknown topic 'nope-{unique}'") and "\n" not in err
    assert dataset_reads == []
