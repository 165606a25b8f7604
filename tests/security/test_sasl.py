"""The product on a SASL_PLAINTEXT cluster: a real broker that refuses clients without a login.

One broker for the module (a JVM start). Its user's password is generated here: neither the
product nor the tests hold a secret. Every command runs as a user runs it, in a subprocess with
the ``STREAM_KAFKA_*`` variables, and its whole output is checked for the password.
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

from simulator import SimConfig, generate
from stream.config import Settings, load_settings
from stream.kafka.embedded import EmbeddedKafka
from stream.testing import WorkerProcess, consume
from tests.support.models import train_and_register

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
USER = "stream-app"
#: event type -> the model that scores it (the worker's contract, docs/worker.md)
SCORABLE = {"article_impression": "click", "session_start": "engagement", "session_end": "churn"}


@pytest.fixture(scope="module")
def password() -> str:
    return "pw-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, password: str) -> Iterator[EmbeddedKafka]:
    b = EmbeddedKafka(workdir=tmp_path_factory.mktemp("sasl-kafka"), sasl_users={USER: password})
    b.start()
    try:
        yield b
    finally:
        b.stop()


def sasl_env(broker: EmbeddedKafka, password: str, mechanism: str = "PLAIN") -> dict[str, str]:
    return {"STREAM_KAFKA_BOOTSTRAP": broker.sasl_bootstrap, "STREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "STREAM_KAFKA_SASL_MECHANISM": mechanism, "STREAM_KAFKA_SASL_USERNAME": USER,
            "STREAM_KAFKA_SASL_PASSWORD": password}


def sasl_settings(password: str) -> Settings:
    return load_settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username=USER,
                         kafka_sasl_password=password)


def run_cli(args: list[str], env: dict[str, str], timeout_s: float) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python <args>`` with ``env``; killed (and the test failed) after ``timeout_s``."""
    began = time.monotonic()
    proc = subprocess.run([sys.executable, *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    return proc, time.monotonic() - began


def topics_of(broker: EmbeddedKafka) -> set[str]:
    """Topic names, read over the broker's plaintext listener (independent of the code under test)."""
    from confluent_kafka.admin import AdminClient

    return set(AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_topics_command_logs_in(broker: EmbeddedKafka, password: str, unique: str, mechanism: str) -> None:
    env = {**sasl_env(broker, password, mechanism), "STREAM_TOPIC_PREFIX": f"{unique}."}
    proc, _ = run_cli(["-m", "stream", "topics"], env, timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{unique}.predictions: created" in proc.stdout
    assert f"{unique}.session-events" in topics_of(broker)
    assert password not in proc.stdout + proc.stderr


@pytest.mark.parametrize("command", [
    ["-m", "stream", "topics"],
    ["-m", "stream", "worker"],
    ["-m", "stream", "replay", "--from-topic", "session-events", "--to-topic", "copy"],
    ["-m", "simulator", "stream", "--fast", "--users", "3", "--days", "1"],
])
def test_wrong_password_is_one_line_naming_the_login_within_15s(broker: EmbeddedKafka, password: str,
                                                                 tmp_path: Path, command: list[str]) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    env = {**sasl_env(broker, wrong, "SCRAM-SHA-256"), "STREAM_LOG_LEVEL": "DEBUG",
           "STREAM_STATE_DIR": str(tmp_path / "state"), "STREAM_CHDB_PATH": str(tmp_path / "chdb"),
           "STREAM_WORKER_WEB_PORT": "0"}
    proc, seconds = run_cli(command, env, timeout_s=15)  # a hang fails here
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].split("error: ", 1)[1].startswith(  # the simulator's CLI prefixes its name
        f"Kafka at {broker.sasl_bootstrap} refused the SASL SCRAM-SHA-256 login of user '{USER}': "
        "authentication failed")
    assert wrong not in proc.stdout + proc.stderr and password not in proc.stdout + proc.stderr
    assert seconds < 15


def test_worker_scores_replayed_events_and_no_output_holds_the_password(
        broker: EmbeddedKafka, password: str, tmp_path: Path, unique: str) -> None:
    events = list(generate(SimConfig(n_users=30, days=2, seed=7)).iter_events())
    models = tmp_path / "models"
    train_and_register(models, events, seed=3)
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    prefix = f"{unique}."
    env = {**sasl_env(broker, password), "STREAM_TOPIC_PREFIX": prefix, "STREAM_TOPIC_PARTITIONS": "2",
           "STREAM_WORKER_ID": f"sasl-{unique}", "STREAM_STATE_DIR": str(tmp_path / "state"),
           "STREAM_CHDB_PATH": str(tmp_path / "chdb"), "STREAM_MODELS_DIR": str(models),
           "STREAM_WORKER_WEB_PORT": "0", "STREAM_LOG_LEVEL": "DEBUG"}
    expected = {(SCORABLE[e["event_type"]], e["event_id"]) for e in events if e["event_type"] in SCORABLE}

    def scored(got: list[Any]) -> set[tuple[str, str]]:
        return {(p["model_name"], p["event_id"]) for p in (orjson.loads(m.value()) for m in got)}

    topics, _ = run_cli(["-m", "stream", "topics"], env, timeout_s=60)
    assert topics.returncode == 0, topics.stderr
    with WorkerProcess(broker.sasl_bootstrap, env, tmp_path / "worker.log") as worker:
        replay, _ = run_cli(["-m", "stream", "-v", "replay", "--from-file", str(source), "--quiet"], env, timeout_s=120)
        assert replay.returncode == 0, replay.stderr
        assert f"replayed {len(events)} records to {prefix}session-events" in replay.stdout
        got = consume(broker.sasl_bootstrap, f"{prefix}predictions", timeout_s=120, settings=sasl_settings(password),
                      until=lambda got: scored(got) >= expected or worker.proc.poll() is not None)
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_path.read_text()[-3000:]
    assert scored(got) == expected
    log = worker.log_path.read_text()
    logins = [line for line in log.splitlines() if "SaslAuthenticateRequest_v" in line]
    assert logins and all("sasl_auth_bytes=" in line and "**********" in line for line in logins)  # masked
    assert "Logging error" not in log  # the masked records still format
    assert password not in log and password not in topics.stdout + topics.stderr + replay.stdout + replay.stderr
    for path in tmp_path.rglob("*"):  # state, chdb, logs
        assert not path.is_file() or password.encode() not in path.read_bytes(), path


def test_librdkafka_debug_log_holds_no_password(broker: EmbeddedKafka, password: str, unique: str) -> None:
    """confluent-kafka's clients, built like the product builds them, with every debug context on."""
    code = ("import sys; from stream.config import load_settings; from stream.kafka import clients\n"
            "p = clients.producer(sys.argv[1], load_settings(), debug='all')\n"
            "p.produce(sys.argv[2], b'x'); assert p.flush(30) == 0\n")
    proc, _ = run_cli(["-c", code, broker.sasl_bootstrap, f"dbg-{unique}"], sasl_env(broker, password),
                      timeout_s=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sasl.password" in proc.stderr and "SASL" in proc.stderr  # the config dump and the login were logged
    assert password not in proc.stdout + proc.stderr


def test_simulator_streams_into_the_secured_cluster(broker: EmbeddedKafka, password: str, unique: str) -> None:
    env = {**sasl_env(broker, password), "STREAM_TOPIC_PREFIX": f"{unique}."}
    proc, _ = run_cli(["-m", "simulator", "stream", "--fast", "--users", "10", "--days", "1", "--seed", "42"], env,
                      timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    produced = int(proc.stderr.split("produced ")[1].split()[0])
    got = consume(broker.sasl_bootstrap, f"{unique}.session-events", settings=sasl_settings(password))
    assert produced > 0 and len(got) == produced
