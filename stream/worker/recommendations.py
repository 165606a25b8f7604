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
  ``STREAM_RECOMMEND_REFRESH_S`` seconds (:data:`REFRESH_S` by default), and the model's alias is
  checked as often.
- **At session_start** (``STREAM_RECOMMEND_ON_SESSION_START``): the events agent ranks the
  batch's ``session_start`` users in one :func:`~stream.models.recommend.rank_many`, each with the
  reads its user had up to that event (earlier batches' and this batch's reads before it, not
  those after it: the same reads left out whatever the batch boundaries), and publishes one
  ``recommendation`` v1 record each (:func:`recommendation_record`). Should the ranking raise,
  each user is ranked alone, and a session_start whose ranking fails goes to the dead-letter
  topic as ``processing_error`` (its other outputs are published as usual).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from stream.clock import SYSTEM, Clock
from stream.events.ids import recommendation_id
from stream.events.records import RecommendationRecord, RecommendedArticle
from stream.models.recommend import (
    DEFAULT_WINDOW_HOURS,
    NAME,
    Candidate,
    Candidates,
    RecommendModel,
    exposure_rate,
    rank,
    rank_many,
)
from stream.models.registry import ModelRegistry, RegistryError
from stream.state.article import ArticleState
from stream.state.config import HOUR_MS
from stream.worker.parsing import Record

log = logging.getLogger(__name__)

READ_EVENTS = frozenset({"article_view", "article_click", "video_play"})
#: the candidates are rebuilt, and the model's alias checked, after this long (STREAM_RECOMMEND_REFRESH_S)
REFRESH_S = 5.0
#: how the article-stats keys that are no article begin: the article partitions' folded watermarks
#: (agents/watermarks.py, ``progress_key``; keys come back as bytes from the GlobalTable)
_NOT_ARTICLES = ("\x00", b"\x00")
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


def batch_reads(
    events: Sequence[Mapping[str, Any]], starts: list[tuple[Mapping[str, Any], int]] | None = None
) -> dict[str, list[str]]:
    """Per user, the articles read in ``events`` (in order).

    ``starts``: each ``session_start`` event is appended to it with how many of its user's reads in
    ``events`` came before it.

    >>> starts = []
    >>> view = {"event_type": "article_view", "user_id": "u", "article_id": "a"}
    >>> batch_reads([view, {"event_type": "session_start", "user_id": "u"}, {**view, "article_id": "b"}], starts)
    {'u': ['a', 'b']}
    >>> starts
    [({'event_type': 'session_start', 'user_id': 'u'}, 1)]
    """
    out: dict[str, list[str]] = {}
    for e in events:
        t = e.get("event_type")
        if t in READ_EVENTS:
            if a := e.get("article_id"):
                out.setdefault(e["user_id"], []).append(a)
        elif t == "session_start" and starts is not None:
            starts.append((e, len(out.get(e["user_id"], ()))))
    return out


class RecommendationFailed(Exception):
    """A session_start's recommendations could not be ranked (its dead letter's reason)."""


def recommendation_record(
    event: Mapping[str, Any],
    ranked: Sequence[Mapping[str, Any]],
    model_version: str | None,
    reads: int,
    k: int,
    now_ms: int,
) -> RecommendationRecord:
    """The ``recommendation`` v1 record of a ``session_start`` ``event`` from its ranking (best first).

    ``ranked``: :func:`~stream.models.recommend.rank_many`'s entries for the user; ``reads``: how
    many reads the ranking excluded. The id depends only on the user and the event, so the record
    of a replayed session_start has the same one.
    """
    items: list[RecommendedArticle] = [
        {"article_id": r["article_id"], "score": r["score"], "reason": r["reason"]} for r in ranked
    ]
    return {
        "schema_version": 1,
        "recommendation_id": recommendation_id(event["user_id"], event["event_id"]),
        "user_id": event["user_id"],
        "session_id": event["session_id"],
        "event_id": event["event_id"],
        "event_time": event["event_time"],
        "model_version": model_version,
        "k": k,
        "reads": reads,
        "recommendations": items,
        "recommended_at": now_ms,
    }


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
        refresh_s: float = REFRESH_S,
        clock: Clock = SYSTEM,
    ) -> None:
        self.registry = registry
        #: called with the version loaded (None: none any more), as ModelSet's ``on_loaded``
        self.on_loaded = on_loaded
        self.reads = reads
        self.articles = articles
        self.max_age_ms = max_age_hours * HOUR_MS
        self.max_reads = max_reads
        #: the candidates are rebuilt, and the model's alias checked, at most this often
        self.refresh_s = refresh_s
        self.clock = clock
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

    def record(self, events: Sequence[Mapping[str, Any]], at_starts: bool = False) -> dict[int, list[str]]:
        """Remember the batch's article content and append its reads (one table write per reader).

        With ``at_starts``, returns for each ``session_start`` in ``events`` (keyed by ``id(event)``)
        the reads its user had up to it: as one event per batch would have them, whatever reads
        follow it in the batch.
        """
        content = self.content
        for e in events:
            a = e.get("article_id")
            if a and a not in content:
                if len(content) >= MAX_CATALOG:
                    del content[next(iter(content))]
                content[a] = (e.get("brand"), e.get("category"))
        starts: list[tuple[Mapping[str, Any], int]] | None = [] if at_starts else None
        new_reads = batch_reads(events, starts)
        before = {}
        for uid, new in new_reads.items():
            old = before[uid] = unpack_reads(self.reads.get(uid))
            self.reads[uid] = "\n".join(add_reads(old, new, self.max_reads)).encode()
        at: dict[int, list[str]] = {}
        for e, n in starts or ():
            uid = e["user_id"]
            had = before.get(uid)
            if had is None:  # no read in this batch: as stored
                had = unpack_reads(self.reads.get(uid))
            at[id(e)] = add_reads(had, new_reads[uid][:n], self.max_reads) if n else had
        return at

    def at_session_start(
        self,
        starts: Sequence[tuple[Record, Mapping[str, Any]]],
        reads_at: Mapping[int, list[str]],
        k: int,
        now_ms: int,
    ) -> tuple[list[RecommendationRecord], list[tuple[Record, RecommendationFailed]]]:
        """The records of a batch's session_starts, and the session_starts whose ranking failed.

        One ranking for them all; should it raise, each is ranked alone. ``reads_at``: each
        session_start's reads up to it, by ``id(event)``, as :meth:`record` returned them (one
        missing there: its user's reads as stored).
        """
        if not starts:
            return [], []
        try:
            self.refresh_model()
            cands = self.candidates()
            users = []
            for _, e in starts:
                reads = reads_at.get(id(e))
                if reads is None:
                    reads = unpack_reads(self.reads.get(e["user_id"]))
                users.append((reads, [self.content[a] for a in reads if a in self.content]))
        except Exception as exc:  # nothing to rank with: each session_start's recommendations fail, not the worker
            reason = f"recommendations at session_start: {type(exc).__name__}: {exc}"
            return [], [(rec, RecommendationFailed(reason)) for rec, _ in starts]
        model = self.model
        version = model.version if model else None
        try:
            ranked = rank_many(model, users, cands, k)
            return [
                recommendation_record(e, r, version, len(u[0]), k, now_ms)
                for (_, e), u, r in zip(starts, users, ranked, strict=True)
            ], []
        except Exception:
            log.debug("ranking %d session_start(s) together failed; ranking each alone", len(starts), exc_info=True)
        made, failed = [], []
        for (rec, e), u in zip(starts, users, strict=True):
            try:
                [r] = rank_many(model, [u], cands, k)
                made.append(recommendation_record(e, r, version, len(u[0]), k, now_ms))
            except Exception as exc:
                reason = f"recommendations at session_start: {type(exc).__name__}: {exc}"
                failed.append((rec, RecommendationFailed(reason)))
        return made, failed

    # --- the API -------------------------------------------------------------------------------

    def refresh_model(self, force: bool = False) -> None:
        """Load the alias's version if it changed (checked at most every ``refresh_s`` unless ``force``)."""
        now = self.clock.monotonic()
        if not force and now - self._model_at < self.refresh_s:
            return
        self._model_at = now
        try:
            token = self.registry.alias_token(NAME)
        except Exception as exc:  # the registry unreadable for now: keep what is loaded
            log.warning("cannot check the %s model's alias (keeping the loaded one): %s", NAME, exc)
            return
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
        except Exception as exc:  # a model this version cannot use: popularity only, the worker goes on
            log.warning("no %s model (recommendations by popularity only): %s: %s", NAME, type(exc).__name__, exc)
            self.model = None
        if self.on_loaded is not None:
            self.on_loaded(self.model.version if self.model else None)
        self._cands_at = -1e18  # the window and the factors' rows may have changed
        self._decoded = {}
        self._rates = {}

    def candidates(self) -> Candidates:
        """Fresh articles with their exposure rate (rebuilt at most every ``refresh_s``).

        An article's state is decoded only when its stored bytes changed since the last rebuild, and
        its rate computed again only then or when the newest event's hour changed.
        """
        now = self.clock.monotonic()
        if now - self._cands_at < self.refresh_s:
            return self._cands
        self._cands_at = now
        window = self.model.window_hours if self.model else DEFAULT_WINDOW_HOURS
        old, new = self._decoded, {}
        for key, raw in list(self.articles.items()):
            if not raw or key[:1] in _NOT_ARTICLES:
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
