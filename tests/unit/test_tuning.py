"""The worker's GC tuning (stream/worker/tuning.py) changes this process's collector: restored after each test."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.worker.tuning import tune_gc

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_thresholds_are_set_and_startup_objects_frozen() -> None:
    gc.unfreeze()
    survivor = [object()]  # alive at "start-up": must end in the permanent generation
    tune_gc((12_345, 6, 7), freeze=True)
    assert gc.get_threshold() == (12_345, 6, 7)
    assert gc.get_freeze_count() > 0
    assert not any(o is survivor for o in gc.get_objects())  # frozen objects are out of every pass


def test_without_freeze_nothing_is_frozen() -> None:
    gc.unfreeze()
    tune_gc((800, 9, 9), freeze=False)
    assert gc.get_threshold() == (800, 9, 9)
    assert gc.get_freeze_count() == 0


async def test_the_app_applies_the_settings_when_it_first_starts(tmp_path: Any, monkeypatch: Any) -> None:
    import stream.worker.app
    from stream.config import load_settings

    applied: list[tuple[Any, ...]] = []
    monkeypatch.setattr(stream.worker.app, "tune_gc", lambda *args: applied.append(args))
    settings = load_settings(
        gc_threshold="3000,7,9", gc_freeze=False, state_dir=tmp_path / "state", models_dir=tmp_path / "m"
    )
    app, rt = stream.worker.app.create_app(settings, "localhost:1", clickhouse=False)
    try:
        assert applied == []  # not while the app is only being built (e.g. for faust's CLI or tests)
        await app.on_first_start()
        assert applied == [((3000, 7, 9), False)]
    finally:
        rt.close(timeout_s=0)
        rt.producer = None


@pytest.mark.parametrize(("name", "loop_module"), [("uvloop", "uvloop"), ("asyncio", "asyncio.unix_events")])
def test_the_event_loop_setting_picks_the_loop(name: str, loop_module: str) -> None:
    # In a child process: the choice is process-wide (an event loop policy).
    code = (
        "import asyncio; from stream.worker.tuning import use_event_loop; "
        f"use_event_loop({name!r}); print(type(asyncio.new_event_loop()).__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == loop_module


RENICE = """
import json, os, threading
from stream.worker.tuning import renice_threads

done, born, ids = threading.Event(), threading.Semaphore(0), {}

def spawn(name):
    # a thread that, once told to, starts a child: which niceness does the child get?
    go = threading.Event()
    def child():
        ids[name + " child"] = threading.get_native_id()
        born.release()
        done.wait()
    def parent():
        go.wait()
        threading.Thread(target=child, daemon=True).start()
        done.wait()
    t = threading.Thread(target=parent, daemon=True)
    t.start()
    ids[name] = t.native_id
    return go

base = os.getpriority(os.PRIO_PROCESS, 0)  # this process's own (a CI may run the suite under nice)
kept, other = spawn("kept"), spawn("other")
ids["main"] = threading.get_native_id()
changed = renice_threads(base + 7, {ids["kept"]})
kept.set(), other.set(), born.acquire(), born.acquire()
late = threading.Thread(target=done.wait, daemon=True)  # started by the reniced main thread
late.start()
ids["main child"] = late.native_id
nice = {k: os.getpriority(os.PRIO_PROCESS, t) - base for k, t in ids.items()}
print(json.dumps({"changed": changed, "nice": nice}))
done.set()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_renice_threads_lowers_all_but_the_kept_ones_and_their_children() -> None:
    # In a child process: a niceness, once raised, cannot be lowered again without privilege.
    out = subprocess.run([sys.executable, "-c", RENICE], capture_output=True, text=True, check=True, cwd=ROOT)
    got = json.loads(out.stdout)
    # above the process's own niceness; threads started afterwards take their creator's
    assert got["nice"] == {"main": 7, "other": 7, "kept": 0, "main child": 7, "other child": 7, "kept child": 0}
    assert len(got["changed"]) >= 2  # main and "other" (and any thread the imports started)
