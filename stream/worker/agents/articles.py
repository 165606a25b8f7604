"""Article popularity: article events repartitioned by ``article_id`` into a GlobalTable.

Each record of the repartition topic is a JSON array of events whose ``article_id`` maps to its
partition (see :func:`stream.worker.publisher.article_messages`), and of watermark markers
``{"wm_src": q, "wm": w, "idle": i}``: input partition ``q`` forwards no article event before ``w``
after it (``i``: it was caught up).

Staleness contract (docs/worker.md): a click row at event time ``t`` reads popularity as of
``t - 5 min`` floored to 5 minutes (``stream.state.article_watermark``), from the events before
it only. This agent records per input partition the highest marker folded
(``BatchProcessor.article_progress``, and the table key ``watermarks.progress_key`` written after
the batch's states, for other workers); the events agent completes click rows only once every
partition's marker has passed their watermark or said it is idle (``agents/watermarks.py``), so
a score is the same whatever the read speed. Hops: the events agent forwards at the end of its batch, this agent
folds at the end of its batch and writes the changelog, every worker's GlobalTable reads it: a
few batches (``STREAM_SCORE_BATCH_MS``) and round trips, far below the 5-minute lag when live.

Ordering: events of an article arrive out of event-time order by as much as the input partitions
are skewed. Updates are commutative and the state keeps its buckets 2 days behind the article's
newest event (``ARTICLE_RETENTION_MS``), so any order within that gives the same rows. A record
faust hands over again (after the seek that ends a recovery) is folded once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from stream.state import ArticleState, fold_article_events, new_article_state
from stream.worker.agents.batching import enter_partition, records_of, run_batches
from stream.worker.agents.watermarks import (
    FOLD_WINDOW_S,
    Progress,
    decode_progress,
    encode_progress,
    fold_marker,
    progress_key,
)
from stream.worker.delivery import Span
from stream.worker.parsing import Record
from stream.worker.publisher import Publisher


def register(app: Any, rt: Publisher) -> Any:
    s = rt.settings
    articles = rt.tables["articles"]
    # The authoritative states of the articles of this worker's partitions (the GlobalTable's
    # changelog reader may briefly return an older value of a key this worker just wrote); the
    # events agent's click rows read them too. Publisher.on_revoked drops a revoked partition's.
    owned: dict[str, ArticleState] = rt.processor.owned_articles

    def state_of(aid: str) -> ArticleState:
        state = owned.get(aid)
        if state is None:
            raw = articles.get(aid)
            state = owned[aid] = ArticleState.from_bytes(raw) if raw else new_article_state()
        return state

    def fold(records: list[Record], span: Span) -> None:
        """Fold the records of ``span``: faust hands records fetched before the seek that ends a
        recovery to the stream once more (below the span, ``Publisher.fill``), and folding one twice
        would count its events twice (the events agent skips them the same way, delivery.Redeliveries)."""
        events: list[dict[str, Any]] = []
        progress: Progress | None = None
        first = span[0] if span is not None else None
        for rec in records:
            if first is None or rec.offset < first:
                rt.metrics.redelivered.inc()
                continue
            if rec.value is None:
                continue
            for event in orjson.loads(rec.value):  # a JSON array (publisher.article_messages)
                if "wm_src" in event:  # an input partition's watermark (agents/watermarks.py)
                    if progress is None:
                        progress = rt.processor.article_progress.get(rec.partition)
                        if progress is None:  # first since assigned: go on from the previous owner's
                            progress = decode_progress(articles.get(progress_key(rec.partition)))
                            rt.processor.article_progress[rec.partition] = progress
                    fold_marker(progress, event)
                else:
                    events.append(event)
        touched = fold_article_events(events, state_of)
        for aid, state in touched.items():
            articles[aid] = state.to_bytes()
        if progress is not None:  # after the states: a reader that sees it has them (one changelog partition)
            articles[progress_key(records[-1].partition)] = encode_progress(progress)

    async def handle(batch: list[Any]) -> None:
        records, span = await rt.fill(records_of(batch))
        enter_partition(batch[-1])
        t0 = time.perf_counter()
        fold(records, span)
        rt.metrics.loop_step["articles"].observe(time.perf_counter() - t0)
        rt.ack(batch, span)  # the table writes are queued to the changelog: the input may be committed

    window_s = s.score_batch_ms / 1000
    if s.article_wait_ms > 0:  # click rows wait for this agent's folds: no batch window on top
        window_s = min(window_s, FOLD_WINDOW_S)

    @app.agent(rt.topics["article_events"], name="article-stats", isolated_partitions=True)
    async def article_stats(stream: Any) -> None:
        try:
            await run_batches(stream, s.score_batch_size, window_s, handle)
        except asyncio.CancelledError:
            return  # partition revoked: end without a restart (see agents/events.py)
        except Exception as exc:
            rt.fail(exc)  # stop the worker rather than be restarted past the batch (see agents/events.py)

    return article_stats
