"""The session-events agent: one actor per input partition, micro-batches of events.

``isolated_partitions`` gives each input partition its own actor, so every table write in a
batch belongs to that partition (faust derives the changelog partition from the current event)
and the user state can be written once per user per batch instead of once per event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from stream.agents.batching import run_batches
from stream.agents.runtime import Runtime, enter_partition, records_of
from stream.agents.watermarks import markers, wait_complete
from stream.processor import Outputs, Record, Stores

log = logging.getLogger(__name__)


def register(app: Any, rt: Runtime) -> Any:
    s = rt.settings
    tables = rt.tables
    stores = Stores(users=tables["users"], ad_pending=tables["ad_pending"], articles=tables["articles"],
                    bandit=tables["bandit"])
    partitions = s.topic_partitions
    wait_s = s.article_wait_ms / 1000
    processor = rt.processor
    processor.defer_clicks = wait_s > 0  # click rows wait for complete article popularity (agents/watermarks.py)

    async def forward(events: list[tuple[str, bytes]]) -> list[asyncio.Future[None]]:
        rt.start_polling()  # delivery reports resolve the futures
        return await rt._send(Outputs(article_events=events))

    def idle(topic: str, q: int) -> bool:
        """Input partition ``q`` is this worker's and every record of it so far is processed."""
        from faust.types import TP

        tp = TP(topic, q)
        try:
            consumer = app.consumer
            if tp not in consumer.assignment():
                return False
            hw = consumer.highwater(tp)
        except Exception:  # no consumer yet (starting): nothing is known to be idle
            return False
        return hw is not None and rt.positions.get((topic, q), -1) + 1 >= hw

    async def complete_clicks(out: Outputs, last: Record) -> list[asyncio.Future[None]]:
        """Forward the batch's article events and watermark, wait for the fold, score the click rows."""
        wm = processor.source_watermark(last.partition)
        events = out.article_events + (markers(last.partition, wm, partitions) if wm is not None else [])
        out.article_events = []
        sent = await forward(events) if events else []
        need = processor.click_watermark(out)
        if need is not None:
            async def send(q: int, w: int) -> None:
                await asyncio.gather(*await forward(markers(q, w, partitions)))

            behind = await wait_complete(processor, stores.articles, partitions, need, wait_s,
                                         lambda q: idle(last.topic, q), send)
            if behind:
                rt.metrics.article_incomplete.inc(len(out.pending_clicks))
                log.warning("%s[%d]: article events of input partition(s) %s not all folded up to %d after "
                            "%.1f s; %d click row(s) scored from what is folded", last.topic, last.partition,
                            sorted(behind), need, wait_s, len(out.pending_clicks))
        processor.finish_clicks(out, stores)
        return sent

    async def handle(batch: list[Any]) -> None:
        records, span = await rt.fill(records_of(batch))
        enter_partition(batch[-1])
        out = processor.process(records, stores)
        last = records[-1]
        rt.positions[(last.topic, last.partition)] = last.offset
        if processor.defer_clicks:
            # its article events must be confirmed before the batch is acked by publish
            await asyncio.gather(*await complete_clicks(out, last))
        await rt.publish(out, batch, span)  # acks the batch once its outputs are confirmed

    @app.agent(rt.topics["events"], name="session-events", isolated_partitions=True)
    async def session_events(stream: Any) -> None:
        try:
            await run_batches(stream, s.score_batch_size, s.score_batch_ms / 1000, handle)
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

