"""A shutdown that cannot finish ends at ``STREAM_SHUTDOWN_TIMEOUT_S`` with exit code 1 (stream/worker/health.py).

With its broker gone, a worker's SIGTERM waits for faust's fetcher thread, which mode gives up on
only after 60 s; stopped while its group rebalanced, a worker waited for its streams forever. The
broker is a dedicated embedded one: the test stops it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.worker.conftest import worker_in_an_outage

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DEADLINE_S = 8


def test_a_shutdown_stuck_without_a_broker_exits_with_code_1_at_its_deadline(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**worker_env, "STREAM_SHUTDOWN_TIMEOUT_S": str(DEADLINE_S), "STREAM_SETTLE_TIMEOUT_S": "3"}
    with worker_in_an_outage(env, tmp_path) as (worker, log):
        assert worker.proc is not None
        began = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        try:
            code = worker.proc.wait(DEADLINE_S + 30)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - began
    text = log.read_text(errors="replace")
    print(f"\nSIGTERM without a broker: exit code {code} after {took:.1f} s (STREAM_SHUTDOWN_TIMEOUT_S={DEADLINE_S})")
    assert code == 1, f"exit code {code} after {took:.0f} s\n" + "\n".join(text.splitlines()[-30:])
    assert DEADLINE_S - 1 <= took < DEADLINE_S + 30
    assert f"the shutdown did not finish within {DEADLINE_S} s (STREAM_SHUTDOWN_TIMEOUT_S)" in text
