"""Helpers for integration tests against a real broker: a worker subprocess, produce, consume, metrics.

Users write their own integration tests with these, as this project's suite does::

    with embedded_kafka() as bootstrap, WorkerProcess(bootstrap, env) as worker:
        produce(bootstrap, "session-events", payloads)
        predictions = consume(bootstrap, "predictions", until=lambda got: len(got) >= n)

Production code does not import this module (an import contract in ``pyproject.toml``).
"""

from __future__ import annotations

from stream.kafka.io import committed_offsets, consume, produce
from stream.tools.process import WorkerProcess

__all__ = ["WorkerProcess", "committed_offsets", "consume", "produce", "scrape_metrics", "scrape_series"]


def scrape_metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """A worker's ``/metrics``: each sample name with the sum of its values over all label sets."""
    out: dict[str, float] = {}
    for name, _, value in _scrape(port, host):
        out[name] = out.get(name, 0.0) + value
    return out


def scrape_series(port: int, name: str, host: str = "127.0.0.1") -> list[tuple[dict[str, str], float]]:
    """The labels and value of each series of the sample ``name`` in a worker's ``/metrics``."""
    return [(labels, value) for sample, labels, value in _scrape(port, host) if sample == name]


def _scrape(port: int, host: str) -> list[tuple[str, dict[str, str], float]]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return [
        (s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(body) for s in family.samples
    ]
