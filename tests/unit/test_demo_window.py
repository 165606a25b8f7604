"""stream.tools.demo: the demo's latency window starts once the worker has caught up with the live traffic.

The worker is stood in for by a real Prometheus endpoint with its ``stream_events_total`` counter;
the records at the broker are a number the test sets.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server

from stream.kafka.embedded import free_port
from stream.tools.demo import CatchUp, watch_catch_up, window_of
from tests.support.waits import wait


def _worker() -> tuple[int, Counter, Any]:
    registry = CollectorRegistry()
    events = Counter("stream_events", "Events consumed, by type", ["event_type"], registry=registry)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return port, events, server


def test_the_window_starts_when_the_backlog_is_under_a_quarter_second_of_input() -> None:
    port, events, server = _worker()
    offered, calls = [1000], [0]

    def at_broker() -> int:
        calls[0] += 1
        return offered[0]

    found: list[CatchUp] = []
    done = threading.Event()
    watcher = threading.Thread(target=watch_catch_up, args=(port, at_broker, 100.0, done, found), kwargs={"min_s": 0})
    watcher.start()
    try:
        events.labels(event_type="page_view").inc(500)  # 500 behind, at 100 events/s: 5 s of input
        wait(lambda: calls[0] >= 2, 10, "two looks at the backlog")
        assert found == []
        events.labels(event_type="ad_request").inc(475)  # 25 behind: a quarter second
        wait(lambda: bool(found), 10, "the mark")
        watcher.join(10)
        assert not watcher.is_alive()
        mark = found[0]
        assert mark.offered == 1000
        assert sum(v for k, v in mark.metrics.items() if k.startswith("stream_events_total{")) == 975
    finally:
        done.set()
        watcher.join(10)
        server.shutdown()


def test_no_mark_when_the_traffic_ends_before_the_worker_catches_up() -> None:
    port, events, server = _worker()
    calls = [0]

    def at_broker() -> int:
        calls[0] += 1
        return 1000

    found: list[CatchUp] = []
    done = threading.Event()
    watcher = threading.Thread(target=watch_catch_up, args=(port, at_broker, 100.0, done, found), kwargs={"min_s": 0})
    watcher.start()
    try:
        events.labels(event_type="page_view").inc(900)
        wait(lambda: calls[0] >= 2, 10, "two looks at the backlog")
        done.set()  # the producer is done
        watcher.join(10)
        assert not watcher.is_alive()
        assert found == []
    finally:
        done.set()
        server.shutdown()


def test_a_window_is_the_difference_of_two_scrapes() -> None:
    start = {"h_bucket{le=0.1}": 3.0, "h_bucket{le=+Inf}": 4.0}
    end = {"h_bucket{le=0.1}": 5.0, "h_bucket{le=+Inf}": 9.0, "c_total{}": 2.0}
    assert window_of(end, start) == {"h_bucket{le=0.1}": 2.0, "h_bucket{le=+Inf}": 5.0, "c_total{}": 2.0}
