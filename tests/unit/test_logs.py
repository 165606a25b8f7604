"""Rate-limited logs (stream/worker/logs.py): a real logger and handler, a clock the test moves."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.redact import MASK, protect
from stream.worker.logs import RepeatFilter, limit_repeats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def out(clock: Clock) -> Iterator[io.StringIO]:
    """The lines a handler with the filter writes for loggers under ``t.``."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    handler.addFilter(RepeatFilter(10.0, clock=clock))
    parent = logging.getLogger("t")
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    parent.propagate = False
    try:
        yield buf
    finally:
        parent.removeHandler(handler)
        parent.propagate = True


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


def test_an_outage_flood_is_one_line_per_cause_per_interval_with_a_count(out: io.StringIO, clock: Clock) -> None:
    conn, fetch = logging.getLogger("t.aiokafka.conn"), logging.getLogger("t.faust.fetch")
    for i in range(1000):  # 1000 records a second for 25 s, of two causes with varying arguments
        clock.now = 1000.0 + i * 0.025
        conn.error("Unable connect to node with id %d: %s", 1, f"[Errno 111] attempt {i}")
        fetch.error("Failed fetch messages from %d: %s", 1, "NodeNotReadyError")
    got = lines(out)
    assert got == [
        "t.aiokafka.conn ERROR Unable connect to node with id 1: [Errno 111] attempt 0",
        "t.faust.fetch ERROR Failed fetch messages from 1: NodeNotReadyError",
        "t.aiokafka.conn ERROR Unable connect to node with id 1: [Errno 111] attempt 400 "
        "(399 similar lines suppressed in the last 10 s)",
        "t.faust.fetch ERROR Failed fetch messages from 1: NodeNotReadyError "
        "(399 similar lines suppressed in the last 10 s)",
        "t.aiokafka.conn ERROR Unable connect to node with id 1: [Errno 111] attempt 800 "
        "(399 similar lines suppressed in the last 10 s)",
        "t.faust.fetch ERROR Failed fetch messages from 1: NodeNotReadyError "
        "(399 similar lines suppressed in the last 10 s)",
    ]


def test_the_cause_is_logger_level_and_template(out: io.StringIO, clock: Clock) -> None:
    a, b = logging.getLogger("t.a"), logging.getLogger("t.b")
    a.error("down: %s", "x")
    a.error("down: %s", "y")  # same cause: dropped
    a.warning("down: %s", "x")  # another level
    b.error("down: %s", "x")  # another logger
    a.error("gone: %s", "x")  # another template
    clock.now += 10.0
    a.error("down: %s", "z")  # the interval is over: through, with the count
    a.error("gone: %s", "x")  # through, nothing was dropped
    assert lines(out) == [
        "t.a ERROR down: x",
        "t.a WARNING down: x",
        "t.b ERROR down: x",
        "t.a ERROR gone: x",
        "t.a ERROR down: z (1 similar line suppressed in the last 10 s)",
        "t.a ERROR gone: x",
    ]


def test_progress_lines_below_warning_always_pass(out: io.StringIO) -> None:
    log = logging.getLogger("t.progress")
    for i in range(5):
        log.info("partition %d assigned", i)
    assert len(lines(out)) == 5


def test_a_record_reaching_two_handlers_is_decided_once(clock: Clock) -> None:
    bufs = [io.StringIO(), io.StringIO()]
    logger = logging.getLogger("t2")
    logger.propagate = False
    for buf in bufs:
        logger.addHandler(logging.StreamHandler(buf))
    try:
        added = limit_repeats(logger)
        assert len(added) == 2 and limit_repeats(logger) == []  # installed once per handler
        for f in added:
            f.clock = clock
        logger.error("boom %d", 1)
        logger.error("boom %d", 2)
        clock.now += 11
        logger.error("boom %d", 3)
        assert [lines(b) for b in bufs] == [["boom 1", "boom 3 (1 similar line suppressed in the last 11 s)"]] * 2
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.propagate = True


def test_secrets_stay_masked_in_a_counted_line(out: io.StringIO, clock: Clock) -> None:
    protect("s3cr3t-logs-test")
    log = logging.getLogger("t.sasl")
    log.error("auth failed with %s", "s3cr3t-logs-test")
    log.error("auth failed with %s", "s3cr3t-logs-test")
    clock.now += 10
    log.error("auth failed with %s", "s3cr3t-logs-test")
    text = out.getvalue()
    assert "s3cr3t" not in text and text.count(MASK) == 2


def test_many_causes_stay_bounded(clock: Clock) -> None:
    f = RepeatFilter(10.0, clock=clock, max_causes=10)
    for i in range(100):
        clock.now += 2
        assert f.filter(logging.LogRecord("t", logging.ERROR, __file__, 1, f"cause {i}", (), None))
    assert len(f._causes) <= 10


async def test_the_worker_app_limits_repeats_only_when_a_faust_worker_runs_it(tmp_path: Path) -> None:
    from stream.config import load_settings
    from stream.worker.app import create_app

    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())  # what the faust Worker's logging setup adds
    root.addHandler(handler)
    app, rt = create_app(
        load_settings(state_dir=tmp_path / "state", models_dir=tmp_path / "m"), "localhost:1", clickhouse=False
    )
    app.gc_tuning = None  # the process's collector is not this test's business
    try:
        await app.on_first_start()  # built and started by a test or a tool: logging is theirs
        assert not any(isinstance(f, RepeatFilter) for f in handler.filters)

        async def startup_finished() -> None: ...

        app.on_startup_finished = startup_finished  # what faust's Worker sets on the app it runs
        await app.on_first_start()
        assert [type(f) for f in handler.filters] == [RepeatFilter]
    finally:
        for h in root.handlers:  # pytest's own handlers got one too: they outlive this test
            for f in [f for f in h.filters if isinstance(f, RepeatFilter)]:
                h.removeFilter(f)
        root.removeHandler(handler)
        rt.close(timeout_s=0)
        rt.producer = None
