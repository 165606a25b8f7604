"""Article popularity: article events repartitioned by ``article_id`` into a GlobalTable.

Staleness: an impression reaches the click features of every worker after (1) the events agent
forwards it to the repartition topic at the end of its batch, (2) this agent folds it in at the
end of its batch and writes the table's changelog, and (3) every worker's GlobalTable reads
that changelog. Each hop is one micro-batch (``STREAM_SCORE_BATCH_MS``) plus a produce/fetch
round trip: typically well under a second, and bounded by consumer lag under overload.
"""

from __future__ import annotations

from typing import Any

import orjson

from stream.agents.runtime import Runtime, enter_partition
from stream.state import ArticleState, new_article_state, update_article


def register(app: Any, rt: Runtime) -> Any:
    s = rt.settings
    articles = rt.tables["articles"]

    @app.agent(rt.topics["article_events"], name="article-stats", isolated_partitions=True)
    async def article_stats(stream: Any) -> None:
        async for batch in stream.take_events(s.score_batch_size, within=s.score_batch_ms / 1000):
            enter_partition(batch[-1])
            touched: dict[str, ArticleState] = {}
            for ev in batch:
                event = orjson.loads(ev.message.value)
                aid = event["article_id"]
                state = touched.get(aid)
                if state is None:
                    raw = articles.get(aid)
                    state = ArticleState.from_bytes(raw) if raw else new_article_state()
                    touched[aid] = state
                update_article(state, event)
            for aid, state in touched.items():
                articles[aid] = state.to_bytes()

    return article_stats
