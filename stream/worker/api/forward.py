"""Forwarding a request to the worker that owns the user: kept-alive HTTP/1.1 connections, one request each at a time.

aiohttp's client cost about 0.4 ms of the worker's CPU per forwarded request (its request and
response objects, cookie jar, tracing hooks), a third of what a forwarded request costs the two
workers together. The other workers are our own API servers, whose answers always carry a
``Content-Length``: a plain client over asyncio streams is enough. An answer in any other form is
an error (the caller answers 503). A request that fails on a kept-alive connection before any byte
of its answer came is sent once more on a new connection (the owner may have closed the idle one);
only GETs are forwarded, so that is safe.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

#: the most idle connections kept per owner
MAX_IDLE = 32


class ForwardError(Exception):
    """The owner's answer could not be had (the caller answers 503)."""


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (names lower-cased) of a response head.

    >>> parse_head(b"HTTP/1.1 503 Service Unavailable\\r\\nRetry-After: 1\\r\\nContent-Length: 2\\r\\n\\r\\n")
    (503, {'retry-after': '1', 'content-length': '2'})
    """
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ForwardError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class Forwarder:
    """Kept-alive connections to the owners (by their API URL, ``http(s)://host:port``)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._idle: dict[str, list[_Conn]] = {}
        self._addr: dict[str, tuple[str, int, ssl.SSLContext | None]] = {}

    def _address(self, owner: str) -> tuple[str, int, ssl.SSLContext | None]:
        addr = self._addr.get(owner)
        if addr is None:
            u = urlsplit(owner)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ForwardError(f"cannot forward to {owner!r}: expected http(s)://host:port")
            tls = ssl.create_default_context() if u.scheme == "https" else None  # a TLS proxy before the owner
            addr = self._addr[owner] = (u.hostname, u.port or (443 if tls else 80), tls)
        return addr

    async def get(self, owner: str, path_qs: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of ``GET path_qs`` at ``owner``, within the timeout; else :class:`ForwardError`."""
        host, port, _ = self._address(owner)
        head = f"GET {path_qs} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        raw = (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode("latin-1")
        try:
            return await asyncio.wait_for(self._exchange(owner, raw), self.timeout_s)
        except TimeoutError:
            raise ForwardError("TimeoutError") from None

    async def _exchange(self, owner: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        idle = self._idle.setdefault(owner, [])
        while idle:  # a kept-alive connection; one the owner closed meanwhile fails before any answer
            conn = idle.pop()
            try:
                return await self._send(owner, conn, raw)
            except _Stale:
                continue
        host, port, tls = self._address(owner)
        try:
            conn = _Conn(*await asyncio.open_connection(host, port, ssl=tls))
        except OSError as exc:
            raise ForwardError(str(exc) or type(exc).__name__) from None
        try:
            return await self._send(owner, conn, raw)
        except _Stale as exc:
            raise ForwardError(str(exc.__cause__ or "the connection closed")) from None

    async def _send(self, owner: str, conn: _Conn, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        began = False
        try:
            conn.writer.write(raw)
            head = await conn.reader.readuntil(b"\r\n\r\n")
            began = True
            status, headers = parse_head(head)
            if "content-length" not in headers:
                raise ForwardError("the owner's answer has no Content-Length")
            body = await conn.reader.readexactly(int(headers["content-length"]))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            conn.close()
            if not began:
                raise _Stale from exc
            raise ForwardError(str(exc) or type(exc).__name__) from None
        except BaseException:  # a ForwardError, a timeout or a cancellation: the connection's state is unknown
            conn.close()
            raise
        idle = self._idle.setdefault(owner, [])
        if headers.get("connection", "").lower() == "close" or len(idle) >= MAX_IDLE:
            conn.close()
        else:
            idle.append(conn)
        return status, headers, body

    def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()


class _Stale(Exception):
    """A request failed before any byte of its answer: the connection was closed or reset."""
