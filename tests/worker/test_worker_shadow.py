"""Shadow scoring against the real broker and chdb: a challenger scores the rows production scores,
its records go to predictions-shadow and its own table only, and a promotion takes effect in the
running worker (the new version serves, the shadow stops)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.testing import WorkerProcess, consume, produce
from tests.support.models import train_and_register
from tests.support.waits import wait
from tests.worker.conftest import create_topics, expected_predictions, payloads, query_worker_clickhouse

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _keys(messages: list[Any]) -> Counter[tuple[str, str]]:
    return Counter((r["model_name"], r["event_id"]) for r in (orjson.loads(m.value()) for m in messages))


def test_a_challenger_is_scored_in_shadow_apart_and_a_promotion_takes_over(
    kafka_bootstrap: str,
    worker_env: dict[str, str],
    models_dir: Path,
    sim_events: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    train_and_register(models, sim_events, seed=21, rounds=15, alias="challenger")
    env = {**worker_env, "STREAM_MODELS_DIR": str(models)}
    prefix = env["STREAM_TOPIC_PREFIX"]
    create_topics(kafka_bootstrap, env)
    first, second = sim_events[:1200], sim_events[1200:2000]
    expected = expected_predictions(first)
    produce(kafka_bootstrap, f"{prefix}session-events", payloads(first))
    log = tmp_path / "worker.log"
    with WorkerProcess(kafka_bootstrap, env, log):
        preds = consume(kafka_bootstrap, f"{prefix}predictions", until=lambda got: len(_keys(got)) >= len(expected))
        shadow = consume(
            kafka_bootstrap, f"{prefix}predictions-shadow", until=lambda got: len(_keys(got)) >= len(expected)
        )
        assert set(_keys(preds)) == set(expected)
        assert set(_keys(shadow)) == set(expected)  # the same rows
        records = [orjson.loads(m.value()) for m in preds]
        assert {r["model_version"] for r in records} == {"1"} and not any("shadow" in r for r in records)
        shadow_records = [orjson.loads(m.value()) for m in shadow]
        assert {r["model_version"] for r in shadow_records} == {"2"}
        assert all(r["shadow"] is True for r in shadow_records)

        def counts() -> dict[str, int]:
            sql = (
                "SELECT 'production' AS t, count() AS n FROM {db}.predictions FINAL UNION ALL "
                "SELECT 'shadow', count() FROM {db}.predictions_shadow FINAL WHERE model_version = '2'"
            )
            return {r["t"]: r["n"] for r in query_worker_clickhouse(env, sql)}

        wait(lambda: counts() == {"production": len(expected), "shadow": len(expected)}, 60, "both tables complete")

        # promote the click challenger: production -> 2, no challenger alias any more
        aliases = models / "click" / "aliases.json"
        data = json.loads(aliases.read_text())
        data["production"] = data.pop("challenger")
        aliases.write_text(json.dumps(data))
        wait(lambda: "loaded model click version 2 (production)" in log.read_text(), 60, "the promotion loaded")
        wait(lambda: "stopped scoring click" in log.read_text(), 60, "the click challenger unloaded")

        produce(kafka_bootstrap, f"{prefix}session-events", payloads(second))
        later = expected_predictions(second)
        total = len(expected) + len(later)
        preds = consume(kafka_bootstrap, f"{prefix}predictions", until=lambda got: len(_keys(got)) >= total)
        new = [r for r in (orjson.loads(m.value()) for m in preds) if (r["model_name"], r["event_id"]) in later]
        assert {r["model_version"] for r in new if r["model_name"] == "click"} == {"2"}
        assert {r["model_version"] for r in new if r["model_name"] != "click"} == {"1"}
        shadow = consume(
            kafka_bootstrap,
            f"{prefix}predictions-shadow",
            until=lambda got: len(_keys(got)) >= total - sum(1 for m, _ in later if m == "click"),
        )
        shadow_keys = set(_keys(shadow))
        assert {k for k in later if k[0] != "click"} <= shadow_keys  # churn and engagement still shadowed
        assert not {k for k in later if k[0] == "click"} & shadow_keys  # click's challenger is production now
