"""Running the worker's code over a window: offline (no broker) and end to end (broker + worker).

Both return a :class:`RunOutput` with the predictions and bandit decisions, so the evaluation
and the report do not care which mode produced them.

Offline mode feeds :class:`~stream.worker.processor.BatchProcessor` (the worker's own per-batch code)
with :class:`~stream.worker.processor.Record` batches, partitioned exactly as the replay partitions
(:func:`stream.kafka.partitioner.record_partition`, Kafka's murmur2), with plain dicts as stores:

1. The stream is cut into rounds of ``batch_size`` records in delivery order.
2. Each round is split by partition (order kept) and every partition's part is one batch.
3. After the round, its article events are folded into the article table (what the
   ``article-stats`` agent does in the worker).

What can differ from the worker, and why (see ``docs/replay.md``):

* churn and engagement scores depend only on the user's own events, in partition order: equal.
* click scores also read the article-popularity GlobalTable, which in the worker lags by a
  couple of micro-batches and a changelog round trip (``stream/worker/agents/articles.py``). Offline
  models a lag of one round; the worker's actual lag depends on timing, so click scores agree
  only where the article features agree (always, for a click model that does not use them).
* bandit decisions read every partition's counts from the ``bandit-stats`` GlobalTable, with
  the same kind of lag: decision ids agree, the chosen arms can differ.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.config import Settings
from stream.errors import InfraError, PrerequisiteError
from stream.events.records import DecisionRecord, PredictionRecord
from stream.kafka import clients
from stream.kafka.embedded import kafka_or_embedded
from stream.kafka.io import read_topic
from stream.kafka.partitioner import record_partition
from stream.models.registry import ModelRegistry
from stream.models.scoring import LoadedModel, ModelSet
from stream.state import ArticleState, fold_article_events, new_article_state
from stream.tools.process import WorkerProcess
from stream.tools.replay import PayloadSource, run_replay
from stream.worker.processor import EXPECTED_FEATURES, BatchProcessor, ProcessorConfig, Record, Stores

Payload = tuple[bytes | None, bytes]


@dataclass
class RunOutput:
    """What a run produced, plus its throughput and latency figures."""

    mode: str
    predictions: list[PredictionRecord] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    dead_letters: int = 0
    events: int = 0
    seconds: float = 0.0
    #: per-batch processing time (offline) or event-in -> prediction-out time (e2e), in ms
    latencies_ms: list[float] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def load_models(models_dir: Path) -> dict[str, LoadedModel]:
    """The registry's ``production`` models, checked against the worker's feature lists."""
    models = ModelSet(ModelRegistry(models_dir), EXPECTED_FEATURES)
    models.refresh()
    if not models.models:
        raise PrerequisiteError(
            f"no production model in {models_dir}: run `python -m batch_training run` or pass --models DIR"
        )
    return models.models


def run_offline(
    payloads: Sequence[Payload],
    models: Mapping[str, LoadedModel],
    *,
    placements: Sequence[str],
    partitions: int = 4,
    batch_size: int = 500,
    seed: int = 0,
    bandit_context: str = "device",
    click_join_window_ms: int = 600_000,
) -> RunOutput:
    """The worker's per-batch code over ``payloads`` without a broker (see the module docstring)."""
    proc = BatchProcessor(
        models,
        placements,
        ProcessorConfig(bandit_context=bandit_context, click_join_window_ms=click_join_window_ms, seed=seed),
    )
    users: dict[str, bytes] = {}
    pending: dict[str, bytes] = {}
    articles: dict[str, bytes] = {}
    bandit: dict[str, bytes] = {}
    stores = Stores(users=users, ad_pending=pending, articles=articles, bandit=bandit)
    offsets = [0] * partitions
    out = RunOutput("offline", models={n: m.version for n, m in models.items()})
    began = time.perf_counter()
    for start in range(0, len(payloads), batch_size):
        by_part: dict[int, list[Record]] = {}
        for key, value in payloads[start : start + batch_size]:
            p = record_partition(key, value, partitions)
            by_part.setdefault(p, []).append(Record(key, value, "session-events", p, offsets[p], None))
            offsets[p] += 1
        round_articles: list[dict[str, Any]] = []
        for p in sorted(by_part):
            t0 = time.perf_counter()
            res = proc.process(by_part[p], stores)
            out.latencies_ms.append((time.perf_counter() - t0) * 1000)
            out.predictions.extend(res.predictions)
            out.decisions.extend(res.decisions)
            out.dead_letters += len(res.dead_letters)
            round_articles.extend(orjson.loads(raw) for _, raw in res.article_events)
        touched = fold_article_events(round_articles, lambda aid: _stored_article(articles, aid))
        for aid, state in touched.items():  # the article agent's write, visible from the next round
            articles[aid] = state.to_bytes()
    out.seconds = time.perf_counter() - began
    out.events = len(payloads)
    return out


def _stored_article(articles: Mapping[str, bytes], aid: str) -> ArticleState:
    raw = articles.get(aid)
    return ArticleState.from_bytes(raw) if raw else new_article_state()


# --- end to end ---------------------------------------------------------------------------------
def _read_topic(
    bootstrap: str,
    settings: Settings,
    topic: str,
    expected: int | None,
    timeout_s: float,
    idle_s: float,
    worker: WorkerProcess | None = None,
) -> list[Any]:
    """Every record of ``topic`` from the start: until ``expected`` records, else until idle."""
    consumer = clients.consumer(
        bootstrap,
        settings,
        **{"group.id": f"backtest-{uuid.uuid4().hex}", "auto.offset.reset": "earliest", "enable.auto.commit": False},
    )
    consumer.subscribe([topic])
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(1000, 0.2)
            if worker is not None and worker.proc is not None and worker.proc.poll() is not None:
                raise InfraError(f"worker exited with status {worker.proc.returncode}; see {worker.log_path}")
            for m in msgs:
                if m.error() is None:
                    got.append(m)
            if msgs:
                last = time.monotonic()
            if expected is not None and len(got) >= expected and time.monotonic() - last >= 0.5:
                break
            if expected is None and got and time.monotonic() - last >= idle_s:
                break
    finally:
        consumer.close()
    return got


def run_e2e(
    payloads: Sequence[Payload],
    models_dir: Path,
    *,
    bootstrap: str | None = None,
    partitions: int = 4,
    expected_predictions: int | None = None,
    expected_decisions: int | None = None,
    timeout_s: float = 180.0,
    idle_s: float = 10.0,
    workdir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> RunOutput:
    """Replay ``payloads`` through a broker and a real ``python -m stream worker``; read outputs back.

    Topics get a fresh prefix and the worker a fresh id, state directory and chdb directory, so
    a run never sees another run's data. With ``bootstrap`` None an embedded broker is started.
    """
    from stream.clickhouse import local_server
    from stream.config import load_settings
    from stream.kafka.topics import BANDIT_DECISIONS, PREDICTIONS, SESSION_EVENTS, ensure_topics

    run_id = uuid.uuid4().hex[:8]
    work = Path(workdir or tempfile.mkdtemp(prefix=f"backtest-{run_id}-"))
    work.mkdir(parents=True, exist_ok=True)
    prefix = f"bt-{run_id}-"
    out = RunOutput("e2e")
    with kafka_or_embedded(bootstrap, partitions) as (bs, jvm):
        settings = load_settings(kafka_bootstrap=bs, topic_prefix=prefix, topic_partitions=partitions)
        if jvm is not None:
            settings = clients.for_embedded(settings)
        ensure_topics(bs, settings)
        worker = WorkerProcess(
            bs,
            {
                "STREAM_TOPIC_PREFIX": prefix,
                "STREAM_TOPIC_PARTITIONS": str(partitions),
                "STREAM_WORKER_ID": f"backtest-{run_id}",
                "STREAM_STATE_DIR": str(work / "state"),
                "STREAM_MODELS_DIR": str(Path(models_dir).resolve()),
                "STREAM_CHDB_PATH": str(work / "chdb"),
                "STREAM_WORKER_WEB_PORT": "0",
                "STREAM_DATA_DIR": str(work),
                "STREAM_KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
                **(env or {}),
            },
            work / "worker.log",
        )
        worker.start()
        try:
            worker.wait_for_log("loaded model", timeout_s=120)
            worker.wait_for_log("Ready", timeout_s=120)
            began = time.monotonic()
            run_replay(
                PayloadSource(list(payloads), "backtest"),
                bs,
                settings.topic(SESSION_EVENTS),
                progress=False,
                settings=settings,
            )
            preds = _read_topic(
                bs, settings, settings.topic(PREDICTIONS), expected_predictions, timeout_s, idle_s, worker
            )
            decs = _read_topic(
                bs, settings, settings.topic(BANDIT_DECISIONS), expected_decisions, timeout_s / 2, idle_s, worker
            )
            out.seconds = time.monotonic() - began
            inputs = read_topic(bs, settings.topic(SESSION_EVENTS), settings=settings, timeout_s=60)
        finally:
            worker.stop()
            local_server.stop(work / "chdb")  # the worker's embedded ClickHouse: nothing reads it after the run
    sent_at: dict[str, int] = {}
    for m in inputs:
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
            sent_at[orjson.loads(m.value())["event_id"]] = m.timestamp()[1]
    for m in preds:
        p = orjson.loads(m.value())
        out.predictions.append(p)
        t_in = sent_at.get(p["event_id"])
        if t_in is not None:
            out.latencies_ms.append(float(m.timestamp()[1] - t_in))
        out.models[p["model_name"]] = p["model_version"]
    out.decisions = [orjson.loads(m.value()) for m in decs]
    out.events = len(payloads)
    out.notes.append(f"worker log: {work / 'worker.log'}")
    return out


def compare(offline: RunOutput, e2e: RunOutput) -> dict[str, Any]:
    """Prediction and decision agreement of two runs over the same window.

    Returns per model: predictions in each run, ids in both, ids in only one, the largest score
    difference and the share of scores differing by more than 1e-6; and for decisions the same
    ids and the share with the same arm.
    """
    res: dict[str, Any] = {"models": {}}
    for name in sorted({p["model_name"] for p in offline.predictions + e2e.predictions}):
        a = {p["prediction_id"]: p["score"] for p in offline.predictions if p["model_name"] == name}
        b = {p["prediction_id"]: p["score"] for p in e2e.predictions if p["model_name"] == name}
        both = a.keys() & b.keys()
        diffs = np.array([abs(a[k] - b[k]) for k in both]) if both else np.zeros(0)
        res["models"][name] = {
            "offline": len(a),
            "e2e": len(b),
            "common": len(both),
            "only_offline": len(a.keys() - b.keys()),
            "only_e2e": len(b.keys() - a.keys()),
            "max_abs_diff": float(diffs.max()) if len(diffs) else 0.0,
            "share_differing": float((diffs > 1e-6).mean()) if len(diffs) else 0.0,
        }
    da = {d["decision_id"]: d["placement"] for d in offline.decisions}
    db = {d["decision_id"]: d["placement"] for d in e2e.decisions}
    common = da.keys() & db.keys()
    res["decisions"] = {
        "offline": len(da),
        "e2e": len(db),
        "common": len(common),
        "same_arm": float(np.mean([da[k] == db[k] for k in common])) if common else float("nan"),
    }
    return res
