"""A ClickHouse server for the tests: the product's own embedded server on a fixed port, run by hand.

The protocol code lives in ``stream/clickhouse/local_server.py`` (ClickHouse's HTTP interface in
front of the real chdb engine; its docstring lists what it covers). It stands in for the *network
component only*: every statement runs on chdb, the ClickHouse engine itself, so DDL, ``DESCRIBE``,
``ReplacingMergeTree``, ``FINAL``, Native encoding and error codes are ClickHouse's own.

:class:`ClickHouseServer` plays a *remote* server (``STREAM_CLICKHOUSE_URL``): it runs that module
in the foreground on a fixed port, accepting any user, as a subprocess of the test;
:meth:`~ClickHouseServer.stop` and :meth:`~ClickHouseServer.start` simulate an outage, and the
data directory survives it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from stream.clickhouse.local_server import MODULE

__all__ = ["ClickHouseServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClickHouseServer:
    """The stand-in server in a subprocess: start, stop (an outage) and start again, same port and data.

    >>> with ClickHouseServer(tmp_path / "ch") as server:  # doctest: +SKIP
    ...     settings = load_settings(clickhouse_url=server.url)
    """

    def __init__(self, path: Path, port: int | None = None, log_path: Path | None = None) -> None:
        self.path = Path(path)
        self.port = port or free_port()
        self.log_path = log_path or self.path.with_name(self.path.name + "-server.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response:
                return response.status == 200 and response.read() == b"Ok.\n"
        except OSError:
            return False

    def start(self, timeout_s: float = 60.0) -> ClickHouseServer:
        """Start the subprocess and wait until ``/ping`` answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parents[2]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--port", str(self.port), "--path", str(self.path), "--any-user"],
                cwd=root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while not self.is_up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ClickHouse stand-in exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ClickHouse stand-in did not answer /ping within {timeout_s:.0f}s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGKILL the server: connections are refused until :meth:`start` (the data stays)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def __enter__(self) -> ClickHouseServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
