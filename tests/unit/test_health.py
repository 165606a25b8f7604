"""Liveness, readiness and the stalled-partition detector (fake clocks), and the endpoints over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import urllib.request
from functools import partial
from typing import Any

import pytest

from stream.kafka.embedded import free_port
from stream.worker.health import Health, StallDetector, StartWatch, exit_after, readiness
from stream.worker.metrics import WorkerMetrics
from tests.support.waits import wait

_wait = partial(wait, every_s=0.05)

T = "events"


def _stall_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is not progressing" in r.getMessage()]


def test_a_partition_that_processes_or_has_nothing_to_read_is_never_idle() -> None:
    d = StallDetector(limit_s=60)
    for i in range(10):
        now = i * 100.0  # far apart: only movement or an empty backlog keeps the partition fresh
        assert d.update({(T, 0): 5, (T, 1): 0}, {(T, 0): i, (T, 1): 7}, now) == {(T, 0): 0.0, (T, 1): 0.0}


def test_a_partition_with_messages_waiting_and_no_progress_stalls_once_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "stream.worker.health")
    stalled: list[tuple[str, int]] = []
    d = StallDetector(limit_s=60, on_stalled=stalled.append)
    tp = (T, 3)
    assert d.update({tp: 10}, {tp: 99}, 0.0) == {tp: 0.0}
    assert d.update({tp: 12}, {tp: 99}, 30.0) == {tp: 30.0}
    assert d.update({tp: 12}, {tp: 99}, 60.0) == {tp: 60.0}  # at the limit: not yet
    assert stalled == [] and _stall_lines(caplog) == []
    assert d.update({tp: 12}, {tp: 99}, 61.0) == {tp: 61.0}
    assert stalled == [tp]
    lines = _stall_lines(caplog)
    assert len(lines) == 1 and "events[3] is not progressing: 12 message(s) waiting" in lines[0]
    for now in (70.0, 80.0, 120.0):  # rate-limited: once per limit while it lasts
        d.update({tp: 12}, {tp: 99}, now)
    assert len(_stall_lines(caplog)) == 1
    d.update({tp: 12}, {tp: 99}, 121.0)
    assert len(_stall_lines(caplog)) == 2 and stalled == [tp]  # one stall, one count
    assert d.update({tp: 12}, {tp: 100}, 125.0) == {tp: 0.0}  # it moved
    d.update({tp: 12}, {tp: 100}, 190.0)
    assert stalled == [tp, tp]  # a second stall counts again


def test_a_partition_assigned_with_a_backlog_that_never_delivers_a_record_stalls() -> None:
    """The start-up race of issue 14: assigned, lag from the committed offset, no position ever."""
    stalled: list[tuple[str, int]] = []
    d = StallDetector(limit_s=10, on_stalled=stalled.append)
    tp = (T, 1)
    d.update({tp: 500}, {}, 0.0)
    assert d.update({tp: 500}, {}, 11.0) == {tp: 11.0}
    assert stalled == [tp]


def test_partitions_no_longer_owned_are_forgotten() -> None:
    d = StallDetector(limit_s=10)
    a, b = (T, 0), (T, 1)
    d.update({a: 1, b: 1}, {}, 0.0)
    d.update({a: 1, b: 1}, {}, 5.0)
    assert d.update({a: 1}, {}, 8.0) == {a: 8.0}
    assert set(d.idle) == {a}
    d.forget([a])
    assert d.idle == {} and d.update({a: 1}, {}, 100.0) == {a: 0.0}  # owned again: a fresh start


def test_readiness_needs_recovery_and_names_each_partition_held_up() -> None:
    assert not readiness(recovered=False, unconfirmed={}, idle={}, limit_s=60).ok
    ok = readiness(recovered=True, unconfirmed={(T, 0): 59.0}, idle={(T, 1): 60.0}, limit_s=60)
    assert ok.ok and json.loads(ok.json())["status"] == "ok"
    bad = readiness(recovered=True, unconfirmed={(T, 0): 61.04, (T, 2): 3.0}, idle={(T, 1): 90.0}, limit_s=60)
    assert not bad.ok
    body = json.loads(bad.json())
    assert body["status"] == "fail"
    assert body["reasons"] == ["outputs unconfirmed", "partitions not progressing"]
    assert body["unconfirmed"] == [{"topic": T, "partition": 0, "oldest_batch_age_s": 61.0}]
    assert body["stalled"] == [{"topic": T, "partition": 1, "idle_s": 90.0}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_liveness_follows_the_heartbeat_and_a_fatal_error() -> None:
    clock = Clock()
    h = Health(loop_timeout_s=30, clock=clock)
    assert h.live().ok  # the loop has the timeout to start beating
    clock.now += 31
    live = h.live()
    assert not live.ok and "event loop unresponsive for 31 s" in live.body["reasons"][0]
    h.beat()
    assert h.live().ok
    h.set_ready(readiness(recovered=True, unconfirmed={}, idle={}, limit_s=60))
    assert h.ready().ok
    clock.now += 40  # a wedged loop: the last readiness verdict is stale
    assert not h.ready().ok and h.ready().body["reasons"][0] == "not live"
    h.beat()
    h.fail("OutputError: output to topic 'p' not delivered")
    assert not h.live().ok and not h.ready().ok
    assert h.live().body["reasons"] == ["fatal error: OutputError: output to topic 'p' not delivered"]


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_endpoints_answer_beside_metrics_and_healthz_sees_a_wedged_loop() -> None:
    """A real event loop beats every 0.1 s; one blocking call on it turns /healthz to 503, then back."""
    metrics = WorkerMetrics(health=Health(loop_timeout_s=0.5))
    port = free_port()
    metrics.serve(port)
    loop = asyncio.new_event_loop()
    wedge = threading.Event()

    async def beat() -> None:
        while True:
            metrics.health.beat()
            await asyncio.sleep(0.1)

    def block() -> None:  # a blocking call on the loop, as a stuck C call would be
        wedge.wait(30)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(beat(), loop)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"stream_partition_idle_seconds" in response.read()
        status, body = _get(port, "/healthz")
        assert status == 200 and body["status"] == "ok"
        assert _get(port, "/readyz") == (503, {"status": "fail", "reasons": ["starting"]})
        metrics.health.set_ready(readiness(recovered=True, unconfirmed={}, idle={}, limit_s=60))
        assert _get(port, "/readyz")[0] == 200

        loop.call_soon_threadsafe(block)
        _wait(lambda: _get(port, "/healthz")[0] == 503, 10, "/healthz 503 while the loop is wedged")
        status, body = _get(port, "/healthz")
        assert "event loop unresponsive" in body["reasons"][0]
        assert _get(port, "/readyz")[0] == 503
        wedge.set()
        _wait(lambda: _get(port, "/healthz")[0] == 200, 10, "/healthz 200 once the loop runs again")
    finally:
        wedge.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_start_watch_reports_only_partitions_silent_since_their_assignment_while_records_wait() -> None:
    watch = StartWatch(10.0)
    e0, e1, e2 = ("e", 0), ("e", 1), ("e", 2)
    watch.assigned([e0, e1, e2], now=0.0)
    arrived = {e1: 2.0, e2: -5.0}  # e2's last record came before this assignment: it does not count
    assert watch.update([e0, e1, e2], arrived.get, now=1.0) == []
    assert watch.update([e0, e2], arrived.get, now=20.0) == [e0, e2]
    assert not watch.watching(e1)  # it delivered: not watched until its next assignment
    watch.restart([e0], now=20.0)
    assert watch.update([e0, e2], arrived.get, now=25.0) == [e2]
    assert watch.update([e2], arrived.get, now=26.0) == [e2]
    assert watch.update([], arrived.get, now=27.0) == []  # caught up: a later record starts a new wait
    assert watch.update([e2], arrived.get, now=30.0) == []
    watch.forget([e2])
    assert watch.update([e2], arrived.get, now=60.0) == []  # revoked: not watched


def test_a_shutdown_past_its_deadline_exits_with_code_1_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "stream.worker.health")
    codes: list[int] = []
    exited = threading.Event()

    def record(code: int) -> None:  # in place of os._exit
        codes.append(code)
        exited.set()

    exit_after(0.05, exit=record)
    assert exited.wait(10), "the deadline never fired"
    assert codes == [1]
    [line] = [r.getMessage() for r in caplog.records]
    assert "did not finish within 0.05 s (STREAM_SHUTDOWN_TIMEOUT_S): exiting with code 1" in line


def test_the_deadline_is_a_daemon_thread_that_a_shutdown_in_time_never_waits_for() -> None:
    codes: list[int] = []
    timer = exit_after(3600, exit=codes.append)
    assert timer.daemon and timer.is_alive()  # a daemon: the process's own exit ends it
    # cancelled here only so that it does not outlive the test (the worker exits instead)
    timer.cancel()
    timer.join(10)
    assert not timer.is_alive() and codes == []
