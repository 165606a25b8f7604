"""The worker's per-batch logic, independent of faust: parse, update state, score, decide.

The faust agents (``stream/worker/agents/``) feed it batches from one input partition and give it
dict-like stores backed by their tables; the offline backtest feeds it the same batches with
plain dicts. Both therefore run exactly the same feature, scoring and bandit code.

One batch, step by step:

1. Parse and validate every record; rejects become dead-letter envelopes.
2. Per valid event, in order: build the feature row the event triggers *before* applying it
   (click at ``article_impression``, engagement at ``session_start``), apply it to the user's
   state, then build rows that need it applied (churn at ``session_end``); record ad events.
   An event the stored state already holds (a replay after a crash) is scored, not applied, and
   its prediction is marked ``replayed`` when that state is not the one its row needs.
3. Write each touched user's state once (not once per event).
4. One vectorized predict per model for the whole batch.
"""

from __future__ import annotations

import bisect
import logging
import struct
import time
import zlib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np
import orjson
from numpy.random import PCG64, Generator, SeedSequence

from stream.bandits.thompson import ThompsonSampling, propensities
from stream.errors import InfraError
from stream.events.ids import decision_id
from stream.events.records import DeadLetterRecord, DecisionRecord, PredictionRecord
from stream.events.schema import EventRejected, dead_letter_envelope, parse_event
from stream.models import SERVED_FEATURES, TRIGGERS
from stream.models.scoring import LoadedModel, ScoreRequest, score_requests
from stream.state import (
    ARTICLE_FEATURES,
    DEFAULT_CONFIG,
    USER_FEATURES,
    ArticleState,
    Outcome,
    StateConfig,
    UserState,
    apply_user,
    article_row,
    click_row,
    encode_event,
    engagement_row,
    new_article_state,
    new_user_state,
    user_row,
)
from stream.state.article import ARTICLE_LATENESS_MS, article_watermark
from stream.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

#: The feature list each model must have been trained on (from the model table).
EXPECTED_FEATURES = SERVED_FEATURES
ARTICLE_EVENTS = frozenset({"article_impression", "article_click", "article_view"})
_OFFSET = struct.Struct(">q")
_MAX_OFFSET = 2**63
_MAX_RANGES = 1024
_EMPTY_ARTICLE = new_article_state()  # read-only: click rows never modify the article state
_MAX_CACHED_ARTICLES = 200_000
#: where the article part of a click row starts and ends (click_row: user, article, position, context)
_ART = slice(len(USER_FEATURES), len(USER_FEATURES) + len(ARTICLE_FEATURES))
#: A pending ad (the ``ad-pending`` table: per user, request_id -> a JSON list) is
#: [placement, context, impression time, clicked 0/1]; these name its positions.
_AD_PLACEMENT, _AD_CONTEXT, _AD_SHOWN_AT, _AD_CLICKED = range(4)


class Record(NamedTuple):
    """One consumed Kafka record."""

    key: bytes | None
    value: bytes | None  # None: a tombstone, which goes to the dead-letter topic
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None


@dataclass
class Outputs:
    predictions: list[PredictionRecord] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, DeadLetterRecord]] = field(default_factory=list)
    article_events: list[tuple[str, bytes]] = field(default_factory=list)
    ingest_ms: int = 0
    #: per prediction: when its source record entered Kafka (record timestamp), else ``ingest_ms``
    prediction_ingest_ms: list[int] = field(default_factory=list)
    #: click requests whose article part waits for :meth:`BatchProcessor.finish_clicks`
    #: (``defer_clicks``): (request, article_id, record, ingest ms)
    pending_clicks: list[tuple[ScoreRequest, str, Record, int]] = field(default_factory=list)
    #: the valid events, for the ClickHouse archive (``STREAM_ARCHIVE_EVENTS``)
    events: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        """Append ``other``'s outputs (a later part of the same batch)."""
        self.predictions += other.predictions
        self.decisions += other.decisions
        self.dead_letters += other.dead_letters
        self.article_events += other.article_events
        self.prediction_ingest_ms += other.prediction_ingest_ms
        self.pending_clicks += other.pending_clicks
        self.events += other.events


class StoreUnavailable(InfraError):
    """A table read or write failed: the stores, not a record, are at fault."""


def _read(store: Mapping[str, bytes], key: str) -> bytes | None:
    try:
        return store.get(key)
    except Exception as exc:
        raise StoreUnavailable(f"cannot read the worker's tables: {type(exc).__name__}: {exc}") from exc


class _Undo:
    """What one attempt at a batch changed in the processor's own caches (see ``_undo``)."""

    __slots__ = ("bandit", "handled", "hwm", "partition", "users")

    def __init__(self, partition: int, handled: OffsetRanges, hwm: int | None) -> None:
        self.partition = partition
        self.handled = [r[:] for r in handled.ranges]  # a few ranges: offsets mostly come in order
        self.users: set[str] = set()
        #: own bandit counts before the attempt (None: the key was not cached)
        self.bandit: dict[str, list[int] | None] = {}
        self.hwm = hwm  # the partition's newest event time before the attempt


@dataclass
class _Tally:
    """A batch's metric increments, counted only once the batch has succeeded."""

    kinds: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    unscored: dict[str, int] = field(default_factory=dict)
    decisions: dict[tuple[str, str], int] = field(default_factory=dict)
    duplicates: int = 0
    redelivered: int = 0
    rows: int = 0

    def publish(self, m: WorkerMetrics) -> None:
        for kind, n in self.kinds.items():
            m.events.labels(event_type=kind).inc(n)
        for reason, n in self.invalid.items():
            m.invalid.labels(reason=reason).inc(n)
        for name, n in self.unscored.items():
            m.unscored.labels(model=name).inc(n)
        for (context, arm), n in self.decisions.items():
            m.decisions.labels(context=context, arm=arm).inc(n)
        if self.duplicates:
            m.duplicates.inc(self.duplicates)
        if self.redelivered:
            m.redelivered.inc(self.redelivered)
        if self.rows:
            m.batch_size.observe(self.rows)


def pack_user(offset: int, state: UserState) -> bytes:
    """Table value: the input offset last applied (for exact replays after a crash) + the state."""
    return _OFFSET.pack(offset) + state.to_bytes()


def unpack_user(value: bytes | None) -> tuple[int, UserState]:
    if not value:
        return -1, new_user_state()
    return _OFFSET.unpack_from(value)[0], UserState.from_bytes(value[_OFFSET.size:])


def bandit_key(partition: int, context: str, arm: str) -> str:
    return f"{partition}|{context}|{arm}"


def _key(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else key


def merged_counts(stats: Mapping[Any, bytes]) -> dict[str, dict[str, tuple[int, int]]]:
    """Sum every partition's (impressions, clicks) per context and arm (table keys and values)."""
    return _sum_counts({_key(k): orjson.loads(v) for k, v in stats.items()})


def _sum_counts(counts: Mapping[str, Sequence[int]]) -> dict[str, dict[str, tuple[int, int]]]:
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for key, (imps, clicks) in counts.items():
        _, context, arm = key.split("|", 2)
        arms = out.setdefault(context, {})
        a, c = arms.get(arm, (0, 0))
        arms[arm] = (a + imps, c + clicks)
    return out


class OffsetRanges:
    """A set of offsets kept as sorted, disjoint ``[lo, hi]`` ranges (O(1) when offsets come in order).

    >>> seen = OffsetRanges()
    >>> for o in (5, 6, 7, 10, 8):
    ...     seen.add(o)
    >>> seen.ranges, 9 in seen, 8 in seen
    ([[5, 8], [10, 10]], False, True)
    """

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []

    def __contains__(self, offset: int) -> bool:
        r = self.ranges
        if r and r[-1][0] <= offset <= r[-1][1]:
            return True
        i = bisect.bisect_right(r, [offset, _MAX_OFFSET]) - 1
        return i >= 0 and r[i][0] <= offset <= r[i][1]

    def add(self, offset: int) -> None:
        r = self.ranges
        if r and r[-1][0] <= offset:
            if offset <= r[-1][1] + 1:
                r[-1][1] = max(r[-1][1], offset)
            else:
                r.append([offset, offset])
                if len(r) > _MAX_RANGES:  # gaps (e.g. transaction markers): old ones cannot come back
                    del r[:-_MAX_RANGES]
            return
        bisect.insort(r, [offset, offset])
        merged: list[list[int]] = []
        for lo, hi in r:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        r[:] = merged


class Stores(NamedTuple):
    """Dict-like views the processor reads and writes (faust tables in the worker)."""

    users: MutableMapping[str, bytes]
    ad_pending: MutableMapping[str, bytes]
    articles: Mapping[str, bytes]
    bandit: MutableMapping[str, bytes]


class BatchProcessor:
    def __init__(self, models: Mapping[str, LoadedModel], placements: Sequence[str], *,
                 bandit_context: str = "device", click_join_window_ms: int = 600_000,
                 max_event_bytes: int = 16_384, seed: int = 0, state_config: StateConfig = DEFAULT_CONFIG,
                 metrics: WorkerMetrics | None = None, policy_name: str = "thompson",
                 max_cached_users: int = 250_000) -> None:
        self.models = models
        self.policy = ThompsonSampling(placements, seed=seed)
        self.placements = tuple(placements)
        self.bandit_context = bandit_context
        self.click_join_window_ms = click_join_window_ms
        self.max_event_bytes = max_event_bytes
        self.seed = seed
        self.state_config = state_config
        self.metrics = metrics or WorkerMetrics()
        self.policy_name = policy_name
        #: This worker's own bandit counts, authoritative for the partitions it owns. The
        #: GlobalTable's changelog reader may briefly hand back an older value of a key we just
        #: wrote; counting on top of that would lose increments.
        self._own_bandit: dict[str, list[int]] = {}
        #: Deserialized user states per owned partition (LRU): this worker is their only writer,
        #: so the cache equals the table and saves a from_bytes per event.
        self._users: dict[int, dict[str, tuple[int, UserState]]] = {}
        self.max_cached_users = max_cached_users
        #: Per partition, the input offsets this process has already handled. faust can hand a
        #: record to the stream again (after the seek to committed offsets that ends a recovery,
        #: the records fetched before it come once more): its outputs exist, so it is skipped.
        #: A record the stored *state* has seen but this process has not (a replay after a crash or
        #: a handover) is scored again instead. Exact offsets, not a high-water mark: a record
        #: faust skipped before the seek must still be processed when it comes.
        self._handled: dict[int, OffsetRanges] = {}
        #: Decoded article states with the bytes they came from: an article's value changes once
        #: per article-agent batch, while every impression of it needs the decoded state.
        self._articles: dict[str, tuple[bytes, ArticleState]] = {}
        #: States of the articles this worker's article agent owns (agents/articles.py keeps them
        #: up to date): read directly, they are never older than the table, and the table's
        #: GlobalTable lookup (every partition's RocksDB) is the costly part of an impression.
        self.owned_articles: dict[str, ArticleState] = {}
        #: Per input partition, the newest event time seen: article events further behind it than
        #: ARTICLE_LATENESS_MS are not forwarded, so its watermark (newest - that) is a promise.
        self.event_hwm: dict[int, int] = {}
        #: Build click rows without their article part; the caller completes them with
        #: :meth:`finish_clicks` once article popularity is complete up to their watermark.
        self.defer_clicks = False
        #: Per article partition this worker's article agent folds: per input partition, the
        #: watermark up to which it has folded every article event, and whether the latest marker
        #: at it said idle (agents/watermarks.py ``Progress``).
        self.article_progress: dict[int, dict[int, tuple[int, bool]]] = {}
        #: Input partitions of this worker whose latest marker sent said idle (agents/watermarks.py).
        self.idle_sources: set[int] = set()

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop cached state of partitions this worker no longer owns (after a rebalance)."""
        for key in [k for k in self._own_bandit if int(k.split("|", 1)[0]) in partitions]:
            del self._own_bandit[key]
        for p in partitions:
            self._users.pop(p, None)
            self._handled.pop(p, None)
            self.idle_sources.discard(p)  # its next owner announces it

    def _article(self, table: Mapping[str, bytes], article_id: str) -> ArticleState:
        owned = self.owned_articles.get(article_id)
        if owned is not None:
            return owned
        raw = _read(table, article_id)
        if not raw:
            return _EMPTY_ARTICLE
        cached = self._articles.get(article_id)
        if cached is not None and (cached[0] is raw or cached[0] == raw):
            return cached[1]
        if len(self._articles) >= _MAX_CACHED_ARTICLES:
            self._articles.clear()
        state = ArticleState.from_bytes(raw)
        self._articles[article_id] = (raw, state)
        return state

    def context_of(self, event: Mapping[str, Any]) -> str:
        if self.bandit_context == "none":
            return "all"
        return str((event.get("device") or {}).get("type", "unknown"))

    def process(self, records: Sequence[Record], stores: Stores, now_ms: int | None = None) -> Outputs:
        """Outputs of one batch from one input partition; no record's failure costs another record.

        A batch is handled as a unit. Should anything raise while it is (parsing, state, features,
        scoring, bandit, outputs), its in-memory effects are undone and its records are handled
        again one by one: the record that raises alone goes to the dead-letter topic as
        ``processing_error``, and the others are processed as usual. Only a failure of the stores
        themselves (:class:`StoreUnavailable`) propagates: no record is to blame for it.
        """
        ingest_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if not records:
            return Outputs(ingest_ms=ingest_ms)
        try:
            return self._process(records, stores, ingest_ms)
        except StoreUnavailable:
            raise
        except Exception as exc:
            if len(records) == 1:
                return self._failed(records[0], exc, ingest_ms)
        self.metrics.isolated_batches.inc()
        out = Outputs(ingest_ms=ingest_ms)
        for rec in records:
            try:
                part = self._process((rec,), stores, ingest_ms)
            except StoreUnavailable:
                raise
            except Exception as exc:
                part = self._failed(rec, exc, ingest_ms)
            out.extend(part)
        return out

    def _failed(self, rec: Record, exc: BaseException, ingest_ms: int) -> Outputs:
        """The dead letter of a record whose processing raised ``exc`` (its effects are undone)."""
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("dead-lettering %s[%d]@%d: processing_error %s", rec.topic, rec.partition, rec.offset, reason)
        log.debug("processing_error traceback", exc_info=exc)
        self._handled.setdefault(rec.partition, OffsetRanges()).add(rec.offset)  # its dead letter is its output
        self.metrics.invalid.labels(reason="processing_error").inc()
        self.metrics.processing_errors.labels(error=type(exc).__name__).inc()
        out = Outputs(ingest_ms=ingest_ms)
        out.dead_letters.append((rec.key, dead_letter_envelope(
            rec.value or b"", rec.key, reason, "processing_error", rec.topic, rec.partition, rec.offset,
            rec.timestamp_ms, received_at_ms=ingest_ms)))
        return out

    def _process(self, records: Sequence[Record], stores: Stores, ingest_ms: int) -> Outputs:
        """One attempt at a batch: all of its effects, or (when it raises) none of them.

        Tables are written last, after scoring and decisions: until then the batch's effects are
        in this process's caches only, and :meth:`_undo` drops them.
        """
        out = Outputs(ingest_ms=ingest_ms)
        partition = records[0].partition
        users = self._users.setdefault(partition, {})
        handled = self._handled.setdefault(partition, OffsetRanges())
        undo = _Undo(partition, handled, self.event_hwm.get(partition))
        try:
            tally = self._run(records, stores, out, users, handled, undo)
        except BaseException:
            self._undo(undo, users, handled)
            raise
        tally.publish(self.metrics)
        return out

    def _undo(self, undo: _Undo, users: dict[str, tuple[int, UserState]], handled: OffsetRanges) -> None:
        """Forget an abandoned attempt: the stores still hold every touched key's previous value."""
        handled.ranges = undo.handled
        if undo.hwm is None:
            self.event_hwm.pop(undo.partition, None)
        else:
            self.event_hwm[undo.partition] = undo.hwm
        for uid in undo.users:
            users.pop(uid, None)  # its cached state was changed in place: read it again
        for key, counts in undo.bandit.items():
            if counts is None:
                self._own_bandit.pop(key, None)
            else:
                self._own_bandit[key] = counts

    def _run(self, records: Sequence[Record], stores: Stores, out: Outputs,
             users: dict[str, tuple[int, UserState]], handled: OffsetRanges, undo: _Undo) -> _Tally:
        tally = _Tally()
        dirty: dict[str, int] = {}
        pending_ads: dict[str, dict[str, list[Any]]] = {}
        bandit_delta: dict[str, list[int]] = {}
        requests: list[ScoreRequest] = []
        ad_requests: list[tuple[dict[str, Any], str]] = []
        snapshot: dict[str, dict[str, tuple[int, int]]] = {}
        ingest: dict[tuple[str, str], int] = {}
        kinds = tally.kinds
        touched = undo.users
        cfg = self.state_config
        ingest_ms = out.ingest_ms
        defer = self.defer_clicks
        hwm_of = self.event_hwm
        partition = records[0].partition

        for rec in records:
            if rec.offset in handled:
                tally.redelivered += 1
                continue
            handled.add(rec.offset)
            try:
                event = parse_event(rec.value, self.max_event_bytes)
            except EventRejected as exc:
                tally.invalid[exc.kind] = tally.invalid.get(exc.kind, 0) + 1
                out.dead_letters.append((rec.key, dead_letter_envelope(
                    rec.value or b"", rec.key, str(exc), exc.kind, rec.topic, rec.partition, rec.offset,
                    rec.timestamp_ms, received_at_ms=ingest_ms)))
                continue
            out.events.append(event)
            kind = event["event_type"]
            kinds[kind] = kinds.get(kind, 0) + 1
            uid = event["user_id"]
            if rec.timestamp_ms:
                ingest[(uid, event["event_id"])] = rec.timestamp_ms
            cached = users.pop(uid, None)  # re-inserted below: most recently used last
            touched.add(uid)
            if cached is None:
                cached = unpack_user(_read(stores.users, uid))
            users[uid] = cached
            applied_offset, state = cached
            ev = encode_event(event)
            hwm = hwm_of.get(partition, -1)
            if ev.t > hwm:
                hwm_of[partition] = ev.t
            model = TRIGGERS.get(kind)
            # A row built before applying needs a state without this event; one built after, a state
            # with nothing later. A replay has the stored state, which may hold both: its rows are
            # marked, so that the first (exact) score can win downstream (docs/worker.md, "Delivery").
            if model == "click":
                if defer:  # the article part comes in finish_clicks
                    req = ScoreRequest("click", click_row(state, _EMPTY_ARTICLE, ev, cfg), event, ingest_ms,
                                       rec.offset <= applied_offset)
                    out.pending_clicks.append((req, event["article_id"], rec, rec.timestamp_ms or ingest_ms))
                else:
                    article = self._article(stores.articles, event["article_id"])
                    requests.append(ScoreRequest("click", click_row(state, article, ev, cfg), event, ingest_ms,
                                                 rec.offset <= applied_offset))
            elif model == "engagement":
                requests.append(ScoreRequest("engagement", engagement_row(state, ev, cfg), event, ingest_ms,
                                             rec.offset <= applied_offset))
            outcome = Outcome.DUPLICATE
            if rec.offset > applied_offset:  # not a replay of an event the stored state already holds
                outcome = apply_user(state, ev, cfg)
                if outcome is Outcome.DUPLICATE:
                    tally.duplicates += 1
                users[uid] = (rec.offset, state)
                dirty[uid] = rec.offset
            if model == "churn":
                requests.append(ScoreRequest("churn", user_row(state, ev.t, cfg), event, ingest_ms,
                                             rec.offset < applied_offset))
            if kind in ARTICLE_EVENTS:
                # Articles count each event once: duplicates and replays are not forwarded; nor are
                # events so late that the partition's watermark already passed them.
                if outcome is Outcome.APPLIED and ev.t >= hwm - ARTICLE_LATENESS_MS:
                    out.article_events.append((event["article_id"], cast(bytes, rec.value)))  # parsed: not None
            elif kind == "ad_request":
                if not ad_requests:  # posterior as of the batch's first request: no look-ahead
                    snapshot = self.posterior_snapshot(stores)
                ad_requests.append((event, self.context_of(event)))
            elif kind in ("ad_impression", "ad_click"):
                self._ad_event(event, kind, rec.partition, stores, pending_ads, bandit_delta, undo)

        # One predict per model, and the decisions, before any table write: should either raise,
        # the tables hold nothing of this attempt.
        if requests:
            tally.rows = len(requests)
            out.predictions = score_requests(self.models, requests, int(time.time() * 1000))
            out.prediction_ingest_ms = [ingest.get((p["user_id"], p["event_id"]), ingest_ms)
                                        for p in out.predictions]
            for name in {r.model for r in requests} - set(self.models):
                tally.unscored[name] = sum(r.model == name for r in requests)
        if out.pending_clicks:
            tally.rows += len(out.pending_clicks)
            if "click" not in self.models:
                tally.unscored["click"] = len(out.pending_clicks)
        if ad_requests:
            out.decisions = self._decide(ad_requests, snapshot, ingest_ms, tally.decisions)

        # One write per touched key.
        try:
            for uid, offset in dirty.items():
                stores.users[uid] = pack_user(offset, users[uid][1])
            for uid, ads in pending_ads.items():
                stores.ad_pending[uid] = orjson.dumps(ads)
            for key, (imps, clicks) in bandit_delta.items():
                stores.bandit[key] = orjson.dumps([imps, clicks])
        except Exception as exc:
            raise StoreUnavailable(f"cannot write the worker's tables: {type(exc).__name__}: {exc}") from exc
        while len(users) > self.max_cached_users:
            del users[next(iter(users))]
        return tally

    def source_watermark(self, partition: int) -> int | None:
        """The partition's promise: every article event it forwards from now on is at or after this."""
        hwm = self.event_hwm.get(partition)
        return None if hwm is None else hwm - ARTICLE_LATENESS_MS

    def click_watermark(self, out: Outputs) -> int | None:
        """The newest watermark the pending click rows read article popularity at."""
        if not out.pending_clicks:
            return None
        return max(article_watermark(req.event["event_time"], self.state_config) for req, *_ in out.pending_clicks)

    def finish_clicks(self, out: Outputs, stores: Stores) -> None:
        """Complete and score the pending click rows (article part as of each row's watermark).

        The batch's state is already written: a row whose scoring raises alone goes to the
        dead-letter topic as ``processing_error``, the others are published as usual.
        """
        pending, out.pending_clicks = out.pending_clicks, []
        if not pending:
            return
        cfg = self.state_config
        for req, article_id, _, _ in pending:
            article = self._article(stores.articles, article_id)
            cast(list[float], req.row)[_ART] = article_row(article, req.event["event_time"], cfg)
        now = int(time.time() * 1000)
        try:
            parts = [(score_requests(self.models, [req for req, *_ in pending], now), pending)]
        except StoreUnavailable:
            raise
        except Exception:
            parts = []
            for item in pending:
                try:
                    parts.append((score_requests(self.models, [item[0]], now), [item]))
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    failed = self._failed(item[2], exc, out.ingest_ms)
                    out.dead_letters += failed.dead_letters
        for preds, items in parts:
            ingest = {req.event["event_id"]: ms for req, _, _, ms in items}
            out.predictions += preds
            out.prediction_ingest_ms += [ingest[p["event_id"]] for p in preds]

    def _ad_event(self, event: Mapping[str, Any], kind: str, partition: int, stores: Stores,
                  pending_ads: dict[str, dict[str, list[Any]]], delta: dict[str, list[int]], undo: _Undo) -> None:
        """Impressions count as trials at once; a click joined within the window turns one into a success."""
        uid, rid, t = event["user_id"], event["request_id"], event["event_time"]
        placement = event["placement"]
        if placement not in self.placements:
            return
        if uid not in pending_ads:
            raw = _read(stores.ad_pending, uid)
            ads = orjson.loads(raw) if raw else {}
            pending_ads[uid] = {r: v for r, v in ads.items() if t - v[_AD_SHOWN_AT] <= self.click_join_window_ms}
        ads = pending_ads[uid]
        if kind == "ad_impression":
            if rid in ads:  # duplicate delivery of the impression
                return
            context = self.context_of(event)
            ads[rid] = [placement, context, t, 0]
            self._bump(delta, stores, undo, bandit_key(partition, context, placement), 1, 0)
        else:
            imp = ads.get(rid)
            if imp is None:
                return  # no impression
            shown_placement, context, shown_at, clicked = imp
            if clicked or shown_placement != placement or not 0 <= t - shown_at <= self.click_join_window_ms:
                return  # already clicked, another placement, or outside the window
            imp[_AD_CLICKED] = 1
            self._bump(delta, stores, undo, bandit_key(partition, context, placement), 0, 1)

    def _bump(self, delta: dict[str, list[int]], stores: Stores, undo: _Undo, key: str, imps: int,
              clicks: int) -> None:
        if key not in delta:
            own = self._own_bandit.get(key)
            undo.bandit[key] = None if own is None else list(own)
            if own is None:
                raw = _read(stores.bandit, key)
                self._own_bandit[key] = orjson.loads(raw) if raw else [0, 0]
            delta[key] = self._own_bandit[key]
        delta[key][0] += imps
        delta[key][1] += clicks

    def posterior_snapshot(self, stores: Stores) -> dict[str, dict[str, tuple[int, int]]]:
        """Counts per context and arm: every partition's (GlobalTable) with ours taking precedence.

        The table returns its keys as bytes, the worker keeps its own as str: one key space, so
        that this worker's partitions are counted once (its newer counts replace the table's).
        """
        try:
            counts = {_key(k): orjson.loads(v) for k, v in stores.bandit.items()}
        except Exception as exc:
            raise StoreUnavailable(f"cannot read the bandit counts: {type(exc).__name__}: {exc}") from exc
        counts.update(self._own_bandit)
        return _sum_counts(counts)

    def _decide(self, ad_requests: list[tuple[dict[str, Any], str]],
                counts: dict[str, dict[str, tuple[int, int]]], now_ms: int,
                chosen: dict[tuple[str, str], int]) -> list[DecisionRecord]:
        """Decisions for the batch's ad requests against one posterior snapshot.

        Each draw is seeded by (seed, request_id), so a decision is reproducible whatever the
        worker that makes it, given the same snapshot.
        """
        snapshot: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]] = {}
        out: list[DecisionRecord] = []
        for event, context in ad_requests:
            if context not in snapshot:
                alpha, beta = self.policy.posterior(counts.get(context, {}))
                snapshot[context] = (alpha, beta, propensities(alpha, beta), self.policy.arm_means(alpha, beta))
            alpha, beta, props, means = snapshot[context]
            rid = event["request_id"]
            uid = event["user_id"]
            # default_rng([seed, crc]) builds exactly this generator, at twice the cost
            self.policy.rng = Generator(PCG64(SeedSequence([self.seed, zlib.crc32(rid.encode())])))
            d = self.policy.choose(alpha, beta, props, means)
            chosen[(context, d.arm)] = chosen.get((context, d.arm), 0) + 1
            out.append({
                "schema_version": 1,
                "decision_id": decision_id(self.policy_name, uid, rid),
                "request_id": rid,
                "event_id": event["event_id"],
                "user_id": uid,
                "context": context,
                "placement": d.arm,
                "propensity": d.propensity,
                "policy": self.policy_name,
                "arm_means": d.arm_means,
                "event_time": event["event_time"],
                "decided_at": now_ms,
            })
        return out
