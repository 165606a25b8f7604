"""Configuration and CLI errors are one line that names the value and what was expected."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.cli import config_table
from stream.config import load_settings
from stream.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config_table() in readme


def test_bad_value_is_one_line_naming_variable_and_value(monkeypatch) -> None:
    monkeypatch.setenv("STREAM_SCORE_BATCH_SIZE", "lots")
    with pytest.raises(ConfigError, match=r"^invalid configuration STREAM_SCORE_BATCH_SIZE='lots': .*integer"):
        load_settings()


def test_a_shutdown_timeout_not_above_the_settle_timeout_is_one_line_naming_both(monkeypatch) -> None:
    monkeypatch.setenv("STREAM_SETTLE_TIMEOUT_S", "30")
    monkeypatch.setenv("STREAM_SHUTDOWN_TIMEOUT_S", "30")
    with pytest.raises(
        ConfigError,
        match=r"^invalid configuration: STREAM_SHUTDOWN_TIMEOUT_S=30 must be more than STREAM_SETTLE_TIMEOUT_S=30",
    ):
        load_settings()
    monkeypatch.setenv("STREAM_SHUTDOWN_TIMEOUT_S", "31")
    assert load_settings().shutdown_timeout_s == 31


def test_processing_nice_without_the_apis_own_thread_is_one_line(monkeypatch) -> None:
    monkeypatch.setenv("STREAM_PROCESSING_NICE", "10")
    monkeypatch.setenv("STREAM_API_PORT", "8080")
    with pytest.raises(ConfigError, match=r"^invalid configuration: STREAM_PROCESSING_NICE=10 needs the API on a "):
        load_settings()
    monkeypatch.setenv("STREAM_API_THREAD", "true")
    assert load_settings().processing_nice == 10


def test_the_serving_settings_file_holds_known_settings_that_load(monkeypatch) -> None:
    from dotenv import dotenv_values

    from stream.config import Settings, env_name

    values = dotenv_values(ROOT / "deploy" / "serving.env")
    fields = {env_name(f): f for f in Settings.model_fields}
    assert values and set(values) <= set(fields), set(values) - set(fields)  # a misspelt name is ignored silently
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("STREAM_API_PORT", "8080")
    s = load_settings()
    # every line takes effect: none repeats a default
    same = [n for n in values if getattr(s, fields[n]) == Settings.model_fields[fields[n]].default]
    assert same == [], same


def test_placements_from_comma_separated_env(monkeypatch) -> None:
    monkeypatch.setenv("STREAM_PLACEMENTS", "top, side ,footer")
    assert load_settings().placements == ("top", "side", "footer")


def test_gc_threshold_from_comma_separated_env(monkeypatch) -> None:
    monkeypatch.setenv("STREAM_GC_THRESHOLD", "2000, 5,7")
    assert load_settings().gc_threshold == (2000, 5, 7)


@pytest.mark.parametrize("bad", ["1000,10", "a,b,c", "0,10,10", "-1,10,10", "1,2,3,4"])
def test_bad_gc_threshold_names_the_value_and_the_format(monkeypatch, bad) -> None:
    monkeypatch.setenv("STREAM_GC_THRESHOLD", bad)
    with pytest.raises(ConfigError, match=rf"^invalid configuration STREAM_GC_THRESHOLD='{bad}': .*like 10000,50,100"):
        load_settings()


def test_cli_bad_config_prints_one_line_and_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "config"],
        capture_output=True,
        text=True,
        env={"STREAM_TOPIC_PARTITIONS": "0", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: invalid configuration STREAM_TOPIC_PARTITIONS='0': Input should be greater than or equal to 1"
    ]


def test_secret_is_never_printed(monkeypatch) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "config"],
        capture_output=True,
        text=True,
        env={"STREAM_CLICKHOUSE_PASSWORD": "hunter2-secret", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0
    assert "hunter2-secret" not in proc.stdout + proc.stderr


# --- values that used to give a traceback (or nothing) instead of one line ---------------------------
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STREAM_PLACEMENTS", "", "expected a comma-separated list of distinct ad placement names"),
        ("STREAM_PLACEMENTS", "top,top", "expected a comma-separated list of distinct ad placement names"),
        ("STREAM_WORKER_ID", "stream worker", "expected 1 to 225 characters from A-Z a-z 0-9 . _ -"),
        ("STREAM_WORKER_ID", "w" * 226, "expected 1 to 225 characters"),
        ("STREAM_TOPIC_PREFIX", "tenant/", "expected at most 231 characters from A-Z a-z 0-9 . _ -"),
        ("STREAM_CLICKHOUSE_URL", "not-a-url", "expected an http:// or https:// URL with a host"),
        ("STREAM_CLICKHOUSE_URL", "http://clickhouse:81230", "expected an http:// or https:// URL"),
        ("STREAM_CLICKHOUSE_URL", "ftp://clickhouse:8123", "expected an http:// or https:// URL"),
        ("STREAM_KAFKA_BOOTSTRAP", "kafka:abc", "expected a comma-separated list of host:port"),
        ("STREAM_KAFKA_BOOTSTRAP", "kafka://kafka:9092", "expected a comma-separated list of host:port"),
        ("STREAM_MODEL_RELOAD_S", "inf", "finite number"),
    ],
)
def test_bad_value_names_variable_and_expectation(monkeypatch, variable, value, message) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value).startswith(f"invalid configuration {variable}={value!r}: ")
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STREAM_WORKER_ID", "w" * 225),
        ("STREAM_WORKER_ID", "tenant_a.worker-2"),
        ("STREAM_TOPIC_PREFIX", ""),
        ("STREAM_KAFKA_BOOTSTRAP", "k1:9092, k2:9093,k3,[::1]:9094"),
        ("STREAM_KAFKA_BOOTSTRAP", ""),
        ("STREAM_CLICKHOUSE_URL", "https://user:pw@ch.example.com:8443/"),
        ("STREAM_CLICKHOUSE_URL", "http://[::1]"),
        ("STREAM_CLICKHOUSE_URL", ""),
    ],
)
def test_good_values_pass(monkeypatch, variable, value) -> None:
    monkeypatch.setenv(variable, value)
    load_settings()


def test_a_rejected_url_does_not_show_its_password(monkeypatch) -> None:
    monkeypatch.setenv("STREAM_CLICKHOUSE_URL", "http://stream:hunter2-secret@clickhouse:99999")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value).startswith("invalid configuration STREAM_CLICKHOUSE_URL='http://stream:***@clickhouse:99999'")
    assert "hunter2-secret" not in str(exc.value)


@pytest.mark.parametrize(
    "variable", ["STREAM_CHDB_PATH", "STREAM_DATA_DIR", "STREAM_MODELS_DIR", "STREAM_REPORTS_DIR", "STREAM_STATE_DIR"]
)
def test_directory_setting_that_is_a_file(monkeypatch, tmp_path: Path, variable: str) -> None:
    (tmp_path / "a-file").write_text("x")
    for value in (tmp_path / "a-file", tmp_path / "a-file" / "sub"):
        monkeypatch.setenv(variable, str(value))
        with pytest.raises(ConfigError) as exc:
            load_settings()
        assert str(exc.value) == (
            f"invalid configuration {variable}={str(value)!r}: expected a directory, "
            f"but {str(tmp_path / 'a-file')!r} is a file"
        )


def _run(args: list[str], env: dict[str, str], timeout_s: float = 90) -> tuple[int, str, float]:
    """``python -m stream ARGS`` with the test session's settings plus ``env``: (exit code, output, seconds)."""
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stream", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=timeout_s,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - began


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "STREAM_PLACEMENTS",
            "",
            "error: invalid configuration STREAM_PLACEMENTS='': expected a comma-separated "
            "list of distinct ad placement names",
        ),
        (
            "STREAM_WORKER_ID",
            "stream worker",
            "error: invalid configuration STREAM_WORKER_ID='stream worker': expected 1 to 225 characters",
        ),
        (
            "STREAM_CLICKHOUSE_URL",
            "not-a-url",
            "error: invalid configuration STREAM_CLICKHOUSE_URL='not-a-url': expected an http:// or https:// URL",
        ),
        (
            "STREAM_STATE_DIR",
            "{file}/state",
            "error: invalid configuration STREAM_STATE_DIR='{file}/state': expected a "
            "directory, but '{file}' is a file",
        ),
        (
            "STREAM_STATE_DIR",
            "/proc/publisher-stream/state",
            "error: invalid configuration STREAM_STATE_DIR='/proc/publisher-stream/state': cannot create",
        ),
        (
            "STREAM_CHDB_PATH",
            "{file}",
            "error: invalid configuration STREAM_CHDB_PATH='{file}': expected a directory, but '{file}' is a file",
        ),
        (
            "STREAM_CHDB_PATH",
            "/proc/publisher-stream/chdb",
            "error: invalid configuration STREAM_CHDB_PATH='/proc/publisher-stream/chdb': cannot create",
        ),
    ],
)
def test_worker_refuses_bad_setting_with_one_line(
    kafka_bootstrap: str, tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    """Against a reachable broker, so that nothing but the setting can stop the worker."""
    file = tmp_path / "a-file"
    file.write_text("x")
    env = {
        "STREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STREAM_WORKER_WEB_PORT": "0",
        "STREAM_STATE_DIR": str(tmp_path / "state"),
        variable: value.replace("{file}", str(file)),
    }
    code, out, _ = _run(["worker"], env)
    assert "Traceback" not in out
    assert out.strip().splitlines()[-1].startswith(expected.replace("{file}", str(file))), out[-3000:]
    assert code == 2 and len(out.strip().splitlines()) == 1, out[-3000:]


@pytest.mark.kafka
def test_worker_refuses_a_metrics_port_in_use_before_it_starts(kafka_bootstrap: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "STREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "STREAM_WORKER_WEB_PORT": str(port),
            "STREAM_STATE_DIR": str(tmp_path / "state"),
        }
        code, out, _ = _run(["worker"], env)
    assert "Traceback" not in out
    assert out.strip().splitlines() == [
        f"error: invalid configuration STREAM_WORKER_WEB_PORT={port}: cannot serve metrics on port {port} "
        "(Address already in use); expected a free port, or 0 for no metrics"
    ]
    assert code == 2


@pytest.mark.parametrize("command", [["worker"], ["topics"]])
def test_unreachable_broker_is_one_line_within_seconds(tmp_path: Path, command: list[str]) -> None:
    port = _free_port()  # nothing listens there: connections are refused
    env = {
        "STREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "STREAM_WORKER_WEB_PORT": "0",
        "STREAM_STATE_DIR": str(tmp_path / "state"),
    }
    code, out, seconds = _run(command, env)
    lines = out.strip().splitlines()
    assert len(lines) == 1, out[-3000:]  # none of librdkafka's log lines
    assert lines[0].startswith(f"error: cannot reach Kafka at 127.0.0.1:{port} within 8 s: ")
    assert "Connection refused" in lines[0]  # the cause, not only "transport failure"
    assert code == 2
    # it gives up after its 8 s instead of retrying forever; the rest of the bound is start-up
    # (imports took 20 s of a 29 s run on a 2-core host under load)
    assert seconds < 60
