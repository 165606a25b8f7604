"""One embedded broker for the security tests (a JVM start), with every kind of client listener:
PLAINTEXT, SASL_PLAINTEXT, SSL and SASL_SSL (its certificate signed by a throwaway CA).

The SASL user's password is generated here: neither the product nor the tests hold a secret.
Commands run as a user runs them, in a subprocess configured by ``STREAM_*`` variables.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.config import Settings, load_settings
from stream.kafka.embedded import EmbeddedKafka

ROOT = Path(__file__).resolve().parents[2]
USER = "stream-app"
#: event type -> the model that scores it (the worker's contract, docs/worker.md)
SCORABLE = {"article_impression": "click", "session_start": "engagement", "session_end": "churn"}


@pytest.fixture(scope="package")
def password() -> str:
    return "pw-" + secrets.token_hex(16)


@pytest.fixture(scope="package")
def broker(tmp_path_factory: pytest.TempPathFactory, password: str) -> Iterator[EmbeddedKafka]:
    b = EmbeddedKafka(workdir=tmp_path_factory.mktemp("secured-kafka"), sasl_users={USER: password}, tls=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def cluster_env(broker: EmbeddedKafka, protocol: str, password: str, mechanism: str = "PLAIN") -> dict[str, str]:
    """The ``STREAM_KAFKA_*`` variables of a client of ``broker``'s ``protocol`` listener."""
    env = {"STREAM_KAFKA_BOOTSTRAP": broker.address(protocol), "STREAM_KAFKA_SECURITY_PROTOCOL": protocol}
    if protocol.startswith("SASL_"):
        env.update(
            {
                "STREAM_KAFKA_SASL_MECHANISM": mechanism,
                "STREAM_KAFKA_SASL_USERNAME": USER,
                "STREAM_KAFKA_SASL_PASSWORD": password,
            }
        )
    if protocol.endswith("SSL"):
        env["STREAM_KAFKA_SSL_CAFILE"] = str(broker.ca_file)
    return env


def cluster_settings(broker: EmbeddedKafka, protocol: str, password: str, mechanism: str = "PLAIN") -> Settings:
    env = cluster_env(broker, protocol, password, mechanism)
    return load_settings(**{k.removeprefix("STREAM_").lower(): v for k, v in env.items()})


def run_cli(args: list[str], env: dict[str, str], timeout_s: float) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python <args>`` with ``env``; killed (and the test failed) after ``timeout_s``."""
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return proc, time.monotonic() - began


def topics_of(broker: EmbeddedKafka) -> set[str]:
    """Topic names, read over the broker's plaintext listener (independent of the code under test)."""
    from confluent_kafka.admin import AdminClient

    return set(AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics)


def scored(messages: list[Any]) -> set[tuple[str, str]]:
    """(model, event_id) of prediction records."""
    return {(p["model_name"], p["event_id"]) for p in (orjson.loads(m.value()) for m in messages)}


def expected_scores(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(SCORABLE[e["event_type"]], e["event_id"]) for e in events if e["event_type"] in SCORABLE}


def score_through_worker(
    broker: EmbeddedKafka, env: dict[str, str], settings: Settings, tmp_path: Path, unique: str
) -> tuple[str, str]:
    """`topics`, then a worker (STREAM_LOG_LEVEL=DEBUG) fed by `replay`; asserts every scorable event is scored.

    Returns the worker's log and the other commands' output, for the caller's checks.
    """
    from simulator import SimConfig, generate
    from stream.testing import WorkerProcess, consume
    from tests.support.models import train_and_register

    events = list(generate(SimConfig(n_users=30, days=2, seed=7)).iter_events())
    models = tmp_path / "models"
    train_and_register(models, events, seed=3)
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    prefix = f"{unique}."
    env = {
        **env,
        "STREAM_TOPIC_PREFIX": prefix,
        "STREAM_TOPIC_PARTITIONS": "2",
        "STREAM_WORKER_ID": f"w-{unique}",
        "STREAM_STATE_DIR": str(tmp_path / "state"),
        "STREAM_CHDB_PATH": str(tmp_path / "chdb"),
        "STREAM_MODELS_DIR": str(models),
        "STREAM_WORKER_WEB_PORT": "0",
        "STREAM_LOG_LEVEL": "DEBUG",
    }
    topics, _ = run_cli(["-m", "stream", "topics"], env, timeout_s=60)
    assert topics.returncode == 0, topics.stderr
    with WorkerProcess(env["STREAM_KAFKA_BOOTSTRAP"], env, tmp_path / "worker.log") as worker:
        replay, _ = run_cli(["-m", "stream", "-v", "replay", "--from-file", str(source), "--quiet"], env, timeout_s=120)
        assert replay.returncode == 0, replay.stderr
        assert f"replayed {len(events)} records to {prefix}session-events" in replay.stdout
        got = consume(
            env["STREAM_KAFKA_BOOTSTRAP"],
            f"{prefix}predictions",
            timeout_s=120,
            settings=settings,
            until=lambda got: scored(got) >= expected_scores(events) or worker.proc.poll() is not None,
        )
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_path.read_text()[-3000:]
    assert scored(got) == expected_scores(events)
    return worker.log_path.read_text(), topics.stdout + topics.stderr + replay.stdout + replay.stderr
