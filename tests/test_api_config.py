"""The worker API's settings: a port in use and a bad URL are one line naming the value."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from stream.config import load_settings
from stream.errors import ConfigError
from tests.test_cli_config import _run


@pytest.mark.kafka
def test_worker_refuses_an_api_port_in_use_before_it_starts(kafka_bootstrap: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "STREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "STREAM_WORKER_WEB_PORT": "0",
            "STREAM_API_PORT": str(port),
            "STREAM_STATE_DIR": str(tmp_path / "state"),
            "STREAM_CHDB_PATH": str(tmp_path / "chdb"),
        }
        code, out, _ = _run(["worker"], env)
    assert "Traceback" not in out
    assert out.strip().splitlines() == [
        f"error: invalid configuration STREAM_API_PORT={port}: cannot serve the API on port {port} "
        "(Address already in use); expected a free port, or 0 for no API"
    ]
    assert code == 2


def test_api_url_must_be_an_http_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_API_URL", "worker-0:8080")
    with pytest.raises(ConfigError, match=r"^invalid configuration STREAM_API_URL='worker-0:8080': expected http"):
        load_settings()
    monkeypatch.setenv("STREAM_API_URL", "http://worker-0:8080/")
    assert load_settings().api_url == "http://worker-0:8080"
