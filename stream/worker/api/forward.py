"""Forwarding a request to the worker that owns the user: kept-alive HTTP/1.1 connections, one request each at a time.

aiohttp's client cost about 0.4 ms of the worker's CPU per forwarded request (its request and
response objects, cookie jar, tracing hooks), a third of what a forwarded request costs the two
workers together. The other workers are our own API servers, whose answers always carry a
``Content-Length``: a plain client is enough. It is an :class:`asyncio.Protocol` (no stream
reader, and no task per request for its timeout, which ``asyncio.wait_for`` made on Python 3.11).
An answer in any other form is an error (the caller answers 503). A request that fails on a
kept-alive connection before any byte of its answer came is sent once more on a new connection
(the owner may have closed the idle one); only GETs are forwarded, so that is safe.

Up to :data:`MAX_IDLE` connections per owner are kept: at hundreds of requests a second a
forwarded request's wait decides how many are in flight at once, and closing the ones over a
small pool made the next burst open new connections (a connect and an accept on both workers)
just when the owner was slowest.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast
from urllib.parse import urlsplit

#: the most idle connections kept per owner (about the requests in flight to it at the busiest)
MAX_IDLE = 256
#: the longest answer head accepted (bytes)
MAX_HEAD = 16 * 1024


class ForwardError(Exception):
    """The owner's answer could not be had (the caller answers 503)."""


class _Stale(Exception):
    """A request failed before any byte of its answer: the connection was closed or reset."""


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


Answer = tuple[int, dict[str, str], bytes]


class _Conn(asyncio.Protocol):
    """One kept-alive connection to an owner: one request at a time, its answer read into :attr:`waiter`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[Answer] | None = None
        self._buf = bytearray()
        self._head: tuple[int, dict[str, str]] | None = None
        self._need = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of asyncio's

    def request(self, raw: bytes) -> asyncio.Future[Answer]:
        """Send ``raw``; the future gets the answer, :class:`_Stale` if the connection closes before any byte."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self._buf.clear()
        self._head = None
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the connection cannot be reused
            self.close()
            return
        self._buf += data
        try:
            if self._head is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD:
                        raise ForwardError(f"the owner's answer head is over {MAX_HEAD} bytes")
                    return
                status, headers = parse_head(bytes(self._buf[: end + 4]))
                length = headers.get("content-length")
                if length is None or not length.isdigit():
                    raise ForwardError("the owner's answer has no Content-Length")
                self._head, self._need = (status, headers), int(length)
                del self._buf[: end + 4]
            if len(self._buf) < self._need:
                return
            if len(self._buf) > self._need:
                raise ForwardError("the owner sent more than its answer's Content-Length")
        except ForwardError as exc:
            self.close()
            waiter.set_exception(exc)
            return
        status, headers = self._head
        waiter.set_result((status, headers, bytes(self._buf)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self._buf or self._head is not None:
                waiter.set_exception(ForwardError(str(exc or "the owner closed the connection mid-answer")))
            else:
                waiter.set_exception(_Stale(str(exc or "the connection closed")))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(ForwardError("TimeoutError"))


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

    async def get(self, owner: str, path_qs: str, headers: dict[str, str]) -> Answer:
        """(status, headers, body) of ``GET path_qs`` at ``owner``, within the timeout; else :class:`ForwardError`."""
        host, port, tls = self._address(owner)
        head = f"GET {path_qs} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        raw = (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode("latin-1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        idle = self._idle.setdefault(owner, [])
        while idle:  # a kept-alive connection; one the owner closed meanwhile fails before any answer
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                return await self._send(owner, conn, raw, deadline)
            except _Stale:
                continue
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Conn, host, port, ssl=tls), max(deadline - loop.time(), 0.0)
            )
        except TimeoutError:
            raise ForwardError("TimeoutError") from None
        except OSError as exc:
            raise ForwardError(str(exc) or type(exc).__name__) from None
        try:
            return await self._send(owner, conn, raw, deadline)
        except _Stale as exc:
            raise ForwardError(str(exc) or "the connection closed") from None

    async def _send(self, owner: str, conn: _Conn, raw: bytes, deadline: float) -> Answer:
        loop = asyncio.get_running_loop()
        waiter = conn.request(raw)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            status, headers, body = await waiter
        except _Stale:
            conn.close()
            raise
        except BaseException:  # a ForwardError, the timeout or a cancellation: the connection's state is unknown
            conn.close()
            raise
        finally:
            timer.cancel()
            conn.waiter = None
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
