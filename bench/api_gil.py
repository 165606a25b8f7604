"""How long the API's thread waits for the GIL while the stream's thread processes batches.

    python bench/api_gil.py [--users 1000] [--days 4] [--batch 500] [--switch-ms 5 1]

The worker serves the API from a thread of its own (docs/api.md): a request waits for the GIL,
which CPython hands over every ``sys.getswitchinterval()``, unless the stream's thread is in C code
that holds it longer. In one process: the stream's work (``BatchProcessor.process`` with the
production models on dict stores, batches of ``--batch`` simulated events, as the worker runs
them) on the main thread, and a probe thread standing in for the API's, which sleeps 0.5 ms and
measures how late it runs again: the wait for the GIL (and for a core, on a busy machine). Per
switch interval: the probe's p50/p99/max wait with the stream busy, with it idle, and while the
main thread runs one full garbage-collector pass; the batches' own time.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SLEEP_S = 0.0005


class Probe(threading.Thread):
    """Sleeps ``SLEEP_S`` in a loop and records how late each wake-up came (s)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.late: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            time.sleep(SLEEP_S)
            self.late.append(time.perf_counter() - t0 - SLEEP_S)


def quantiles(xs: list[float]) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    n = len(xs)
    return f"{xs[n // 2] * 1e3:.2f} / {xs[min(n - 1, int(0.99 * n))] * 1e3:.2f} / {xs[-1] * 1e3:.1f}"


def probed(work: Any, *args: Any) -> list[float]:
    """The probe's wake-up delays while ``work(*args)`` runs on this thread."""
    probe = Probe()
    probe.start()
    try:
        work(*args)
    finally:
        probe.stop.set()
        probe.join()
    return probe.late


def run_batches(processor: Any, keys: list[bytes], values: list[bytes], size: int, took: list[float]) -> None:
    """The stream's work: every event in batches of ``size``; each batch's time into ``took``."""
    from stream.worker.processor import Record, Stores

    stores = Stores(users={}, ad_pending={}, articles={}, bandit={})
    for i in range(0, len(values), size):
        recs = [Record(keys[j], values[j], "session-events", 0, j, None) for j in range(i, min(i + size, len(values)))]
        t0 = time.perf_counter()
        processor.process(recs, stores)
        took.append(time.perf_counter() - t0)


def full_collections(n: int) -> None:
    for _ in range(n):
        gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--switch-ms", type=float, nargs="+", default=[5.0, 1.0])
    args = ap.parse_args()

    from simulator import SimConfig, generate
    from stream.config import load_settings
    from stream.models.registry import ModelRegistry
    from stream.models.scoring import ModelSet
    from stream.worker.processor import EXPECTED_FEATURES, BatchProcessor
    from tests.support.models import train_and_register

    events = list(generate(SimConfig(n_users=args.users, days=args.days, seed=7)).iter_events())
    warm = len(events) // 4
    models_dir = Path(tempfile.mkdtemp(prefix="bench-gil-"))
    train_and_register(models_dir, events[:warm], seed=1)
    model_set = ModelSet(ModelRegistry(models_dir), EXPECTED_FEATURES)
    model_set.refresh()
    placements = load_settings().placements
    rest = [orjson.dumps(e) for e in events[warm:]]
    keys = [e["user_id"].encode() for e in events[warm:]]
    print(f"{len(rest)} events in batches of {args.batch}; models {sorted(model_set.models)}", flush=True)
    print("| switch interval | condition | probe wait p50 / p99 / max ms | batches | batch p50 / max ms |")
    print("|---|---|---|---|---|")
    from stream.worker.tuning import tune_gc

    settings = load_settings()
    tune_gc(settings.gc_threshold, settings.gc_freeze)  # as the worker does once started
    for switch_ms in args.switch_ms:
        sys.setswitchinterval(switch_ms / 1000)
        processor = BatchProcessor(model_set.models, placements)
        took: list[float] = []
        busy = probed(run_batches, processor, keys, rest, args.batch, took)
        idle = probed(time.sleep, 2)
        collect = probed(full_collections, 3)
        took.sort()
        bq = f"{took[len(took) // 2] * 1e3:.0f} / {took[-1] * 1e3:.0f}"
        print(f"| {switch_ms:g} ms | batches | {quantiles(busy)} | {len(took)} | {bq} |")
        print(f"| {switch_ms:g} ms | idle | {quantiles(idle)} | - | - |")
        print(f"| {switch_ms:g} ms | 3 full gc passes | {quantiles(collect)} | - | - |", flush=True)


if __name__ == "__main__":
    main()
