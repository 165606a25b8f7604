"""The README's first command: the whole product end to end on embedded infrastructure."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from stream.config import Settings, load_settings


@contextlib.contextmanager
def kafka_for(settings: Settings) -> Iterator[str]:
    """The configured Kafka, or an embedded broker started for the duration."""
    if settings.kafka_bootstrap:
        yield settings.kafka_bootstrap
        return
    from stream.kafka.embedded import embedded_kafka

    with embedded_kafka(partitions=settings.topic_partitions) as bootstrap:
        yield bootstrap


def run_demo(minutes: float = 2.0) -> int:
    from stream.clickhouse import connect
    from stream.topics import ensure_topics

    settings = load_settings()
    t0 = time.monotonic()
    with kafka_for(settings) as bootstrap:
        print(f"[demo] Kafka at {bootstrap} ({time.monotonic() - t0:.1f}s)")
        for name, status in ensure_topics(bootstrap, settings).items():
            print(f"[demo] topic {name}: {status}")
        ch = connect(settings)
        try:
            tables = ch.query_df(
                "SELECT name FROM system.tables WHERE database = {d:String} ORDER BY name",
                params={"d": ch.database},
            )["name"].tolist()
            print(f"[demo] ClickHouse ({type(ch).__name__}) database {ch.database}: {', '.join(tables)}")
        finally:
            ch.close()
    print(f"[demo] done in {time.monotonic() - t0:.1f}s; nothing left running")
    return 0
