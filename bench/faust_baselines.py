"""Baseline faust workers for bench/worker.py (not part of the product).

* ``forward``: a trivial agent that forwards every event to an output topic (framework ceiling).
* ``naive``: per event, a RocksDB table read-modify-write of the user state and one
  ``inplace_predict`` per scorable event (the obvious implementation our worker is compared with).
* ``naive-tuned``: ``naive`` with the worker's process settings (uvloop, GC thresholds and
  freeze; stream/worker/tuning.py), to show what those alone are worth.

Usage: python bench/faust_baselines.py MODE BOOTSTRAP IN_TOPIC OUT_TOPIC APP_ID DATADIR MODELS_DIR
"""

from __future__ import annotations

import sys

import faust
import numpy as np
import orjson
from faust.worker import Worker

from stream.config import load_settings
from stream.models.registry import ModelRegistry, load_booster
from stream.state import (
    UserState,
    click_features,
    engagement_features,
    new_article_state,
    new_user_state,
    update_user,
    user_features,
)
from stream.worker.tuning import tune_gc, use_event_loop


def main() -> None:
    mode, bootstrap, in_topic, out_topic, app_id, datadir, models_dir = sys.argv[1:8]
    tuned = mode == "naive-tuned"
    if tuned:
        use_event_loop("uvloop")
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="rocksdb://",
        datadir=datadir,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        topic_partitions=4,
        table_standby_replicas=0,
        producer_linger_ms=5,
    )
    source = app.topic(in_topic, key_serializer="raw", value_serializer="raw")
    sink = app.topic(out_topic, key_serializer="raw", value_serializer="raw")

    if mode == "forward":

        @app.agent(source)
        async def forward(stream):  # type: ignore[no-untyped-def]
            async for event in stream.events():
                await sink.send(key=event.key, value=event.value)
    else:
        users = app.Table("naive-users", default=None, key_type=bytes, value_type=bytes, partitions=4)
        registry = ModelRegistry(models_dir)
        models = {name: load_booster(registry.resolve(name)) for name in ("churn", "click", "engagement")}
        empty_article = new_article_state()

        @app.agent(source)
        async def naive(stream):  # type: ignore[no-untyped-def]
            async for event in stream.events():
                ev = orjson.loads(event.value)
                raw = users.get(ev["user_id"])
                st = UserState.from_bytes(raw) if raw else new_user_state()
                kind = ev["event_type"]
                row = None
                if kind == "article_impression":
                    row, model = click_features(st, empty_article, ev), "click"
                elif kind == "session_start":
                    row, model = engagement_features(st, ev), "engagement"
                update_user(st, ev)
                if kind == "session_end":
                    row, model = user_features(st, ev["event_time"]), "churn"
                users[ev["user_id"]] = st.to_bytes()
                if row is not None:
                    score = float(models[model].inplace_predict(np.asarray([row], dtype=np.float32))[0])
                    await sink.send(key=event.key, value=orjson.dumps({"event_id": ev["event_id"], "score": score}))

    if tuned:
        settings = load_settings()

        @app.task
        async def tune() -> None:
            tune_gc(settings.gc_threshold, settings.gc_freeze)

    Worker(app, loglevel="warning").execute_from_commandline()


if __name__ == "__main__":
    main()
