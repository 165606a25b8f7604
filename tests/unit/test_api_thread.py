"""The API on its own thread: answers while the stream's loop is busy, and reads only whole states.

What is real: the faust app ``create_app`` builds (no broker), its RocksDB users table, the
API's aiohttp site on its own thread and loop. The stream's loop is the test's: the request is
made from a synchronous call on it, so the loop can run nothing until the answer has come.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.client import WorkerClient
from stream.config import load_settings
from stream.kafka.embedded import free_port
from stream.kafka.partitioner import partition_for
from stream.worker.ads import Ads
from stream.worker.app import create_app
from stream.worker.processor import BatchProcessor, Record, Stores
from stream.worker.scores import LatestScores

PARTITIONS = 4
ROOT = Path(__file__).resolve().parents[2]


def blocking_get(url: str) -> tuple[int, bytes]:
    """(status, body): a synchronous request, which blocks the calling thread (and its event loop)."""
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


def api_settings(tmp_path: Path, models_dir: Path, port: int) -> Any:
    return load_settings(
        models_dir=models_dir,
        state_dir=tmp_path / "state",
        worker_web_port=0,
        worker_id="unit-api",
        topic_prefix="unit.",
        topic_partitions=PARTITIONS,
        api_port=port,
        api_url=f"http://127.0.0.1:{port}",
        api_thread=True,
        article_wait_ms=0,
    )


@pytest.fixture
async def served(tmp_path: Path, models_dir: Path, sim_events: list[dict[str, Any]]) -> AsyncIterator[Any]:
    """A worker's API serving one user's state, stored in the users table's RocksDB as a batch writes it."""
    settings = api_settings(tmp_path, models_dir, free_port())
    app, rt = create_app(settings, "127.0.0.1:1", clickhouse=False)
    api = app.api
    uid = sim_events[0]["user_id"]
    mine = [e for e in sim_events if e["user_id"] == uid]
    p = partition_for(uid.encode(), PARTITIONS)
    stores = Stores(users={}, ad_pending={}, articles={}, bandit={})
    records = [Record(uid.encode(), orjson.dumps(e), "e", p, 100 + i, None) for i, e in enumerate(mine)]
    BatchProcessor({}, settings.placements).process(records, stores)
    users = rt.tables["users"]
    users.data._db_for_partition(p).put(uid.encode(), stores.users[uid])
    # the state after an assignment of every partition to this worker, recovered
    changelog = users.changelog_topic.get_topic_name()
    api.routing.update({api.url: {changelog: list(range(PARTITIONS))}}, changelog, PARTITIONS)
    api.owned = frozenset(range(PARTITIONS))
    api.recovered = lambda: True
    await api.start()
    try:
        yield api, uid, mine, len(records) + 99
    finally:
        await api.stop()
        rt.close()


async def test_the_api_refuses_connections_until_it_serves(tmp_path: Path, models_dir: Path) -> None:
    """Bound when the app is made (a port in use fails at once), listening only from ``Api.start``:
    a request while the worker starts is refused at once, not left without an answer."""
    port = free_port()
    app, rt = create_app(api_settings(tmp_path, models_dir, port), "127.0.0.1:1", clickhouse=False)
    url = f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(urllib.error.URLError) as err:
            urllib.request.urlopen(f"{url}/healthz", timeout=5)
        assert isinstance(err.value.reason, ConnectionRefusedError)
        assert not WorkerClient(url).ready()  # not listening yet: not ready (no exception)
        await app.api.start()
        assert blocking_get(f"{url}/healthz")[0] == 200
    finally:
        await app.api.stop()
        rt.close()


async def test_a_request_is_answered_while_the_streams_loop_is_busy(served: Any) -> None:
    api, uid, events, last_offset = served
    assert api.threaded
    # This coroutine runs on the stream's loop (the one the API started from), and each request
    # below blocks it until its answer: on that loop, none could be answered.
    status, body = blocking_get(f"{api.url}/v1/users/{uid}")
    assert status == 200
    doc = orjson.loads(body)
    assert doc["offset"] == last_offset
    assert doc["features"]["total_events"] == len({e["event_id"] for e in events})
    assert doc["last_event_time"] == max(e["event_time"] for e in events)
    assert blocking_get(f"{api.url}/v1/users/{uid}") == (200, body)  # the same state: the same answer
    status, body = blocking_get(f"{api.url}/metrics")
    assert status == 200 and b'stream_api_requests_total{route="/v1/users/{user_id}",status="200"} 2.0' in body
    assert blocking_get(f"{api.url}/healthz")[0] == 200


async def test_a_revocation_makes_local_answers_503_until_the_next_assignment(served: Any) -> None:
    api, uid, _, _ = served
    api.on_revoked()  # what the stream's loop does when a rebalance begins
    req = urllib.request.Request(f"{api.url}/v1/users/{uid}")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 503 and err.value.headers["Retry-After"] == "1"


def test_latest_scores_are_replaced_not_changed_in_place() -> None:
    latest = LatestScores()
    pred = {"user_id": "u1", "model_name": "churn", "event_time": 1, "score": 0.5, "model_version": "1"}
    latest.record(0, [{**pred, "event_id": "e1", "predicted_at": 2}])
    seen = latest.get(0, "u1")  # what a reader on another thread holds
    latest.record(0, [{**pred, "event_id": "e2", "event_time": 3, "score": 0.7, "predicted_at": 4}])
    assert seen == {"churn": (0.5, "1", "e1", 1, 2)}
    assert latest.get(0, "u1") == {"churn": (0.7, "1", "e2", 3, 4)}


def test_committed_bandit_counts_hold_no_batch_in_progress() -> None:
    ads = Ads(("a", "b"))
    table: dict[str, bytes] = {}
    batch = ads.begin({}, table)
    batch.event({"user_id": "u", "request_id": "r", "event_time": 1, "placement": "a"}, "ad_impression", 0)
    assert ads.committed_snapshot(table) == {}  # counted in ``own``, not yet written
    batch.write()
    assert ads.committed_snapshot(table) == {"unknown": {"a": (1, 0)}}


NICED = """
import asyncio, json, os, sys, threading, urllib.request
from pathlib import Path
from stream.config import load_settings
from stream.kafka.embedded import free_port
from stream.worker.app import create_app

async def main(models_dir, state_dir):
    base = os.getpriority(os.PRIO_PROCESS, 0)  # this process's own (a CI may run the suite under nice)
    port = free_port()
    settings = load_settings(
        models_dir=models_dir, state_dir=state_dir, worker_web_port=0, worker_id="unit-nice", topic_prefix="unit.",
        api_port=port, api_url=f"http://127.0.0.1:{port}", api_thread=True, processing_nice=9,
    )
    app, rt = create_app(settings, "127.0.0.1:1", clickhouse=False)
    await app.api.start()
    try:
        later = await asyncio.get_running_loop().run_in_executor(None, threading.get_native_id)
        status = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{app.api.url}/healthz", timeout=30).status)
        nice = {t: os.getpriority(os.PRIO_PROCESS, t) for t in map(int, os.listdir("/proc/self/task"))}
        print(json.dumps({
            "status": status, "base": base, "nice": nice, "main": threading.get_native_id(), "later": later,
            "api": app.api._thread.native_id, "producer": sorted(rt.api_producer_threads),
        }))
    finally:
        await app.api.stop()
        rt.close(timeout_s=0)

asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_processing_nice_puts_every_thread_but_the_apis_behind_it(tmp_path: Path, models_dir: Path) -> None:
    # In a child process: a niceness, once raised, cannot be lowered again without privilege.
    out = subprocess.run(
        [sys.executable, "-c", NICED, str(models_dir), str(tmp_path / "state")],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    got = orjson.loads(out.stdout.splitlines()[-1])
    nice = {int(k): v for k, v in got["nice"].items()}
    assert got["status"] == 200  # the API answers from its thread
    ahead = {got["api"], *got["producer"]} & set(nice)  # librdkafka may have ended some of its threads since
    assert len(ahead) > 1, "the decisions producer's librdkafka threads were not found"
    assert {t: nice[t] for t in ahead} == dict.fromkeys(ahead, got["base"])
    assert {t: v for t, v in nice.items() if t not in ahead} == dict.fromkeys(set(nice) - ahead, 9)
    assert nice[got["main"]] == 9 and nice[got["later"]] == 9  # the stream's loop, and an executor thread started since
