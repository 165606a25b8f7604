"""Worker metrics: observe_many and observe_n match observe(); what /metrics serves; a port in use."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from stream.errors import ConfigError
from stream.testing import scrape_metrics
from stream.worker.metrics import LOOP_STEPS, STAGES, WorkerMetrics, observe_many, observe_n

BUCKETS = (0.005, 0.01, 0.1, 1.0, 10.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_same_samples_as_observe_one_by_one() -> None:
    rng = random.Random(5)
    values = [0.0, 0.005, 0.0050001, 1.0, 10.0, 10.5, 1e9, -0.1] + [rng.expovariate(2.0) for _ in range(500)]
    one, many = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("lat_seconds", "x", buckets=BUCKETS, registry=one)
    h_many = Histogram("lat_seconds", "x", buckets=BUCKETS, registry=many)
    for v in values:
        h_one.observe(v)
    observe_many(h_many, values[:100])
    observe_many(h_many, [])
    observe_many(h_many, values[100:])
    expected = _samples(one)
    assert expected[("lat_seconds_count", ())] == len(values)
    # buckets are cumulative and include their bound
    assert expected[("lat_seconds_bucket", (("le", "0.005"),))] == sum(v <= 0.005 for v in values)
    got = _samples(many)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_observe_n_is_observe_n_times() -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("lat_seconds", "x", buckets=BUCKETS, registry=one)
    h_many = Histogram("lat_seconds", "x", buckets=BUCKETS, registry=many)
    for value, n in ((0.01, 3), (0.0100001, 2), (20.0, 1), (0.5, 0)):
        for _ in range(n):
            h_one.observe(value)
        observe_n(h_many, value, n)
    assert _samples(many) == pytest.approx(_samples(one))


def test_every_stage_has_a_series_from_the_start() -> None:
    metrics = WorkerMetrics()
    for stage in STAGES:
        assert metrics.registry.get_sample_value("stream_stage_seconds_count", {"stage": stage}) == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_served_metrics_include_the_process_and_carry_units() -> None:
    metrics = WorkerMetrics()
    metrics.batch_size.observe(3)
    metrics.lag.labels(topic="t", partition="0").set(7)
    port = _free_port()
    metrics.serve(port)
    metrics.serve(port)  # the app's start task serves again: a no-op, not "address in use"
    samples = scrape_metrics(port)
    assert samples["process_resident_memory_bytes"] > 0
    assert samples["process_cpu_seconds_total"] >= 0
    assert "python_gc_collections_total" in samples
    assert samples["stream_score_batch_size_rows_count"] == 1
    assert samples["stream_consumer_lag_messages"] == 7
    assert "stream_score_batch_size_count" not in samples and "stream_consumer_lag" not in samples


def test_two_workers_in_one_process_each_have_process_metrics() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    for m in (first, second):
        assert m.value("process_resident_memory_bytes") > 0


def test_metrics_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ConfigError,
            match=rf"^invalid configuration STREAM_WORKER_WEB_PORT={port}: cannot serve "
            rf"metrics on port {port} \(Address already in use\)",
        ):
            WorkerMetrics().serve(port)


def test_every_loop_step_has_a_series_from_the_start() -> None:
    metrics = WorkerMetrics()
    for step in LOOP_STEPS:
        assert metrics.registry.get_sample_value("stream_loop_step_seconds_count", {"step": step}) == 0.0


def test_loop_probe_sees_a_blocked_loop() -> None:
    """A callback that holds the loop for 60 ms shows as one probe at least 50 ms late."""

    async def run() -> WorkerMetrics:
        metrics = WorkerMetrics()
        probe = asyncio.ensure_future(metrics.probe_loop(0.005))
        await asyncio.sleep(0.02)  # a few probes on an idle loop
        asyncio.get_running_loop().call_soon(time.sleep, 0.06)  # what a long batch does to the loop
        await asyncio.sleep(0.1)
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
        return metrics

    metrics = asyncio.run(run())
    count = metrics.value("stream_event_loop_lag_seconds_count")
    late = count - metrics.value("stream_event_loop_lag_seconds_bucket", le="0.05")
    assert count >= 3
    assert late >= 1  # the blocked stretch
