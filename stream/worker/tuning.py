"""Process-level tuning of the worker: the event loop, Python's cyclic garbage collector, BLAS
threads, and the scheduling priority of the stream's threads against the API's.

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
import os
import sys
from collections.abc import Collection

log = logging.getLogger(__name__)


def tune_gc(threshold: tuple[int, int, int], freeze: bool) -> None:
    """Set the collector's thresholds; with ``freeze``, collect once and freeze the survivors."""
    gc.set_threshold(*threshold)
    if freeze:
        gc.collect()
        gc.freeze()
    log.info("gc thresholds %s, %d objects frozen", threshold, gc.get_freeze_count())


def limit_blas_threads() -> None:
    """Run numpy's matrix products on the calling thread (OpenBLAS, as numpy and scipy ship it).

    The worker's products are small (the batch's session_start users x the fresh articles, for
    recommendations): OpenBLAS's worker threads cost more than they save there. On the shared
    2-core test machine one (25 x 16) @ (16 x 2000) product took 1.7 ms with them and 0.07 ms
    without. Boosters have their own thread setting (``nthread`` 1, stream/models/registry.py).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def use_event_loop(name: str) -> None:
    """Make ``name`` ("asyncio" or "uvloop") the loop of the worker about to start."""
    if name == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")


def thread_ids() -> set[int]:
    """The kernel ids of this process's threads (Linux: ``/proc/self/task``; elsewhere empty)."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def renice_threads(nice: int, keep: Collection[int]) -> list[int]:
    """Give every thread of this process but ``keep`` the niceness ``nice``; return the ids changed.

    Linux schedules threads, so a thread's niceness is its own, and a thread starts with its
    creator's: those that the reniced threads start later (a rebalance's consumer, an executor's
    workers) are reniced too, those of ``keep`` are not. Raising one's niceness needs no privilege.
    Elsewhere ``setpriority`` would take a thread id for a process id: nothing changes there.
    """
    if not sys.platform.startswith("linux"):
        log.warning("STREAM_PROCESSING_NICE is for Linux only (this is %s): priorities unchanged", sys.platform)
        return []
    changed = []
    for tid in sorted(thread_ids() - set(keep)):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:  # it ended meanwhile, or is already nicer (lowering needs CAP_SYS_NICE)
            continue
        changed.append(tid)
    return changed
