"""Where datasets go besides files: ClickHouse (columnar batches) and Kafka (event-time order)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa

from simulator.dataset import Dataset
from stream.clickhouse import ClickHouse, insert_by_day
from stream.config import Settings
from stream.errors import InfraError
from stream.kafka import clients
from stream.kafka.io import produce_blocking

#: ClickHouse columns holding epoch ms that must be inserted as DateTime64.
_TIME_COLUMNS = {"event_time", "cutoff_time", "start_time", "day_start", "publish_time"}


def _nullable_int(t: pa.DataType) -> object:
    # Integers with nulls must stay integers (NaN floats cannot be cast to Nullable(Int)).
    return pd.Int64Dtype() if pa.types.is_integer(t) else None


def _frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas(types_mapper=_nullable_int)
    for c in df.columns:
        if c in _TIME_COLUMNS:
            df[c] = pd.to_datetime(df[c].astype("int64"), unit="ms", utc=True)
    return df


def backfill(ch: ClickHouse, ds: Dataset, batch_rows: int = 1_000_000, progress: bool = False) -> dict[str, int]:
    """Insert events into ``{db}.events`` and truth into ``{db}.truth_*``, in big batches.

    The events table is partitioned by day: each batch goes in as groups of at most 100 days
    (:func:`stream.clickhouse.insert_by_day`). Returns rows inserted per table. Re-running
    inserts again (events is a plain MergeTree): backfill into a fresh database.
    """
    counts: dict[str, int] = {}
    tables = [("events", ds.table)] + [(f"truth_{k}", t) for k, t in ds.truth_tables.items()]
    total = sum(t.num_rows for _, t in tables)
    bar = _bar(total, "rows", progress)
    for name, table in tables:
        n = 0
        for start in range(0, table.num_rows, batch_rows):
            frame = _frame(table.slice(start, batch_rows))
            n += insert_by_day(ch, name, frame) if name == "events" else ch.insert_df(name, frame)
            bar.update(min(batch_rows, table.num_rows - start))
        counts[name] = n
    bar.close()
    return counts


def produce_dataset(
    ds: Dataset,
    bootstrap: str,
    topic: str,
    rate: float | None = None,
    shift_to_now: bool = False,
    progress: bool = True,
    settings: Settings | None = None,
) -> int:
    """Produce every record (malformed ones interleaved) in delivery order, keyed by user_id.

    ``rate`` limits records per second (None = as fast as possible). ``shift_to_now`` moves
    all event times so that the last event is "now". Returns the number of records produced.
    ``settings`` carry a secured cluster's credentials (None: a plaintext listener).
    """
    from confluent_kafka import KafkaException

    producer = clients.producer(
        bootstrap,
        settings,
        **{
            "linger.ms": 5 if rate else 20,  # paced: what a live producer sends, without its own wait
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
            "enable.idempotence": True,
        },
    )
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None and len(errors) < 5:
            errors.append(str(err))

    shift = 0
    if shift_to_now and len(ds):
        shift = int(time.time() * 1000) - int(pa.compute.max(ds.table["event_time"]).as_py())
    total = len(ds) + len(ds.malformed)
    bar = _bar(total, "events", progress)
    began = time.monotonic()
    n = 0
    # paced every PACE records: an offered rate, not bursts of a thousand records (which a consumer
    # would see as a backlog to catch up on each time)
    pace = 1000 if not rate else max(1, min(1000, int(rate / 100)))
    try:
        for key, value in _payloads(ds, shift):
            produce_blocking(producer, topic, value, key or None, on_delivery=on_delivery)
            n += 1
            if n % pace == 0:
                producer.poll(0)
                if n % 1000 == 0:
                    bar.update(1000)
                if rate:
                    ahead = n / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        left = producer.flush(60)
    except KafkaException as exc:
        raise InfraError(f"producing to {topic!r} at {bootstrap} failed: {exc}") from exc
    bar.update(n % 1000)
    bar.close()
    if errors or left:
        raise InfraError(f"{left} records not delivered to {topic!r} at {bootstrap}: {errors[:1]}")
    return n


def _payloads(ds: Dataset, shift_ms: int) -> Iterator[tuple[bytes, bytes]]:
    if not shift_ms:
        yield from ds.iter_payloads()
        return
    import orjson

    for key, value in ds.iter_payloads():
        if key:  # valid events only; malformed records are sent as they are
            ev = orjson.loads(value)
            ev["event_time"] += shift_ms
            value = orjson.dumps(ev)
        yield key, value


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, unit: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, unit_scale=True, file=sys.stderr, smoothing=0.1)
