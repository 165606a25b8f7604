"""Article popularity: article events repartitioned by ``article_id`` into a GlobalTable.

Each record of the repartition topic is a JSON array of events whose ``article_id`` maps to its
partition (see :func:`stream.agents.runtime.article_messages`).

Staleness: an impression reaches the click features of every worker after (1) the events agent
forwards it to the repartition topic at the end of its batch, (2) this agent folds it in at the
end of its batch and writes the table's changelog, and (3) every worker's GlobalTable reads
that changelog. Each hop is one micro-batch (``STREAM_SCORE_BATCH_MS``) plus a produce/fetch
round trip: typically well under a second. Under a backlog on the input the
article records wait for the events of the fetch they came with
(``STREAM_CONSUMER_MAX_FETCH_BYTES`` per partition), not for the whole backlog.

Ordering: this agent merges article events from every input partition, so an article's events
arrive here out of event-time order by as much as the input partitions are skewed. Article state
is therefore updated with :data:`ARTICLE_MERGE_CONFIG`, which accepts events up to 24 h behind the
article's newest one (only retention changes; feature values do not depend on lateness).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from stream.agents.batching import run_batches
from stream.agents.runtime import Runtime, enter_partition
from stream.agents.watermarks import progress_key
from stream.state import ArticleState, new_article_state, update_article


def register(app: Any, rt: Runtime) -> Any:
    s = rt.settings
    articles = rt.tables["articles"]
    # The authoritative states of the articles of this worker's partitions (the GlobalTable's
    # changelog reader may briefly return an older value of a key this worker just wrote); the
    # events agent's click rows read them too. Runtime.on_revoked drops a revoked partition's.
    owned: dict[str, ArticleState] = rt.processor.owned_articles
    #: per article partition, the last offset folded by this process: faust hands records fetched
    #: before the seek that ends a recovery to the stream once more, and folding one twice would
    #: count its events twice (the events agent skips them the same way, processor._handled)
    folded_upto: dict[int, int] = {}

    def fold(batch: list[Any]) -> None:
        enter_partition(batch[-1])
        touched: dict[str, ArticleState] = {}
        progress: dict[int, int] | None = None
        for ev in batch:
            msg = ev.message
            if msg.offset <= folded_upto.get(msg.partition, -1):
                rt.metrics.redelivered.inc()
                continue
            folded_upto[msg.partition] = msg.offset
            decoded = orjson.loads(msg.value)
            # A JSON array of events (see runtime.article_messages); one object from older workers.
            for event in decoded if isinstance(decoded, list) else (decoded,):
                src = event.get("wm_src")
                if src is not None:  # an input partition's watermark (agents/watermarks.py)
                    if progress is None:
                        progress = rt.processor.article_progress.setdefault(ev.message.partition, {})
                    if event["wm"] > progress.get(src, event["wm"] - 1):
                        progress[src] = event["wm"]
                    continue
                aid = event["article_id"]
                state = owned.get(aid)
                if state is None:
                    raw = articles.get(aid)
                    state = ArticleState.from_bytes(raw) if raw else new_article_state()
                    owned[aid] = state
                touched[aid] = state
                update_article(state, event)
        for aid, state in touched.items():
            articles[aid] = state.to_bytes()
        if progress is not None:  # after the states: a reader that sees it has them (one changelog partition)
            articles[progress_key(batch[-1].message.partition)] = orjson.dumps(
                {str(k): v for k, v in progress.items()})

    async def handle(batch: list[Any]) -> None:
        fold(batch)
        rt.ack(batch)  # the table writes are queued to the changelog: the input may be committed

    @app.agent(rt.topics["article_events"], name="article-stats", isolated_partitions=True)
    async def article_stats(stream: Any) -> None:
        try:
            await run_batches(stream, s.score_batch_size, s.score_batch_ms / 1000, handle)
        except asyncio.CancelledError:
            return  # partition revoked: end without a restart (see agents/events.py)
        except Exception as exc:
            rt.fail(exc)  # stop the worker rather than be restarted past the batch (see agents/events.py)

    return article_stats
