"""The worker's per-batch logic, independent of faust: parse, update state, score, decide.

The faust agents (``stream/agents/``) feed it batches from one input partition and give it
dict-like stores backed by their tables; the offline backtest feeds it the same batches with
plain dicts. Both therefore run exactly the same feature, scoring and bandit code.

One batch, step by step:

1. Parse and validate every record; rejects become dead-letter envelopes.
2. Per valid event, in order: build the feature row the event triggers *before* applying it
   (click at ``article_impression``, engagement at ``session_start``), apply it to the user's
   state, then build rows that need it applied (churn at ``session_end``); record ad events.
3. Write each touched user's state once (not once per event).
4. One vectorized predict per model for the whole batch.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import time
import zlib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np
import orjson
from numpy.random import PCG64, Generator, SeedSequence

from stream.bandit import ThompsonSampling, propensities
from stream.metrics import WorkerMetrics
from stream.schemas import EventRejected, dead_letter_envelope, parse_event
from stream.scoring import TRIGGERS, LoadedModel, ScoreRequest, score_requests
from stream.state import (
    CHURN_FEATURES,
    CLICK_FEATURES,
    DEFAULT_CONFIG,
    ENGAGEMENT_FEATURES,
    ArticleState,
    Outcome,
    StateConfig,
    UserState,
    apply_user,
    click_row,
    encode_event,
    engagement_row,
    new_article_state,
    new_user_state,
    user_row,
)

#: The feature list each model must have been trained on.
EXPECTED_FEATURES = {"churn": CHURN_FEATURES, "click": CLICK_FEATURES, "engagement": ENGAGEMENT_FEATURES}
ARTICLE_EVENTS = frozenset({"article_impression", "article_click", "article_view"})
_OFFSET = struct.Struct(">q")
_MAX_OFFSET = 2**63
_MAX_RANGES = 1024
_EMPTY_ARTICLE = new_article_state()  # read-only: click rows never modify the article state
_MAX_CACHED_ARTICLES = 200_000


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
    predictions: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, dict[str, Any]]] = field(default_factory=list)
    article_events: list[tuple[str, bytes]] = field(default_factory=list)
    ingest_ms: int = 0
    #: per prediction: when its source record entered Kafka (record timestamp), else ``ingest_ms``
    prediction_ingest_ms: list[int] = field(default_factory=list)


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

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop cached state of partitions this worker no longer owns (after a rebalance)."""
        for key in [k for k in self._own_bandit if int(k.split("|", 1)[0]) in partitions]:
            del self._own_bandit[key]
        for p in partitions:
            self._users.pop(p, None)
            self._handled.pop(p, None)

    def _article(self, table: Mapping[str, bytes], article_id: str) -> ArticleState:
        owned = self.owned_articles.get(article_id)
        if owned is not None:
            return owned
        raw = table.get(article_id)
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
        m = self.metrics
        out = Outputs(ingest_ms=int(time.time() * 1000) if now_ms is None else now_ms)
        if not records:
            return out
        partition = records[0].partition
        users = self._users.setdefault(partition, {})
        handled = self._handled.setdefault(partition, OffsetRanges())
        dirty: dict[str, int] = {}
        pending_ads: dict[str, dict[str, list[Any]]] = {}
        bandit_delta: dict[str, list[int]] = {}
        requests: list[ScoreRequest] = []
        ad_requests: list[tuple[dict[str, Any], str]] = []
        snapshot: dict[str, dict[str, tuple[int, int]]] = {}
        ingest: dict[str, int] = {}
        kinds: dict[str, int] = {}  # events by type, counted into the metric once per batch
        cfg = self.state_config

        for rec in records:
            if rec.offset in handled:
                m.redelivered.inc()
                continue
            handled.add(rec.offset)
            try:
                event = parse_event(rec.value, self.max_event_bytes)
            except EventRejected as exc:
                m.invalid.labels(reason=exc.kind).inc()
                out.dead_letters.append((rec.key, dead_letter_envelope(
                    rec.value or b"", rec.key, str(exc), exc.kind, rec.topic, rec.partition, rec.offset,
                    rec.timestamp_ms, received_at_ms=out.ingest_ms)))
                continue
            kind = event["event_type"]
            kinds[kind] = kinds.get(kind, 0) + 1
            if rec.timestamp_ms:
                ingest[event["event_id"]] = rec.timestamp_ms
            uid = event["user_id"]
            cached = users.pop(uid, None)  # re-inserted below: most recently used last
            if cached is None:
                cached = unpack_user(stores.users.get(uid))
            users[uid] = cached
            applied_offset, state = cached
            ev = encode_event(event)
            model = TRIGGERS.get(kind)
            if model == "click":
                article = self._article(stores.articles, event["article_id"])
                requests.append(ScoreRequest("click", click_row(state, article, ev, cfg), event, out.ingest_ms))
            elif model == "engagement":
                requests.append(ScoreRequest("engagement", engagement_row(state, ev, cfg), event,
                                             out.ingest_ms))
            outcome = Outcome.DUPLICATE
            if rec.offset > applied_offset:  # not a replay of an event the stored state already holds
                outcome = apply_user(state, ev, cfg)
                if outcome is Outcome.DUPLICATE:
                    m.duplicates.inc()
                users[uid] = (rec.offset, state)
                dirty[uid] = rec.offset
            if model == "churn":
                requests.append(ScoreRequest("churn", user_row(state, ev.t, cfg), event, out.ingest_ms))
            if kind in ARTICLE_EVENTS:
                # Articles count each event once: duplicates and replays are not forwarded.
                if outcome is Outcome.APPLIED:
                    out.article_events.append((event["article_id"], cast(bytes, rec.value)))  # parsed: not None
            elif kind == "ad_request":
                if not ad_requests:  # posterior as of the batch's first request: no look-ahead
                    snapshot = self.posterior_snapshot(stores)
                ad_requests.append((event, self.context_of(event)))
            elif kind in ("ad_impression", "ad_click"):
                self._ad_event(event, kind, rec.partition, stores, pending_ads, bandit_delta)

        for kind, n in kinds.items():
            m.events.labels(event_type=kind).inc(n)

        # Step 3: one write per touched key.
        for uid, offset in dirty.items():
            stores.users[uid] = pack_user(offset, users[uid][1])
        while len(users) > self.max_cached_users:
            del users[next(iter(users))]
        for uid, ads in pending_ads.items():
            stores.ad_pending[uid] = orjson.dumps(ads)
        for key, (imps, clicks) in bandit_delta.items():
            stores.bandit[key] = orjson.dumps([imps, clicks])

        # Step 4: one predict per model.
        if requests:
            m.batch_size.observe(len(requests))
            out.predictions = score_requests(self.models, requests, int(time.time() * 1000))
            out.prediction_ingest_ms = [ingest.get(p["event_id"], out.ingest_ms) for p in out.predictions]
            for name in {r.model for r in requests} - set(self.models):
                m.unscored.labels(model=name).inc(sum(r.model == name for r in requests))
        if ad_requests:
            out.decisions = self._decide(ad_requests, snapshot, out.ingest_ms)
        return out

    def _ad_event(self, event: Mapping[str, Any], kind: str, partition: int, stores: Stores,
                  pending_ads: dict[str, dict[str, list[Any]]], delta: dict[str, list[int]]) -> None:
        """Impressions count as trials at once; a click joined within the window turns one into a success."""
        uid, rid, t = event["user_id"], event["request_id"], event["event_time"]
        placement = event["placement"]
        if placement not in self.placements:
            return
        if uid not in pending_ads:
            raw = stores.ad_pending.get(uid)
            ads = orjson.loads(raw) if raw else {}
            pending_ads[uid] = {r: v for r, v in ads.items() if t - v[2] <= self.click_join_window_ms}
        ads = pending_ads[uid]
        if kind == "ad_impression":
            if rid in ads:  # duplicate delivery of the impression
                return
            context = self.context_of(event)
            ads[rid] = [placement, context, t, 0]
            self._bump(delta, stores, bandit_key(partition, context, placement), 1, 0)
        else:
            imp = ads.get(rid)
            if imp is None or imp[3] or imp[0] != placement or not 0 <= t - imp[2] <= self.click_join_window_ms:
                return  # no impression in the window, or already clicked
            imp[3] = 1
            self._bump(delta, stores, bandit_key(partition, imp[1], placement), 0, 1)

    def _bump(self, delta: dict[str, list[int]], stores: Stores, key: str, imps: int, clicks: int) -> None:
        if key not in delta:
            if key not in self._own_bandit:
                raw = stores.bandit.get(key)
                self._own_bandit[key] = orjson.loads(raw) if raw else [0, 0]
            delta[key] = self._own_bandit[key]
        delta[key][0] += imps
        delta[key][1] += clicks

    def posterior_snapshot(self, stores: Stores) -> dict[str, dict[str, tuple[int, int]]]:
        """Counts per context and arm: every partition's (GlobalTable) with ours taking precedence.

        The table returns its keys as bytes, the worker keeps its own as str: one key space, so
        that this worker's partitions are counted once (its newer counts replace the table's).
        """
        counts = {_key(k): orjson.loads(v) for k, v in stores.bandit.items()}
        counts.update(self._own_bandit)
        return _sum_counts(counts)

    def _decide(self, ad_requests: list[tuple[dict[str, Any], str]],
                counts: dict[str, dict[str, tuple[int, int]]], now_ms: int) -> list[dict[str, Any]]:
        """Decisions for the batch's ad requests against one posterior snapshot.

        Each draw is seeded by (seed, request_id), so a decision is reproducible whatever the
        worker that makes it, given the same snapshot.
        """
        snapshot: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]] = {}
        chosen: dict[tuple[str, str], int] = {}
        out = []
        for event, context in ad_requests:
            if context not in snapshot:
                alpha, beta = self.policy.posterior(counts.get(context, {}))
                snapshot[context] = (alpha, beta, propensities(alpha, beta), self.policy.arm_means(alpha, beta))
            alpha, beta, props, means = snapshot[context]
            rid = event["request_id"]
            # default_rng([seed, crc]) builds exactly this generator, at twice the cost
            self.policy.rng = Generator(PCG64(SeedSequence([self.seed, zlib.crc32(rid.encode())])))
            d = self.policy.choose(alpha, beta, props, means)
            chosen[(context, d.arm)] = chosen.get((context, d.arm), 0) + 1
            out.append({
                "schema_version": 1,
                "decision_id": decision_id(self.policy_name, rid),
                "request_id": rid,
                "event_id": event["event_id"],
                "user_id": event["user_id"],
                "context": context,
                "placement": d.arm,
                "propensity": d.propensity,
                "policy": self.policy_name,
                "arm_means": d.arm_means,
                "event_time": event["event_time"],
                "decided_at": now_ms,
            })
        for (context, arm), n in chosen.items():
            self.metrics.decisions.labels(context=context, arm=arm).inc(n)
        return out


def decision_id(policy: str, request_id: str) -> str:
    """Deterministic, like prediction ids: a replayed request gets the same decision id."""
    return hashlib.blake2b(f"{policy}|{request_id}".encode(), digest_size=16).hexdigest()
