"""`python -m stream kafka up --sasl --ssl`: a secured development broker that the tools can use as printed."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading

import pytest

from tests.security.conftest import ROOT, run_cli

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_kafka_up_with_sasl_and_ssl_prints_what_the_clients_need() -> None:
    password = "pw-" + secrets.token_hex(16)
    creds = {
        "STREAM_KAFKA_SASL_USERNAME": "dev",
        "STREAM_KAFKA_SASL_PASSWORD": password,
        "STREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "kafka", "up", "--sasl", "--ssl"],
        env={**os.environ, **creds},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "broker log:" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(120), "".join(lines)
        exports = dict(line.split("export ", 1)[1].strip().split("=", 1) for line in lines if "export " in line)
        assert exports["STREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert set(exports) == {"STREAM_KAFKA_BOOTSTRAP", "STREAM_KAFKA_SECURITY_PROTOCOL", "STREAM_KAFKA_SSL_CAFILE"}
        topics, _ = run_cli(["-m", "stream", "topics"], {**creds, **exports}, timeout_s=60)
        assert topics.returncode == 0, topics.stderr
        assert "session-events: exists" in topics.stdout  # `kafka up` made them, over its SASL_SSL listener
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert password not in "".join(lines) + err


def test_kafka_up_sasl_without_credentials_is_one_line() -> None:
    env = {"STREAM_KAFKA_SASL_USERNAME": "", "STREAM_KAFKA_SASL_PASSWORD": ""}
    proc, _ = run_cli(["-m", "stream", "kafka", "up", "--sasl"], env, timeout_s=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: `kafka up --sasl` creates the user STREAM_KAFKA_SASL_USERNAME with the password "
        "STREAM_KAFKA_SASL_PASSWORD: set both"
    ]
