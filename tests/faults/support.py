"""Helpers of the fault suite: waits on observables, counts of what arrived, and the report row."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from stream.testing import consume, scrape_metrics
from tests.support.waits import wait


@dataclass(frozen=True)
class FaultRow:
    """What one fault cost: every count should be 0 (duplicates on the topic are allowed by at-least-once)."""

    fault: str
    lost: int  # scorable events with no prediction on the topic (or rows missing from FINAL)
    dup_topic: int  # predictions published more than once for the same (model, event) (-1: not measured)
    dup_final: int  # (model, event) rows more than once in ClickHouse FINAL (-1: not measured)
    recover_s: float  # from the end of the fault until every expected prediction was published

    def line(self) -> str:
        return (
            f"{self.fault}: lost={self.lost} dup_topic={self.dup_topic} dup_final={self.dup_final} "
            f"recover_s={self.recover_s:.1f}"
        )


ROWS: list[FaultRow] = []


def record(row: FaultRow) -> str:
    """Print the row (visible with -s), keep it for the session's table and the FAULT_REPORT file."""
    ROWS.append(row)
    print(f"\nFAULT {row.line()}")
    path = os.environ.get("FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(asdict(row)) + "\n")
    return row.line()


def table(rows: Iterable[FaultRow]) -> str:
    lines = [
        "| fault | events lost | duplicates on the topic | duplicates in FINAL | seconds to recover |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.fault} | {r.lost} | {_count(r.dup_topic)} | {_count(r.dup_final)} | {r.recover_s:.1f} |" for r in rows
    ]
    return "\n".join(lines)


def _count(n: int) -> str:
    return str(n) if n >= 0 else "n/a"


def metric(port: int, name: str) -> float | None:
    """A worker metric now (summed over labels); None while /metrics does not answer."""
    try:
        return scrape_metrics(port).get(name)
    except OSError:
        return None


def probe(port: int, path: str) -> int | None:
    """The status of ``/healthz`` or ``/readyz``; None while the worker does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return None


def readyz(port: int) -> tuple[int | None, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return int(err.code), json.loads(err.read())
    except OSError:
        return None, {}


def keys(msgs: Iterable[Any]) -> list[tuple[str, str]]:
    out = []
    for m in msgs:
        p = orjson.loads(m.value())
        out.append((p["model_name"], p["event_id"]))
    return out


class PredictionWatch:
    """Reads the predictions topic until every expected (model, event) arrived; notes when it did."""

    def __init__(self, bootstrap: str, topic: str, expected: Iterable[tuple[str, str]]) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.expected = set(expected)
        self.done_at: float | None = None
        #: the score of the last prediction read for each (model, event)
        self.latest: dict[tuple[str, str], float] = {}

    def read(self, timeout_s: float = 180.0, idle_s: float = 2.0) -> Counter[tuple[str, str]]:
        """Every prediction on the topic once all expected ones are there (then ``idle_s`` of quiet)."""
        seen: set[tuple[str, str]] = set()
        read = [0]

        def complete(got: list[Any]) -> bool:
            seen.update(keys(got[read[0] :]))
            read[0] = len(got)
            if self.done_at is None and seen >= self.expected:
                self.done_at = time.monotonic()
            return self.done_at is not None

        msgs = consume(self.bootstrap, self.topic, until=complete, timeout_s=timeout_s, idle_s=idle_s)
        for m in msgs:
            p = orjson.loads(m.value())
            self.latest[(p["model_name"], p["event_id"])] = p["score"]
        return Counter(keys(msgs))


def topic_counts(got: Counter[tuple[str, str]], expected: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """(lost, duplicates) of predictions on the topic against the expected (model, event) pairs."""
    want = set(expected)
    return len(want - set(got)), sum(n - 1 for n in got.values() if n > 1)


def final_counts(rows: list[dict[str, Any]], expected: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """(missing, duplicates) of (model_name, event_id) rows of a ``FINAL`` query."""
    got = Counter((r["model_name"], r["event_id"]) for r in rows)
    return len(set(expected) - set(got)), sum(n - 1 for n in got.values() if n > 1)


def owners(bootstrap: str, group: str, topic: str) -> tuple[int, bool]:
    """(members of ``group`` that own partitions of ``topic``, whether the group is stable)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:  # bounded: an unbounded wait here once hung for the whole test timeout
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    except Exception:  # the coordinator is not ready yet: ask again
        return 0, False
    members = [m for m in desc.members if any(tp.topic == topic for tp in m.assignment.topic_partitions)]
    return len(members), str(desc.state).endswith("STABLE")


def wait_owners(bootstrap: str, group: str, topic: str, n: int, timeout_s: float = 90) -> float:
    """Wait until exactly ``n`` members of a stable group own partitions of ``topic``."""
    return wait(
        lambda: owners(bootstrap, group, topic) == (n, True),
        timeout_s,
        f"{n} workers owning {topic} partitions in a stable group",
        every_s=0.5,
    )
