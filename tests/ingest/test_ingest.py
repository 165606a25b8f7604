"""``python -m stream ingest``: a foreign history into the real chdb events table.

Validation by the worker's rules (rejects counted and written with reasons), idempotence by event
identity (a second run and a resumed crash insert nothing twice), histories longer than 100 days,
JSONL, Parquet and a topic range on the real embedded broker, one-line errors.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from stream.cli import main
from stream.clickhouse import events_to_frame
from stream.config import load_settings
from stream.tools.ingest import Progress, run_ingest
from stream.tools.replay import FileSource, TopicSource
from tests.support.history import BAD_RECORDS, foreign_events, write_jsonl

MAX_BYTES = load_settings().max_event_bytes


@pytest.fixture(scope="module")
def history() -> list[dict[str, Any]]:
    return foreign_events(n_users=25, days=130, seed=5)


def _stored(ch: Any) -> pd.DataFrame:
    return ch.query_df(
        "SELECT count() AS n, uniqExact(event_id) AS ids, uniqExact(toDate(event_time)) AS days FROM {db}.events"
    )


def test_cli_ingests_a_long_history_with_rejects_and_a_second_run_adds_nothing(
    ch: Any, history: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    n_bad = write_jsonl(path, history, bad_every=1000)
    with open(path, "ab") as f:  # the same event twice in the file: stored once
        f.write(orjson.dumps(history[7]) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    argv = [
        "ingest",
        "--from-file",
        str(path),
        "--database",
        ch.database,
        "--rejects",
        str(rejects),
        "--chunk-rows",
        "2500",
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"ingested {len(history)} events" in out and f"{n_bad} rejected" in out and "1 already stored" in out
    stored = _stored(ch)
    assert int(stored["n"].iloc[0]) == int(stored["ids"].iloc[0]) == len(history)
    assert int(stored["days"].iloc[0]) > 100
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert len(lines) == n_bad >= 3
    kinds = {kind for _, kind in BAD_RECORDS}
    assert {r["error_kind"] for r in lines} == kinds
    assert all(r["reason"] and r["record"] and isinstance(r["position"], int) for r in lines)
    assert lines[0]["position"] == 1001  # the line number of the first bad record

    assert main(argv) == 0  # again: everything is already there
    out = capsys.readouterr().out
    assert "ingested 0 events" in out and f"{len(history) + 1} already stored" in out
    assert int(_stored(ch)["n"].iloc[0]) == len(history)


def test_resume_after_a_crash_between_insert_and_checkpoint(
    ch: Any, history: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    n_bad = write_jsonl(path, history, bad_every=700)
    ckpt, rejects = tmp_path / "ingest.ckpt", tmp_path / "rejects.jsonl"
    kw: dict[str, Any] = {
        "rejects_path": rejects,
        "max_bytes": MAX_BYTES,
        "checkpoint_path": ckpt,
        "chunk_rows": 1000,
        "progress": False,
    }
    first = run_ingest(FileSource(path), ch, max_records=3000, **kw)
    assert not first.complete and first.counts.read == 3000
    saved = tmp_path / "saved.ckpt"
    shutil.copy(ckpt, saved)
    # the run goes on and stores 4000 more records; then it "crashes" and its last checkpoint is lost
    run_ingest(FileSource(path), ch, resume=True, max_records=4000, **kw)
    shutil.copy(saved, ckpt)
    last = run_ingest(FileSource(path), ch, resume=True, **kw)
    assert last.complete
    assert last.counts.read == len(history) + n_bad
    assert last.counts.rejected == n_bad
    # the lost run's events were read again and found stored: counted once, as duplicates
    assert last.counts.inserted + last.counts.duplicates == len(history) and last.counts.duplicates > 3900
    stored = _stored(ch)
    assert int(stored["n"].iloc[0]) == int(stored["ids"].iloc[0]) == len(history)
    assert len(rejects.read_text().splitlines()) == n_bad  # no reject listed twice
    again = run_ingest(FileSource(path), ch, resume=True, **kw)  # a finished checkpoint: nothing to do
    assert again.complete and int(_stored(ch)["n"].iloc[0]) == len(history)


def test_parquet_source(ch: Any, history: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    events_to_frame(history[:5000]).to_parquet(path, index=False)
    res = run_ingest(FileSource(path), ch, rejects_path=tmp_path / "r.jsonl", max_bytes=MAX_BYTES, progress=False)
    assert res.complete and res.counts.inserted == 5000 and res.rejects_path is None
    back = ch.query_df(
        "SELECT event_id, user_id, toUnixTimestamp64Milli(event_time) AS t FROM {db}.events ORDER BY event_id"
    )
    want = sorted((e["event_id"], e["user_id"], e["event_time"]) for e in history[:5000])
    assert list(back.itertuples(index=False, name=None)) == want


@pytest.mark.kafka
def test_topic_source_between_offsets(
    ch: Any, history: list[dict[str, Any]], kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"ingest-{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # kept: the future needs its handle
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = history[:3000]
    for ev in sent:
        producer.produce(topic, orjson.dumps(ev), ev["user_id"].encode())
    producer.produce(topic, BAD_RECORDS[0][0])
    assert producer.flush(30) == 0
    src = TopicSource(kafka_bootstrap, topic, from_offset=1000, to_offset=3001)
    res = run_ingest(src, ch, rejects_path=tmp_path / "r.jsonl", max_bytes=MAX_BYTES, progress=False)
    assert res.complete and res.counts.read == 2001
    assert res.counts.inserted == 2000 and res.counts.rejected == 1
    ids = set(ch.query_df("SELECT event_id FROM {db}.events")["event_id"])
    assert ids == {e["event_id"] for e in sent[1000:]}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--from-offset", "5"], "--from-offset applies to --from-topic only"),
        (["--resume"], "--resume needs --checkpoint FILE"),
        (["--chunk-rows", "0"], "bad --chunk-rows 0; expected a positive number of events"),
    ],
)
def test_bad_options_print_one_line(
    extra: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("")
    assert main(["ingest", "--from-file", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_progress_without_a_terminal_prints_plain_lines() -> None:
    out = io.StringIO()
    bar = Progress(total=20_000, enabled=True, stream=out, every_s=0.0)
    bar.update(10_000)
    bar.update(10_000)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ingest: 10000/20000 (50 %) records") and "\r" not in out.getvalue()
    assert lines[-1].startswith("ingest: 20000/20000 (100 %)")
