"""docker-compose.yml, the Dockerfile and deploy/prometheus.yml, checked without a Docker engine.

``docker compose config`` parses, validates and interpolates the file with the client alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PASSWORD = "from-the-environment-42"

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="the docker client is not installed")


def _compose_config(**env: str) -> dict[str, Any]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0:
        pytest.skip("the docker client has no compose plugin (`docker compose version` fails)")
    environ = {k: v for k, v in os.environ.items() if k not in {"CLICKHOUSE_USER", "STREAM_LOG_LEVEL"}}
    environ.pop("CLICKHOUSE_PASSWORD", None)
    environ.update(env)
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--env-file", os.devnull, "config", "--format", "json"],
        capture_output=True, text=True, env=environ, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return _compose_config(CLICKHOUSE_PASSWORD=PASSWORD)


def test_services(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"kafka", "clickhouse", "worker", "prometheus", "grafana"}
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server")
    assert services["prometheus"]["image"].startswith("prom/prometheus")


def test_kafka_is_single_node_kraft(config: dict[str, Any]) -> None:
    env = config["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_worker_build_and_environment(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    assert worker["build"]["dockerfile"] == "Dockerfile"
    assert Path(worker["build"]["context"]) == ROOT
    assert worker["environment"] == {
        "STREAM_KAFKA_BOOTSTRAP": "kafka:9092",
        "STREAM_CLICKHOUSE_URL": "http://clickhouse:8123",
        "STREAM_CLICKHOUSE_USER": "stream",
        "STREAM_CLICKHOUSE_PASSWORD": PASSWORD,
        "STREAM_CLICKHOUSE_DATABASE": "publisher",
        "STREAM_WORKER_WEB_PORT": "6066",
        "STREAM_LOG_LEVEL": "INFO",
    }
    assert config["services"]["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"] == PASSWORD


def test_password_defaults_to_empty_and_is_never_literal() -> None:
    unset = _compose_config()
    assert unset["services"]["worker"]["environment"]["STREAM_CLICKHOUSE_PASSWORD"] == ""
    text = COMPOSE.read_text()
    assert re.findall(r"PASSWORD:\s*(\S+)", text) == [
        "${CLICKHOUSE_PASSWORD:-}",
        "${CLICKHOUSE_PASSWORD:-}",
        "${GRAFANA_ADMIN_PASSWORD:-}",
    ]


def test_healthchecks_and_startup_order(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("kafka", "clickhouse", "worker", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], name
    assert services["worker"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert services["prometheus"]["depends_on"]["worker"]["condition"] == "service_started"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    # the worker's liveness endpoint (an HTTP error status fails urlopen, so the check fails)
    assert "http://127.0.0.1:6066/healthz" in " ".join(services["worker"]["healthcheck"]["test"])


def test_prometheus_scrapes_the_worker(config: dict[str, Any]) -> None:
    mounts = {v["target"]: v["source"] for v in config["services"]["prometheus"]["volumes"]}
    assert Path(mounts["/etc/prometheus/prometheus.yml"]) == ROOT / "deploy" / "prometheus.yml"
    scrape = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert re.search(r"^\s+metrics_path: /metrics$", scrape, re.M)
    assert re.search(r'^\s+- targets: \["worker:6066"\]$', scrape, re.M)
    assert "6066" in config["services"]["worker"]["expose"]


def test_grafana_provisions_prometheus_and_the_dashboard(config: dict[str, Any]) -> None:
    mounts = {v["target"]: Path(v["source"]) for v in config["services"]["grafana"]["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/grafana/provisioning"] == ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == ROOT / "deploy" / "grafana" / "dashboards"
    datasource = (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    assert re.search(r"^\s+url: http://prometheus:9090$", datasource, re.M)
    provider = (ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yml").read_text()
    assert re.search(r"^\s+path: /var/lib/grafana/dashboards$", provider, re.M)
    home = config["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()


def test_dockerfile_and_dockerignore() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "pip install -c constraints.txt ." in dockerfile
    assert re.search(r"^EXPOSE 6066$", dockerfile, re.M)
    assert re.search(r'^CMD \["python", "-m", "stream", "worker"\]$', dockerfile, re.M)
    assert "http://127.0.0.1:6066/healthz" in dockerfile
    assert (ROOT / "constraints.txt").is_file()
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "var", "kafka/lib", "**/__pycache__", ".mypy_cache", ".pytest_cache"} <= ignored
