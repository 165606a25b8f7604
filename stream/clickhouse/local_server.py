"""The embedded ClickHouse: ClickHouse's HTTP interface in front of chdb, one server per data directory.

chdb (the ClickHouse engine in a Python extension) admits one process per data directory. So that
several workers on one host, ``python -m stream query``, batch training and the demo can all use
the embedded ClickHouse of ``STREAM_CHDB_PATH`` at once, one process owns the directory and serves
it over ClickHouse's HTTP protocol on 127.0.0.1; every user talks to it with clickhouse-connect,
the same client as for a real server (``stream/clickhouse/server_backend.py``).

Lifecycle (:func:`ensure`, called by :func:`stream.clickhouse.connect`):

* Whichever process first needs the directory P starts the server for P: a detached process in a
  session of its own (it outlives a killed worker), which binds a free port and writes its port,
  pid and a random password to ``P/local-server.json`` (mode 0600). Clients read that file, ping
  the server (checking it is the one the file names) and connect with the password.
* Exactly one server per directory: the server holds an exclusive ``flock`` on
  ``P/local-server.lock`` for its lifetime (a second one exits with status 3), and clients that
  start one do so under ``P/local-server.start.lock``, re-checking first.
* A server that is gone (crashed, killed) is started again by the next client that needs it; to
  the worker's sink that is a short outage, retried like any other (stream/clickhouse/sink.py).
* It ends on SIGTERM (``python -m stream clickhouse stop``), or by itself once no client is
  connected and no request came for ``STREAM_CHDB_SERVER_IDLE_S``: every connected client holds a
  shared ``flock`` on ``P/local-server.clients`` (released by the kernel when it dies), and the
  server leaves only when it can take that lock exclusively, which it holds while it exits.

Protocol covered (https://clickhouse.com/docs/interfaces/http), as clickhouse-connect 1.12 uses it:

* ``GET /ping`` and ``GET /`` without a query: ``Ok.``;
* the query in the ``query`` parameter, the POST body, or both (the body appended), or as the
  field ``query`` of a ``multipart/form-data`` body with the ``param_<name>`` fields (what
  clickhouse-connect sends when they would make the URL too long); ``database``,
  ``default_format`` (else TabSeparated, or the statement's own ``FORMAT``), ``param_<name>``
  bound parameters, ``query_id``; other parameters are settings, applied with ``SET`` (an unknown
  one fails with ``UNKNOWN_SETTING`` as on a server; a value set stays for later requests);
* ``INSERT ... FORMAT <fmt>`` followed by data in the body (clickhouse-connect sends Native), also
  ``INSERT INTO t SELECT <expressions> FROM input('<structure>') FORMAT <fmt>`` (the events archive
  sends JSONEachRow so: ``stream.clickhouse.insert_events``);
* request bodies in chunked transfer encoding and with ``Content-Encoding`` lz4, zstd, gzip,
  deflate or br; responses compressed likewise when ``enable_http_compression=1`` and the client
  accepts one of them;
* response headers ``X-ClickHouse-Server-Display-Name``, ``-Query-Id``, ``-Format``,
  ``-Timezone``, ``-Summary``; errors with ``X-ClickHouse-Exception-Code`` and ClickHouse's message;
* one password (HTTP basic auth, ``X-ClickHouse-Key`` or the ``password`` parameter), any user
  name; ``--any-user`` accepts every request (the tests' stand-in for a remote server).

Not covered: users and grants, sessions (one engine session serves every request, one at a time),
``client_protocol_version`` block info (clickhouse-connect probes for it and falls back to
protocol 0, as behind a proxy), external data (form parts with a file name), ClickHouse's own
``compress``/``decompress`` framing, TLS.
The engine is real: DDL, ``DESCRIBE``, ``ReplacingMergeTree``, ``FINAL``, Native encoding of
LowCardinality / Nullable / DateTime64 columns, settings, bound parameters and error codes are
ClickHouse's own; only the network component is this module.

``python -m stream clickhouse up`` runs one in the foreground; ``python -m stream.clickhouse.local_server
--path DIR [--port N] [--any-user]`` is the process itself.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.parser
import email.policy
import fcntl
import gzip
import hmac
import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

from stream.errors import InfraError

DISPLAY_NAME = "stream-local-clickhouse"
#: response header naming the serving process, so a client knows the port is still that server's
INSTANCE_HEADER = "X-Stream-Instance"

#: query-string parameters that are part of the HTTP interface, not settings
_HTTP_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "user",
        "password",
        "quota_key",
        "compress",
        "decompress",
        "client_protocol_version",
        "wait_end_of_query",
        "enable_http_compression",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "buffer_size",
    }
)
_FORMAT_AT_END = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_INSERT_WITH_DATA = re.compile(
    rb"\A\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+(\w+)[ \t]*(?:\r?\n|\Z)", re.IGNORECASE | re.DOTALL
)
#: the ``input('<structure>')`` table function of an ``INSERT ... SELECT ... FROM input(...) FORMAT f``
_INPUT = re.compile(r"\binput\s*\(\s*('(?:[^'\\]|\\.)*')\s*\)", re.IGNORECASE)
_SET_STATEMENT = re.compile(r"\s*SET\b", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
#: ClickHouse's HTTP status for a few error codes (the rest are 500)
_STATUS = {62: 400, 115: 400, 81: 404, 60: 404, 516: 401}
_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "JSON": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
}


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

        out["lz4"] = (lz4.frame.compress, _lz4_frames)
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


def _lz4_frames(data: bytes) -> bytes:
    """Decompress every lz4 frame of ``data``: clickhouse-connect compresses each block of an insert
    as a frame of its own, and ``lz4.frame.decompress`` stops after the first (silently dropping
    every row after the first block). gzip members and zstd frames are all read by their modules."""
    import lz4.frame

    out = []
    while data:
        frame = lz4.frame.LZ4FrameDecompressor()
        out.append(frame.decompress(data))
        data = frame.unused_data
    return b"".join(out)


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
        #: the values this server SET in the session (each SET is a chdb query: ~0.3 ms a request)
        self._set: dict[str, str] = {}

    def execute(self, query: bytes, params: dict[str, str]) -> tuple[bytes, str, dict[str, str]]:
        """Run one request's SQL; returns (output, format, summary)."""
        binds = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items() if k not in _HTTP_PARAMS and not k.startswith("param_")}
        unknown = sorted(set(settings) - self.settings)
        if unknown:
            raise QueryError(115, f"Code: 115. DB::Exception: Unknown setting '{unknown[0]}'. (UNKNOWN_SETTING)")
        insert = _INSERT_WITH_DATA.match(query)
        data = query[insert.end() :] if insert else b""
        with self._lock:
            self._run("USE `{}`".format(params.get("database", "default").replace("`", "``")), {})
            for name, value in settings.items():
                if self._set.get(name) != value:
                    self._run(f"SET {name} = '{_quote(value)}'", {})
                    self._set[name] = value
            if insert and data.strip():
                return self._insert(insert.group(1).decode(), insert.group(2).decode(), data)
            sql = query.decode()
            if _SET_STATEMENT.match(sql):
                self._set.clear()  # it may change what was SET
            m = _FORMAT_AT_END.search(sql)
            fmt = m.group(1) if m else params.get("default_format", "TabSeparated")
            res = self._run(sql, binds, fmt)
            return res.bytes(), fmt, _summary(res)

    def _insert(self, statement: str, fmt: str, data: bytes) -> tuple[bytes, str, dict[str, str]]:
        # chdb's Python API takes SQL text, not a data stream: the rows go through a file, read
        # with the structure of the statement's input('<structure>') where it has one.
        spool = self.spool / f"{uuid.uuid4().hex}.{fmt.lower()}"
        spool.write_bytes(data)
        source = f"file('{_quote(str(spool))}', '{fmt}'"
        try:
            if _INPUT.search(statement):
                sql = _INPUT.sub(lambda m: f"{source}, {m.group(1)})", statement, count=1)
            else:
                sql = f"{statement} SELECT * FROM {source})"
            res = self._run(sql, {})
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
    return {
        "read_rows": str(res.rows_read()),
        "read_bytes": str(res.bytes_read()),
        "written_rows": str(res.rows_written()),
        "written_bytes": str(res.bytes_written()),
        "total_rows_to_read": "0",
        "result_rows": str(res.rows_read()),
        "result_bytes": str(res.bytes_read()),
        "elapsed_ns": str(int(res.elapsed() * 1e9)),
    }


# --- HTTP ----------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's connection pool expects
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait for a delayed ACK
    server: Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the request line can carry a password parameter

    def _handle(self) -> None:
        with self.server.activity():
            self._respond()

    def _respond(self) -> None:
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
        if not self.server.authorized(
            self.headers.get("Authorization"), self.headers.get("X-ClickHouse-Key"), params.get("password")
        ):
            self._error(
                QueryError(
                    516,
                    "Code: 516. DB::Exception: Authentication failed: password is incorrect. (AUTHENTICATION_FAILED)",
                ),
                params,
            )
            return
        try:
            form = _form_fields(self.headers.get("Content-Type", ""), body)
        except QueryError as exc:
            self._error(exc, params)
            return
        if form is not None:  # the query and its bound parameters as form fields, not in the URL
            params, body = {**params, **form}, b""
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
        headers = {
            "Content-Type": _CONTENT_TYPES.get(fmt, "application/octet-stream"),
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Timezone": self.server.engine.timezone,
            "X-ClickHouse-Summary": json.dumps(summary),
        }
        encoding = (
            pick_encoding(self.headers.get("Accept-Encoding", ""))
            if params.get("enable_http_compression") == "1"
            else None
        )
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
        self._send(
            _STATUS.get(exc.code, 500),
            message.encode(),
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(exc.code),
                "X-ClickHouse-Query-Id": query_id or params.get("query_id", ""),
            },
        )

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("X-ClickHouse-Server-Display-Name", DISPLAY_NAME)
        self.send_header(INSTANCE_HEADER, self.server.instance)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _form_fields(content_type: str, body: bytes) -> dict[str, str] | None:
    """The fields of a ``multipart/form-data`` body (None: another content type).

    clickhouse-connect sends the query and its bound parameters (``param_<name>``) so once they
    would make the URL too long (an ``IN`` over a few thousand ids). Parts with a file name are
    external data, which this server does not serve.

    >>> body = b'--b\\r\\nContent-Disposition: form-data; name="query"\\r\\n\\r\\nSELECT {n:UInt8}\\r\\n--b--\\r\\n'
    >>> _form_fields("multipart/form-data; boundary=b", body), _form_fields("text/plain", b"SELECT 1")
    ({'query': 'SELECT {n:UInt8}'}, None)
    """
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise QueryError(1001, "Code: 1001. DB::Exception: a multipart/form-data body without its boundary.")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise QueryError(
                48, f"Code: 48. DB::Exception: external data ({name}) is not supported by the embedded ClickHouse."
            )
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode() if isinstance(payload, bytes) else ""
    return fields


def _basic_password(authorization: str | None) -> str | None:
    """The password of an HTTP basic ``Authorization`` value (None if it is not one)."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    return decoded.partition(":")[2]


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, engine: Engine, host: str = "127.0.0.1", password: str | None = None) -> None:
        self.engine = engine
        self.password = password  # None: every request is accepted
        self.instance = uuid.uuid4().hex  # names this process in the state file and every response
        self.last_active = time.monotonic()
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__((host, port), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def authorized(self, *candidates: str | None) -> bool:
        if self.password is None:
            return True
        basic, key, param = candidates
        given = _basic_password(basic) if basic else (key or param)
        return given is not None and hmac.compare_digest(given.encode(), self.password.encode())

    @contextlib.contextmanager
    def activity(self) -> Iterator[None]:
        """Count a request in progress; the idle clock restarts when the last one ends."""
        with self._active_lock:
            self._active += 1
        try:
            yield
        finally:
            with self._active_lock:
                self._active -= 1
                self.last_active = time.monotonic()

    def idle_for(self) -> float:
        with self._active_lock:
            return 0.0 if self._active else time.monotonic() - self.last_active


# --- one server per directory --------------------------------------------------------------------

STATE_FILE = "local-server.json"  # port, pid, instance, password of the running server (mode 0600)
SERVER_LOCK = "local-server.lock"  # held exclusively by the serving process for its lifetime
START_LOCK = "local-server.start.lock"  # serializes the clients that start a server
CLIENTS_LOCK = "local-server.clients"  # held shared by every connected client
LOG_FILE = "local-server.log"
EXIT_BUSY = 3  # exit status of a server that found another one serving its directory
MODULE = "stream.clickhouse.local_server"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Endpoint:
    """Where a directory's server listens, as its state file says."""

    pid: int
    port: int
    instance: str
    password: str = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def read_endpoint(path: Path) -> Endpoint | None:
    """The endpoint in ``path``'s state file (None if there is none or it is unreadable)."""
    try:
        data = json.loads((Path(path) / STATE_FILE).read_text())
        return Endpoint(int(data["pid"]), int(data["port"]), str(data["instance"]), str(data["password"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_endpoint(path: Path, ep: Endpoint) -> None:
    tmp = path / f".{STATE_FILE}.{ep.pid}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": ep.pid, "port": ep.port, "instance": ep.instance, "password": ep.password}, f)
    os.replace(tmp, path / STATE_FILE)  # readers never see half a file


def ping(ep: Endpoint, timeout_s: float = 5.0) -> bool:
    """Whether the server ``ep`` names answers ``/ping`` (that server, not another one on its port)."""
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=timeout_s)  # no proxy, unlike urllib
    try:
        conn.request("GET", "/ping")
        response = conn.getresponse()
        response.read()
        return response.status == 200 and response.getheader(INSTANCE_HEADER) == ep.instance
    except OSError:
        return False
    finally:
        conn.close()


def reachable(path: Path) -> Endpoint | None:
    """The endpoint of ``path``'s server if it answers."""
    ep = read_endpoint(path)
    return ep if ep is not None and ping(ep) else None


def _flock(file: Path, mode: int, deadline: float) -> IO[bytes]:
    """``file`` opened and locked (``fcntl.LOCK_SH`` or ``LOCK_EX``), waiting until ``deadline``."""
    f = open(file, "ab")  # noqa: SIM115 - the caller owns it: closing it releases the lock
    while True:
        try:
            fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise InfraError(f"timed out waiting for the lock {file} of the embedded ClickHouse") from None
            time.sleep(0.05)


def ensure(path: Path, idle_s: float, timeout_s: float = 60.0) -> tuple[Endpoint, IO[bytes]]:
    """The server of ``path``, started if none answers, and a lease: close it when done.

    While a lease is open the server does not exit for idleness.
    """
    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    # Shared before anything else: a server that decided to exit holds it exclusively until it is
    # gone, so a client never gets the endpoint of a server on its way out.
    lease = _flock(path / CLIENTS_LOCK, fcntl.LOCK_SH, deadline)
    try:
        ep = reachable(path)
        if ep is None:
            with contextlib.closing(_flock(path / START_LOCK, fcntl.LOCK_EX, deadline)):
                ep = reachable(path) or _start(path, idle_s, deadline)
    except BaseException:
        lease.close()
        raise
    return ep, lease


def _start(path: Path, idle_s: float, deadline: float) -> Endpoint:
    """Start a detached server for ``path`` and wait until it answers."""
    cmd = [sys.executable, "-m", MODULE, "--path", str(path), "--idle-s", repr(idle_s), "--detach"]
    log_path = path / LOG_FILE
    while True:
        left = deadline - time.monotonic()
        try:
            with open(log_path, "ab") as log:
                # the launcher returns once its detached child serves (0) or found another server (3)
                rc = subprocess.run(
                    cmd,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=max(left, 1.0),
                    check=False,
                ).returncode
        except subprocess.TimeoutExpired:
            rc = None
        ep = reachable(path)
        if ep is not None:
            return ep
        if rc not in (0, EXIT_BUSY) or time.monotonic() > deadline:
            # 0 or 3 without an answer: a server that holds the directory but does not answer
            raise InfraError(
                f"the embedded ClickHouse server for {path} did not start "
                f"({'timed out' if rc is None else f'exit status {rc}'}); see {log_path}"
            )
        time.sleep(0.1)  # another server holds the directory: it is starting or exiting


def serve(
    path: Path,
    *,
    port: int = 0,
    idle_s: float | None = None,
    any_user: bool = False,
    on_ready: Callable[[Endpoint], None] | None = None,
) -> int:
    """Serve ``path`` until SIGTERM / SIGINT or, with ``idle_s``, until idle; returns the exit status."""
    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    lock = open(path / SERVER_LOCK, "ab")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = read_endpoint(path)
        print(
            f"a ClickHouse server already serves {path}" + (f" (pid {other.pid}, port {other.port})" if other else ""),
            file=sys.stderr,
            flush=True,
        )
        return EXIT_BUSY
    engine = Engine(path)
    server = Server(port, engine, password=None if any_user else secrets.token_urlsafe(24))
    ep = Endpoint(os.getpid(), server.port, server.instance, server.password or "")
    _write_endpoint(path, ep)

    def shutdown(*_: Any) -> None:  # serve_forever must be stopped from another thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    if idle_s:
        threading.Thread(target=_exit_when_idle, args=(server, path, idle_s), daemon=True).start()
    print(f"serving ClickHouse (chdb {engine.version}) of {path} on {ep.url}, pid {ep.pid}", flush=True)
    if on_ready is not None:
        on_ready(ep)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        if read_endpoint(path) == ep:
            (path / STATE_FILE).unlink(missing_ok=True)
        server.server_close()
        engine.close()
        print(f"stopped serving {path}", flush=True)
    return 0


def _exit_when_idle(server: Server, path: Path, idle_s: float) -> None:
    """Shut ``server`` down once no client holds a lease and no request came for ``idle_s``."""
    clients = open(path / CLIENTS_LOCK, "ab")  # noqa: SIM115 - held until the process exits
    last_client = time.monotonic()
    while True:
        time.sleep(min(1.0, idle_s / 4))
        try:
            fcntl.flock(clients.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            last_client = time.monotonic()  # a client holds a lease
            continue
        quiet = min(server.idle_for(), time.monotonic() - last_client)
        if quiet >= idle_s:
            # keep the lock: clients wait for it, then find the server gone and start a new one
            print(f"no client for {quiet:.0f} s: exiting", flush=True)
            server.shutdown()
            return
        fcntl.flock(clients.fileno(), fcntl.LOCK_UN)


def server_pids(path: Path) -> list[int]:
    """Processes serving exactly ``path`` (Linux: read from /proc); a launcher counts until it exits."""
    want = str(Path(path).resolve())
    return [pid for pid, served in _servers() if served == want]


def servers_under(root: Path) -> list[tuple[int, Path]]:
    """(pid, directory) of every server of a directory under ``root``."""
    base = Path(root).resolve()
    return [(pid, Path(p)) for pid, p in _servers() if Path(p).is_relative_to(base)]


def _servers() -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            zombie = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        if MODULE in args and "--path" in args and not zombie:
            i = args.index("--path") + 1
            if i < len(args):
                out.append((int(entry.name), args[i]))
    return out


def stop(path: Path, timeout_s: float = 30.0) -> list[int]:
    """SIGTERM the server of ``path`` and wait until it is gone (SIGKILL after ``timeout_s``); its pids."""
    pids = server_pids(path)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(p in pids for p, _ in _servers()):
        if time.monotonic() > deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    return pids


def connect_local(path: Path, database: str, idle_s: float) -> Any:
    """A :class:`~stream.clickhouse.server_backend.ServerClickHouse` on ``path``'s server (started if needed)."""
    from clickhouse_connect.driver.httputil import get_pool_manager

    from stream.clickhouse.server_backend import ServerClickHouse

    ep, lease = ensure(path, idle_s)
    pool = get_pool_manager()  # a pool of our own: no HTTP proxy from the environment for 127.0.0.1

    def release() -> None:
        pool.clear()
        lease.close()

    try:
        return ServerClickHouse(
            database,
            where=f"the embedded ClickHouse server of {path}",
            on_close=release,
            host="127.0.0.1",
            port=ep.port,
            username="default",
            password=ep.password,
            pool_mgr=pool,
            compress_data=False,  # on this host: compressing costs both processes more than it saves
        )
    except BaseException:
        release()
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, required=True, help="chdb data directory")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--idle-s", type=float, default=None, help="exit after this long without clients")
    parser.add_argument("--any-user", action="store_true", help="accept every request (no password)")
    parser.add_argument(
        "--detach",
        action="store_true",
        help="serve from a child in a new session; return once it serves (0) or another does (3)",
    )
    args = parser.parse_args(argv)
    if not args.detach:
        return serve(args.path, port=args.port, idle_s=args.idle_s, any_user=args.any_user)
    read_end, write_end = os.pipe()
    if os.fork() > 0:  # the launcher: its status is the child's first word
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            status = reader.read().strip()
        return int(status) if status.isdigit() else 1  # nothing: the child died before serving
    os.close(read_end)
    os.setsid()  # its own session: no signal meant for the starting process's group reaches it

    def report(status: int) -> None:
        nonlocal write_end
        if write_end >= 0:
            os.write(write_end, str(status).encode())
            os.close(write_end)
            write_end = -1

    code = serve(args.path, port=args.port, idle_s=args.idle_s, any_user=args.any_user, on_ready=lambda _: report(0))
    report(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
