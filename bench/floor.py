"""The compute floor of bench/worker.py: the worker's BatchProcessor over records already in memory.

No Kafka, no faust: the input records (the bench's topic, read once with their partitions and
offsets) are cut into the worker's batches (``STREAM_SCORE_BATCH_SIZE`` records of one
partition, partitions in turn), processed with plain dicts as the tables, and each round's
article events are folded into the article dict (the article agent's work) before the next.
The process gets the worker's GC tuning (stream/worker/tuning.py). What is left out: encoding and
producing the outputs, and the changelogs.

Prints one JSON line: events, seconds and CPU seconds between 10% and 90% of the input.

Usage: python bench/floor.py RECORDS_FILE MODELS_DIR [PREDICTIONS_FILE]
(RECORDS_FILE: JSON lines [partition, offset, key, value]; PREDICTIONS_FILE: where to write the
predictions and decisions, for the bench's check.)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from stream.config import load_settings  # noqa: E402
from stream.models.registry import ModelRegistry  # noqa: E402
from stream.models.scoring import ModelSet  # noqa: E402
from stream.state import ArticleState, fold_article_events, new_article_state  # noqa: E402
from stream.worker.processor import EXPECTED_FEATURES, BatchProcessor, ProcessorConfig, Record, Stores  # noqa: E402
from stream.worker.tuning import tune_gc  # noqa: E402


def batches(records: list[Record], size: int) -> list[list[Record]]:
    """Per partition, runs of ``size`` records in offset order; the partitions in turn."""
    parts: dict[int, list[Record]] = {}
    for rec in records:
        parts.setdefault(rec.partition, []).append(rec)
    runs = {p: [recs[i : i + size] for i in range(0, len(recs), size)] for p, recs in sorted(parts.items())}
    out = []
    for i in range(max(len(r) for r in runs.values())):
        out += [r[i] for r in runs.values() if i < len(r)]
    return out


def main() -> None:
    records_file, models_dir = Path(sys.argv[1]), Path(sys.argv[2])
    keep = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    s = load_settings()
    models = ModelSet(ModelRegistry(models_dir), EXPECTED_FEATURES)
    models.refresh()
    config = ProcessorConfig(
        bandit_context=s.bandit_context, click_join_window_ms=s.click_join_window_ms, max_event_bytes=s.max_event_bytes
    )
    proc = BatchProcessor(models.models, s.placements, config)
    records = []
    for line in records_file.read_bytes().splitlines():
        p, o, k, v = orjson.loads(line)
        records.append(Record(k.encode() if k is not None else None, v.encode(), "session-events", p, o, None))
    runs = batches(records, s.score_batch_size)
    articles: dict[str, bytes] = {}
    stores = Stores(users={}, ad_pending={}, articles=articles, bandit={})

    def article(aid: str) -> ArticleState:
        raw = articles.get(aid)
        return ArticleState.from_bytes(raw) if raw else new_article_state()

    tune_gc(s.gc_threshold, s.gc_freeze)
    total, done = len(records), 0
    marks = {0.0: (time.perf_counter(), time.process_time(), 0)}
    kept: list[dict] = []
    # a round: one batch per partition, then the article agent's fold (what the worker interleaves)
    per_round = len({r[0].partition for r in runs})
    for start in range(0, len(runs), per_round):
        round_events = []
        for batch in runs[start : start + per_round]:
            out = proc.process(batch, stores)
            round_events += [orjson.loads(raw) for _, raw in out.article_events]
            if keep is not None:
                kept += out.predictions + out.decisions
            done += len(batch)
        for aid, state in fold_article_events(round_events, article).items():
            articles[aid] = state.to_bytes()
        for frac in (0.1, 0.9):
            if frac not in marks and done >= frac * total:
                marks[frac] = (time.perf_counter(), time.process_time(), done)
    if marks[0.9][2] == marks[0.1][2]:  # a tiny input: one round holds both marks
        marks[0.1] = marks[0.0]
    (t0, c0, n0), (t1, c1, n1) = marks[0.1], marks[0.9]
    if keep is not None:
        keep.write_bytes(b"\n".join(orjson.dumps(x) for x in kept))
    print(orjson.dumps({"events": n1 - n0, "seconds": t1 - t0, "cpu_s": c1 - c0}).decode())


if __name__ == "__main__":
    main()
