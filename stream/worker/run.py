"""``python -m stream worker``: ensure topics, then run the faust worker in the foreground."""

from __future__ import annotations

import logging
import os
import sys

from stream.config import Settings
from stream.errors import StreamError


def run_worker(settings: Settings, loglevel: str = "info") -> int:
    from faust.worker import Worker

    from stream.kafka.topics import TOPICS, ensure_topics, worker_topics
    from stream.worker.app import create_app
    from stream.worker.health import Health
    from stream.worker.metrics import WorkerMetrics
    from stream.worker.tuning import use_event_loop

    if not settings.kafka_bootstrap:
        raise StreamError("no Kafka address: set STREAM_KAFKA_BOOTSTRAP (or run `python -m stream kafka up`)")
    # Everything that can be checked is checked before faust starts: after that, an error is a
    # crash with a long log instead of one line.
    settings.ensure_dir("state_dir", settings.worker_instance)
    if not settings.clickhouse_url:
        settings.ensure_dir("chdb_path")
    metrics = WorkerMetrics(health=Health(settings.health_loop_timeout_s))
    metrics.serve(settings.worker_web_port)  # binds now; the app's start task finds it served
    # the internal topics too: one created as the group subscribes can miss its first assignment
    ensure_topics(settings.kafka_bootstrap, settings, TOPICS + worker_topics())
    use_event_loop(settings.event_loop)
    app, _ = create_app(settings, metrics=metrics)
    worker = Worker(app, loglevel=loglevel)
    try:
        worker.execute_from_commandline()  # blocks; handles SIGINT/SIGTERM with a clean shutdown
    except SystemExit as done:  # mode always ends with one: 0, or 1 after a crash
        code = done.code if isinstance(done.code, int) else 1
    else:  # pragma: no cover - execute_from_commandline does not return
        code = 0
    # Exit without Python's finalization: faust has stopped and closed its stores by now, and after
    # a crash the teardown of C extensions' objects (RocksDB, librdkafka) could segfault, turning
    # exit code 1 into -11.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
