"""What ``GET /v1/users/{user_id}/recommendations`` needs beside the model: reads, content, candidates.

- **Reads**: the ``user-reads`` table (RocksDB, changelog, co-partitioned with the events, key
  user_id) holds each user's last ``STREAM_RECOMMEND_READS`` distinct articles read (views, clicks,
  video plays), newest last, as newline-joined ids. It is separate from the user state so that
  neither its codec nor its hot path changes; the events agent appends a batch's reads once per
  user. Adding a read is idempotent, so a replayed batch leaves the same list.
- **Content**: brand and category per article, learnt from the events this worker sees (in
  memory; an article it has not seen has no content score, only its other parts).
- **Candidates**: every article in the article-stats table (a GlobalTable: all of them, on every
  worker) first seen within ``STREAM_RECOMMEND_MAX_AGE_HOURS`` of the newest article event, with
  its exposure rate (:func:`stream.models.recommend.exposure_rate`: impressions and views per
  hour over the model's window of complete hours, from the state's hourly buckets). "Now" is
  event time, so a replayed history recommends as it did then. Rebuilt at most every
  :data:`REFRESH_S` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from stream.models.recommend import (
    DEFAULT_WINDOW_HOURS,
    NAME,
    Candidate,
    Candidates,
    RecommendModel,
    exposure_rate,
    rank,
)
from stream.models.registry import ModelRegistry, RegistryError
from stream.state.article import ArticleState
from stream.state.config import HOUR_MS

log = logging.getLogger(__name__)

READ_EVENTS = frozenset({"article_view", "article_click", "video_play"})
#: the candidates (and the model's alias) are checked again after this long
REFRESH_S = 5.0
#: the most articles whose content is remembered (oldest forgotten first)
MAX_CATALOG = 200_000


def unpack_reads(raw: bytes | None) -> list[str]:
    """The stored reads, oldest first."""
    return raw.decode().split("\n") if raw else []


def add_reads(reads: list[str], new: Iterable[str], limit: int) -> list[str]:
    """``reads`` with ``new`` appended (a read again moves to the end), the last ``limit`` kept.

    >>> add_reads(["a", "b", "c"], ["b", "d"], 3)
    ['c', 'b', 'd']
    """
    out = dict.fromkeys(reads)
    for a in new:
        out.pop(a, None)
        out[a] = None
    return list(out)[-limit:]


def batch_reads(events: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per user, the articles read in ``events`` (in order)."""
    out: dict[str, list[str]] = {}
    for e in events:
        a = e.get("article_id")
        if a and e.get("event_type") in READ_EVENTS:
            out.setdefault(e["user_id"], []).append(a)
    return out


def hour_counts(state: ArticleState) -> dict[int, int]:
    """The article's impressions + views per hour (``t // HOUR_MS``), as far back as the state keeps them."""
    hours = state.buckets[1]
    assert hours.width == HOUR_MS, "the article state's second resolution is hourly"
    return {idx: row[0] + row[2] for idx, row in hours.c.items() if row[0] or row[2]}


class Recommendations:
    """The worker's recommender: reads table writes, content catalog, candidates, model."""

    def __init__(
        self,
        registry: ModelRegistry,
        reads: MutableMapping[Any, bytes],
        articles: Mapping[Any, bytes],
        max_age_hours: float,
        max_reads: int,
        alias: str = "production",
        on_loaded: Callable[[str | None], None] | None = None,
    ) -> None:
        self.registry = registry
        #: called with the version loaded (None: none any more), as ModelSet's ``on_loaded``
        self.on_loaded = on_loaded
        self.reads = reads
        self.articles = articles
        self.max_age_ms = max_age_hours * HOUR_MS
        self.max_reads = max_reads
        self.alias = alias
        self.model: RecommendModel | None = None
        self._token: object = ()
        self.content: dict[str, tuple[str | None, str | None]] = {}
        self._cands = Candidates([], None)
        self._cands_at = -1e18
        self._model_at = -1e18
        #: per article key: (stored bytes, first_t, max_t, impressions + views per hour)
        self._decoded: dict[Any, tuple[bytes, int, int, dict[int, int]]] = {}
        #: per article key: (the hour counts it was computed from, newest event's hour, exposure rate)
        self._rates: dict[Any, tuple[dict[int, int], int, float]] = {}

    # --- the events agent ------------------------------------------------------------------

    def record(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Remember the batch's article content and append its reads (one table write per reader)."""
        content = self.content
        for e in events:
            a = e.get("article_id")
            if a and a not in content:
                if len(content) >= MAX_CATALOG:
                    del content[next(iter(content))]
                content[a] = (e.get("brand"), e.get("category"))
        for uid, new in batch_reads(events).items():
            old = unpack_reads(self.reads.get(uid))
            self.reads[uid] = "\n".join(add_reads(old, new, self.max_reads)).encode()

    # --- the API -------------------------------------------------------------------------------

    def refresh_model(self, force: bool = False) -> None:
        """Load the alias's version if it changed (checked at most every REFRESH_S unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._model_at < REFRESH_S:
            return
        self._model_at = now
        token = self.registry.alias_token(NAME)
        if token == self._token:
            return
        self._token = token
        try:
            mv = self.registry.resolve(NAME, self.alias)
            self.model = RecommendModel.load(mv)
            log.info("loaded model %s version %s (%s)", NAME, mv.version, self.alias)
        except RegistryError as exc:  # none registered or promoted: a normal configuration
            log.info("no %s model (recommendations by popularity only): %s", NAME, exc)
            self.model = None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("no %s model (recommendations by popularity only): %s", NAME, exc)
            self.model = None
        if self.on_loaded is not None:
            self.on_loaded(self.model.version if self.model else None)
        self._cands_at = -1e18  # the window and the factors' rows may have changed
        self._decoded = {}
        self._rates = {}

    def candidates(self) -> Candidates:
        """Fresh articles with their exposure rate (rebuilt at most every REFRESH_S).

        An article's state is decoded only when its stored bytes changed since the last rebuild, and
        its rate computed again only then or when the newest event's hour changed.
        """
        now = time.monotonic()
        if now - self._cands_at < REFRESH_S:
            return self._cands
        self._cands_at = now
        window = self.model.window_hours if self.model else DEFAULT_WINDOW_HOURS
        old, new = self._decoded, {}
        for key, raw in list(self.articles.items()):
            if not raw:
                continue
            seen = old.get(key)
            if seen is not None and (seen[0] is raw or seen[0] == raw):
                new[key] = seen
                continue
            st = ArticleState.from_bytes(raw)
            new[key] = (raw, st.first_t, st.max_t, hour_counts(st))
        self._decoded = new
        newest = max((v[2] for v in new.values()), default=-1)
        hour = newest // HOUR_MS
        old_rates, rates = self._rates, {}
        cands = []
        for key, (_, first_t, _, counts) in new.items():
            if first_t >= 0 and newest - first_t <= self.max_age_ms:
                aid = key.decode() if isinstance(key, bytes) else str(key)
                known = old_rates.get(key)
                if known is not None and known[0] is counts and known[1] == hour:
                    rate = known[2]
                else:
                    rate = exposure_rate(counts, first_t, newest, window)
                rates[key] = (counts, hour, rate)
                cands.append(Candidate(aid, *self.content.get(aid, (None, None)), rate))
        self._rates = rates
        self._cands = Candidates(cands, self.model)
        return self._cands

    def answer(self, user_id: str, reads: list[str], k: int) -> dict[str, Any]:
        """The body of ``GET /v1/users/{user_id}/recommendations`` for a user whose reads are ``reads``."""
        self.refresh_model()
        cands = self.candidates()
        read_content = [self.content[a] for a in reads if a in self.content]
        model = self.model
        return {
            "user_id": user_id,
            "model_version": model.version if model else None,
            "reads": len(reads),
            "recommendations": rank(model, reads, read_content, cands, k),
        }
