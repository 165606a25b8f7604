"""``python -m stream``: the product's command line.

Every subcommand turns a :class:`~stream.errors.StreamError` into one line on stderr and exit
code 2; argparse does the same for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from stream import arguments
from stream.errors import StreamError

Handler = Callable[[argparse.Namespace], int]


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_kafka_up(args: argparse.Namespace) -> int:
    """Run an embedded broker in the foreground until Ctrl-C / SIGTERM."""
    from stream.config import load_settings
    from stream.errors import ConfigError
    from stream.kafka.clients import for_embedded
    from stream.kafka.embedded import EmbeddedKafka
    from stream.kafka.topics import ensure_topics

    settings = load_settings()
    users = None
    if args.sasl:  # the user the clients will log in as: the same variables configure both sides
        name, password = settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()
        if not name or not password:
            raise ConfigError(
                "`kafka up --sasl` creates the user STREAM_KAFKA_SASL_USERNAME with the password "
                "STREAM_KAFKA_SASL_PASSWORD: set both"
            )
        users = {name: password}
    protocol = {
        (False, False): "PLAINTEXT",
        (True, False): "SASL_PLAINTEXT",
        (False, True): "SSL",
        (True, True): "SASL_SSL",
    }[(args.sasl, args.ssl)]
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    broker = EmbeddedKafka(
        partitions=settings.topic_partitions,
        sasl_users=users,
        tls=args.ssl,
        max_message_bytes=settings.max_message_bytes,
    )
    try:
        with broker:
            bootstrap = broker.address(protocol)
            settings = (
                load_settings(kafka_security_protocol=protocol, kafka_ssl_cafile=broker.ca_file)
                if protocol != "PLAINTEXT"
                else for_embedded(settings)
            )
            if not args.no_topics:
                ensure_topics(bootstrap, settings)
            exports = {"STREAM_KAFKA_BOOTSTRAP": bootstrap}
            if protocol != "PLAINTEXT":
                exports["STREAM_KAFKA_SECURITY_PROTOCOL"] = protocol
            if broker.ca_file is not None:
                exports["STREAM_KAFKA_SSL_CAFILE"] = str(broker.ca_file)
            print(f"Kafka is up: bootstrap {bootstrap}", flush=True)
            for key, value in exports.items():
                print(f"  export {key}={value}", flush=True)
            if users:
                print(
                    f"  (SASL user {settings.kafka_sasl_username!r}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)", flush=True
                )
            others = [f"{name} {broker.address(name)}" for name in broker.ports if name != protocol]
            print(f"  other listeners: {', '.join(others)}", flush=True)
            print(f"  broker log: {broker.log_path}  (Ctrl-C to stop)", flush=True)
            assert broker.proc is not None
            broker.proc.wait()
            print("the broker exited on its own; see its log", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("stopping Kafka...", file=sys.stderr)
        return 0


def cmd_kafka_fetch(args: argparse.Namespace) -> int:
    from stream.kafka.embedded import ensure_jars

    print(ensure_jars(quiet=False))
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from stream.config import load_settings
    from stream.kafka.topics import ensure_topics

    settings = load_settings()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    if not bootstrap:
        raise StreamError("no Kafka address: pass --bootstrap HOST:PORT or set STREAM_KAFKA_BOOTSTRAP")
    for name, status in ensure_topics(bootstrap, settings).items():
        print(f"{name}: {status}")
    return 0


def config_table() -> str:
    """The Markdown table of every setting (the README embeds it; a test keeps them equal)."""
    from stream.config import Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default
        if hasattr(default, "get_secret_value"):
            default = "(empty)" if not default.get_secret_value() else "(set)"
        elif isinstance(default, tuple):
            default = ",".join(map(str, default))
        elif default is None:
            default = "(unset)"
        else:
            from stream.config import ROOT

            default = str(default).replace(str(ROOT) + "/", "./")
        rows.append(f"| `STREAM_{name.upper()}` | `{default}` | {info.description} |")
    return "\n".join(rows)


def cmd_config(args: argparse.Namespace) -> int:
    from stream.config import load_settings

    if args.markdown:
        print(config_table())
        return 0
    for key, value in load_settings().model_dump().items():
        print(f"STREAM_{key.upper()}={value}")  # SecretStr prints as '**********'
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from stream.config import load_settings
    from stream.worker.run import run_worker

    settings = load_settings()
    return run_worker(settings, loglevel=args.loglevel or settings.log_level.lower())


def cmd_demo(args: argparse.Namespace) -> int:
    given = {
        k: v
        for k, v in (("users", args.users), ("days", args.days), ("rate", args.rate), ("profile", args.profile))
        if v is not None
    }
    if args.drift:
        from stream.tools.drift_demo import run_drift_demo

        if args.sessions_per_day is not None:
            given["sessions_per_day"] = args.sessions_per_day
        return run_drift_demo(live_days=args.live_days, **given)
    from stream.tools.demo import run_demo

    return run_demo(minutes=args.minutes, **given)


def cmd_query(args: argparse.Namespace) -> int:
    from stream.clickhouse import connect
    from stream.config import load_settings

    ch = connect(load_settings())
    try:
        df = ch.query_df(args.sql)
    finally:
        ch.close()
    print(df.to_string(index=False, max_rows=args.max_rows))
    return 0


def cmd_clickhouse_up(args: argparse.Namespace) -> int:
    """Serve the embedded ClickHouse of STREAM_CHDB_PATH in the foreground until Ctrl-C / SIGTERM."""
    from stream.clickhouse.local_server import serve
    from stream.config import load_settings

    path = load_settings().ensure_dir("chdb_path")
    code = serve(path, port=args.port)
    if code != 0:
        raise StreamError(
            f"another process serves the embedded ClickHouse of {path} (`python -m stream clickhouse stop` ends it)"
        )
    return 0


def cmd_clickhouse_stop(args: argparse.Namespace) -> int:
    """Stop the embedded ClickHouse server of STREAM_CHDB_PATH, if one runs."""
    from stream.clickhouse.local_server import stop
    from stream.config import load_settings

    path = load_settings().chdb_path
    pids = stop(path)
    print(
        f"stopped the ClickHouse server of {path} (pid {', '.join(map(str, pids))})"
        if pids
        else f"no ClickHouse server serves {path}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from stream.tools import ingest, monitor, ope, outcomes, replay, report
    from stream.tools.backtest import cli as backtest_cli

    parser = arguments.Parser(prog="python -m stream", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="embedded Kafka broker")
    ksub = kafka.add_subparsers(dest="kafka_command", required=True)
    up = ksub.add_parser("up", help="run an embedded broker in the foreground and print its address")
    up.add_argument("--no-topics", action="store_true", help="do not create the product's topics")
    up.add_argument(
        "--sasl",
        action="store_true",
        help="add a SASL_PLAINTEXT listener (PLAIN, SCRAM-SHA-256/512) for the user "
        "STREAM_KAFKA_SASL_USERNAME / STREAM_KAFKA_SASL_PASSWORD",
    )
    up.add_argument(
        "--ssl",
        action="store_true",
        help="add an SSL listener (SASL_SSL too with --sasl) with a certificate of a throwaway CA",
    )
    up.set_defaults(func=cmd_kafka_up)
    fetch = ksub.add_parser("fetch", help="fetch the broker's jars with Maven (done on first use anyway)")
    fetch.set_defaults(func=cmd_kafka_fetch)

    topics = sub.add_parser("topics", help="create the product's topics (idempotent)")
    topics.add_argument("--bootstrap", help="Kafka bootstrap servers (default: STREAM_KAFKA_BOOTSTRAP)")
    topics.set_defaults(func=cmd_topics_create)

    worker = sub.add_parser("worker", help="run the streaming worker (faust) in the foreground")
    worker.add_argument(
        "--loglevel", default=None, choices=["debug", "info", "warning", "error"], help="default: STREAM_LOG_LEVEL"
    )
    worker.set_defaults(func=cmd_worker)

    config = sub.add_parser("config", help="print the effective configuration")
    config.add_argument("--markdown", action="store_true", help="print the table of every variable")
    config.set_defaults(func=cmd_config)

    demo = sub.add_parser("demo", help="run the whole product end to end on embedded Kafka + chdb")
    positive = arguments.number(0, lo_open=True)
    demo.add_argument(
        "--drift",
        action="store_true",
        help="the monitoring loop instead: the world changes in the live days; drift detected, a challenger "
        "retrained, shadowed and promoted (stream/tools/drift_demo.py)",
    )
    demo.add_argument("--minutes", type=positive, default=2.0, help="minutes of live traffic (default 2)")
    demo.add_argument("--live-days", type=arguments.positive_int, default=9, help="with --drift: live days (default 9)")
    demo.add_argument("--users", type=arguments.positive_int, help="simulated users (default 2000; --drift 84)")
    demo.add_argument("--days", type=arguments.positive_int, help="days of history (default 45; --drift 22)")
    demo.add_argument("--rate", type=positive, help="live events per second (default 400; --drift 150)")
    demo.add_argument(
        "--sessions-per-day",
        type=positive,
        help="with --drift: the median reader's sessions per day (default 3; the simulator's own is 0.25)",
    )
    demo.add_argument("--profile", help="batch-training profile of the first models (default demo; --drift full)")
    demo.set_defaults(func=cmd_demo)

    query = sub.add_parser("query", help="run SQL on the configured ClickHouse ({db} = the database)")
    query.add_argument("sql")
    query.add_argument("--max-rows", type=arguments.positive_int, default=50)
    query.set_defaults(func=cmd_query)

    clickhouse = sub.add_parser("clickhouse", help="the embedded ClickHouse server of STREAM_CHDB_PATH")
    csub = clickhouse.add_subparsers(dest="clickhouse_command", required=True)
    ch_up = csub.add_parser(
        "up",
        help="serve it in the foreground (clients find it; without this, the first "
        "client starts one in the background)",
    )
    ch_up.add_argument("--port", type=arguments.port, default=0, help="port on 127.0.0.1 (default: a free one)")
    ch_up.set_defaults(func=cmd_clickhouse_up)
    ch_stop = csub.add_parser("stop", help="stop it (the next client starts it again)")
    ch_stop.set_defaults(func=cmd_clickhouse_stop)
    replay.register(sub)
    ingest.register(sub)
    report.register(sub)
    monitor.register(sub)
    outcomes.register(sub)
    ope.register(sub)
    backtest_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return arguments.run_command(None, lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    func: Handler = args.func
    return func(args)
