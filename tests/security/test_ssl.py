"""The product on TLS listeners (SSL, SASL_SSL) whose certificate a throwaway CA signed."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.kafka.embedded import EmbeddedKafka
from tests.security.conftest import cluster_env, cluster_settings, run_cli, score_through_worker, topics_of

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_topics_command_over_tls(broker: EmbeddedKafka, password: str, unique: str) -> None:
    env = {**cluster_env(broker, "SSL", password), "STREAM_TOPIC_PREFIX": f"{unique}."}
    proc, _ = run_cli(["-m", "stream", "topics"], env, timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{unique}.session-events" in topics_of(broker)


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_untrusted_broker_certificate_is_one_line_within_15s(
    broker: EmbeddedKafka, password: str, protocol: str
) -> None:
    env = cluster_env(broker, protocol, password)
    del env["STREAM_KAFKA_SSL_CAFILE"]  # the system CAs, which did not sign the broker's certificate
    proc, seconds = run_cli(["-m", "stream", "topics"], env, timeout_s=15)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"error: TLS handshake with Kafka at {broker.address(protocol)} failed, checked "
        "against the system CAs (STREAM_KAFKA_SSL_CAFILE is unset): "
    )
    assert "certificate verify failed" in lines[0]
    assert seconds < 15


def test_worker_scores_over_sasl_ssl_with_scram(
    broker: EmbeddedKafka, password: str, tmp_path: Path, unique: str
) -> None:
    env = cluster_env(broker, "SASL_SSL", password, "SCRAM-SHA-512")
    log, others = score_through_worker(
        broker, env, cluster_settings(broker, "SASL_SSL", password, "SCRAM-SHA-512"), tmp_path, unique
    )
    assert "SaslAuthenticateRequest_v" in log  # the worker logged in (at DEBUG)
    assert password not in log and password not in others
