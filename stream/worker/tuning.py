"""Process-level tuning of the worker: the event loop and Python's cyclic garbage collector.

A worker keeps many long-lived objects (modules, models, faust's services, cached user states)
and allocates a burst of short-lived ones per record. With Python's default thresholds
(700, 10, 10) the collector runs a generation-0 pass every few records and a full pass, which
walks every live object (about 0.1 s each here), every few seconds: about 2 s of a 9 s
``bench/worker.py`` run of a saturated worker. Freezing what exists at start-up takes those objects out
of every later pass; larger thresholds make passes rarer. Reference counting still frees
everything acyclic at once, so memory grows only by cyclic garbage awaiting the next pass.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def tune_gc(threshold: tuple[int, int, int], freeze: bool) -> None:
    """Set the collector's thresholds; with ``freeze``, collect once and freeze the survivors."""
    gc.set_threshold(*threshold)
    if freeze:
        gc.collect()
        gc.freeze()
    log.info("gc thresholds %s, %d objects frozen", threshold, gc.get_freeze_count())


def use_event_loop(name: str) -> None:
    """Make ``name`` ("asyncio" or "uvloop") the loop of the worker about to start."""
    if name == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")
