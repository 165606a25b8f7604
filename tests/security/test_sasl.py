"""The product on a SASL_PLAINTEXT listener: a real broker that refuses clients without a login."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from stream.kafka.embedded import EmbeddedKafka
from stream.testing import consume
from tests.security.conftest import (
    USER,
    cluster_env,
    cluster_settings,
    run_cli,
    score_through_worker,
    topics_of,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_topics_command_logs_in(broker: EmbeddedKafka, password: str, unique: str, mechanism: str) -> None:
    env = {**cluster_env(broker, "SASL_PLAINTEXT", password, mechanism), "STREAM_TOPIC_PREFIX": f"{unique}."}
    proc, _ = run_cli(["-m", "stream", "topics"], env, timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{unique}.predictions: created" in proc.stdout
    assert f"{unique}.session-events" in topics_of(broker)
    assert password not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "stream", "topics"],
        ["-m", "stream", "worker"],
        ["-m", "stream", "replay", "--from-topic", "session-events", "--to-topic", "copy"],
        ["-m", "simulator", "stream", "--fast", "--users", "3", "--days", "1"],
    ],
)
def test_wrong_password_is_one_line_naming_the_login_within_15s(
    broker: EmbeddedKafka, password: str, tmp_path: Path, command: list[str]
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    env = {
        **cluster_env(broker, "SASL_PLAINTEXT", wrong, "SCRAM-SHA-256"),
        "STREAM_LOG_LEVEL": "DEBUG",
        "STREAM_STATE_DIR": str(tmp_path / "state"),
        "STREAM_CHDB_PATH": str(tmp_path / "chdb"),
        "STREAM_WORKER_WEB_PORT": "0",
    }
    proc, seconds = run_cli(command, env, timeout_s=15)  # a hang fails here
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert (
        lines[0]
        .split("error: ", 1)[1]
        .startswith(  # the simulator's CLI prefixes its name
            f"Kafka at {broker.sasl_bootstrap} refused the SASL SCRAM-SHA-256 login of user '{USER}': "
            "authentication failed"
        )
    )
    assert wrong not in proc.stdout + proc.stderr and password not in proc.stdout + proc.stderr
    assert seconds < 15


def test_worker_scores_replayed_events_and_no_output_holds_the_password(
    broker: EmbeddedKafka, password: str, tmp_path: Path, unique: str
) -> None:
    env = cluster_env(broker, "SASL_PLAINTEXT", password, "PLAIN")
    log, others = score_through_worker(
        broker, env, cluster_settings(broker, "SASL_PLAINTEXT", password), tmp_path, unique
    )
    logins = [line for line in log.splitlines() if "SaslAuthenticateRequest_v" in line]
    # aiokafka logged the PLAIN login at DEBUG (the path that leaked ran), masked
    assert logins and all("sasl_auth_bytes=" in line and "**********" in line for line in logins)
    assert "Logging error" not in log  # the masked records still format
    assert password not in log and password not in others
    for path in tmp_path.rglob("*"):  # state, chdb, logs
        assert not path.is_file() or password.encode() not in path.read_bytes(), path


def test_librdkafka_debug_log_holds_no_password(broker: EmbeddedKafka, password: str, unique: str) -> None:
    """confluent-kafka's clients, built like the product builds them, with every debug context on
    (their lines go to Python's logging, shown at DEBUG as ``-v`` does)."""
    code = (
        "import logging, sys; from stream.config import load_settings; from stream.kafka import clients\n"
        "logging.basicConfig(level=logging.DEBUG)\n"
        "p = clients.producer(sys.argv[1], load_settings(), debug='all')\n"
        "p.produce(sys.argv[2], b'x'); assert p.flush(30) == 0\n"
    )
    proc, _ = run_cli(
        ["-c", code, broker.sasl_bootstrap, f"dbg-{unique}"],
        cluster_env(broker, "SASL_PLAINTEXT", password),
        timeout_s=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sasl.password" in proc.stderr and "SASL" in proc.stderr  # the config dump and the login were logged
    assert password not in proc.stdout + proc.stderr


def test_simulator_streams_into_the_secured_cluster(broker: EmbeddedKafka, password: str, unique: str) -> None:
    env = {**cluster_env(broker, "SASL_PLAINTEXT", password), "STREAM_TOPIC_PREFIX": f"{unique}."}
    proc, _ = run_cli(
        ["-m", "simulator", "stream", "--fast", "--users", "10", "--days", "1", "--seed", "42"], env, timeout_s=60
    )
    assert proc.returncode == 0, proc.stderr
    produced = int(proc.stderr.split("produced ")[1].split()[0])
    got = consume(
        broker.sasl_bootstrap, f"{unique}.session-events", settings=cluster_settings(broker, "SASL_PLAINTEXT", password)
    )
    assert produced > 0 and len(got) == produced
