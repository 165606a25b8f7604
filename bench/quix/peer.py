"""The worker's pipeline as a Quix Streams 3.x application: the peer of bench/worker.py (not the product).

Runs in its own virtualenv (bench/quix/requirements.txt; bench/worker.py builds it), with the
project's pure modules on ``sys.path``: the same parse and validation, user state, features,
article popularity, scoring and bandit functions as the worker, so that the bench compares the
framework and the design, not the arithmetic.

Built the way Quix's documentation and its best users would build it:

* **user stage** (input topic, key ``user_id``): per event, the user's state in Quix's RocksDB
  State (changelog-backed), the feature rows, the ad impression/click join (pending ads per user,
  also in State); it emits the rows to score, the article events and the bandit updates;
* **article popularity** through ``group_by(article_id)``: the article's state in State; an
  impression's click row gets its article part there (the popularity of the events folded so
  far, as of the row's ``article_watermark``), then the impression is folded;
* **bandit counts** through ``group_by(context)``: impressions and joined clicks update the
  counts per arm in State; an ``ad_request`` takes a snapshot of its context's counts;
* **scoring batched in a BatchingSink**: at each checkpoint, one vectorized predict per model
  for the rows of a partition, and the decisions, each against its request's snapshot of the
  counts (a posterior computed once per distinct snapshot; one per sink batch, as the worker's
  per-batch rule, would hold the posterior of a whole 1 s checkpoint); predictions and
  decisions go to Kafka through a confluent-kafka producer flushed before the checkpoint
  commits (at-least-once).

``STATE`` (argv) chooses how state is written:

* ``per-event``: ``State.get``/``set`` per event (decoded and encoded each time). Quix's
  transaction already keeps one value per key until the checkpoint, so the changelog gets one
  record per key and checkpoint;
* ``checkpoint``: decoded states are kept in process and written back once per key and
  checkpoint, from the sink's flush (the checkpoint's first step, before the changelogs are
  produced), through the ``State`` object of the key's last event in that checkpoint.

Differences from the worker, by design (bench/worker.py's check reports them):

* click rows read article popularity as folded when the impression reaches the article stage;
  the worker reads it from its GlobalTable, a few batches behind (``STREAM_ARTICLE_WAIT_MS=0``).
  Both depend on timing in a backlog replay, so click scores are compared, not required equal;
* decisions use a snapshot of the counts at another moment than the worker's: the decision ids
  (and counts) are the same, the arms may differ;
* invalid events are counted and dropped (the bench input has none); no ClickHouse sink; the
  decoded-state cache of ``checkpoint`` assumes this process keeps its partitions (the bench runs
  one consumer; a rebalance would need it dropped).

Usage: python bench/quix/peer.py STATE BOOTSTRAP IN_TOPIC OUT_PREFIX GROUP STATE_DIR MODELS_DIR
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from numpy.random import PCG64, Generator, SeedSequence  # noqa: E402
from quixstreams import Application, message_context  # noqa: E402
from quixstreams.sinks import BatchingSink, SinkBatch  # noqa: E402

from stream.bandits.thompson import ThompsonSampling, propensities  # noqa: E402
from stream.config import load_settings  # noqa: E402
from stream.events.ids import decision_id  # noqa: E402
from stream.events.schema import EventRejected, parse_event  # noqa: E402
from stream.kafka.io import produce_blocking  # noqa: E402
from stream.models import SERVED_FEATURES, TRIGGERS  # noqa: E402
from stream.models.registry import ModelRegistry  # noqa: E402
from stream.models.scoring import ModelSet, ScoreRequest, score_requests  # noqa: E402
from stream.state import (  # noqa: E402
    ARTICLE_FEATURES,
    DEFAULT_CONFIG,
    USER_FEATURES,
    ArticleState,
    Outcome,
    UserState,
    apply_user,
    article_row,
    click_row,
    encode_event,
    engagement_row,
    new_article_state,
    new_user_state,
    update_article,
    user_row,
)
from stream.state.article import ARTICLE_LATENESS_MS  # noqa: E402

log = logging.getLogger("quix-peer")
ARTICLE_EVENTS = frozenset({"article_impression", "article_click", "article_view"})
_EMPTY_ARTICLE = new_article_state()
#: where the article part of a click row starts and ends (click_row: user, article, position, context)
_ART = slice(len(USER_FEATURES), len(USER_FEATURES) + len(ARTICLE_FEATURES))
POLICY = "thompson"


class Keyed:
    """One kind of value per message key in Quix State, decoded for the processing function.

    ``write_back`` False: ``State.get_bytes``/``set_bytes`` and decode/encode on every call.
    True: decoded values stay in process; :meth:`write_back` sets each dirty one once, through
    the ``State`` of its last event (whose transaction is the open checkpoint's).
    """

    def __init__(
        self, name: bytes, decode: Callable[[bytes | None], Any], encode: Callable[[Any], bytes], write_back: bool
    ) -> None:
        self.name, self.decode, self.encode, self.cached = name, decode, encode, write_back
        self.values: dict[Any, Any] = {}
        self.dirty: dict[Any, Any] = {}

    def get(self, state: Any, key: Any) -> Any:
        if self.cached:
            value = self.values.get(key)
            if value is None:
                value = self.values[key] = self.decode(state.get_bytes(self.name))
            return value
        return self.decode(state.get_bytes(self.name))

    def put(self, state: Any, key: Any, value: Any) -> None:
        if self.cached:
            self.values[key] = value
            self.dirty[key] = state
        else:
            state.set_bytes(self.name, self.encode(value))

    def write_back(self) -> None:
        for key, state in self.dirty.items():
            state.set_bytes(self.name, self.encode(self.values[key]))
        self.dirty.clear()


def _user(raw: bytes | None) -> UserState:
    return UserState.from_bytes(raw) if raw else new_user_state()


def _article(raw: bytes | None) -> ArticleState:
    return ArticleState.from_bytes(raw) if raw else new_article_state()


def _json(raw: bytes | None) -> Any:
    return orjson.loads(raw) if raw else {}


def _brief(event: dict[str, Any]) -> dict[str, Any]:
    """What a prediction record needs of its event (stream.models.scoring.score_requests)."""
    return {
        "event_id": event["event_id"],
        "user_id": event["user_id"],
        "session_id": event.get("session_id"),
        "article_id": event.get("article_id"),
        "event_time": event["event_time"],
    }


def _row(row: list[float]) -> list[float | None]:
    """A row for JSON: NaN as null (orjson's too), read back as NaN by ``np.array(..., float32)``."""
    return [None if v != v else v for v in row]


class ScoringSink(BatchingSink):
    """Scores a checkpoint's rows per partition (one predict per model) and makes the decisions."""

    def __init__(
        self,
        bootstrap: str,
        out_prefix: str,
        models: Any,
        placements: tuple[str, ...],
        before_flush: Callable[[], None],
    ) -> None:
        super().__init__()
        self.bootstrap, self.models, self.before_flush = bootstrap, models, before_flush
        self.predictions, self.decisions = f"{out_prefix}predictions", f"{out_prefix}decisions"
        self.policy = ThompsonSampling(placements, seed=0)
        #: posteriors by (context, counts): requests between two impressions share one
        self.posteriors: dict[tuple[str, tuple[Any, ...]], Any] = {}
        self.producer: Producer | None = None

    def setup(self) -> None:
        self.producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "compression.type": "lz4"})

    def _produce(self, topic: str, value: bytes, key: bytes) -> None:
        assert self.producer is not None
        produce_blocking(self.producer, topic, value, key, wait_s=0.01)

    def flush(self) -> None:
        self.before_flush()  # state written back before the checkpoint produces the changelogs
        super().flush()
        assert self.producer is not None
        if self.producer.flush(60) != 0:
            raise RuntimeError("predictions or decisions not delivered within 60 s")

    def write(self, batch: SinkBatch) -> None:
        requests, ads = [], []
        for item in batch:
            v = item.value
            if "req" in v:
                ads.append(v)
            else:
                requests.append(ScoreRequest(v["m"], v["row"], v["ev"], 0))
        now = int(time.time() * 1000)
        for p in score_requests(self.models, requests, now):
            self._produce(self.predictions, orjson.dumps(p), p["user_id"].encode())
        for v in ads:
            context, req = v["ctx"], v["req"]
            counts = tuple(sorted((a, *c) for a, c in v["counts"].items()))
            post = self.posteriors.get((context, counts))
            if post is None:
                if len(self.posteriors) > 10_000:
                    self.posteriors.clear()
                alpha, beta = self.policy.posterior({a: (i, c) for a, i, c in counts})
                post = self.posteriors[(context, counts)] = (
                    alpha,
                    beta,
                    propensities(alpha, beta),
                    self.policy.arm_means(alpha, beta),
                )
            alpha, beta, props, means = post
            rid, uid = req["request_id"], req["user_id"]
            self.policy.rng = Generator(PCG64(SeedSequence([0, zlib.crc32(rid.encode())])))
            d = self.policy.choose(alpha, beta, props, means)
            self._produce(
                self.decisions,
                orjson.dumps(
                    {
                        "schema_version": 1,
                        "decision_id": decision_id(POLICY, uid, rid),
                        "request_id": rid,
                        "event_id": req["event_id"],
                        "user_id": uid,
                        "context": context,
                        "placement": d.arm,
                        "propensity": d.propensity,
                        "policy": POLICY,
                        "arm_means": d.arm_means,
                        "event_time": req["event_time"],
                        "decided_at": now,
                    }
                ),
                uid.encode(),
            )


def main() -> None:
    mode, bootstrap, in_topic, out_prefix, group, state_dir, models_dir = sys.argv[1:8]
    if mode not in ("per-event", "checkpoint"):
        sys.exit(f"STATE must be per-event or checkpoint, not {mode!r}")
    write_back = mode == "checkpoint"
    s = load_settings()
    cfg = replace(DEFAULT_CONFIG, lateness_ms=s.allowed_lateness_ms)  # as stream/worker/app.py
    model_set = ModelSet(ModelRegistry(Path(models_dir)), SERVED_FEATURES)
    model_set.refresh()
    placements = tuple(s.placements)
    users = Keyed(b"u", _user, UserState.to_bytes, write_back)
    pending = Keyed(b"ads", _json, orjson.dumps, write_back)
    articles = Keyed(b"a", _article, ArticleState.to_bytes, write_back)
    counts = Keyed(b"c", _json, orjson.dumps, write_back)
    hwm: dict[int, int] = {}  # per input partition, the newest event time (the worker's article lateness rule)

    def context_of(event: dict[str, Any]) -> str:
        return "all" if s.bandit_context == "none" else str((event.get("device") or {}).get("type", "unknown"))

    def user_step(value: bytes, state: Any) -> list[dict[str, Any]]:
        try:
            event = parse_event(value, s.max_event_bytes)
        except EventRejected:
            return []
        uid, kind = event["user_id"], event["event_type"]
        st = users.get(state, uid)
        ev = encode_event(event)
        partition = message_context().partition
        newest = hwm.get(partition, -1)
        if ev.t > newest:
            hwm[partition] = ev.t
        models = TRIGGERS.get(kind, ())
        out: list[dict[str, Any]] = []
        click = None
        if "click" in models:
            click = {
                "k": "art",
                "aid": event["article_id"],
                "t": ev.t,
                "type": kind,
                "fold": False,
                "row": _row(click_row(st, _EMPTY_ARTICLE, ev, cfg)),
                "ev": _brief(event),
            }
            out.append(click)
        elif "engagement" in models:
            out.append({"k": "row", "m": "engagement", "row": _row(engagement_row(st, ev, cfg)), "ev": _brief(event)})
        outcome = apply_user(st, ev, cfg)
        users.put(state, uid, st)
        if "churn" in models:  # session_end: one user row for churn, conversion and segment
            row = _row(user_row(st, ev.t, cfg))
            out += [{"k": "row", "m": m, "row": row, "ev": _brief(event)} for m in models]
        if kind in ARTICLE_EVENTS:
            if outcome is Outcome.APPLIED and ev.t >= newest - ARTICLE_LATENESS_MS:
                if click is not None:
                    click["fold"] = True
                else:
                    out.append({"k": "art", "aid": event["article_id"], "t": ev.t, "type": kind, "fold": True})
        elif kind == "ad_request":
            out.append(
                {
                    "k": "ad",
                    "ctx": context_of(event),
                    "req": {
                        "request_id": event["request_id"],
                        "event_id": event["event_id"],
                        "user_id": uid,
                        "event_time": event["event_time"],
                    },
                }
            )
        elif kind in ("ad_impression", "ad_click"):
            update = ad_event(state, event, kind)
            if update is not None:
                out.append(update)
        return out

    def ad_event(state: Any, event: dict[str, Any], kind: str) -> dict[str, Any] | None:
        """The worker's join: an impression is a trial; a click within the window on it, a success."""
        uid, rid, t, placement = event["user_id"], event["request_id"], event["event_time"], event["placement"]
        if placement not in placements:
            return None
        ads = {r: v for r, v in pending.get(state, uid).items() if t - v[2] <= s.click_join_window_ms}
        try:
            if kind == "ad_impression":
                if rid in ads:
                    return None
                context = context_of(event)
                ads[rid] = [placement, context, t, 0]
                return {"k": "ad", "ctx": context, "arm": placement, "imp": 1, "clk": 0}
            imp = ads.get(rid)
            if imp is None or imp[3] or imp[0] != placement or not 0 <= t - imp[2] <= s.click_join_window_ms:
                return None
            imp[3] = 1
            return {"k": "ad", "ctx": imp[1], "arm": placement, "imp": 0, "clk": 1}
        finally:
            pending.put(state, uid, ads)

    def article_step(value: dict[str, Any], state: Any) -> list[dict[str, Any]]:
        aid = value["aid"]
        art = articles.get(state, aid)
        out = []
        if "row" in value:  # an impression: its click row's article part, before it is folded
            row = value["row"]
            row[_ART] = _row(article_row(art, value["t"], cfg))
            out.append({"m": "click", "row": row, "ev": value["ev"]})
        if value["fold"]:
            update_article(art, {"event_time": value["t"], "event_type": value["type"]})
            articles.put(state, aid, art)
        return out

    def bandit_step(value: dict[str, Any], state: Any) -> list[dict[str, Any]]:
        context = value["ctx"]
        arms = counts.get(state, context)
        if "req" in value:
            return [{"ctx": context, "req": value["req"], "counts": {a: list(c) for a, c in arms.items()}}]
        c = arms.setdefault(value["arm"], [0, 0])
        c[0] += value["imp"]
        c[1] += value["clk"]
        counts.put(state, context, arms)
        return []

    def write_back() -> None:
        for keyed in (users, pending, articles, counts):
            keyed.write_back()

    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=state_dir,
        loglevel="WARNING",
        producer_extra_config={"linger.ms": 5, "compression.type": "lz4"},
    )
    sink = ScoringSink(bootstrap, out_prefix, model_set.models, placements, write_back)
    source = app.topic(in_topic, key_deserializer="bytes", value_deserializer="bytes")
    sdf = app.dataframe(source).apply(user_step, stateful=True, expand=True)
    sdf[sdf["k"] == "row"].sink(sink)
    arts = sdf[sdf["k"] == "art"].group_by("aid", name="quix-articles")
    arts.apply(article_step, stateful=True, expand=True).sink(sink)
    ads = sdf[sdf["k"] == "ad"].group_by("ctx", name="quix-bandit")
    ads.apply(bandit_step, stateful=True, expand=True).sink(sink)
    app.run()


if __name__ == "__main__":
    main()
