"""Liveness (``/healthz``), readiness (``/readyz``) and the stalled-partition detector of the worker.

The verdicts are made on the worker's event loop (:func:`readiness`, by a 1 s timer in
stream/worker/app.py) and read by the HTTP server's threads (:class:`Health`): a request never touches
faust's or the publisher's structures. Liveness adds one thing a request measures itself: the age
of the loop's last heartbeat, so a wedged loop (a blocking call, a deadlock) shows as unhealthy
even though the loop cannot say so.

:class:`StallDetector` finds partitions that silently stop: assigned, with messages waiting
(lag > 0), and no record handed to the processor for ``STREAM_STALL_WARNING_S``. The publisher's own
check (``Publisher.check_stalls``) covers the other kind, a batch whose outputs are never confirmed.

:func:`exit_after` bounds a shutdown: one stuck in faust's or aiokafka's teardown ends as a crash.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

log = logging.getLogger(__name__)

Partition = tuple[str, int]


@dataclass(frozen=True)
class Verdict:
    """An endpoint's answer: 200 when ``ok``, else 503, with ``body`` as JSON."""

    ok: bool
    body: Mapping[str, Any]

    @property
    def status(self) -> str:
        return "200 OK" if self.ok else "503 Service Unavailable"

    def json(self) -> bytes:
        return orjson.dumps({"status": "ok" if self.ok else "fail", **self.body}, option=orjson.OPT_SORT_KEYS)


def _listing(ages: Mapping[Partition, float], key: str) -> list[dict[str, Any]]:
    return [{"topic": t, "partition": p, key: round(age, 1)} for (t, p), age in sorted(ages.items())]


def readiness(
    *, recovered: bool, unconfirmed: Mapping[Partition, float], idle: Mapping[Partition, float], limit_s: float
) -> Verdict:
    """Ready when table recovery is done and no input partition is held up for more than ``limit_s``.

    ``unconfirmed``: per partition, the age of its oldest batch whose outputs are not confirmed;
    ``idle``: per partition with messages waiting, seconds since a record of it was last processed.

    >>> readiness(recovered=True, unconfirmed={("e", 0): 1.0}, idle={}, limit_s=60).ok
    True
    >>> v = readiness(recovered=True, unconfirmed={}, idle={("e", 1): 75.0}, limit_s=60)
    >>> v.ok, v.body["stalled"]
    (False, [{'topic': 'e', 'partition': 1, 'idle_s': 75.0}])
    """
    unconfirmed_over = {tp: age for tp, age in unconfirmed.items() if age > limit_s}
    stalled = {tp: age for tp, age in idle.items() if age > limit_s}
    reasons = [
        why
        for why, on in (
            ("recovering", not recovered),
            ("outputs unconfirmed", bool(unconfirmed_over)),
            ("partitions not progressing", bool(stalled)),
        )
        if on
    ]
    return Verdict(
        not reasons,
        {
            "reasons": reasons,
            "recovered": recovered,
            "limit_s": limit_s,
            "unconfirmed": _listing(unconfirmed_over, "oldest_batch_age_s"),
            "stalled": _listing(stalled, "idle_s"),
        },
    )


class Health:
    """What ``/healthz`` and ``/readyz`` answer; written on the event loop, read by the HTTP threads.

    Each attribute is replaced whole (never mutated), so a reader sees a consistent value without
    a lock. The creation time counts as the first heartbeat: the loop has ``loop_timeout_s`` to start.
    """

    def __init__(self, loop_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.loop_timeout_s = loop_timeout_s
        self.clock = clock
        self._beat = clock()
        self._failure: str | None = None
        self._ready = Verdict(False, {"reasons": ["starting"]})

    def beat(self) -> None:
        """The event loop is running (called by a timer on it)."""
        self._beat = self.clock()

    def fail(self, reason: str) -> None:
        """The worker hit a fatal error: not live from now on."""
        self._failure = reason

    def set_ready(self, verdict: Verdict) -> None:
        self._ready = verdict

    def live(self, now: float | None = None) -> Verdict:
        """Live while the loop beats and nothing fatal happened.

        >>> clock = iter([0.0, 10.0, 31.0]).__next__
        >>> h = Health(30.0, clock)
        >>> h.live().ok, h.live().ok
        (True, False)
        """
        age = (self.clock() if now is None else now) - self._beat
        reasons = []
        if age > self.loop_timeout_s:
            reasons.append(f"event loop unresponsive for {age:.0f} s (limit {self.loop_timeout_s:.0f} s)")
        if self._failure is not None:
            reasons.append(f"fatal error: {self._failure}")
        return Verdict(not reasons, {"reasons": reasons, "loop_heartbeat_age_s": round(age, 1)})

    def ready(self, now: float | None = None) -> Verdict:
        """The last verdict of the loop, unless the worker is not live (then that verdict is stale)."""
        live = self.live(now)
        if not live.ok:
            return Verdict(False, {**self._ready.body, "reasons": ["not live", *live.body["reasons"]]})
        return self._ready


def web_app(metrics_app: Callable[..., Any], health: Health) -> Callable[..., Any]:
    """A WSGI app: ``/healthz`` and ``/readyz`` from ``health``, everything else from ``metrics_app``."""
    endpoints = {"/healthz": health.live, "/readyz": health.ready}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        check = endpoints.get(environ.get("PATH_INFO", ""))
        if check is None:
            return metrics_app(environ, start_response)
        verdict = check()
        body = verdict.json()
        start_response(
            verdict.status,
            [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
        )
        return [body]

    return app


@dataclass
class StallDetector:
    """Per assigned input partition with messages waiting: how long since a record of it was processed.

    Fed every few seconds (:meth:`update`) with each owned partition's lag and position (the last
    offset handed to the processor; absent before the first batch since the assignment). A
    partition progresses when its position moves or it has nothing to read (lag 0); otherwise its
    idle time grows from the first update that saw it stuck. Past ``limit_s`` it is stalled: one
    WARNING, repeated every ``limit_s`` while it lasts, and ``on_stalled`` is called once per stall.
    """

    limit_s: float
    on_stalled: Callable[[Partition], None] | None = None
    #: per partition: its position at the last update, and since when that position has held with lag > 0
    _since: dict[Partition, tuple[int | None, float]] = field(default_factory=dict)
    _logged: dict[Partition, float] = field(default_factory=dict)
    idle: dict[Partition, float] = field(default_factory=dict)

    def update(
        self, lags: Mapping[Partition, int], positions: Mapping[Partition, int], now: float | None = None
    ) -> dict[Partition, float]:
        """Per partition in ``lags`` (owned, lag known): seconds idle with lag > 0 (0 = progressing)."""
        now = time.monotonic() if now is None else now
        idle: dict[Partition, float] = {}
        for tp, lag in lags.items():
            position = positions.get(tp)
            last = self._since.get(tp)
            if lag <= 0 or last is None or last[0] != position:
                self._since[tp] = (position, now)
                idle[tp] = 0.0
            else:
                idle[tp] = now - last[1]
        self.forget(tp for tp in list(self._since) if tp not in lags)
        for tp, age in idle.items():
            if age <= self.limit_s:
                self._logged.pop(tp, None)
                continue
            first = tp not in self._logged
            if first or now - self._logged[tp] >= self.limit_s:
                self._logged[tp] = now
                log.warning(
                    "partition %s[%d] is not progressing: %d message(s) waiting and none processed for "
                    "%.0f s (STREAM_STALL_WARNING_S=%.0f)",
                    tp[0],
                    tp[1],
                    lags[tp],
                    age,
                    self.limit_s,
                )
            if first and self.on_stalled is not None:
                self.on_stalled(tp)
        self.idle = idle
        return idle

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop what is known of partitions this worker no longer owns."""
        for tp in partitions:
            self._since.pop(tp, None)
            self._logged.pop(tp, None)
            self.idle.pop(tp, None)


@dataclass
class StartWatch:
    """Assigned input partitions that have delivered no record to their stream since they were assigned.

    Under heavy load a fresh worker was seen assigned a partition whose consumer then never handed
    a record of it to the stream while records waited (issue 14, the start-up race; the cause was
    not found, see docs/worker.md, "Start-up stalls"). Told of each assignment (:meth:`assigned`)
    and fed every few seconds (:meth:`update`) with the owned partitions that have records
    waiting, it returns those that have waited more than ``limit_s`` with no record arriving since
    their assignment; the app then re-joins the group, and the rebalance rebuilds every
    partition's fetch state. A partition that delivered once is not watched until its next assignment.
    """

    limit_s: float
    _assigned_at: dict[Partition, float] = field(default_factory=dict)
    #: per partition watched: since when it has had records waiting
    _since: dict[Partition, float] = field(default_factory=dict)

    def assigned(self, partitions: Iterable[Partition], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for tp in partitions:
            self._assigned_at[tp] = now
            self._since.pop(tp, None)

    def update(
        self, waiting: Iterable[Partition], last_in: Callable[[Partition], float | None], now: float | None = None
    ) -> list[Partition]:
        """The partitions of ``waiting`` stuck past the limit; ``last_in``: when a record of one last arrived.

        >>> watch = StartWatch(10.0)
        >>> watch.assigned([("e", 0), ("e", 1)], now=90.0)
        >>> watch.update([("e", 0), ("e", 1)], {("e", 1): 95.0}.get, now=100.0)
        []
        >>> watch.update([("e", 0), ("e", 1)], {("e", 1): 95.0}.get, now=111.0)
        [('e', 0)]
        """
        now = time.monotonic() if now is None else now
        waiting = {tp for tp in waiting if tp in self._assigned_at}
        for tp in [tp for tp in self._since if tp not in waiting]:
            del self._since[tp]  # nothing waits now: a later record starts a new wait
        stuck = []
        for tp in sorted(waiting):
            arrived = last_in(tp)
            if arrived is not None and arrived >= self._assigned_at[tp]:
                del self._assigned_at[tp]  # it delivers: not watched until its next assignment
                self._since.pop(tp, None)
            elif now - self._since.setdefault(tp, now) > self.limit_s:
                stuck.append(tp)
        return stuck

    def watching(self, tp: Partition) -> bool:
        """``tp`` is owned and has delivered nothing since its assignment."""
        return tp in self._assigned_at

    def restart(self, partitions: Iterable[Partition], now: float | None = None) -> None:
        """Count the partitions' wait from ``now`` (the app acted on them)."""
        now = time.monotonic() if now is None else now
        for tp in partitions:
            if tp in self._since:
                self._since[tp] = now

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop what is known of partitions this worker no longer owns."""
        for tp in partitions:
            self._assigned_at.pop(tp, None)
            self._since.pop(tp, None)


@dataclass
class RecoveryWatch:
    """A table recovery that reads nothing while changelog records remain to be read.

    After a rebalance, faust restores the tables of the new assignment from their changelogs
    before any event is processed. In 2 of 22 runs of a worker leaving mid-stream, its peer's
    recovery received no changelog record at all for minutes (faust logged "No event received for
    active tp" every 10 s) and the partitions it had taken over stopped. Fed every few seconds with
    the recovery's start and the changelog records it still needs, :meth:`update` says when these
    have not moved for ``limit_s``; the app then re-joins the group, which starts a new recovery.
    """

    limit_s: float
    _seen: tuple[float, int] | None = None
    _since: float = 0.0

    def update(self, started_at: float | None, remaining: int, now: float | None = None) -> bool:
        """Whether the recovery begun at ``started_at`` (None: none runs) is stuck, ``remaining`` records short.

        >>> watch = RecoveryWatch(10.0)
        >>> [watch.update(5.0, 40, now=t) for t in (6.0, 12.0, 16.5)]
        [False, False, True]
        >>> watch.update(5.0, 40, now=20.0), watch.update(5.0, 39, now=30.0)  # once per period; progress
        (False, False)
        >>> watch.update(None, 0, now=100.0), watch.update(50.0, 39, now=101.0)  # done; a new recovery
        (False, False)
        """
        now = time.monotonic() if now is None else now
        if started_at is None or remaining <= 0:
            self._seen = None
            return False
        if self._seen != (started_at, remaining):
            self._seen, self._since = (started_at, remaining), now
            return False
        if now - self._since > self.limit_s:
            self._since = now
            return True
        return False


def exit_after(timeout_s: float, exit: Callable[[int], Any] = os._exit) -> threading.Timer:
    """Exit the process with code 1 unless it is gone within ``timeout_s`` (``STREAM_SHUTDOWN_TIMEOUT_S``).

    Armed when the worker starts to stop. On a thread of its own, because what hangs a shutdown
    can be the event loop itself. Without it, a worker stopped while its group rebalanced and the
    broker went away waited for its streams forever, retrying heartbeats several times a second.
    Exiting is a crash: what was not committed is read again after a restart, and RocksDB
    recovers from its write-ahead log.
    """

    def expire() -> None:
        log.error(
            "the shutdown did not finish within %g s (STREAM_SHUTDOWN_TIMEOUT_S): exiting with code 1; "
            "what was not committed is read again after a restart",
            timeout_s,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        exit(1)

    timer = threading.Timer(timeout_s, expire)
    timer.name = "shutdown-deadline"
    timer.daemon = True
    timer.start()
    return timer
