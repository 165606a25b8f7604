"""The session-events agent: one actor per input partition, micro-batches of events.

``isolated_partitions`` gives each input partition its own actor, so every table write in a
batch belongs to that partition (faust derives the changelog partition from the current event)
and the user state can be written once per user per batch instead of once per event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from stream.worker.agents.batching import enter_partition, records_of, run_batches
from stream.worker.agents.watermarks import IDLE_CHECK_S, caught_up, markers, wait_complete
from stream.worker.monitor import Monitor
from stream.worker.processor import Outputs, Record, Stores
from stream.worker.publisher import Publisher
from stream.worker.recommendations import Recommendations
from stream.worker.tuning import limit_blas_threads

log = logging.getLogger(__name__)


def register(app: Any, rt: Publisher, monitor: Monitor | None = None, recs: Recommendations | None = None) -> Any:
    s = rt.settings
    tables = rt.tables
    stores = Stores(
        users=tables["users"], ad_pending=tables["ad_pending"], articles=tables["articles"], bandit=tables["bandit"]
    )
    partitions = s.topic_partitions
    wait_s = s.article_wait_ms / 1000
    processor = rt.processor
    processor.defer_clicks = wait_s > 0  # click rows wait for complete article popularity (agents/watermarks.py)
    # STREAM_RECOMMEND_ON_SESSION_START: the batch's session_starts get their recommendations
    processor.keep_session_starts = recs is not None and s.recommend_on_session_start
    if recs is not None:
        limit_blas_threads()  # the rankings' matrix products (stream/worker/tuning.py)

    events_topic = rt.topics["events"].get_topic_name()
    step = rt.metrics.loop_step  # how long each synchronous step holds the event loop
    clock = time.perf_counter

    def is_caught_up(q: int) -> bool:
        """Input partition ``q`` is this worker's and every record of it so far is processed."""
        from faust.types import TP

        tp = TP(events_topic, q)
        try:
            consumer = app.consumer
            if tp not in consumer.assignment():
                return False
            highwater = consumer.highwater(tp)
            committed = getattr(consumer, "_committed_offset", {}).get(tp)
            position = rt.positions.get((events_topic, q))
            if caught_up(position, committed, highwater):
                return True
            # only control records left (a transaction's commit marker: stream/kafka/transport.py)?
            more_after = getattr(consumer, "more_after", None)
            last = position if position is not None else (committed or 0) - 1
            return highwater is not None and more_after is not None and not more_after(tp, last)
        except Exception:  # no consumer yet (starting): nothing is known to be caught up
            return False

    def undo_on_failure(q: int) -> Callable[[asyncio.Future[None]], None]:
        def done(future: asyncio.Future[None]) -> None:
            if future.cancelled() or future.exception() is not None:
                processor.idle_sources.discard(q)  # not delivered: announce it again at the next check

        return done

    async def release(q: int) -> None:
        """Forward an idle marker for ``q`` if it is this worker's, caught up, and its last marker was not idle.

        Its delivery is not awaited: a stopping worker must not wait for it (the poll thread that
        resolves it may be gone); a marker not delivered is sent again at the next check.
        """
        if rt.failure is not None or rt.closing or q in processor.idle_sources or not is_caught_up(q):
            return
        processor.idle_sources.add(q)
        try:
            futures = await rt.forward(markers(q, processor.source_watermark(q), partitions, idle=True))
        except Exception:
            processor.idle_sources.discard(q)
            raise
        for future in futures:
            future.add_done_callback(undo_on_failure(q))

    async def complete_clicks(out: Outputs, last: Record) -> list[asyncio.Future[None]]:
        """Forward the batch's article events and watermark, wait for the fold, score the click rows."""
        q = last.partition
        wm = processor.source_watermark(q)
        events = out.article_events
        if wm is not None:
            idle = is_caught_up(q)  # no await since positions was set: the flag is this batch's
            events = events + markers(q, wm, partitions, idle)
            (processor.idle_sources.add if idle else processor.idle_sources.discard)(q)
        out.article_events = []
        sent = await rt.forward(events) if events else []
        need = processor.click_watermark(out)
        if need is not None:
            behind = await wait_complete(processor, stores.articles, partitions, need, wait_s, release)
            if behind:
                rt.metrics.article_incomplete.inc(len(out.pending_clicks))
                log.warning(
                    "%s[%d]: article events of input partition(s) %s not all folded up to %d after "
                    "%.1f s; %d click row(s) scored from what is folded",
                    last.topic,
                    last.partition,
                    sorted(behind),
                    need,
                    wait_s,
                    len(out.pending_clicks),
                )
        t0 = clock()
        processor.finish_clicks(out, stores)
        step["clicks"].observe(clock() - t0)
        return sent

    if processor.defer_clicks:

        @app.timer(interval=IDLE_CHECK_S)
        async def announce_idle() -> None:
            """Release the waits of every worker on this worker's idle input partitions (watermarks.py)."""
            for q in range(partitions):
                try:
                    await release(q)
                except Exception as exc:  # the output refused: the batches report it too; try again next time
                    log.warning(
                        "idle marker of %s[%d] not sent (%s); sent again at the next check", events_topic, q, exc
                    )

    async def handle(batch: list[Any]) -> None:
        started = time.time()
        rt.arrived(batch, started)  # the fetch and queue latency stages
        records, span = await rt.fill(records_of(batch))
        enter_partition(batch[-1])
        # in steps, the loop handed back between them: requests do not wait for the whole batch
        out = await processor.process_stepped(records, stores, observe=step["process"].observe)
        await asyncio.sleep(0)  # and before the rest of the batch's synchronous work
        t0 = clock()
        # in this partition's user-reads table; with each session_start's reads up to it
        reads = recs.record(out.events, processor.keep_session_starts) if recs is not None else {}
        step["recommend"].observe(clock() - t0)
        last = records[-1]
        rt.positions[(last.topic, last.partition)] = last.offset
        if processor.defer_clicks:
            # its article events must be confirmed before the batch is acked by publish
            await asyncio.gather(*await complete_clicks(out, last))
        if recs is not None and out.session_starts:
            # one ranking for the batch (stream/worker/recommendations.py), with article popularity
            # as complete as the click rows had it
            t0 = clock()
            made, failed = recs.at_session_start(out.session_starts, reads, s.recommend_k, int(time.time() * 1000))
            out.recommendations = made
            for rec, exc in failed:
                out.dead_letters += processor.failed(rec, exc, out.ingest_ms).dead_letters
            step["recommend"].observe(clock() - t0)
        rt.latest.record(last.partition, out.predictions)  # what GET /v1/users/{id} shows (worker/scores.py)
        if monitor is not None:  # the batch's predictions are all made: join outcomes, count drift
            t0 = clock()
            monitor.observe(last.partition, out)
            step["monitor"].observe(clock() - t0)
        await rt.publish(out, batch, span, started)  # acks the batch once its outputs are confirmed

    def behind(event: Any) -> bool:
        """The consumer has records of ``event``'s partition after it: at the broker (as of its last
        fetch) or fetched and not yet delivered. Control records (a transaction's commit marker,
        never delivered) do not count (stream/kafka/transport.py, ``more_waiting``)."""
        from faust.types import TP

        msg = event.message
        tp = TP(msg.topic, msg.partition)
        try:
            consumer = app.consumer
            more_after = getattr(consumer, "more_after", None)
            if more_after is not None:
                return bool(more_after(tp, msg.offset))
            highwater = consumer.highwater(tp)
        except Exception:  # no consumer (unit tests of the agent): nothing is known to be behind
            return False
        return highwater is not None and msg.offset + 1 < highwater

    def is_ad_request(event: Any) -> bool:
        """Whether the record is (by a look at its bytes) an ``ad_request``: its batch closes at once.

        Not parsed here: a record that only looks like one closes its batch early, nothing more.
        """
        value = event.message.value
        return isinstance(value, bytes | bytearray) and b'"ad_request"' in value

    closed_by = rt.metrics.batches_closed

    def closed(reason: str) -> None:
        closed_by[reason].inc()

    @app.agent(rt.topics["events"], name="session-events", isolated_partitions=True)
    async def session_events(stream: Any) -> None:
        try:
            await run_batches(
                stream,
                s.score_batch_size,
                s.score_batch_ms / 1000,
                handle,
                idle_s=s.score_batch_idle_ms / 1000,
                behind=behind,
                closed=closed,
                urgent=is_ad_request if s.score_batch_urgent_ads else None,
                backlog_s=s.score_batch_backlog_ms / 1000,
            )
        except asyncio.CancelledError:
            # faust cancels an isolated actor when its partition is revoked, and its supervisor
            # restarts a cancelled actor on the same stream: should the partition come back, a
            # new actor joins it and both process the partition (duplicate outputs, and scores
            # from state the other actor already advanced). Ending normally prevents the restart.
            return
        except Exception as exc:
            # faust would restart a crashed actor on the same stream: it would drop the buffered
            # events and ack later ones, and faust commits past the failed batch. Stop instead.
            rt.fail(exc)

    return session_events
