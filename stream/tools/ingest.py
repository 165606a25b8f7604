"""``python -m stream ingest``: an event history from a file or a topic range into ``{db}.events``.

This is how a history that did not come from the simulator reaches batch training.

* Sources are those of ``replay`` (:class:`stream.tools.replay.FileSource`, :class:`stream.tools.replay.TopicSource`):
  a ``.jsonl`` or ``.parquet`` file, a simulator dataset directory, or a topic between offsets or
  times.
* Validation is the worker's (:func:`stream.events.schema.parse_event`): a record it would dead-letter is
  counted and written to the rejects file (JSON lines: position, ``error_kind``, reason, the record).
* Idempotent by event identity: within a chunk a repeated ``event_id`` is kept once, and ids already
  in ``{db}.events`` (looked up within the chunk's time range) are skipped. Running the same ingest
  twice inserts nothing the second time.
* Chunked: ``chunk_rows`` valid events per round trip, each inserted in groups of at most 100 days
  (:func:`stream.clickhouse.insert_events`, as the worker archives them: JSON flattened by
  ClickHouse; ClickHouse's partitions-per-insert limit).
* Resumable: with a checkpoint file, the source position and the counts are written after every
  chunk is stored; ``--resume`` continues from there (the rejects file is cut back to what the
  checkpoint counted, so no reject is listed twice).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pandas as pd

from stream.clickhouse import ClickHouse, insert_events
from stream.config import make_writable_dir
from stream.errors import ConfigError
from stream.events.schema import EventRejected, parse_event

CHECKPOINT_FORMAT = 1
DEFAULT_CHUNK_ROWS = 200_000
#: characters of a rejected record kept in the rejects file
MAX_REJECT_CHARS = 4_000


@dataclass
class IngestCounts:
    read: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass
class IngestResult:
    counts: IngestCounts = field(default_factory=IngestCounts)
    complete: bool = False
    seconds: float = 0.0
    rejects_path: Path | None = None
    cpu_seconds: float = 0.0


# --- checkpoint ---------------------------------------------------------------------------------
@dataclass
class IngestCheckpoint:
    """Where an ingest got to: the source position after the last stored chunk, and the counts."""

    source: str
    position: Any
    counts: IngestCounts
    rejects_bytes: int = 0
    done: bool = False

    def write(self, path: Path) -> None:
        data = {
            "format": CHECKPOINT_FORMAT,
            "kind": "ingest",
            "source": self.source,
            "position": self.position,
            "counts": asdict(self.counts),
            "rejects_bytes": self.rejects_bytes,
            "done": self.done,
        }
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint

    @classmethod
    def read(cls, path: Path) -> IngestCheckpoint:
        try:
            d = json.loads(path.read_text())
            if d.get("kind") != "ingest" or d.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(
                    f"kind {d.get('kind')!r} format {d.get('format')!r}, expected 'ingest' format {CHECKPOINT_FORMAT}"
                )
            return cls(
                d["source"], d["position"], IngestCounts(**d["counts"]), int(d["rejects_bytes"]), bool(d["done"])
            )
        except (OSError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"checkpoint {str(path)!r} is not an ingest checkpoint: {exc}") from exc


# --- progress -----------------------------------------------------------------------------------
class Progress:
    """A tqdm bar on a terminal; elsewhere (a log file, CI) one plain line every ``every_s`` seconds."""

    def __init__(self, total: int | None, enabled: bool, stream: IO[str] | None = None, every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.total, self.done, self.every_s = total, 0, every_s
        self.began = self.last = time.monotonic()
        self.bar: Any = None
        self.enabled = enabled
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="ev", unit_scale=True, file=self.stream, smoothing=0.1, desc="ingest")

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= self.every_s:
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        rate = self.done / max(self.last - self.began, 1e-9)
        of = f"/{self.total} ({100 * self.done / self.total:.0f} %)" if self.total else ""
        print(f"ingest: {self.done}{of} records, {rate:,.0f} records/s", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()


# --- the ingest ---------------------------------------------------------------------------------
class _Rejects:
    """The rejects file, opened on the first reject (a clean source leaves none behind)."""

    def __init__(self, path: Path, keep_bytes: int) -> None:
        self.path, self.keep_bytes = path, keep_bytes
        self.f: IO[bytes] | None = None

    def open(self) -> IO[bytes]:
        if self.f is None:
            self.f = open(self.path, "ab" if self.keep_bytes else "wb")  # noqa: SIM115 (closed in close())
            self.f.truncate(self.keep_bytes)
        return self.f

    def write(self, position: Any, exc: EventRejected, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        rec = {
            "position": position,
            "error_kind": exc.kind,
            "reason": str(exc),
            "record": text[:MAX_REJECT_CHARS],
            "truncated": len(text) > MAX_REJECT_CHARS,
        }
        self.open().write(orjson.dumps(rec) + b"\n")

    def tell(self) -> int:
        if self.f is None:
            return self.keep_bytes
        self.f.flush()
        return self.f.tell()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


class _Dedupe:
    """Drops events whose ``event_id`` is repeated in a chunk or already stored in ``{db}.events``.

    The chunk's ids go to a Memory table, and the stored ids among them are looked up within the
    chunk's time range (the events table is ordered by user and time, partitioned by day).
    """

    def __init__(self, ch: ClickHouse) -> None:
        self.ch = ch
        self.table = f"ingest_ids_{uuid.uuid4().hex[:12]}"
        ch.command(f"CREATE TABLE {{db}}.`{self.table}` (event_id String) ENGINE = Memory")

    def fresh(self, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """The events not stored yet (the first of each id, in order); and how many were dropped."""
        first: dict[str, dict[str, Any]] = {}
        for ev in events:
            first.setdefault(ev["event_id"], ev)
        unique = list(first.values())
        times = [ev["event_time"] for ev in unique]
        self.ch.command(f"TRUNCATE TABLE {{db}}.`{self.table}`")
        self.ch.insert_df(self.table, pd.DataFrame({"event_id": list(first)}))
        stored = self.ch.query_df(
            "SELECT DISTINCT event_id FROM {db}.events WHERE event_time >= fromUnixTimestamp64Milli({lo:Int64}) "
            f"AND event_time <= fromUnixTimestamp64Milli({{hi:Int64}}) AND event_id IN "
            f"(SELECT event_id FROM {{db}}.`{self.table}`)",
            params={"lo": int(min(times)), "hi": int(max(times))},
        )
        if len(stored):
            known = set(stored["event_id"])
            unique = [ev for ev in unique if ev["event_id"] not in known]
        return unique, len(events) - len(unique)

    def close(self) -> None:
        self.ch.command(f"DROP TABLE IF EXISTS {{db}}.`{self.table}`")


def check_options(
    *, checkpoint_path: Path | None, resume: bool, rejects_path: Path, chunk_rows: int, max_records: int | None = None
) -> None:
    """Refuse bad ingest options with one line, before anything is read."""
    if chunk_rows < 1:
        raise ConfigError(f"bad --chunk-rows {chunk_rows}; expected a positive number of events")
    if max_records is not None and max_records < 1:
        raise ConfigError(f"bad --max-records {max_records}; expected a positive number of records")
    for opt, path in (("--checkpoint", checkpoint_path), ("--rejects", rejects_path)):
        if path is None:
            continue
        if path.exists() and not path.is_file():
            raise ConfigError(f"bad {opt} {str(path)!r}; expected a file, not a directory")
        problem = make_writable_dir(path.parent)
        if problem:
            raise ConfigError(f"bad {opt} {str(path)!r}: {problem}; expected a file in a writable directory")
    if checkpoint_path is None:
        if resume:
            raise ConfigError("--resume needs --checkpoint FILE: the checkpoint is what it resumes from")
    elif checkpoint_path.exists() and not resume:
        raise ConfigError(
            f"checkpoint {str(checkpoint_path)!r} exists: pass --resume to continue it, or remove it to start over"
        )


def run_ingest(
    source: Any,
    ch: ClickHouse,
    *,
    rejects_path: Path,
    max_bytes: int,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    max_records: int | None = None,
    progress: bool = True,
) -> IngestResult:
    """Validate ``source``'s records and store the new ones in ``{db}.events``, chunk by chunk.

    ``source`` is a :class:`stream.tools.replay.Source`. ``max_records`` stops after that many records
    (checkpointed; for tests and trial runs).
    """
    began, cpu0 = time.monotonic(), time.process_time()
    check_options(
        checkpoint_path=checkpoint_path,
        resume=resume,
        rejects_path=rejects_path,
        chunk_rows=chunk_rows,
        max_records=max_records,
    )
    fingerprint = source.fingerprint()
    ckpt = IngestCheckpoint(fingerprint, None, IngestCounts())
    if resume and checkpoint_path is not None:
        ckpt = IngestCheckpoint.read(checkpoint_path)
        if ckpt.source != fingerprint:
            raise ConfigError(
                f"checkpoint {str(checkpoint_path)!r} belongs to another source ({ckpt.source}); expected {fingerprint}"
            )
    counts = ckpt.counts
    result = IngestResult(counts, rejects_path=rejects_path)
    if ckpt.done:
        result.complete = True
        return result
    if not resume:
        rejects_path.unlink(missing_ok=True)  # the rejects of an earlier run are not this run's
    rejects = _Rejects(rejects_path, ckpt.rejects_bytes)
    dedupe = _Dedupe(ch)
    items = source.items(ckpt.position)
    bar = Progress(source.total, progress)
    chunk: list[dict[str, Any]] = []

    def store(done: bool) -> None:
        if chunk:
            fresh, dropped = dedupe.fresh(chunk)
            counts.inserted += insert_events(ch, fresh)
            counts.duplicates += dropped
            chunk.clear()
        if checkpoint_path is not None:
            IngestCheckpoint(fingerprint, source.position, counts, rejects.tell(), done).write(checkpoint_path)

    try:
        n_this_run = 0
        for item in items:
            counts.read += 1
            n_this_run += 1
            try:
                chunk.append(parse_event(item.value, max_bytes))
            except EventRejected as exc:
                counts.rejected += 1
                rejects.write(source.position, exc, item.value)
            if n_this_run % 10_000 == 0:
                bar.update(10_000)
            if len(chunk) >= chunk_rows:
                store(False)
            if max_records is not None and n_this_run >= max_records:
                break
        else:
            store(True)
            result.complete = True
        if not result.complete:
            store(False)
        bar.update(n_this_run % 10_000)
    finally:
        bar.close()
        rejects.close()
        dedupe.close()
    result.seconds = time.monotonic() - began
    result.cpu_seconds = time.process_time() - cpu0
    if counts.rejected == 0 and not rejects_path.exists():
        result.rejects_path = None
    return result


# --- CLI ----------------------------------------------------------------------------------------
def _default_rejects(settings: Any, args: Any) -> Path:
    name = Path(args.from_file).name if args.from_file else args.from_topic
    return Path(settings.data_dir) / "ingest" / f"{name}.rejects.jsonl"


def cmd_ingest(args: Any) -> int:
    from stream.clickhouse import connect
    from stream.config import load_settings
    from stream.tools.replay import check_source_args, source_from_args

    settings = load_settings(**({"clickhouse_database": args.database} if args.database else {}))
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    rejects = Path(args.rejects) if args.rejects else _default_rejects(settings, args)
    check_source_args(args, "ingested")
    check_options(
        checkpoint_path=ckpt,
        resume=args.resume,
        rejects_path=rejects,
        chunk_rows=args.chunk_rows,
        max_records=args.max_records,
    )
    source = source_from_args(args, settings, args.bootstrap or settings.kafka_bootstrap)
    ch = connect(settings)
    try:
        res = run_ingest(
            source,
            ch,
            rejects_path=rejects,
            max_bytes=settings.max_event_bytes,
            checkpoint_path=ckpt,
            resume=args.resume,
            chunk_rows=args.chunk_rows,
            max_records=args.max_records,
            progress=not args.quiet,
        )
    finally:
        ch.close()
    c = res.counts
    state = "complete" if res.complete else "stopped early (continue with --resume)"
    rate = c.read / res.seconds if res.seconds > 0 else 0.0
    print(
        f"ingested {c.inserted} events into {settings.clickhouse_database}.events from {c.read} records "
        f"in {res.seconds:.1f}s ({rate:,.0f} records/s): {c.duplicates} already stored or repeated, "
        f"{c.rejected} rejected" + (f" (reasons in {res.rejects_path})" if c.rejected else "") + f"; {state}"
    )
    return 0


def register(sub: Any) -> None:
    """Add ``ingest`` to the CLI (called by :func:`stream.cli.build_parser`)."""
    p = sub.add_parser(
        "ingest",
        help="load an event history from a file or a topic range into ClickHouse's "
        "events table (validated, idempotent, resumable)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-file", metavar="PATH", help="events.jsonl, events.parquet or a simulator dataset dir")
    src.add_argument("--from-topic", metavar="NAME", help="source topic (STREAM_TOPIC_PREFIX applies)")
    p.add_argument("--from-offset", type=int, help="first offset per partition (topic source)")
    p.add_argument("--to-offset", type=int, help="end offset per partition, exclusive (topic source)")
    p.add_argument("--from-time", help="first record time, epoch ms or ISO-8601 (topic source)")
    p.add_argument("--to-time", help="end record time, exclusive (topic source)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: STREAM_KAFKA_BOOTSTRAP)")
    p.add_argument("--database", help="ClickHouse database (default: STREAM_CLICKHOUSE_DATABASE)")
    p.add_argument("--checkpoint", metavar="FILE", help="checkpoint file, written after every chunk")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument(
        "--rejects",
        metavar="FILE",
        help="invalid records with reasons, JSON lines (default: STREAM_DATA_DIR/ingest/<source>.rejects.jsonl)",
    )
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help=f"valid events per insert round (default {DEFAULT_CHUNK_ROWS})",
    )
    p.add_argument("--max-records", type=int, help="stop after this many records (checkpointed)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_ingest)
