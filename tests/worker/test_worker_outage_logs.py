"""A worker's log during a broker outage: bounded, one line per cause per interval (stream/worker/logs.py).

The broker is a dedicated embedded one: the test stops it (the session's broker serves the other
tests). Before the rate limit, aiokafka and faust logged about 80 ERROR lines a second here.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.waits import wait
from tests.worker.conftest import worker_in_an_outage

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SUPPRESSED = "similar lines suppressed in the last"


def test_a_broker_outage_logs_a_bounded_number_of_lines(worker_env: dict[str, str], tmp_path: Path) -> None:
    with worker_in_an_outage(worker_env, tmp_path) as (_, log):
        before = len(log.read_text(errors="replace").splitlines())
        began = time.monotonic()

        def since() -> list[str]:
            return log.read_text(errors="replace").splitlines()[before:]

        # The span measured: until the rate limit reports what it held back, one interval
        # (stream/worker/logs.py INTERVAL_S) after the first line of a cause.
        wait(
            lambda: any(SUPPRESSED in line and "[ERROR]" in line for line in since()),
            30,
            "an ERROR line reporting suppressed repeats",
        )
        span = time.monotonic() - began
        during = since()
    python_errors = [line for line in during if "[ERROR]" in line]
    print(f"\n{len(during)} lines ({len(python_errors)} Python ERROR lines) in {span:.0f} s of outage")
    # One line per cause per 10 s: a handful of aiokafka causes, plus librdkafka's own line a second.
    assert len(during) < 100, "\n".join(during[:40])
    assert any(SUPPRESSED in line for line in python_errors)
