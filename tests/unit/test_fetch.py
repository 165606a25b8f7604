"""stream.kafka.fetch.RdFetcher: what librdkafka is told, and which fetched records faust gets.

A fake client stands in for confluent-kafka's consumer: these tests check the fetcher's own
bookkeeping (epochs, seeks applied between fetches, records held for paused partitions); the
worker tests run it against the broker (``STREAM_KAFKA_FETCH=librdkafka``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiokafka.structs import TopicPartition

from stream.kafka.fetch import OFFSET_STORED, RdFetcher

A = TopicPartition("events", 0)
B = TopicPartition("events", 1)


class Msg:
    def __init__(self, tp: Any, offset: int) -> None:
        self._tp, self._offset = tp, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return str(self._tp[0])

    def partition(self) -> int:
        return int(self._tp[1])

    def offset(self) -> int:
        return self._offset


class FakeClient:
    """Records the calls; ``consume`` returns what a test queued, ``poll`` blocks until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int, int]]]] = []
        self.queue: list[Msg] = []
        self.gate = threading.Event()
        self.gate.set()
        self.polling = threading.Event()

    def _log(self, name: str, ctps: list[Any]) -> None:
        self.calls.append((name, sorted((c.topic, c.partition, c.offset) for c in ctps)))

    def incremental_assign(self, ctps: list[Any]) -> None:
        self._log("assign", ctps)

    def incremental_unassign(self, ctps: list[Any]) -> None:
        self._log("unassign", ctps)

    def pause(self, ctps: list[Any]) -> None:
        self._log("pause", ctps)

    def resume(self, ctps: list[Any]) -> None:
        self._log("resume", ctps)

    def consume(self, n: int, timeout: float) -> list[Msg]:
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def poll(self, timeout: float) -> Msg | None:
        self.polling.set()
        self.gate.wait(5)
        return self.queue.pop(0) if self.queue else None

    def position(self, ctps: list[Any]) -> list[Any]:
        return ctps  # offset -1001: nothing read yet

    def get_watermark_offsets(self, ctp: Any, cached: bool = False) -> tuple[int, int]:
        return -1001, -1001

    def close(self) -> None:
        pass


def _offsets(records: list[Msg]) -> list[int]:
    return [m.offset() for m in records]


async def test_assigned_partitions_start_at_the_committed_offset_unless_sought() -> None:
    client = FakeClient()
    fetcher = RdFetcher(client)
    fetcher.assign([A, B])
    fetcher.seek(B, 40)
    assert fetcher.position(B) == 40
    assert fetcher.position(A) is None
    await fetcher.fetch({A, B}, 0)
    assert client.calls == [("assign", [("events", 0, OFFSET_STORED), ("events", 1, 40)])]
    fetcher.close()


async def test_a_seek_is_applied_between_fetches_and_drops_what_the_fetch_under_way_read() -> None:
    client = FakeClient()
    fetcher = RdFetcher(client)
    fetcher.assign([A])
    await fetcher.fetch({A}, 0)
    client.gate.clear()
    client.polling.clear()
    fetch = asyncio.ensure_future(fetcher.fetch({A}, 1.0))
    await asyncio.get_running_loop().run_in_executor(None, client.polling.wait, 5)
    fetcher.seek(A, 5)  # while librdkafka waits for records from the old position
    client.queue = [Msg(A, 9), Msg(A, 10)]
    client.gate.set()
    messages, epoch = await fetch
    assert _offsets(messages) == [9, 10]
    assert fetcher.epochs[A] > epoch  # these are dropped (the consumer's _group) ...
    client.calls.clear()
    await fetcher.fetch({A}, 0)  # ... and the next fetch starts at the sought offset
    assert client.calls == [("unassign", [("events", 0, -1001)]), ("assign", [("events", 0, 5)])]
    fetcher.close()


async def test_partitions_faust_does_not_want_are_paused_and_resumed() -> None:
    client = FakeClient()
    fetcher = RdFetcher(client)
    fetcher.assign([A, B])
    await fetcher.fetch({A}, 0)
    assert client.calls[-1] == ("pause", [("events", 1, -1001)])
    await fetcher.fetch({A}, 0)
    assert client.calls[-1][0] == "pause"  # nothing new
    await fetcher.fetch({A, B}, 0)
    assert client.calls[-1] == ("resume", [("events", 1, -1001)])
    fetcher.close()


async def test_revoked_partitions_leave_librdkafka_and_their_epoch() -> None:
    client = FakeClient()
    fetcher = RdFetcher(client)
    fetcher.assign([A, B])
    await fetcher.fetch({A, B}, 0)
    fetcher.revoke([A, B])
    assert A not in fetcher.epochs and fetcher.position(A) is None
    client.calls.clear()
    await fetcher.fetch(set(), 0)
    assert client.calls == [("unassign", [("events", 0, -1001), ("events", 1, -1001)])]
    fetcher.close()


class MarkedClient(FakeClient):
    """A client with a read position and cached high watermark per partition; notes the threads that read them."""

    def __init__(self) -> None:
        super().__init__()
        self.positions: dict[tuple[str, int], int] = {}
        self.highs: dict[tuple[str, int], int] = {}
        self.readers: set[str] = set()

    def position(self, ctps: list[Any]) -> list[Any]:
        from confluent_kafka import TopicPartition as Ctp

        self.readers.add(threading.current_thread().name)
        return [Ctp(c.topic, c.partition, self.positions.get((c.topic, c.partition), -1001)) for c in ctps]

    def get_watermark_offsets(self, ctp: Any, cached: bool = False) -> tuple[int, int]:
        self.readers.add(threading.current_thread().name)
        return -1001, self.highs.get((ctp.topic, ctp.partition), -1001)


async def test_positions_and_watermarks_are_those_the_fetch_thread_read_at_the_end_of_the_last_fetch() -> None:
    """confluent-kafka serialises the calls on one consumer: a call from the event loop would wait
    for the fetch thread's poll (up to a whole fetch). The event loop never calls the client."""
    client = MarkedClient()
    fetcher = RdFetcher(client)
    fetcher.assign([A, B])
    assert (fetcher.position(A), fetcher.watermark(A)) == (None, None)  # nothing fetched yet
    client.queue = [Msg(A, 9)]
    client.positions[("events", 0)] = 10
    client.highs[("events", 0)] = 12
    await fetcher.fetch({A, B}, 0)
    assert (fetcher.position(A), fetcher.watermark(A)) == (10, 12)
    assert (fetcher.position(B), fetcher.watermark(B)) == (None, None)  # librdkafka knows neither yet
    client.positions[("events", 0)] = 11  # librdkafka moved on: seen with the next fetch's records
    assert fetcher.position(A) == 10
    fetcher.seek(A, 5)
    assert fetcher.position(A) == 5  # the old reading is of the old position
    await fetcher.fetch({A, B}, 0)
    assert fetcher.position(A) == 11
    fetcher.close()
    assert client.readers and all(name.startswith("librdkafka-fetch") for name in client.readers), client.readers


async def test_a_position_moved_without_records_ends_the_fetch_with_it() -> None:
    """A transaction's commit marker moves librdkafka's position without a record: the fetch ends
    at the next poll step with the new position instead of waiting out its timeout."""
    import time

    client = MarkedClient()
    fetcher = RdFetcher(client)
    fetcher.assign([A])
    client.queue = [Msg(A, 9)]
    client.positions[("events", 0)] = 10
    await fetcher.fetch({A}, 0)
    client.positions[("events", 0)] = 11  # past the marker at 10
    started = time.monotonic()
    messages, _ = await fetcher.fetch({A}, 5.0)
    assert messages == [] and fetcher.position(A) == 11
    assert time.monotonic() - started < 2.5
    fetcher.close()


def test_the_fetch_setting_picks_the_consumer(tmp_path: Any) -> None:
    """STREAM_KAFKA_FETCH=librdkafka: the consumers of stream/kafka/fetch.py, still committing the ledger's offsets."""
    from stream.config import load_settings
    from stream.kafka import fetch, transport
    from stream.worker.app import create_app

    for handoff, cls in (("lean", fetch.Consumer), ("faust", fetch.LedgerConsumer)):
        settings = load_settings(
            kafka_fetch="librdkafka",
            consumer_handoff=handoff,
            state_dir=tmp_path / handoff / "state",
            models_dir=tmp_path / "m",
        )
        app, rt = create_app(settings, "localhost:1", clickhouse=False)
        assert type(app.consumer) is cls
        assert isinstance(app.consumer, transport.LedgerConsumer)
        assert app.fetch_consumer_factory is not None
        rt.close(timeout_s=0)
        rt.producer = None  # drop the output producer now: it would keep retrying localhost:1
