"""Rate-limited logs: one line per cause per interval, with a count of the lines held back.

During a broker outage aiokafka and faust log the same failure many times a second (55,565
ERROR lines in 55 s were seen). :class:`RepeatFilter`, installed on the root logger's handlers
when the worker's app starts (:func:`limit_repeats`, from ``WorkerApp.on_first_start``), lets
through the first record of each cause (logger, level and message template, whatever its
arguments) per interval and drops the others; the next record of that cause let through says
how many were dropped::

    Unable connect to node with id 1: ... (412 similar lines suppressed in the last 10 s)

A cause that stops being logged takes its count with it: only the next record of the same cause
reports it. Records below ``min_level`` (progress lines at INFO) always pass.

It is a handler filter, not a logger filter: a logger's filters do not see the records its child
loggers (``aiokafka.conn``, ``faust.transport...``) pass up to the root's handlers. The masking of
secrets (stream/redact.py) happens earlier, when each record is made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

#: seconds per cause between two lines let through
INTERVAL_S = 10.0

_Key = tuple[str, int, str]


class RepeatFilter(logging.Filter):
    """Lets through one record per (logger, level, message template) per ``interval_s``."""

    def __init__(
        self,
        interval_s: float = INTERVAL_S,
        min_level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        max_causes: int = 1000,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.min_level = min_level
        self.clock = clock
        self.max_causes = max_causes
        #: per cause: when its last record was let through, and how many were dropped since
        self._causes: dict[_Key, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        # One record can reach several handlers that each carry this filter: decide once.
        decided = getattr(record, "_repeat_filter_pass", None)
        if decided is not None:
            return bool(decided)
        passed = record.levelno < self.min_level or self._admit(record)
        record._repeat_filter_pass = passed  # noqa: SLF001 - our own mark on the record, kept out of format fields
        return passed

    def _admit(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            last = self._causes.get(key)
            if last is not None and now - last[0] < self.interval_s:
                self._causes[key] = (last[0], last[1] + 1)
                return False
            if len(self._causes) >= self.max_causes:
                self._forget_quiet(now)
            self._causes[key] = (now, 0)
        if last is not None and last[1]:
            _annotate(
                record,
                f" ({last[1]} similar line{'s' if last[1] > 1 else ''} suppressed in the last {now - last[0]:.0f} s)",
            )
        return True

    def _forget_quiet(self, now: float) -> None:
        """Drop causes whose interval is over (their dropped count, if any, is lost)."""
        self._causes = {k: v for k, v in self._causes.items() if now - v[0] < self.interval_s}


def _annotate(record: logging.LogRecord, suffix: str) -> None:
    """Append ``suffix`` to the record's message (formatted now: its template may not end with text)."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: let logging report it as it would
        return
    record.msg, record.args = message + suffix, ()  # not None: mode's formatter would make it (None,)


def limit_repeats(logger: logging.Logger | None = None, interval_s: float = INTERVAL_S) -> list[RepeatFilter]:
    """Put a :class:`RepeatFilter` on each handler of ``logger`` (the root) that has none yet."""
    logger = logger or logging.getLogger()
    added = []
    for handler in logger.handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            f = RepeatFilter(interval_s)
            handler.addFilter(f)
            added.append(f)
    return added
