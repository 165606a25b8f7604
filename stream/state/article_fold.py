"""The article table's fold: article events into their articles' states.

One definition for the worker's ``article-stats`` agent and the offline backtest. Events come
merged from every input partition, out of event-time order: article updates commute within the
state's retention (``ARTICLE_RETENTION_MS``), so any order gives the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stream.state.article import ArticleState, update_article


def fold_article_events(
    events: Iterable[Mapping[str, Any]], state_of: Callable[[str], ArticleState]
) -> dict[str, ArticleState]:
    """Apply ``events`` in order to their articles' states; return the states touched, by article id.

    ``state_of(article_id)`` gives the article's current state (a new one if it has none); it is
    asked once per article, and the state it gives is updated in place. Writing the returned
    states back is the caller's (the agent's table, the backtest's dict).
    """
    touched: dict[str, ArticleState] = {}
    for event in events:
        aid = event["article_id"]
        state = touched.get(aid)
        if state is None:
            state = touched[aid] = state_of(aid)
        update_article(state, event)
    return touched
