"""The compute floor of bench/worker.py: the worker's BatchProcessor over records already in memory.

No Kafka, no faust: the input records (the bench's topic, read once with their partitions and
offsets) are cut into the worker's batches (``STREAM_SCORE_BATCH_SIZE`` records of one
partition, partitions in turn), processed with plain dicts as the tables, and each round's
article events are folded into the article dict (the article agent's work) before the next.
The process gets the worker's GC tuning (stream/worker/tuning.py). What is left out: encoding and
producing the outputs, and the changelogs.

Prints one JSON line: events, seconds and CPU seconds between 10% and 90% of the input.

Usage: python bench/floor.py RECORDS_FILE MODELS_DIR [PREDICTIONS_FILE] [--monitoring]
(RECORDS_FILE: JSON lines [partition, offset, key, value]; PREDICTIONS_FILE: where to write the
predictions and decisions, for the bench's check.) ``--monitoring`` also feeds each batch to the
worker's monitor (STREAM_MONITORING: outcome join, online quality, drift; stream/worker/monitor.py)
as the session-events agent does, and publishes it every 10,000 events.

    python bench/floor.py --simulate [--users 300] [--days 6] [--repeats 2]

runs without Kafka: simulated events (4 partitions by user) and models with reference profiles
trained on them, then the floor without and with monitoring, alternating, ``--repeats`` times
each; prints each run and the median CPU µs per event of both, and their difference.

    python bench/floor.py --simulate --recommendations [--users 300] [--days 6] [--repeats 2]

runs the floor without and with the recommendations of each batch's session_starts, alternating
(``STREAM_RECOMMEND_ON_SESSION_START``: the reads appended, one ranking per batch as the
session-events agent does, with a recommendation model of the simulated reads; the reads alone
are appended in both runs).

    python bench/floor.py --simulate --baseline REV [--users 300] [--days 6] [--repeats 3]

instead runs the floor (without monitoring) of this tree and of git revision REV (exported with
``git archive``) on the same simulated input, each in a process of its own, alternating (the
order reversed every other repeat); the first repeat checks that both publish the same
predictions and decisions (all fields but the wall-clock ``predicted_at``/``decided_at``). Prints
each run and the medians of events/s and CPU µs per event of both, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from stream.config import load_settings  # noqa: E402
from stream.kafka.partitioner import partition_for  # noqa: E402
from stream.models.registry import ModelRegistry  # noqa: E402
from stream.models.scoring import ModelSet  # noqa: E402
from stream.state import ArticleState, fold_article_events, new_article_state  # noqa: E402
from stream.worker.monitor import Monitor, build_monitor  # noqa: E402
from stream.worker.processor import EXPECTED_FEATURES, BatchProcessor, ProcessorConfig, Record, Stores  # noqa: E402
from stream.worker.recommendations import Recommendations  # noqa: E402
from stream.worker.tuning import limit_blas_threads, tune_gc  # noqa: E402


def batches(records: list[Record], size: int) -> list[list[Record]]:
    """Per partition, runs of ``size`` records in offset order; the partitions in turn."""
    parts: dict[int, list[Record]] = {}
    for rec in records:
        parts.setdefault(rec.partition, []).append(rec)
    runs = {p: [recs[i : i + size] for i in range(0, len(recs), size)] for p, recs in sorted(parts.items())}
    out = []
    for i in range(max(len(r) for r in runs.values())):
        out += [r[i] for r in runs.values() if i < len(r)]
    return out


def load_records(records_file: Path) -> list[Record]:
    records = []
    for line in records_file.read_bytes().splitlines():
        p, o, k, v = orjson.loads(line)
        records.append(Record(k.encode() if k is not None else None, v.encode(), "session-events", p, o, None))
    return records


def run(
    records: list[Record],
    models_dir: Path,
    *,
    monitoring: bool,
    keep: Path | None = None,
    recommend: bool | None = None,
) -> dict[str, Any]:
    """One pass of the processor (and, with ``monitoring``, the monitor) over ``records``.

    ``recommend`` not None: the reads are appended as the session-events agent does, and with
    True each batch's session_starts are ranked and their records made.
    """
    s = load_settings()
    models = ModelSet(ModelRegistry(models_dir), EXPECTED_FEATURES)
    models.refresh()
    config = ProcessorConfig(
        bandit_context=s.bandit_context, click_join_window_ms=s.click_join_window_ms, max_event_bytes=s.max_event_bytes
    )
    proc = BatchProcessor(models.models, s.placements, config)
    monitor: Monitor | None = None
    if monitoring:
        monitor = build_monitor(s, models.registry, proc.metrics.registry)
        proc.keep_scored = True
    runs = batches(records, s.score_batch_size)
    articles: dict[str, bytes] = {}
    stores = Stores(users={}, ad_pending={}, articles=articles, bandit={})
    recs = None
    if recommend is not None:
        recs = Recommendations(ModelRegistry(models_dir), {}, articles, s.recommend_max_age_hours, s.recommend_reads)
        recs.refresh_model(force=True)
        limit_blas_threads()
        proc.keep_session_starts = recommend
    made = 0

    def article(aid: str) -> ArticleState:
        raw = articles.get(aid)
        return ArticleState.from_bytes(raw) if raw else new_article_state()

    tune_gc(s.gc_threshold, s.gc_freeze)
    total, done = len(records), 0
    marks = {0.0: (time.perf_counter(), time.process_time(), 0)}
    kept: list[dict] = []
    published = 0
    in_monitor = 0.0  # CPU seconds in the monitor, over the whole input
    # a round: one batch per partition, then the article agent's fold (what the worker interleaves)
    per_round = len({r[0].partition for r in runs})
    for start in range(0, len(runs), per_round):
        round_events = []
        for batch in runs[start : start + per_round]:
            out = proc.process(batch, stores)
            if recs is not None:
                reads = recs.record(out.events, proc.keep_session_starts)
                if out.session_starts:
                    ranked, _ = recs.at_session_start(out.session_starts, reads, s.recommend_k, int(time.time() * 1000))
                    made += len(ranked)
            if monitor is not None:
                c = time.process_time()
                monitor.observe(batch[-1].partition, out)
                in_monitor += time.process_time() - c
            round_events += [orjson.loads(raw) for _, raw in out.article_events]
            if keep is not None:
                kept += out.predictions + out.decisions
            done += len(batch)
        if monitor is not None and done - published >= 10_000:  # the worker's timer, in event terms
            c = time.process_time()
            monitor.publish()
            in_monitor += time.process_time() - c
            published = done
        for aid, state in fold_article_events(round_events, article).items():
            articles[aid] = state.to_bytes()
        for frac in (0.1, 0.9):
            if frac not in marks and done >= frac * total:
                marks[frac] = (time.perf_counter(), time.process_time(), done)
    if marks[0.9][2] == marks[0.1][2]:  # a tiny input: one round holds both marks
        marks[0.1] = marks[0.0]
    (t0, c0, n0), (t1, c1, n1) = marks[0.1], marks[0.9]
    if keep is not None:
        keep.write_bytes(b"\n".join(orjson.dumps(x) for x in kept))
    fig: dict[str, Any] = {"events": n1 - n0, "seconds": t1 - t0, "cpu_s": c1 - c0}
    if recs is not None:
        fig["recommendations"] = made
    if monitor is not None:
        m = proc.metrics.registry.get_sample_value
        fig["joined"] = sum(
            m("stream_outcomes_joined_total", {"model": name, "version": ver}) or 0.0
            for name, ver in {(k[0], k[1]) for k in monitor.quality}
        )
        fig["drift_windows"] = sum(1 for w in monitor.drift.values() if w is not None)
        fig["monitor_cpu_us_per_event"] = in_monitor / total * 1e6
    return fig


def simulated(work: Path, users: int, days: int) -> tuple[list[Record], Path]:
    """Simulated events as records of 4 partitions (keyed by user), and models with profiles trained on them
    (and a recommendation model of their reads)."""
    from simulator import SimConfig, generate
    from tests.support.models import register_recommendation, train_and_register

    events = list(generate(SimConfig(n_users=users, days=days, seed=7)).iter_events())
    models = work / "models"
    train_and_register(models, events[:30_000], seed=1, profile=True)
    register_recommendation(models, events[:30_000], seed=1)
    offsets = [0, 0, 0, 0]
    records = []
    for e in events:
        key = e["user_id"].encode()
        p = partition_for(key, 4)
        records.append(Record(key, orjson.dumps(e), "session-events", p, offsets[p], None))
        offsets[p] += 1
    return records, models


def compare_monitoring(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        records, models = simulated(Path(tmp), args.users, args.days)
        print(f"{len(records)} events, {args.users} users, {args.days} days", flush=True)
        us: dict[bool, list[float]] = {False: [], True: []}
        inside: list[float] = []
        for r in range(args.repeats):
            for on in (False, True) if r % 2 == 0 else (True, False):
                fig = run(records, models, monitoring=on)
                us[on].append(fig["cpu_s"] / fig["events"] * 1e6)
                if on:
                    inside.append(fig["monitor_cpu_us_per_event"])
                print(orjson.dumps({"monitoring": on, **fig, "cpu_us_per_event": us[on][-1]}).decode(), flush=True)
    off, on = statistics.median(us[False]), statistics.median(us[True])
    print(f"median CPU per event in the monitor itself: {statistics.median(inside):.1f} µs")
    diff = f"{on - off:+.1f} µs, {on / off - 1:+.1%}"
    print(f"median CPU per event: {off:.1f} µs without monitoring, {on:.1f} µs with ({diff})")


def compare_recommendations(args: argparse.Namespace) -> None:
    """The floor without and with recommendations at session_start, alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        records, models = simulated(Path(tmp), args.users, args.days)
        starts = sum(b'"session_start"' in (r.value or b"") for r in records)
        print(f"{len(records)} events ({starts} session_start), {args.users} users, {args.days} days", flush=True)
        us: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.repeats):
            for on in (False, True) if r % 2 == 0 else (True, False):
                fig = run(records, models, monitoring=False, recommend=on)
                us[on].append(fig["cpu_s"] / fig["events"] * 1e6)
                print(orjson.dumps({"recommend": on, **fig, "cpu_us_per_event": us[on][-1]}).decode(), flush=True)
    off, on = statistics.median(us[False]), statistics.median(us[True])
    diff = f"{on - off:+.1f} µs, {on / off - 1:+.1%}"
    print(f"median CPU per event: {off:.1f} µs without recommendations at session_start, {on:.1f} µs with ({diff})")


def _outputs(path: Path) -> list[dict[str, Any]]:
    """Predictions and decisions as ``run(keep=...)`` wrote them, without their wall-clock fields."""
    out = []
    for line in path.read_bytes().splitlines():
        rec = orjson.loads(line)
        rec.pop("predicted_at", None)
        rec.pop("decided_at", None)
        out.append(rec)
    return out


def compare_baseline(args: argparse.Namespace) -> None:
    """This tree's floor against the floor of revision ``args.baseline``, alternating, each in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        records, models = simulated(work, args.users, args.days)
        records_file = work / "records.jsonl"
        rows = ([r.partition, r.offset, (r.key or b"").decode(), (r.value or b"").decode()] for r in records)
        records_file.write_bytes(b"\n".join(orjson.dumps(row) for row in rows))
        base = work / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        trees = {"this": ROOT, args.baseline: base}
        print(f"{len(records)} events, {args.users} users, {args.days} days; this tree vs {args.baseline}", flush=True)
        figs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for r in range(args.repeats):
            for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
                tree = trees[name]
                cmd = [sys.executable, str(tree / "bench" / "floor.py"), str(records_file), str(models)]
                if r == 0:
                    cmd.append(str(work / f"outputs-{name == 'this'}.jsonl"))
                env = {**os.environ, "PYTHONPATH": str(tree)}
                done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, check=True, text=True)
                fig = orjson.loads(done.stdout.strip().splitlines()[-1])
                fig["cpu_us_per_event"] = fig["cpu_s"] / fig["events"] * 1e6
                fig["events_per_s"] = fig["events"] / fig["seconds"]
                figs[name].append(fig)
                print(orjson.dumps({"tree": name, **fig}).decode(), flush=True)
        mine, theirs = (_outputs(work / f"outputs-{flag}.jsonl") for flag in (True, False))
        same = "equal" if mine == theirs else "DIFFERENT"
        print(f"outputs of the first repeat: {len(mine)} vs {len(theirs)} predictions and decisions, {same}")
    for key, unit in (("events_per_s", "events/s"), ("cpu_us_per_event", "CPU µs per event")):
        a = statistics.median(f[key] for f in figs["this"])
        b = statistics.median(f[key] for f in figs[args.baseline])
        print(f"median {unit}: {a:,.1f} this tree, {b:,.1f} at {args.baseline} (×{a / b:.3f})")
    if mine != theirs:
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records_file", nargs="?", type=Path)
    ap.add_argument("models_dir", nargs="?", type=Path)
    ap.add_argument("predictions_file", nargs="?", type=Path)
    ap.add_argument("--monitoring", action="store_true", help="feed every batch to the worker's monitor too")
    ap.add_argument("--simulate", action="store_true", help="simulated input; runs without and with monitoring")
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--days", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--baseline", metavar="REV", help="with --simulate: this tree's floor against revision REV's")
    ap.add_argument(
        "--recommendations",
        action="store_true",
        help="with --simulate: without and with recommendations at session_start",
    )
    args = ap.parse_args()
    if args.simulate and args.recommendations:
        compare_recommendations(args)
        return
    if args.simulate and args.baseline:
        compare_baseline(args)
        return
    if args.simulate:
        compare_monitoring(args)
        return
    if args.records_file is None or args.models_dir is None:
        ap.error("RECORDS_FILE and MODELS_DIR are required without --simulate")
    fig = run(load_records(args.records_file), args.models_dir, monitoring=args.monitoring, keep=args.predictions_file)
    print(orjson.dumps(fig).decode())


if __name__ == "__main__":
    main()
