"""Configuration and CLI errors are one line that names the value and what was expected."""

from __future__ import annotations

import subprocess
import sys
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
    proc = subprocess.run([sys.executable, "-m", "stream", "config"], capture_output=True, text=True,
                          env={"STREAM_TOPIC_PARTITIONS": "0", "PATH": "/usr/bin:/bin"}, cwd=ROOT, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: invalid configuration STREAM_TOPIC_PARTITIONS='0': Input should be greater than or equal to 1"
    ]


def test_secret_is_never_printed(monkeypatch) -> None:
    proc = subprocess.run([sys.executable, "-m", "stream", "config"], capture_output=True, text=True,
                          env={"STREAM_CLICKHOUSE_PASSWORD": "hunter2-secret", "PATH": "/usr/bin:/bin"},
                          cwd=ROOT, check=False)
    assert proc.returncode == 0
    assert "hunter2-secret" not in proc.stdout + proc.stderr
