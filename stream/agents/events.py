"""The session-events agent: one actor per input partition, micro-batches of events.

``isolated_partitions`` gives each input partition its own actor, so every table write in a
batch belongs to that partition (faust derives the changelog partition from the current event)
and the user state can be written once per user per batch instead of once per event.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stream.agents.batching import run_batches
from stream.agents.runtime import Runtime, enter_partition, records_of
from stream.processor import Stores


def register(app: Any, rt: Runtime) -> Any:
    s = rt.settings
    tables = rt.tables
    stores = Stores(users=tables["users"], ad_pending=tables["ad_pending"], articles=tables["articles"],
                    bandit=tables["bandit"])

    async def handle(batch: list[Any]) -> None:
        records, span = await rt.fill(records_of(batch))
        enter_partition(batch[-1])
        out = rt.processor.process(records, stores)
        last = records[-1]
        rt.positions[(last.topic, last.partition)] = last.offset
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

