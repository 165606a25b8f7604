"""``python -m stream worker``: ensure topics, then run the faust worker in the foreground."""

from __future__ import annotations

from stream.config import Settings
from stream.errors import StreamError


def run_worker(settings: Settings, loglevel: str = "info") -> int:
    from faust.worker import Worker

    from stream.app import create_app
    from stream.metrics import WorkerMetrics
    from stream.topics import ensure_topics
    from stream.tuning import use_event_loop

    if not settings.kafka_bootstrap:
        raise StreamError("no Kafka address: set STREAM_KAFKA_BOOTSTRAP (or run `python -m stream kafka up`)")
    # Everything that can be checked is checked before faust starts: after that, an error is a
    # crash with a long log instead of one line.
    settings.ensure_dir("state_dir", settings.worker_instance)
    if not settings.clickhouse_url:
        settings.ensure_dir("chdb_path")
    metrics = WorkerMetrics()
    metrics.serve(settings.worker_web_port)  # binds now; the app's start task finds it served
    ensure_topics(settings.kafka_bootstrap, settings)
    use_event_loop(settings.event_loop)
    app, _ = create_app(settings, metrics=metrics)
    worker = Worker(app, loglevel=loglevel)
    worker.execute_from_commandline()  # blocks; handles SIGINT/SIGTERM with a clean shutdown
    return 0
