"""``python -m stream backtest``: run a window offline and/or end to end, evaluate, write the report."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.errors import ConfigError


@dataclass
class Window:
    """The events to backtest: payloads in delivery order, flat events, truth (simulator only)."""

    payloads: list[tuple[bytes | None, bytes]]
    events: Any  # pandas DataFrame, flat columns
    truth: dict[str, Any] | None
    placements: tuple[str, ...]
    start_ms: int
    end_ms: int
    name: str


def load_window(
    path: Path,
    days: tuple[int, int] | None = None,
    placements: tuple[str, ...] = ("top_banner", "sidebar", "in_article", "footer"),
) -> Window:
    """A simulator dataset directory (with truth) or an events file, optionally cut to ``[day0, day1)``."""
    import orjson
    import pandas as pd

    from simulator.dataset import Dataset, epoch_ms
    from stream.clickhouse import events_to_frame

    payloads: list[tuple[bytes | None, bytes]]
    if path.is_dir():
        ds = Dataset.read(path)
        start = epoch_ms(ds.config.start)
        payloads = [(k or None, v) for k, v in ds.iter_payloads()]
        events = ds.events
        truth: dict[str, Any] | None = ds.truth
        placements = tuple(ds.config.placements)
        end = start + ds.config.days * 86_400_000
    else:
        from stream.tools.replay import FileSource

        payloads = [(i.key, i.value) for i in FileSource(path).items(None)]
        evs = []
        for _, v in payloads:
            try:
                evs.append(orjson.loads(v))
            except orjson.JSONDecodeError:
                continue
        events = events_to_frame(evs)
        events["event_time"] = events["event_time"].astype("datetime64[ms, UTC]").astype("int64")
        truth = None
        if events.empty:
            raise ConfigError(f"no events in {str(path)!r}")
        start = int(events.event_time.min()) // 86_400_000 * 86_400_000
        end = int(events.event_time.max()) + 1
    if days is not None:
        lo, hi = start + days[0] * 86_400_000, start + days[1] * 86_400_000
        keep = []
        for k, v in payloads:
            try:
                t = orjson.loads(v).get("event_time")
            except (orjson.JSONDecodeError, AttributeError):
                t = None
            if isinstance(t, int) and lo <= t < hi:
                keep.append((k, v))
        payloads = keep
        events = events[(events.event_time >= lo) & (events.event_time < hi)]
        start, end = lo, min(end, hi)
    if not payloads:
        raise ConfigError(f"the window of {str(path)!r} has no events")
    events = events.assign(event_time=pd.to_numeric(events.event_time))
    return Window(payloads, events, truth, placements, start, end, str(path))


def run_backtest(
    window: Window,
    models_dir: Path,
    out_dir: Path,
    *,
    mode: str = "offline",
    bootstrap: str | None = None,
    partitions: int = 4,
    batch_size: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Run, evaluate and report; returns the headline figures."""
    from stream.tools.backtest import evaluate as E
    from stream.tools.backtest.report import write_report
    from stream.tools.backtest.run import compare, load_models, run_e2e, run_offline

    if mode not in ("offline", "e2e", "both"):
        raise ConfigError(f"unknown mode {mode!r}; expected offline, e2e or both")
    models = load_models(models_dir)
    runs = []
    offline = e2e = None
    if mode in ("offline", "both"):
        offline = run_offline(
            window.payloads,
            models,
            placements=window.placements,
            partitions=partitions,
            batch_size=batch_size,
            seed=seed,
        )
        runs.append(offline)
    if mode in ("e2e", "both"):
        e2e = run_e2e(
            window.payloads,
            models_dir,
            bootstrap=bootstrap,
            partitions=partitions,
            expected_predictions=len(offline.predictions) if offline else None,
            expected_decisions=len(offline.decisions) if offline else None,
        )
        runs.append(e2e)
    main = offline or e2e
    assert main is not None
    quality = E.model_quality(main.predictions, window.events, window.truth, window.start_ms, window.end_ms)
    ctr = None
    if window.truth and "ad_arms" in window.truth:
        ctr = E.arm_ctr(window.truth, window.placements, window.start_ms)
    log = E.ad_log(window.events, window.truth, window.start_ms)
    bandits = E.bandit_comparison(log, main.decisions, ctr, window.placements, seed=seed) if ctr else None
    ope = E.off_policy(log, window.placements, E.target_policies(window.placements, ctr), ctr) if len(log) else None
    agreement = compare(offline, e2e) if offline and e2e else None
    context = {
        "data": window.name,
        "window": f"{_iso(window.start_ms)} .. {_iso(window.end_ms)}",
        "events": str(len(window.payloads)),
        "mode": mode,
        "models": ", ".join(f"{k} v{v}" for k, v in sorted(main.models.items())),
        "partitions": str(partitions),
        "batch size (offline)": str(batch_size),
    }
    md = write_report(
        out_dir,
        title="Backtest report",
        runs=runs,
        quality=quality,
        bandits=bandits,
        ope=ope,
        agreement=agreement,
        context=context,
    )
    return {"report": md, "runs": runs, "quality": quality, "bandits": bandits, "ope": ope, "agreement": agreement}


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")


def cmd_backtest(args: Any) -> int:
    from stream.config import load_settings

    settings = load_settings()
    days = None
    if args.days:
        try:
            a, b = (int(x) for x in args.days.split(":"))
        except ValueError as exc:
            raise ConfigError(f"bad --days {args.days!r}; expected FIRST:END like 0:7") from exc
        days = (a, b)
    data = Path(args.data)
    if not data.exists():
        raise ConfigError(f"no such dataset: {str(data)!r} (generate one with `python -m simulator generate`)")
    window = load_window(data, days, tuple(settings.placements))
    out = Path(args.out) if args.out else settings.reports_dir / f"backtest-{time.strftime('%Y%m%d-%H%M%S')}"
    res = run_backtest(
        window,
        Path(args.models) if args.models else settings.models_dir,
        out,
        mode=args.mode,
        bootstrap=args.bootstrap or settings.kafka_bootstrap,
        partitions=settings.topic_partitions,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    for run in res["runs"]:
        print(
            f"{run.mode}: {run.events} events in {run.seconds:.1f}s ({run.events_per_s:,.0f}/s), "
            f"{len(run.predictions)} predictions, {len(run.decisions)} decisions"
        )
    for name, v in res["quality"].overall.items():
        print(f"{name}: {res['quality'].metric[name]} {v['model']:.4f} (oracle {v['oracle']:.4f}, n={int(v['n'])})")
    if res["bandits"] is not None:
        for row in res["bandits"].summary.itertuples(index=False):
            print(f"bandit {row.policy}: mean reward {row.mean_reward:.5f}, regret {row.regret_vs_oracle:.1f}")
    print(f"report: {res['report']} (+ report.html)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("backtest", help="run the worker's code over a window and write a report")
    p.add_argument("data", help="simulator dataset directory (with truth) or an events .parquet/.jsonl file")
    p.add_argument(
        "--mode",
        choices=["offline", "e2e", "both"],
        default="offline",
        help="offline (no broker, default), e2e (broker + worker subprocess) or both (and compare)",
    )
    p.add_argument("--days", help="window FIRST:END in days from the data's start (default: all)")
    p.add_argument("--models", help="model registry directory (default: STREAM_MODELS_DIR)")
    p.add_argument("--out", help="report directory (default: STREAM_REPORTS_DIR/backtest-<time>)")
    p.add_argument("--bootstrap", help="Kafka for e2e (default: STREAM_KAFKA_BOOTSTRAP, else an embedded broker)")
    p.add_argument("--batch-size", type=int, default=500, help="offline records per round (default 500)")
    p.add_argument("--seed", type=int, default=0, help="bandit seed (the worker's is 0)")
    p.set_defaults(func=cmd_backtest)
