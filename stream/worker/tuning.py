"""Process-level tuning of the worker: the event loop, Python's cyclic garbage collector, BLAS threads.

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
