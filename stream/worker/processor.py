"""The worker's per-batch logic, independent of faust: parse, update state, score, decide.

The faust agents (``stream/worker/agents/``) feed it batches from one input partition and give it
dict-like stores backed by their tables; the offline backtest feeds it the same batches with
plain dicts. Both therefore run exactly the same feature, scoring and bandit code.

:class:`BatchProcessor` orchestrates; each concern is a unit of its own: the redelivery filter and
the offset stored with each user (``delivery.py``), parsing with dead letters (``parsing.py``), the
decoded user and article states (``caches.py``), and the bandit (``ads.py``).

One batch, step by step:

1. Parse and validate every record; rejects become dead-letter envelopes.
2. Per valid event, in order: build the feature row the event triggers *before* applying it
   (click at ``article_impression``, engagement at ``session_start``), apply it to the user's
   state, then build rows that need it applied (churn, conversion and segment at ``session_end``,
   one user row for the three); record ad events.
   An event the stored state already holds (a replay after a crash) is scored, not applied, and
   its prediction is marked ``replayed`` when that state is not the one its row needs.
3. Write each touched user's state once (not once per event).
4. One vectorized predict per model for the whole batch, and the same rows scored by the
   challengers in shadow (their failure costs no production output). Each user's new segment is
   kept in their state (written with it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from stream.events.records import DecisionRecord, PredictionRecord, RecommendationRecord
from stream.models import SEGMENTS, SERVED_FEATURES, TRIGGERS
from stream.models.scoring import LoadedModel, Scored, ScoreRequest, score_requests, score_shadow, score_steps
from stream.state import (
    ARTICLE_FEATURES,
    DEFAULT_CONFIG,
    USER_FEATURES,
    ArticleState,
    Outcome,
    StateConfig,
    apply_user,
    article_row,
    click_row,
    encode_event,
    engagement_row,
    user_row,
)
from stream.state.article import ARTICLE_LATENESS_MS, article_watermark
from stream.worker.ads import AdBatch, Ads, Counts, bandit_key, merged_counts
from stream.worker.caches import EMPTY_ARTICLE, ArticleStates, UserBatch, UserStates
from stream.worker.delivery import Redeliveries, pack_user, unpack_user
from stream.worker.metrics import WorkerMetrics
from stream.worker.parsing import DeadLetter, Record, dead_letter, parse_records
from stream.worker.stores import Stores, StoreUnavailable

__all__ = [
    "EXPECTED_FEATURES",
    "BatchProcessor",
    "Outputs",
    "ProcessorConfig",
    "Record",
    "StoreUnavailable",
    "Stores",
    "bandit_key",
    "merged_counts",
    "pack_user",
    "unpack_user",
]

log = logging.getLogger(__name__)

#: The feature list each model must have been trained on (from the model table).
EXPECTED_FEATURES = SERVED_FEATURES
ARTICLE_EVENTS = frozenset({"article_impression", "article_click", "article_view"})
#: models whose row is the user row: built after the event is applied (state as of the event)
_USER_ROW = frozenset(name for name, fl in SERVED_FEATURES.items() if fl.names == USER_FEATURES.names)
#: per trigger, the models scored from the state before / after the event (from the model table)
_BEFORE = {kind: tuple(n for n in names if n not in _USER_ROW) for kind, names in TRIGGERS.items()}
_AFTER = {kind: tuple(n for n in names if n in _USER_ROW) for kind, names in TRIGGERS.items()}
# the rows built before applying are the click and engagement rows (_apply)
assert {n for names in _BEFORE.values() for n in names} <= {"click", "engagement"}, _BEFORE
#: where the article part of a click row starts and ends (click_row: user, article, position, context)
_ART = slice(len(USER_FEATURES), len(USER_FEATURES) + len(ARTICLE_FEATURES))
#: most events applied in one step of :meth:`BatchProcessor.process_stepped` (then the loop is handed back)
APPLY_STEP = 64
#: one attempt at a batch, in steps: it yields between them and returns its outputs
Steps = Generator[None, None, "Outputs"]


def _run_through(steps: Steps) -> Outputs:
    """All of an attempt's steps at once (:meth:`BatchProcessor.process`)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


async def _run_stepped(steps: Steps, observe: Callable[[float], None] | None = None) -> Outputs:
    """An attempt's steps with the event loop handed back between them (``observe``: each step's seconds).

    Should the task be cancelled between steps (a rebalance), the attempt is given the cancel at
    its step, so it undoes its effects before it propagates.
    """
    clock = time.perf_counter
    while True:
        began = clock()
        try:
            next(steps)
        except StopIteration as done:
            if observe is not None:
                observe(clock() - began)
            return done.value
        if observe is not None:
            observe(clock() - began)
        try:
            await asyncio.sleep(0)
        except BaseException as exc:
            steps.throw(exc)  # undoes the attempt's effects and raises exc again
            raise


@dataclass(frozen=True)
class ProcessorConfig:
    """The processor's settings (the worker's come from ``stream.config.Settings``)."""

    #: the event field the bandit's contexts come from ("device": its type; "none": one context)
    bandit_context: str = "device"
    #: how long after its impression a click counts as its success
    click_join_window_ms: int = 600_000
    max_event_bytes: int = 16_384
    #: seeds each decision's draw, with its request_id
    seed: int = 0
    state_config: StateConfig = DEFAULT_CONFIG
    policy_name: str = "thompson"


@dataclass
class Outputs:
    predictions: list[PredictionRecord] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    article_events: list[tuple[str, bytes]] = field(default_factory=list)
    ingest_ms: int = 0
    #: per prediction: when its source record entered Kafka (record timestamp), else ``ingest_ms``
    prediction_ingest_ms: list[int] = field(default_factory=list)
    #: click requests whose article part waits for :meth:`BatchProcessor.finish_clicks`
    #: (``defer_clicks``): (request, article_id, record, ingest ms)
    pending_clicks: list[tuple[ScoreRequest, str, Record, int]] = field(default_factory=list)
    #: the valid events, for the ClickHouse archive (``STREAM_ARCHIVE_EVENTS``)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: the challengers' scores of the same rows (``"shadow": true``), for predictions-shadow only
    shadow_predictions: list[PredictionRecord] = field(default_factory=list)
    #: each model's feature matrix and scores, with ``BatchProcessor.keep_scored`` (drift monitoring)
    scored: list[Scored] = field(default_factory=list)
    #: the valid session_start events with their records, with ``BatchProcessor.keep_session_starts``
    session_starts: list[tuple[Record, dict[str, Any]]] = field(default_factory=list)
    #: the top-k recommendations published at those session_starts (stream/worker/recommendations.py)
    recommendations: list[RecommendationRecord] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        """Append ``other``'s outputs (a later part of the same batch)."""
        self.predictions += other.predictions
        self.decisions += other.decisions
        self.dead_letters += other.dead_letters
        self.article_events += other.article_events
        self.prediction_ingest_ms += other.prediction_ingest_ms
        self.pending_clicks += other.pending_clicks
        self.events += other.events
        self.shadow_predictions += other.shadow_predictions
        self.scored += other.scored
        self.session_starts += other.session_starts
        self.recommendations += other.recommendations


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


def _keep_segments(predictions: Sequence[PredictionRecord], users: UserBatch) -> None:
    """Each user's segment into their state (the newest by event time); replayed scores are not kept.

    The state holds the model version as an integer, as the registry numbers versions (one named
    otherwise by a hand-edited alias is published, not kept).
    """
    name = SEGMENTS.name
    for p in predictions:
        if p["model_name"] == name and "replayed" not in p and p["model_version"].isdigit():
            users.assign_segment(p["user_id"], (int(p["score"]), int(p["model_version"]), p["event_time"]))


class BatchProcessor:
    def __init__(
        self,
        models: Mapping[str, LoadedModel],
        placements: Sequence[str],
        config: ProcessorConfig = ProcessorConfig(),
        *,
        metrics: WorkerMetrics | None = None,
        max_cached_users: int = 250_000,
    ) -> None:
        self.models = models
        #: challenger models scored in shadow on the same rows (model name -> model; the app fills it)
        self.shadow: Mapping[str, LoadedModel] = {}
        self.config = config
        self.metrics = metrics or WorkerMetrics()
        self.redeliveries = Redeliveries()
        self.users = UserStates(max_cached_users)
        self.articles = ArticleStates()
        self.ads = Ads(
            placements,
            context=config.bandit_context,
            join_window_ms=config.click_join_window_ms,
            seed=config.seed,
            policy_name=config.policy_name,
        )
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
        #: Keep each batch's feature matrices in ``Outputs.scored`` (STREAM_MONITORING: drift).
        self.keep_scored = False
        #: Keep each batch's session_start events in ``Outputs.session_starts`` (their recommendations).
        self.keep_session_starts = False
        #: held while :meth:`process_stepped` processes a batch: one at a time, and no partition is
        #: forgotten (a rebalance) in the middle of one
        self.stepping = asyncio.Lock()

    @property
    def owned_articles(self) -> dict[str, ArticleState]:
        """The states of the articles this worker's article agent owns (see :class:`ArticleStates`)."""
        return self.articles.owned

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop cached state of partitions this worker no longer owns (after a rebalance)."""
        self.ads.forget(partitions)
        self.users.forget(partitions)
        self.redeliveries.forget(partitions)
        for p in partitions:
            self.idle_sources.discard(p)  # its next owner announces it

    def posterior_snapshot(self, stores: Stores) -> Counts:
        """Counts per context and arm: every partition's, this worker's own taking precedence."""
        return self.ads.posterior_snapshot(stores.bandit)

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
            return _run_through(self._attempt(records, stores, ingest_ms))
        except StoreUnavailable:
            raise
        except Exception as exc:
            return self._recover(records, stores, ingest_ms, exc)

    async def process_stepped(
        self,
        records: Sequence[Record],
        stores: Stores,
        now_ms: int | None = None,
        observe: Callable[[float], None] | None = None,
    ) -> Outputs:
        """:meth:`process`, handing the event loop back between the batch's steps (the worker's agent).

        The steps: parse and apply up to :data:`APPLY_STEP` events at a time, score with each
        model, score the challengers, then decide and write the tables. The batch is still one unit (one bandit
        snapshot, its effects undone whole on failure, its tables written at its end); between
        its steps the loop serves what waits for it (API requests, delivery reports), and no
        other batch: one batch is processed at a time (:attr:`stepping`). What the API reads
        (the tables, the latest scores, the committed bandit counts) changes only in the last step.
        ``observe`` gets each step's seconds.
        """
        ingest_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if not records:
            return Outputs(ingest_ms=ingest_ms)
        async with self.stepping:
            try:
                return await _run_stepped(self._attempt(records, stores, ingest_ms), observe)
            except StoreUnavailable:
                raise
            except Exception as exc:
                return self._recover(records, stores, ingest_ms, exc)

    def _recover(self, records: Sequence[Record], stores: Stores, ingest_ms: int, exc: Exception) -> Outputs:
        """After a batch raised ``exc``: a lone record's dead letter, else the records again one by one."""
        if len(records) == 1:
            return self._failed(records[0], exc, ingest_ms)
        return self._isolate(records, stores, ingest_ms)

    def _isolate(self, records: Sequence[Record], stores: Stores, ingest_ms: int) -> Outputs:
        """A batch that raised, processed again record by record (at once: this is rare)."""
        self.metrics.isolated_batches.inc()
        out = Outputs(ingest_ms=ingest_ms)
        for rec in records:
            try:
                part = _run_through(self._attempt((rec,), stores, ingest_ms))
            except StoreUnavailable:
                raise
            except Exception as exc:
                part = self._failed(rec, exc, ingest_ms)
            out.extend(part)
        return out

    def failed(self, rec: Record, exc: BaseException, ingest_ms: int) -> Outputs:
        """The dead letter of a record whose later output (after :meth:`process`) failed with ``exc``."""
        return self._failed(rec, exc, ingest_ms)

    def _failed(self, rec: Record, exc: BaseException, ingest_ms: int) -> Outputs:
        """The dead letter of a record whose processing raised ``exc`` (its effects are undone)."""
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("dead-lettering %s[%d]@%d: processing_error %s", rec.topic, rec.partition, rec.offset, reason)
        log.debug("processing_error traceback", exc_info=exc)
        self.redeliveries.mark(rec.partition, rec.offset)  # its dead letter is its output
        self.metrics.invalid.labels(reason="processing_error").inc()
        self.metrics.processing_errors.labels(error=type(exc).__name__).inc()
        out = Outputs(ingest_ms=ingest_ms)
        out.dead_letters.append(dead_letter(rec, reason, "processing_error", ingest_ms))
        return out

    def _attempt(self, records: Sequence[Record], stores: Stores, ingest_ms: int) -> Steps:
        """One attempt at a batch, in steps: all of its effects, or (when it raises) none of them.

        Tables are written last, after scoring and decisions: until then the batch's effects are
        in this process's caches only, and each unit undoes its own.
        """
        partition = records[0].partition
        handled = self.redeliveries.snapshot(partition)
        hwm = self.event_hwm.get(partition)
        users = self.users.begin(partition, stores.users)
        ads = self.ads.begin(stores.ad_pending, stores.bandit)
        try:
            out, tally = yield from self._run(records, stores, ingest_ms, users, ads)
        except BaseException:
            self.redeliveries.restore(partition, handled)
            if hwm is None:
                self.event_hwm.pop(partition, None)
            else:
                self.event_hwm[partition] = hwm
            users.undo()
            ads.undo()
            raise
        tally.publish(self.metrics)
        return out

    def _run(
        self, records: Sequence[Record], stores: Stores, ingest_ms: int, users: UserBatch, ads: AdBatch
    ) -> Generator[None, None, tuple[Outputs, _Tally]]:
        fresh = self.redeliveries.fresh(records)
        parsed = parse_records(fresh, self.config.max_event_bytes, ingest_ms)
        out = Outputs(
            dead_letters=parsed.dead_letters, ingest_ms=ingest_ms, events=[event for _, event in parsed.events]
        )
        if self.keep_session_starts:
            out.session_starts = [(r, e) for r, e in parsed.events if e["event_type"] == "session_start"]
        tally = _Tally(invalid=parsed.invalid, redelivered=len(records) - len(fresh))
        requests, ingest = yield from self._apply(records[0].partition, parsed.events, stores, out, tally, users, ads)

        # One predict per model, and the decisions, before any table write: should either raise,
        # the tables hold nothing of this attempt.
        if requests:
            tally.rows = len(requests)
            now = int(time.time() * 1000)
            kept = out.scored if self.keep_scored else None
            yield
            out.predictions = yield from score_steps(self.models, requests, now, kept)
            if SEGMENTS.name in self.models:
                _keep_segments(out.predictions, users)
            if self.shadow:
                yield
            self._score_shadow(requests, now, out)
            out.prediction_ingest_ms = [ingest.get((p["user_id"], p["event_id"]), ingest_ms) for p in out.predictions]
            for name in {r.model for r in requests} - set(self.models):
                tally.unscored[name] = sum(r.model == name for r in requests)
        if out.pending_clicks:
            tally.rows += len(out.pending_clicks)
            if "click" not in self.models:
                tally.unscored["click"] = len(out.pending_clicks)
        yield
        out.decisions = ads.decide(ingest_ms, tally.decisions)

        # One write per touched key.
        users.write()
        ads.write()
        users.trim()
        return out, tally

    def _apply(
        self,
        partition: int,
        events: list[tuple[Record, dict[str, Any]]],
        stores: Stores,
        out: Outputs,
        tally: _Tally,
        users: UserBatch,
        ads: AdBatch,
    ) -> Generator[None, None, tuple[list[ScoreRequest], dict[tuple[str, str], int]]]:
        """Per valid event of ``partition``, in order: its feature rows, its state update, its article and ad effects.

        Returns the score requests, and per (user_id, event_id) the record timestamp (ingest time).
        Yields after every :data:`APPLY_STEP` events (a step of :meth:`process_stepped`).
        """
        requests: list[ScoreRequest] = []
        ingest: dict[tuple[str, str], int] = {}
        kinds = tally.kinds
        cfg = self.config.state_config
        ingest_ms = out.ingest_ms
        defer = self.defer_clicks
        hwm_of = self.event_hwm
        article_of = self.articles.get
        load = users.load
        for i, (rec, event) in enumerate(events):
            if i and not i % APPLY_STEP:
                yield
            kind = event["event_type"]
            kinds[kind] = kinds.get(kind, 0) + 1
            uid = event["user_id"]
            if rec.timestamp_ms:
                ingest[(uid, event["event_id"])] = rec.timestamp_ms
            applied_offset, state = load(uid)
            ev = encode_event(event)
            hwm = hwm_of.get(partition, -1)
            if ev.t > hwm:
                hwm_of[partition] = ev.t
            # A row built before applying needs a state without this event; one built after, a state
            # with nothing later. A replay has the stored state, which may hold both: its rows are
            # marked, so that the first (exact) score can win downstream (docs/worker.md, "Delivery").
            before = _BEFORE.get(kind, ())
            if "click" in before:
                if defer:  # the article part comes in finish_clicks
                    req = ScoreRequest(
                        "click",
                        click_row(state, EMPTY_ARTICLE, ev, cfg),
                        event,
                        ingest_ms,
                        rec.offset <= applied_offset,
                    )
                    out.pending_clicks.append((req, event["article_id"], rec, rec.timestamp_ms or ingest_ms))
                else:
                    article = article_of(stores.articles, event["article_id"])
                    requests.append(
                        ScoreRequest(
                            "click", click_row(state, article, ev, cfg), event, ingest_ms, rec.offset <= applied_offset
                        )
                    )
            if "engagement" in before:
                requests.append(
                    ScoreRequest(
                        "engagement", engagement_row(state, ev, cfg), event, ingest_ms, rec.offset <= applied_offset
                    )
                )
            outcome = Outcome.DUPLICATE
            if rec.offset > applied_offset:  # not a replay of an event the stored state already holds
                outcome = apply_user(state, ev, cfg)
                if outcome is Outcome.DUPLICATE:
                    tally.duplicates += 1
                users.applied(uid, rec.offset, state)
            after = _AFTER.get(kind)
            if after:  # one user row, scored by each of them (churn, conversion and segment)
                row = user_row(state, ev.t, cfg)
                replayed = rec.offset < applied_offset
                requests += [ScoreRequest(name, row, event, ingest_ms, replayed) for name in after]
            if kind in ARTICLE_EVENTS:
                # Articles count each event once: duplicates and replays are not forwarded; nor are
                # events so late that the partition's watermark already passed them.
                if outcome is Outcome.APPLIED and ev.t >= hwm - ARTICLE_LATENESS_MS:
                    out.article_events.append((event["article_id"], cast(bytes, rec.value)))  # parsed: not None
            elif kind == "ad_request":
                ads.request(event)
            elif kind in ("ad_impression", "ad_click"):
                ads.event(event, kind, rec.partition)
        return requests, ingest

    def _score_shadow(self, requests: Sequence[ScoreRequest], now_ms: int, out: Outputs) -> None:
        """The challengers' scores of ``requests``; a challenger that fails is counted, not raised."""
        if not self.shadow:
            return
        preds, failed = score_shadow(self.shadow, self.models, requests, now_ms)
        out.shadow_predictions += preds
        for name, reason in failed.items():
            self.metrics.shadow_errors.labels(model=name).inc()
            log.warning("shadow model %s failed on a batch (its production scores are published): %s", name, reason)

    def source_watermark(self, partition: int) -> int | None:
        """The partition's promise: every article event it forwards from now on is at or after this."""
        hwm = self.event_hwm.get(partition)
        return None if hwm is None else hwm - ARTICLE_LATENESS_MS

    def click_watermark(self, out: Outputs) -> int | None:
        """The newest watermark the pending click rows read article popularity at."""
        if not out.pending_clicks:
            return None
        return max(
            article_watermark(req.event["event_time"], self.config.state_config) for req, *_ in out.pending_clicks
        )

    def finish_clicks(self, out: Outputs, stores: Stores) -> None:
        """Complete and score the pending click rows (article part as of each row's watermark).

        The batch's state is already written: a row whose scoring raises alone goes to the
        dead-letter topic as ``processing_error``, the others are published as usual.
        """
        pending, out.pending_clicks = out.pending_clicks, []
        if not pending:
            return
        cfg = self.config.state_config
        for req, article_id, _, _ in pending:
            article = self.articles.get(stores.articles, article_id)
            cast(list[float], req.row)[_ART] = article_row(article, req.event["event_time"], cfg)
        now = int(time.time() * 1000)
        kept = out.scored if self.keep_scored else None
        try:
            parts = [(score_requests(self.models, [req for req, *_ in pending], now, kept), pending)]
        except StoreUnavailable:
            raise
        except Exception:
            parts = []
            for item in pending:
                try:
                    parts.append((score_requests(self.models, [item[0]], now, kept), [item]))
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    failed = self._failed(item[2], exc, out.ingest_ms)
                    out.dead_letters += failed.dead_letters
        for preds, items in parts:
            ingest = {req.event["event_id"]: ms for req, _, _, ms in items}
            out.predictions += preds
            out.prediction_ingest_ms += [ingest[p["event_id"]] for p in preds]
        self._score_shadow([req for _, items in parts for req, *_ in items], now, out)
