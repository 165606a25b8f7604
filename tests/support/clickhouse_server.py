"""A ClickHouse server for the tests: ClickHouse's HTTP interface in front of a real chdb engine.

No modern ClickHouse server installs on the test hosts, so this stands in for the *network
component only*: it speaks the part of ClickHouse's HTTP protocol that clickhouse-connect (the
client ``stream/clickhouse/server_backend.py`` uses) sends, and every statement it receives runs
on chdb, the ClickHouse engine itself, with its data in a directory. DDL, ``DESCRIBE``,
``ReplacingMergeTree``, ``FINAL``, Native encoding of LowCardinality / Nullable / DateTime64
columns, settings, bound parameters and error codes are therefore ClickHouse's own.

It runs in a subprocess (chdb admits one data directory per process, and the test process
already has one), on a fixed port: :meth:`ClickHouseServer.stop` and :meth:`~ClickHouseServer.start`
simulate an outage, and the data directory survives it.

Protocol covered (https://clickhouse.com/docs/interfaces/http):

* ``GET /ping`` and ``GET /`` without a query: ``Ok.``;
* the query in the ``query`` parameter, the POST body, or both (the body appended); ``database``,
  ``default_format`` (else TabSeparated, or the statement's own ``FORMAT``), ``param_<name>``
  bound parameters, ``query_id``; other parameters are settings, applied with ``SET`` (an unknown
  one fails with ``UNKNOWN_SETTING`` as on a server; a value set stays for later requests);
* ``INSERT ... FORMAT <fmt>`` followed by data in the body (clickhouse-connect sends Native);
* request bodies in chunked transfer encoding and with ``Content-Encoding`` lz4, zstd, gzip,
  deflate or br; responses compressed likewise when ``enable_http_compression=1`` and the client
  accepts one of them;
* response headers ``X-ClickHouse-Server-Display-Name``, ``-Query-Id``, ``-Format``,
  ``-Timezone``, ``-Summary``; errors with ``X-ClickHouse-Exception-Code`` and ClickHouse's message.

Not covered: authentication (every user is accepted, credentials are never logged), sessions
(one engine session serves every request, one at a time), ``client_protocol_version`` block
info (clickhouse-connect probes for it and falls back to protocol 0, as behind a proxy), and
ClickHouse's own ``compress``/``decompress`` framing.

Run ``python -m tests.support.clickhouse_server --port N --path DIR`` by hand to try it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

DISPLAY_NAME = "chdb-http-stand-in"

#: query-string parameters that are part of the HTTP interface, not settings
_HTTP_PARAMS = frozenset({
    "query", "database", "default_format", "query_id", "session_id", "session_timeout", "session_check",
    "user", "password", "quota_key", "compress", "decompress", "client_protocol_version", "wait_end_of_query",
    "enable_http_compression", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "cancel_http_readonly_queries_on_client_close", "buffer_size",
})
_FORMAT_AT_END = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_INSERT_WITH_DATA = re.compile(rb"\A\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+(\w+)[ \t]*(?:\r?\n|\Z)",
                               re.IGNORECASE | re.DOTALL)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
#: ClickHouse's HTTP status for a few error codes (the rest are 500)
_STATUS = {62: 400, 115: 400, 81: 404, 60: 404, 516: 401}
_CONTENT_TYPES = {"TabSeparated": "text/tab-separated-values; charset=UTF-8", "JSON": "application/json; charset=UTF-8",
                  "JSONEachRow": "application/x-ndjson; charset=UTF-8", "CSV": "text/csv; charset=UTF-8; header=absent"}


class QueryError(Exception):
    """A ClickHouse error: its code and message go back to the client."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- encodings -----------------------------------------------------------------------------------


def _codecs() -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    """Content-Encoding name -> (compress, decompress), for what is installed."""
    out: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "gzip": (gzip.compress, gzip.decompress),
        "deflate": (zlib.compress, zlib.decompress),
    }
    try:
        import lz4.frame

        out["lz4"] = (lz4.frame.compress, lz4.frame.decompress)
    except ImportError:
        pass
    try:
        from backports import zstd

        out["zstd"] = (zstd.compress, zstd.decompress)
    except ImportError:
        pass
    try:
        import brotli

        out["br"] = (brotli.compress, brotli.decompress)
    except ImportError:
        pass
    return out


CODECS = _codecs()


def pick_encoding(accept: str) -> str | None:
    """The first encoding of an ``Accept-Encoding`` value that this server can produce."""
    for part in accept.split(","):
        name = part.split(";")[0].strip().lower()
        if name in CODECS:
            return name
    return None


# --- the engine ----------------------------------------------------------------------------------


class Engine:
    """One chdb session; runs one request at a time (chdb sessions are not concurrent)."""

    def __init__(self, path: Path) -> None:
        from chdb import session as chdb_session

        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.spool = path / "http-inserts"
        self.spool.mkdir(exist_ok=True)
        self._session = chdb_session.Session(str(path))
        self._lock = threading.Lock()
        version, tz = self._session.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split()
        self.version, self.timezone = version, tz
        names = self._session.query("SELECT name FROM system.settings", "TabSeparated").bytes().decode()
        self.settings = frozenset(names.split())

    def execute(self, query: bytes, params: dict[str, str]) -> tuple[bytes, str, dict[str, str]]:
        """Run one request's SQL; returns (output, format, summary)."""
        binds = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items() if k not in _HTTP_PARAMS and not k.startswith("param_")}
        unknown = sorted(set(settings) - self.settings)
        if unknown:
            raise QueryError(115, f"Code: 115. DB::Exception: Unknown setting '{unknown[0]}'. (UNKNOWN_SETTING)")
        insert = _INSERT_WITH_DATA.match(query)
        data = query[insert.end():] if insert else b""
        with self._lock:
            self._run("USE `{}`".format(params.get("database", "default").replace("`", "``")), {})
            for name, value in settings.items():
                self._run(f"SET {name} = '{_quote(value)}'", {})
            if insert and data.strip():
                return self._insert(insert.group(1).decode(), insert.group(2).decode(), data)
            sql = query.decode()
            m = _FORMAT_AT_END.search(sql)
            fmt = m.group(1) if m else params.get("default_format", "TabSeparated")
            res = self._run(sql, binds, fmt)
            return res.bytes(), fmt, _summary(res)

    def _insert(self, statement: str, fmt: str, data: bytes) -> tuple[bytes, str, dict[str, str]]:
        # chdb's Python API takes SQL text, not a data stream: the rows go through a file.
        spool = self.spool / f"{uuid.uuid4().hex}.{fmt.lower()}"
        spool.write_bytes(data)
        try:
            res = self._run(f"{statement} SELECT * FROM file('{_quote(str(spool))}', '{fmt}')", {})
        finally:
            spool.unlink(missing_ok=True)
        return b"", "TabSeparated", _summary(res)

    def _run(self, sql: str, binds: dict[str, str], fmt: str = "TabSeparated") -> Any:
        try:
            if binds:
                return self._session.query(sql, fmt, params=binds)
            return self._session.query(sql, fmt)
        except Exception as exc:  # chdb raises ChdbError / RuntimeError with ClickHouse's message
            message = str(exc)
            m = _ERROR_CODE.search(message)
            raise QueryError(int(m.group(1)) if m else 1000, message) from exc

    def close(self) -> None:
        with self._lock:
            self._session.close()


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _summary(res: Any) -> dict[str, str]:
    # ClickHouse sends every number of X-ClickHouse-Summary as a string
    return {"read_rows": str(res.rows_read()), "read_bytes": str(res.bytes_read()),
            "written_rows": str(res.rows_written()), "written_bytes": str(res.bytes_written()),
            "total_rows_to_read": "0", "result_rows": str(res.rows_read()), "result_bytes": str(res.bytes_read()),
            "elapsed_ns": str(int(res.elapsed() * 1e9))}


# --- HTTP ----------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's connection pool expects
    server: Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the request line can carry a password parameter

    def _handle(self) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            body = self._read_body()
        except QueryError as exc:
            self._error(exc, params)
            return
        if url.path in ("/ping", "/replicas_status") or (url.path == "/" and "query" not in params and not body):
            self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        if url.path != "/":
            self._send(404, f"There is no handle {url.path}\n".encode(), {"Content-Type": "text/plain; charset=UTF-8"})
            return
        query = params.get("query", "").encode()
        if query and body:
            query += b"\n"
        query += body
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            out, fmt, summary = self.server.engine.execute(query, params)
        except QueryError as exc:
            self._error(exc, params, query_id)
            return
        headers = {"Content-Type": _CONTENT_TYPES.get(fmt, "application/octet-stream"),
                   "X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Format": fmt,
                   "X-ClickHouse-Timezone": self.server.engine.timezone,
                   "X-ClickHouse-Summary": json.dumps(summary)}
        encoding = pick_encoding(self.headers.get("Accept-Encoding", "")) \
            if params.get("enable_http_compression") == "1" else None
        if encoding:
            out = CODECS[encoding][0](out)
            headers["Content-Encoding"] = encoding
        self._send(200, out, headers)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(parts)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if body and encoding and encoding != "identity":
            if encoding not in CODECS:
                raise QueryError(1001, f"Code: 1001. DB::Exception: Unknown Content-Encoding '{encoding}'.")
            body = CODECS[encoding][1](body)
        return body

    def _error(self, exc: QueryError, params: dict[str, str], query_id: str | None = None) -> None:
        message = f"{exc} (version {self.server.engine.version})\n"
        self._send(_STATUS.get(exc.code, 500), message.encode(), {
            "Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": str(exc.code),
            "X-ClickHouse-Query-Id": query_id or params.get("query_id", "")})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("X-ClickHouse-Server-Display-Name", DISPLAY_NAME)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, engine: Engine, host: str = "127.0.0.1") -> None:
        self.engine = engine
        super().__init__((host, port), Handler)


# --- the test-side handle ------------------------------------------------------------------------


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
                [sys.executable, "-m", "tests.support.clickhouse_server", "--port", str(self.port),
                 "--path", str(self.path)], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(root)})
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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", type=Path, required=True, help="chdb data directory")
    args = parser.parse_args(argv)
    server = Server(args.port, Engine(args.path))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        server.engine.close()


if __name__ == "__main__":
    main()
