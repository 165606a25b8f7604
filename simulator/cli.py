"""Command line: ``python -m simulator {generate,report,backfill,stream}``.

Bad arguments get one line naming the value and what was expected, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream import arguments
from stream.errors import ConfigError


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. churn_hazard_logit=[-4.3,1.1])")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _formats(text: str) -> tuple[str, ...]:
    from simulator.dataset import FORMATS

    out = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown format {bad}; expected a comma list of {list(FORMATS)}")
    return out


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulation")
    g.add_argument("--users", type=arguments.integer(lo=1), help="number of users (default 20000)")
    g.add_argument("--days", type=arguments.integer(lo=1), help="days of activity (default 60)")
    g.add_argument("--seed", type=arguments.integer(lo=0), help="random seed (default 42)")
    g.add_argument("--start", type=arguments.date, help="first day, YYYY-MM-DD (00:00 UTC)")
    g.add_argument("--bots", type=arguments.share, help="share of bot users")
    g.add_argument("--late", type=arguments.share, help="share of events delivered late (messy)")
    g.add_argument("--late-max-ms", type=arguments.integer(lo=1), help="maximum lateness in ms")
    g.add_argument("--duplicates", type=arguments.share, help="share of events delivered twice (messy)")
    g.add_argument("--missing", type=arguments.share, help="share of optional fields dropped (messy)")
    g.add_argument("--malformed", type=arguments.share, help="share of extra malformed records (messy)")
    g.add_argument(
        "--set",
        dest="settings",
        type=_setting,
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="any SimConfig knob (JSON value), repeatable",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    from simulator.config import SimConfig

    knobs: dict[str, Any] = dict(args.settings)
    for arg, knob in (
        ("users", "n_users"),
        ("days", "days"),
        ("seed", "seed"),
        ("start", "start"),
        ("bots", "bot_share"),
        ("late", "late_share"),
        ("late_max_ms", "late_max_ms"),
        ("duplicates", "duplicate_share"),
        ("missing", "missing_share"),
        ("malformed", "malformed_share"),
    ):
        v = getattr(args, arg, None)
        if v is not None:
            knobs[knob] = v
    return SimConfig.from_dict(knobs)


def _build_parser() -> argparse.ArgumentParser:
    p = arguments.Parser(prog="python -m simulator", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="write a dataset (events + ground truth) to a directory")
    g.add_argument("--out", type=Path, required=True, help="output directory")
    g.add_argument("--formats", type=_formats, default=("parquet", "jsonl"), help="parquet,jsonl")
    _add_config_args(g)

    r = sub.add_parser("report", help="print oracle metrics of a dataset directory")
    r.add_argument("path", type=Path, help="directory written by `generate`")
    r.add_argument("--json", action="store_true", help="print JSON instead of text")

    b = sub.add_parser("backfill", help="generate and insert into the configured ClickHouse")
    b.add_argument("--database", help="ClickHouse database (default: STREAM_CLICKHOUSE_DATABASE)")
    b.add_argument("--batch-rows", type=arguments.integer(lo=1000), default=1_000_000, help="rows per insert")
    _add_config_args(b)

    s = sub.add_parser("stream", help="produce a dataset to Kafka in delivery (event-time) order")
    s.add_argument("--bootstrap", help="Kafka host:port (default: STREAM_KAFKA_BOOTSTRAP)")
    speed = s.add_mutually_exclusive_group(required=True)
    speed.add_argument("--rate", type=arguments.number(0, lo_open=True), help="records per second")
    speed.add_argument("--fast", action="store_true", help="as fast as the broker takes them")
    s.add_argument("--from", dest="source", type=Path, help="stream a dataset directory instead of generating")
    s.add_argument("--shift-to-now", action="store_true", help="shift event times so the last is now")
    s.add_argument("--no-create-topics", action="store_true", help="do not create missing topics")
    _add_config_args(s)
    return p


def _generate(args: argparse.Namespace) -> Any:
    from simulator.dataset import generate

    cfg = config_from_args(args)
    t = time.perf_counter()
    ds = generate(cfg)
    print(
        f"generated {len(ds)} events for {cfg.n_users} users x {cfg.days} days in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
    )
    return ds


def main(argv: Sequence[str] | None = None) -> int:
    return arguments.run_command("simulator", lambda: _run(_build_parser().parse_args(argv)))


def _run(args: argparse.Namespace) -> int:
    if args.command == "generate":
        ds = _generate(args)
        out = ds.write(args.out, formats=args.formats)
        print(f"wrote {out}", file=sys.stderr)
        return 0
    if args.command == "report":
        from simulator.dataset import Dataset
        from simulator.report import format_metrics, oracle_metrics

        if not args.path.is_dir():
            raise ConfigError(f"dataset directory {str(args.path)!r} does not exist")
        metrics = oracle_metrics(Dataset.read(args.path))
        print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
        return 0

    from stream.config import load_settings

    overrides: dict[str, Any] = {}
    if args.command == "backfill":
        from simulator.sinks import backfill
        from stream.clickhouse import connect

        if args.database:
            overrides["clickhouse_database"] = args.database
        settings = load_settings(**overrides)
        ds = _generate(args)
        ch = connect(settings)
        try:
            counts = backfill(ch, ds, batch_rows=args.batch_rows, progress=True)
        finally:
            ch.close()
        for table, n in counts.items():
            print(f"{settings.clickhouse_database}.{table}: {n} rows")
        return 0

    from simulator.sinks import produce_dataset

    if args.bootstrap:
        overrides["kafka_bootstrap"] = args.bootstrap
    settings = load_settings(**overrides)
    if not settings.kafka_bootstrap:
        raise ConfigError("no Kafka address: pass --bootstrap HOST:PORT or set STREAM_KAFKA_BOOTSTRAP")
    from stream.kafka.topics import SESSION_EVENTS, ensure_topics

    if not args.no_create_topics:
        ensure_topics(settings.kafka_bootstrap, settings)
    if args.source:
        from simulator.dataset import Dataset

        ds = Dataset.read(args.source)
    else:
        ds = _generate(args)
    n = produce_dataset(
        ds,
        settings.kafka_bootstrap,
        settings.topic(SESSION_EVENTS),
        rate=None if args.fast else args.rate,
        shift_to_now=args.shift_to_now,
        settings=settings,
    )
    print(f"produced {n} records to {settings.topic(SESSION_EVENTS)}", file=sys.stderr)
    return 0
