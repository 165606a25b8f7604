"""Waiting on something observable, for the tests that drive processes from outside."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait(cond: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.2) -> float:
    """Poll ``cond`` until it holds; return when it did (monotonic). Fails naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f} s")
        time.sleep(every_s)
    return time.monotonic()
