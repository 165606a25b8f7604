"""A real Apache Kafka 4.x broker (single-node KRaft) started from its Maven Central jars.

>>> from stream.kafka.embedded import embedded_kafka
>>> with embedded_kafka() as bootstrap:          # doctest: +SKIP
...     print(bootstrap)                          # 127.0.0.1:PORT

The jars are fetched once by Maven (``kafka/pom.xml``) into ``kafka/lib/`` (git-ignored), so later
starts need no network. Each broker gets free ports and a fresh temporary directory; its log
(``broker.log``) is kept there after stop for debugging. The JVM is started with a parent-death
signal, so it cannot outlive the Python process that started it, even on ``kill -9``.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream.errors import InfraError
from stream.kafka.limits import DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

KAFKA_DIR = Path(__file__).resolve().parents[2] / "kafka"
POM = KAFKA_DIR / "pom.xml"
LIB_DIR = KAFKA_DIR / "lib"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.properties"
_STAMP = LIB_DIR / ".pom.sha256"
_PR_SET_PDEATHSIG = 1


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def require_tool(name: str, hint: str) -> str:
    """Path of an executable, or a one-line :class:`InfraError` naming it and how to get it."""
    path = shutil.which(name)
    if path is None:
        raise InfraError(f"{name} not found on PATH: {hint}")
    return path


def java_executable() -> str:
    """The ``java`` to run the broker with; Kafka 4 needs Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else None
    java = java or require_tool(
        "java", "Kafka 4 needs Java 17+; install it, e.g. `apt-get install openjdk-17-jre-headless`"
    )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    try:
        version = out.split('"')[1]
        major = int(version.split(".")[0])
    except (IndexError, ValueError):
        return java  # unknown format: let the JVM itself complain if it is too old
    if major < 17:
        raise InfraError(f"java {version} found at {java}, but Kafka 4 needs Java 17 or newer (set JAVA_HOME)")
    return java


def ensure_jars(quiet: bool = True) -> Path:
    """Fetch the broker's jars with Maven unless ``kafka/lib`` already matches ``kafka/pom.xml``."""
    digest = _pom_digest()
    if _STAMP.exists() and _STAMP.read_text().strip() == digest:
        return LIB_DIR
    mvn = require_tool("mvn", "the Kafka jars are fetched with Maven; install it, e.g. `apt-get install maven`")
    KAFKA_DIR.mkdir(exist_ok=True)
    with open(KAFKA_DIR / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time across processes (pytest-xdist, CLI)
        if _STAMP.exists() and _STAMP.read_text().strip() == digest:
            return LIB_DIR
        staging = Path(tempfile.mkdtemp(prefix="lib.", dir=KAFKA_DIR))
        cmd = [mvn, "-B", "-f", str(POM), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={staging}"]
        if quiet:
            cmd.insert(2, "-q")
        log.info("fetching Kafka jars with Maven into %s", LIB_DIR)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise InfraError("Maven could not fetch the Kafka jars: " + " | ".join(tail))
        shutil.rmtree(LIB_DIR, ignore_errors=True)
        staging.rename(LIB_DIR)
        _STAMP.write_text(digest)
    return LIB_DIR


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_cluster_id() -> str:
    """16 random bytes, URL-safe base64 without padding, not starting with '-' (KRaft's format)."""
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()  # own process group: a Ctrl-C in the terminal reaches us, not the JVM twice


def _server_properties(data_dir: Path, port: int, controller_port: int, partitions: int,
                       max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(partitions),
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        "log.cleaner.backoff.ms": "1000",
        "auto.create.topics.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "message.max.bytes": str(max_message_bytes),  # STREAM_MAX_MESSAGE_BYTES (stream/kafka/limits.py)
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


class EmbeddedKafka:
    """One single-node KRaft broker in a child JVM. Use as a context manager."""

    def __init__(self, workdir: Path | None = None, heap: str = "512m", partitions: int = 4,
                 start_timeout_s: float = 90.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="embedded-kafka-"))
        self.heap = heap
        self.partitions = partitions
        self.max_message_bytes = max_message_bytes
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.controller_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def _java(self, java: str, main: str, *args: str) -> list[str]:
        return [java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true", f"-Dkafka.logs.dir={self.workdir}",
                f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
                "-cp", f"{LIB_DIR}/*", main, *args]

    def start(self) -> str:
        """Format a fresh log dir, start the JVM, and wait until a metadata request succeeds."""
        java = java_executable()
        ensure_jars()
        data_dir = self.workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port, self.controller_port = free_port(), free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        props = self.workdir / "server.properties"
        props.write_text(_server_properties(data_dir, self.port, self.controller_port, self.partitions,
                                            self.max_message_bytes))
        fmt = subprocess.run(
            self._java(java, "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(props)),
            capture_output=True, text=True, check=False,
        )
        if fmt.returncode != 0:
            raise InfraError(f"formatting the Kafka log dir failed: {(fmt.stdout + fmt.stderr).strip()[-500:]}")
        out = open(self.workdir / "broker.out", "wb")  # noqa: SIM115 - lives as long as the JVM
        self.proc = subprocess.Popen(
            self._java(java, "kafka.Kafka", str(props)),
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
        out.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("embedded Kafka ready at %s (logs in %s)", self.bootstrap, self.workdir)
        return self.bootstrap

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "log_level": 0,
                                "logger": logging.getLogger("embedded-kafka.admin")}
        admin = AdminClient(conf)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise InfraError(
                    f"the Kafka broker exited with code {self.proc.returncode} while starting; "
                    f"see {self.workdir / 'broker.out'} and {self.log_path}"
                )
            try:
                md = admin.list_topics(timeout=1.0)
                if md.brokers:
                    return
            except Exception:  # noqa: S110 - not ready yet; retried until the deadline
                pass
            if time.monotonic() > deadline:
                raise InfraError(f"the Kafka broker did not become ready within {self.start_timeout_s:.0f}s; "
                                 f"see {self.log_path}")
            time.sleep(0.2)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (clean shutdown), then SIGKILL after ``timeout_s``. Keeps the logs, drops the data."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.workdir / "data", ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> EmbeddedKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_kafka(**kwargs: object) -> Iterator[str]:
    """Start a broker for the ``with`` block and yield its bootstrap address."""
    broker = EmbeddedKafka(**kwargs)  # type: ignore[arg-type]
    with broker:
        yield broker.bootstrap


@contextlib.contextmanager
def kafka_or_embedded(bootstrap: str | None, partitions: int = 4,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Iterator[tuple[str, int | None]]:
    """``(bootstrap, None)`` for a configured cluster, else an embedded broker: ``(address, JVM pid)``."""
    if bootstrap:
        yield bootstrap, None
        return
    with EmbeddedKafka(partitions=partitions, max_message_bytes=max_message_bytes) as broker:
        yield broker.bootstrap, broker.pid
