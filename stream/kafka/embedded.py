"""A real Apache Kafka 4.x broker (single-node KRaft) started from its Maven Central jars.

>>> from stream.kafka.embedded import embedded_kafka
>>> with embedded_kafka() as bootstrap:          # doctest: +SKIP
...     print(bootstrap)                          # 127.0.0.1:PORT

The jars are fetched once by Maven (``kafka/pom.xml``) into ``kafka/lib/`` (git-ignored), so later
starts need no network. Each broker gets free ports and a fresh temporary directory; its log
(``broker.log``) is kept there after stop for debugging. ``halt(sig)`` and ``resume()`` (or
``restart(sig)``) stop and start it again on the same ports and data, as a broker restart or crash
looks to its clients (the fault tests, tests/faults/). The JVM is started with a parent-death
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
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.errors import ConfigError, InfraError
from stream.kafka.limits import DEFAULT_MAX_MESSAGE_BYTES
from stream.redact import protect, redact

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
        cmd = [
            mvn,
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
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


def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()  # own process group: a Ctrl-C in the terminal reaches us, not the JVM twice


#: SASL mechanisms an embedded broker's SASL listeners accept (every user gets each of them).
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: what a password of the embedded broker may hold: it is written into JAAS and ``--add-scram`` syntax
_SAFE_PASSWORD = re.compile(r"^[A-Za-z0-9_.~!@#$%^&*()+:;?/{}|<>-]+$")


@dataclass(frozen=True)
class TestTls:
    """A throwaway CA and the broker's key and certificate (signed by it, valid for 127.0.0.1)."""

    ca_file: Path  # PEM: what clients trust (STREAM_KAFKA_SSL_CAFILE)
    keystore: Path  # PKCS12: the broker's key and certificate chain
    password: str  # of the keystore and its key

    __test__ = False  # not a pytest test class


def make_test_tls(directory: Path, java: str) -> TestTls:
    """Make a CA and a broker certificate for 127.0.0.1 with the JDK's keytool (a few JVM starts)."""
    keytool = Path(java).with_name("keytool")
    tool = str(keytool) if keytool.exists() else require_tool("keytool", "it comes with the JDK that runs Kafka")
    directory.mkdir(parents=True, exist_ok=True)
    tls = TestTls(directory / "ca.pem", directory / "broker.p12", secrets.token_hex(16))
    protect(tls.password)
    ca, csr, cert = directory / "ca.p12", directory / "broker.csr", directory / "broker.pem"
    store = ["-storetype", "PKCS12", "-storepass:env", "KEYSTORE_PASSWORD"]
    key = ["-keyalg", "EC", "-groupname", "secp256r1", "-validity", "30"]
    steps = [
        [
            "-genkeypair",
            "-alias",
            "ca",
            *key,
            "-dname",
            "CN=embedded-kafka test CA",
            "-ext",
            "bc:c",
            "-keystore",
            str(ca),
            *store,
        ],
        ["-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca), *store, "-file", str(tls.ca_file)],
        ["-genkeypair", "-alias", "broker", *key, "-dname", "CN=localhost", "-keystore", str(tls.keystore), *store],
        ["-certreq", "-alias", "broker", "-keystore", str(tls.keystore), *store, "-file", str(csr)],
        [
            "-gencert",
            "-rfc",
            "-alias",
            "ca",
            "-keystore",
            str(ca),
            *store,
            "-infile",
            str(csr),
            "-outfile",
            str(cert),
            "-validity",
            "30",
            "-ext",
            "SAN=ip:127.0.0.1,dns:localhost",
            "-ext",
            "EKU=serverAuth",
        ],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(tls.ca_file), "-keystore", str(tls.keystore), *store],
        ["-importcert", "-noprompt", "-alias", "broker", "-file", str(cert), "-keystore", str(tls.keystore), *store],
    ]
    env = {**os.environ, "KEYSTORE_PASSWORD": tls.password}  # not in the command line
    for step in steps:
        proc = subprocess.run([tool, *step], capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            said = redact((proc.stdout + proc.stderr).strip())
            raise InfraError(f"keytool {step[0]} failed making the test CA: {said[-300:]}")
    return tls


def _listeners(sasl: bool, tls: bool) -> list[str]:
    """The client listeners, named after their security protocol; PLAINTEXT always (the broker's own)."""
    wanted = {"PLAINTEXT": True, "SASL_PLAINTEXT": sasl, "SSL": tls, "SASL_SSL": sasl and tls}
    return [name for name, on in wanted.items() if on]


def _security_properties(listeners: list[str], users: Mapping[str, str] | None, tls: TestTls | None) -> dict[str, str]:
    """SASL users (PLAIN in the JAAS config, SCRAM in the metadata log) and the TLS keystore."""
    props: dict[str, str] = {}
    if users:
        plain = " ".join(f'user_{name}="{pw}"' for name, pw in users.items())
        props["sasl.enabled.mechanisms"] = ",".join(SASL_MECHANISMS)
        for listener in (n.lower() for n in listeners if n.startswith("SASL_")):
            props[f"listener.name.{listener}.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain};"
            )
            for mech in SASL_MECHANISMS[1:]:
                props[f"listener.name.{listener}.{mech.lower()}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
    if tls is not None:
        props.update(
            {
                "ssl.keystore.type": "PKCS12",
                "ssl.keystore.location": str(tls.keystore),
                "ssl.keystore.password": tls.password,
                "ssl.key.password": tls.password,
                "ssl.client.auth": "none",
            }
        )
    return props


def _server_properties(
    data_dir: Path,
    ports: Mapping[str, int],
    controller_port: int,
    partitions: int,
    security: Mapping[str, str] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    group_join_delay_ms: int = 0,
) -> str:
    listeners = [f"{name}://127.0.0.1:{port}" for name, port in ports.items()]
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{controller_port}"]),
        "advertised.listeners": ",".join(listeners),
        "listener.security.protocol.map": ",".join([*(f"{name}:{name}" for name in ports), "CONTROLLER:PLAINTEXT"]),
        "controller.listener.names": "CONTROLLER",
        # The broker talks to itself and to its controller in plaintext: only clients authenticate.
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
        "group.initial.rebalance.delay.ms": str(group_join_delay_ms),
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        "log.cleaner.backoff.ms": "1000",
        "auto.create.topics.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "log.segment.bytes": str(64 * 1024 * 1024),
        **(security or {}),
        "message.max.bytes": str(max_message_bytes),  # STREAM_MAX_MESSAGE_BYTES (stream/kafka/limits.py)
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _scram_args(users: Mapping[str, str]) -> list[str]:
    """``kafka-storage format`` options that store each user's SCRAM credentials in the metadata log."""
    return [
        arg
        for name, pw in users.items()
        for mech in SASL_MECHANISMS
        if mech.startswith("SCRAM")
        for arg in ("--add-scram", f"{mech}=[name={name},password={pw}]")
    ]


def check_sasl_users(users: Mapping[str, str]) -> None:
    """Refuse user names and passwords that the broker's JAAS and SCRAM syntax cannot hold."""
    if not users:
        raise ConfigError("a SASL listener needs at least one user (name and password)")
    for name, pw in users.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"SASL user name {name!r} for the embedded broker: expected letters, digits, _ . -")
        if not _SAFE_PASSWORD.match(pw):
            # the message never repeats the password
            raise ConfigError(
                f"the SASL password of {name!r} for the embedded broker must be non-empty, "
                "without spaces, quotes, backslashes, commas, brackets or '='"
            )


class EmbeddedKafka:
    """One single-node KRaft broker in a child JVM. Use as a context manager."""

    def __init__(
        self,
        workdir: Path | None = None,
        heap: str = "512m",
        partitions: int = 4,
        start_timeout_s: float = 90.0,
        sasl_users: Mapping[str, str] | None = None,
        tls: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        group_join_delay_ms: int = 0,
    ) -> None:
        """Clients without credentials use the PLAINTEXT listener (:attr:`bootstrap`).

        ``sasl_users`` ({name: password}) adds a SASL_PLAINTEXT listener that accepts them by PLAIN,
        SCRAM-SHA-256 and SCRAM-SHA-512; ``tls`` adds an SSL listener with a certificate of a
        throwaway CA (:attr:`ca_file`); both add a SASL_SSL listener. :meth:`address` gives each.
        ``max_message_bytes`` is the broker's record limit (``STREAM_MAX_MESSAGE_BYTES``).
        ``group_join_delay_ms``: how long a new group waits for more members before its first
        assignment (``group.initial.rebalance.delay.ms``; 0: at once).
        """
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="embedded-kafka-"))
        self.heap = heap
        self.partitions = partitions
        self.max_message_bytes = max_message_bytes
        self.group_join_delay_ms = group_join_delay_ms
        self.start_timeout_s = start_timeout_s
        self.sasl_users = dict(sasl_users) if sasl_users is not None else None
        if self.sasl_users is not None:
            check_sasl_users(self.sasl_users)
            protect(*self.sasl_users.values())
        self.tls = tls
        self.ports: dict[str, int] = {}
        self.controller_port = 0
        self.ca_file: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.ports.get("PLAINTEXT", 0)

    @property
    def bootstrap(self) -> str:
        """The plaintext listener (the broker's own, and the one for clients without credentials)."""
        return f"127.0.0.1:{self.port}"

    def address(self, protocol: str) -> str:
        """host:port of the listener of that security protocol."""
        if protocol not in self.ports:
            raise InfraError(
                f"this embedded broker has no {protocol} listener (it has {', '.join(self.ports)}): "
                "pass sasl_users for SASL_*, tls=True for *SSL"
            )
        return f"127.0.0.1:{self.ports[protocol]}"

    @property
    def sasl_bootstrap(self) -> str:
        """The SASL_PLAINTEXT listener (only with ``sasl_users``)."""
        return self.address("SASL_PLAINTEXT")

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def _java(self, java: str, main: str, *args: str) -> list[str]:
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.workdir}",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{LIB_DIR}/*",
            main,
            *args,
        ]

    def start(self) -> str:
        """Format a fresh log dir, start the JVM, and wait until a metadata request succeeds."""
        java = java_executable()
        ensure_jars()
        data_dir = self.workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        listeners = _listeners(self.sasl_users is not None, self.tls)
        *ports, self.controller_port = _distinct_free_ports(len(listeners) + 1)
        self.ports = dict(zip(listeners, ports, strict=True))
        tls = make_test_tls(self.workdir / "tls", java) if self.tls else None
        self.ca_file = tls.ca_file if tls else None
        props = self.workdir / "server.properties"
        props.touch(mode=0o600)  # may hold the SASL users' and the keystore's passwords
        props.write_text(
            _server_properties(
                data_dir,
                self.ports,
                self.controller_port,
                self.partitions,
                _security_properties(listeners, self.sasl_users, tls),
                self.max_message_bytes,
                self.group_join_delay_ms,
            )
        )
        fmt = subprocess.run(
            self._java(
                java,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                new_cluster_id(),
                "-c",
                str(props),
                *_scram_args(self.sasl_users or {}),
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            said = redact((fmt.stdout + fmt.stderr).strip())
            raise InfraError(f"formatting the Kafka log dir failed: {said[-500:]}")
        return self._launch(java)

    def _launch(self, java: str) -> str:
        """Start the JVM on the written server.properties and wait until a metadata request succeeds."""
        out = open(self.workdir / "broker.out", "ab")  # noqa: SIM115 - lives as long as the JVM
        self.proc = subprocess.Popen(
            self._java(java, "kafka.Kafka", str(self.workdir / "server.properties")),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        out.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("embedded Kafka ready at %s (logs in %s)", self.bootstrap, self.workdir)
        return self.bootstrap

    def halt(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        """Stop the JVM with ``sig`` and keep its ports, log dir and data: :meth:`resume` brings it back.

        SIGTERM is a clean shutdown (SIGKILL after ``timeout_s``); SIGKILL a crash, as a host or
        container failure would be.
        """
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def resume(self) -> str:
        """Start the broker again after :meth:`halt`: same ports, same log dir, the data it had."""
        if self.proc is not None:
            raise InfraError("the embedded broker is running: halt() it before resume()")
        if not (self.workdir / "data" / "meta.properties").exists():
            raise InfraError(f"no formatted log dir in {self.workdir / 'data'} to resume: start() the broker first")
        return self._launch(java_executable())

    def restart(self, sig: int = signal.SIGTERM) -> str:
        """:meth:`halt` with ``sig``, then :meth:`resume`: a broker restart clients see on the same address."""
        self.halt(sig)
        return self.resume()

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "log_level": 0,
            "logger": logging.getLogger("embedded-kafka.admin"),
        }
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
                raise InfraError(
                    f"the Kafka broker did not become ready within {self.start_timeout_s:.0f}s; see {self.log_path}"
                )
            time.sleep(0.2)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (clean shutdown), then SIGKILL after ``timeout_s``. Keeps the logs, drops the data."""
        self.halt(signal.SIGTERM, timeout_s)
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
def kafka_or_embedded(
    bootstrap: str | None, partitions: int = 4, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Iterator[tuple[str, int | None]]:
    """``(bootstrap, None)`` for a configured cluster, else an embedded broker: ``(address, JVM pid)``."""
    if bootstrap:
        yield bootstrap, None
        return
    with EmbeddedKafka(partitions=partitions, max_message_bytes=max_message_bytes) as broker:
        yield broker.bootstrap, broker.pid
