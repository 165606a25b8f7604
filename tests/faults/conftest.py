"""Fixtures of the fault suite (marker ``fault``): the worker fixtures, and the table of what each fault cost.

Each fault test records one row (:func:`tests.faults.support.record`): events lost, duplicates on
the predictions topic, duplicates in ClickHouse ``FINAL`` and seconds to recover. They are printed
as one table at the end of the session, and appended as JSON lines to the file named by
``FAULT_REPORT`` if set (to compare runs).
"""

from __future__ import annotations

import pytest

from tests.faults import support
from tests.worker.conftest import models_dir, sim_events, worker_env  # noqa: F401 - fixtures used here too


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if support.ROWS:
        terminalreporter.write_sep("-", "fault suite: what each fault cost")
        terminalreporter.write_line(support.table(support.ROWS))
