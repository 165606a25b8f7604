"""The worker's HTTP API: an aiohttp site on the stream's event loop, or on a thread of its own (docs/api.md).

In the worker process because RocksDB admits one writer: no other process can read the live
state. On the stream's loop (the default) handlers run between batches. With ``STREAM_API_THREAD``
the site runs on a thread of its own with its own loop, so that a request does not wait for the
batch the stream's loop is processing: that thread needs only the GIL, which CPython hands over
within ``sys.getswitchinterval()`` (``STREAM_API_SWITCH_INTERVAL_MS``, 1 ms; Python's own is
5 ms). Either way, what the API reads of the stream is read whole:

* a user's state from the partition's RocksDB (one key's value, written once per batch after the
  batch is done; the processor's decoded copies change in place during a batch and are not read);
* the latest scores (``scores.py``) and the bandit counts (``Ads.committed``) as mappings the
  stream replaces, never changes in place;
* ownership from flags the stream's loop sets; every answer from local state is checked again
  after its read against the revocation count (:attr:`Api.generation`), so that a read that raced
  a rebalance answers 503.

Recommendations read structures the stream also uses: on the thread, their local part runs on
the stream's loop. A request for a user another worker owns is forwarded to it once
(``routing.py``); whenever the answer could be stale or wrong (this worker rebalancing or
recovering its tables, the owner not holding the partition any more, the owner unreachable) the
answer is 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from stream.errors import ConfigError
from stream.kafka.partitioner import partition_for
from stream.models import SEGMENTS
from stream.models.recommend import NAME as RECOMMEND_NAME
from stream.worker.api.answers import BadRequest, decide, parse_as_of, parse_decide, parse_k, user_view, valid_id
from stream.worker.api.forward import Forwarder, ForwardError
from stream.worker.api.routing import Routing
from stream.worker.delivery import unpack_user
from stream.worker.publisher import Publisher
from stream.worker.recommendations import Recommendations, unpack_reads
from stream.worker.stores import StoreUnavailable
from stream.worker.tuning import renice_threads

log = logging.getLogger(__name__)

#: the header a forwarded request carries: its receiver answers itself or 503, never forwards again
HOP = "X-Stream-Forwarded"
#: the header naming the worker (API URL) that made the answer
SERVED_BY = "X-Stream-Served-By"
RETRY_AFTER_S = 1
#: how long a request waits for the stream's loop (recommendations) before it answers 503
STREAM_LOOP_WAIT_S = 30.0
#: users whose last answer is kept, with the stored value it was made from (``Api._answer_user``)
MAX_CACHED_ANSWERS = 50_000
T = TypeVar("T")
#: how often the API's thread serves the decisions producer's delivery reports while any is due (s)
DELIVERY_POLL_S = 0.001
#: (lower-cased name, name) of the owner's answer headers relayed with a forwarded answer
_RELAYED = (("content-type", "Content-Type"), ("retry-after", "Retry-After"), (SERVED_BY.lower(), SERVED_BY))
#: how old the bandit counts ``POST /v1/decide`` draws from may be (s)
POSTERIOR_MAX_AGE_S = 0.05
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: (method, path, handler): what schemas/openapi/worker-api.v1.yaml describes
ROUTES = (
    ("GET", "/v1/users/{user_id}", "get_user"),
    ("GET", "/v1/users/{user_id}/recommendations", "get_recommendations"),
    ("POST", "/v1/decide", "post_decide"),
    ("GET", "/v1/models", "get_models"),
    ("GET", "/healthz", "healthz"),
    ("GET", "/readyz", "readyz"),
    ("GET", "/metrics", "metrics"),
)


#: connections the API's socket queues before they are accepted
LISTEN_BACKLOG = 512


def bind(port: int, host: str = "0.0.0.0") -> socket.socket:  # noqa: S104 - clients and other workers come from outside
    """The API's socket, bound before faust starts: a port in use is a one-line ConfigError.

    It listens only once the API serves (:meth:`Api.start`, at the app's first start): until then a
    client's connection is refused, rather than accepted by the kernel and left unanswered for as
    long as the worker takes to start (its models, faust's services), which on a busy host can be
    longer than the client's timeout.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"invalid configuration STREAM_API_PORT={port}: cannot serve the API on port {port} "
            f"({exc.strerror}); expected a free port, or 0 for no API"
        ) from None
    sock.setblocking(False)
    return sock


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error(status: int, reason: str, retry: bool = False) -> web.Response:
    """A JSON error ``{"error": reason}``; 503s carry ``Retry-After``."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if retry else None
    return _json({"error": reason}, status, headers)


class Api:
    """The API of one worker: routes, owner map, forwarding client and site (on its own thread)."""

    def __init__(
        self,
        app: Any,
        rt: Publisher,
        recovered: Callable[[], bool],
        sock: socket.socket | None = None,
        recs: Recommendations | None = None,
        threaded: bool | None = None,
    ):
        s = rt.settings
        self.app = app
        self.rt = rt
        self.recovered = recovered
        self.sock = sock
        self.threaded = s.api_thread if threaded is None else threaded
        self.url = s.api_advertised_url()
        self.partitions = s.topic_partitions
        self.routing = Routing(self.url)
        self.users = rt.tables["users"]
        self.recs = recs
        self.events_topic = rt.topic_names["events"]
        self.forward_timeout_s = s.api_forward_timeout_s
        self.max_body = s.api_max_body_bytes
        self._forwarder = Forwarder(self.forward_timeout_s)
        self._runner: web.AppRunner | None = None
        #: the stream's loop, and the API's own loop and thread (``start``)
        self._stream_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: the task serving the decisions producer's delivery reports on the API's loop, and its wake-up
        self._polling: asyncio.Future[None] | None = None
        self._produced: asyncio.Event | None = None
        #: revocations so far (the stream's loop counts them): a read from local state that saw
        #: this change answers 503, as it may have raced a rebalance
        self.generation = 0
        #: the input partitions this worker was assigned (set on the stream's loop; empty while rebalancing)
        self.owned: frozenset[int] = frozenset()
        #: the bandit counts decisions draw from, and when they were read (``_posterior``)
        self._counts: Any = None
        self._counts_at = 0.0
        #: segmentation version -> its segment names (versions other than the loaded one)
        self._segment_names_of: dict[int, dict[int, str]] = {}
        #: per user: (stored value, scores, scores since, as_of, segment names, encoded answer)
        self._answers: dict[str, tuple[bytes, Any, Any, int | None, Any, bytes]] = {}
        r = rt.metrics.registry
        self.requests = Counter(
            "stream_api_requests_total", "API requests answered, by route and status", ["route", "status"], registry=r
        )
        self.forwarded = Counter(
            "stream_api_forwarded_total", "API requests forwarded to the worker that owns the user", registry=r
        )
        self.latency = Histogram(
            "stream_api_request_seconds",
            "API request time in this worker, by route (a forwarded one includes the owner's)",
            ["route"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.decision_log = Histogram(
            "stream_api_decision_log_seconds",
            "POST /v1/decide: from its decision's produce to Kafka's acknowledgement, as the handler saw it",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.decision_ack = Histogram(
            "stream_api_decision_ack_seconds",
            "POST /v1/decide: from its decision's produce to Kafka's acknowledgement, as the thread serving the "
            "delivery reports saw it (stream_api_decision_log_seconds less this: the wait for the handler's loop)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        #: the metrics' children by route (and status): ``labels()`` takes a lock and builds a key each call
        self._observe: dict[str, Callable[[float], None]] = {}
        self._count: dict[tuple[str, int], Callable[[], None]] = {}

    # --- lifecycle --------------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._measure])
        for method, path, handler in ROUTES:
            app.router.add_route(method, path, getattr(self, handler))
        return app

    async def start(self) -> None:
        """Serve on the socket bound by :func:`bind`: from the API's thread, or on the running (stream's) loop."""
        if self.sock is None or self._runner is not None or self._thread is not None:
            return
        self._stream_loop = asyncio.get_running_loop()
        if not self.threaded:
            self._loop = self._stream_loop
            await self._serve()
            return
        switch_ms = self.rt.settings.api_switch_interval_ms
        if switch_ms > 0:  # process-wide: how long a waiting thread (this one) waits for the GIL at most
            sys.setswitchinterval(switch_ms / 1000)
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="api", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(started)
        if self.rt.settings.processing_nice:
            self._put_stream_behind(self.rt.settings.processing_nice)

    def _put_stream_behind(self, nice: int) -> None:
        """``STREAM_PROCESSING_NICE``: every thread but the API's and its decisions producer's at ``nice``."""
        assert self._thread is not None and self._thread.native_id is not None  # started
        keep = {self._thread.native_id, *self.rt.api_producer_threads}
        changed = renice_threads(nice, keep)
        log.info(
            "%d of the worker's threads at niceness %d, behind the API's thread and its producer's %d",
            len(changed), nice, len(keep) - 1,
        )  # fmt: skip

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        """The API's thread: its own loop (uvloop when the worker's is), serving until :meth:`stop`."""
        loop = _new_loop(self.rt.settings.event_loop)
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        assert self.sock is not None
        producer = self.rt.api_producer
        if self._thread is not None and producer is not None:
            # Its delivery reports on this loop: a delivery thread of its own waited for the
            # GIL to run each report's callback, and this thread again to take up the answer.
            self.rt.api_polled_by_caller = True
            self._produced = asyncio.Event()
            self._polling = asyncio.ensure_future(self._poll_decisions(producer, self._produced))
        self._runner = web.AppRunner(self.web_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        # listens from here on (bind): a connection waits for an answer only while one can come
        await web.SockSite(self._runner, self.sock, backlog=LISTEN_BACKLOG).start()
        where = "its own thread" if self.threaded else "the stream's event loop"
        log.info("API serving on port %d as %s, from %s", self.sock.getsockname()[1], self.url, where)

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._forwarder.close()
        if self._polling is not None:
            self._polling.cancel()
            self._polling = None
        if self.threaded and self._stream_loop is not None:
            self.rt.hand_over_rows(self._stream_loop)  # decisions not yet handed to the sink

    @staticmethod
    async def _poll_decisions(producer: Any, produced: asyncio.Event) -> None:
        """Serve the decisions producer's delivery reports while any decision waits for one."""
        while True:
            await produced.wait()
            produced.clear()
            while len(producer):  # messages not yet acknowledged (or failed)
                producer.poll(0)
                await asyncio.sleep(DELIVERY_POLL_S)

    async def stop(self) -> None:
        """Stop serving (on the stream's loop): the site is cleaned up on its own loop, then its thread ends."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            await self._cleanup()
            return
        self._thread = None
        if thread.is_alive():
            try:
                await asyncio.wait_for(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._cleanup(), loop)), 30)
            except Exception as exc:  # the site's own shutdown failed: the thread is a daemon
                log.warning("API site not cleaned up: %s: %s", type(exc).__name__, exc)
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)

    def on_assigned(self, distribution: Any, assigned: Any = ()) -> None:
        """A new assignment: the owner of each users partition (faust's ``assignor.tables_metadata()``).

        ``assigned``: this worker's topic partitions (the input's are the ones it answers for).
        """
        self.routing.update(distribution, self.users.changelog_topic.get_topic_name(), self.partitions)
        owned = {p for p, url in self.routing.owners.items() if url == self.url}
        self.rt.latest.forget(set(range(self.partitions)) - owned)
        self.owned = frozenset(tp.partition for tp in assigned if tp.topic == self.events_topic)

    def on_revoked(self) -> None:
        self.generation += 1
        self.owned = frozenset()
        self.routing.clear()
        self._counts = None

    async def _on_stream(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the stream's loop (between its batches), awaited from the API's loop."""
        stream = self._stream_loop
        if stream is None or stream is asyncio.get_running_loop():
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(fn())
                except BaseException as exc:
                    done.set_exception(exc)

        stream.call_soon_threadsafe(run)
        return await asyncio.wait_for(asyncio.wrap_future(done), STREAM_LOOP_WAIT_S)

    # --- the checks every answer passes ----------------------------------------------------

    def _not_owned(self, partition: int) -> str | None:
        """Why this worker cannot answer for ``partition`` now (None: it can)."""
        if self.app.rebalancing or self.routing.stale:
            return "the worker group is rebalancing"
        if not self.recovered():
            return "the worker is recovering its tables"
        if partition not in self.owned:
            return f"this worker does not own partition {partition} any more"
        return None

    @web.middleware
    async def _measure(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        began = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = error(413, f"the body is larger than {self.max_body} bytes (STREAM_API_MAX_BODY_BYTES)")
        except web.HTTPException as exc:
            response = error(exc.status, exc.reason)
        observe = self._observe.get(route)
        if observe is None:
            observe = self._observe[route] = self.latency.labels(route=route).observe
        observe(time.perf_counter() - began)
        key = (route, response.status)
        count = self._count.get(key)
        if count is None:
            count = self._count[key] = self.requests.labels(route=route, status=str(response.status)).inc
        count()
        return response

    # --- endpoints -------------------------------------------------------------------------

    async def _route(self, request: web.Request, p: int) -> web.StreamResponse | None:
        """The answer when partition ``p``'s owner is not this worker (forwarded, or 503), else None."""
        owner = self.routing.owner(p)
        if self.app.rebalancing or owner is None:
            return error(503, f"no owner of partition {p} is known now (rebalancing)", retry=True)
        if owner != self.url:
            if HOP in request.headers:
                return error(503, f"forwarded here, but partition {p} is owned by {owner} now", retry=True)
            return await self._forward(request, owner)
        problem = self._not_owned(p)
        return None if problem is None else error(503, problem, retry=True)

    def _raced(self, generation: int) -> web.Response | None:
        """503 when a revocation began since ``generation`` was read (the answer may be another owner's now)."""
        if self.generation != generation or self.app.rebalancing:
            return error(503, "the worker group is rebalancing", retry=True)
        return None

    async def get_user(self, request: web.Request) -> web.StreamResponse:
        try:
            uid = valid_id(request.match_info["user_id"], "user_id")
            as_of = parse_as_of(request.query.get("as_of"))
        except BadRequest as exc:
            return error(400, str(exc))
        p = partition_for(uid.encode(), self.partitions)
        generation = self.generation
        elsewhere = await self._route(request, p)
        if elsewhere is not None:
            return elsewhere
        try:  # from RocksDB, not the processor's decoded copies: a batch changes them in place
            body = self._answer_user(p, uid, as_of)
        except StoreUnavailable as exc:
            return error(503, str(exc), retry=True)
        raced = self._raced(generation)
        if raced is not None:
            return raced
        if body is None:
            return error(404, f"unknown user {uid!r}: no event of theirs processed yet")
        return web.Response(body=body, content_type="application/json", headers={SERVED_BY: self.url})

    def _answer_user(self, p: int, uid: str, as_of: int | None) -> bytes | None:
        """The encoded answer for ``uid`` from the partition's RocksDB (None: unknown user).

        The last answer of each user is kept with what it was made from: the stored value, the
        scores mapping (replaced whenever the user is scored), ``as_of`` and the segment names.
        While none of them changed, the same answer is sent again, without decoding the state.
        """
        raw = self._read_partition(self.users, p, uid)
        latest = self.rt.latest
        scores, since = latest.get(p, uid), latest.since.get(p)
        kept = self._answers.get(uid)
        if kept is not None and raw is not None:
            kraw, kscores, ksince, kas_of, knames, body = kept
            same = kscores is scores and ksince == since and kas_of == as_of and (kraw is raw or kraw == raw)
            # the same stored value holds the same segment, whose names may have been loaded since
            if same and (knames is None or self._segment_names(knames[0]) is knames[1]):
                return body
        offset, state = unpack_user(raw)
        if offset < 0:
            return None
        made = self._view_user(p, uid, as_of, offset, state, scores, since)
        if made is not None and raw is not None:
            seg = state.segment
            names = None if seg is None else (seg[1], self._segment_names(seg[1]))
            if len(self._answers) >= MAX_CACHED_ANSWERS:
                self._answers.clear()
            self._answers[uid] = (raw, scores, since, as_of, names, made)
        return made

    def _view_user(
        self,
        p: int,
        uid: str,
        as_of: int | None,
        offset: int,
        state: Any,
        scores: Mapping[str, Any] | None = None,
        since: int | None = None,
    ) -> bytes | None:
        """The encoded ``user_view`` (None when no event of the user was applied)."""
        if offset < 0:
            return None
        if scores is None:
            scores, since = self.rt.latest.get(p, uid), self.rt.latest.since.get(p)
        body = user_view(
            uid,
            p,
            offset,
            state,
            scores,
            since,
            as_of,
            self.rt.processor.config.state_config,
            None if state.segment is None else self._segment_names(state.segment[1]),
        )
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    def _segment_names(self, version: int) -> Mapping[int, str] | None:
        """The segment names of a segmentation version: the loaded one's, else the registry's (cached)."""
        loaded = self.rt.models.models.get(SEGMENTS.name)
        if loaded is not None and loaded.version == str(version):
            names: Mapping[int, str] = loaded.booster.names
            return names
        cached = self._segment_names_of.get(version)
        if cached is None:
            try:
                mv = self.rt.models.registry.get(SEGMENTS.registered_as, str(version))
                params = orjson.loads(mv.model_file.read_bytes())
                cached = {int(k): str(v) for k, v in params["names"].items()}
            except Exception as exc:  # a version deleted or unreadable: the answer names no segment
                log.warning("no names of segmentation version %s: %s", version, exc)
                return None
            self._segment_names_of[version] = cached
        return cached

    async def get_recommendations(self, request: web.Request) -> web.StreamResponse:
        try:
            uid = valid_id(request.match_info["user_id"], "user_id")
            k = parse_k(request.query.get("k"))
        except BadRequest as exc:
            return error(400, str(exc))
        if self.recs is None:
            return error(503, "this worker serves no recommendations", retry=True)
        p = partition_for(uid.encode(), self.partitions)
        elsewhere = await self._route(request, p)
        if elsewhere is not None:
            return elsewhere
        try:  # the candidates and the model are the stream's too: read on its loop
            return await self._on_stream(lambda: self._recommend(p, uid, k))
        except TimeoutError:
            return error(503, "the worker's stream did not take the request in time", retry=True)

    def _recommend(self, p: int, uid: str, k: int) -> web.Response:
        """The local answer for recommendations (on the stream's loop)."""
        assert self.recs is not None
        problem = self._not_owned(p)
        if problem is not None:
            return error(503, problem, retry=True)
        try:
            reads = unpack_reads(self._read_partition(self.rt.tables["reads"], p, uid))
            body = self.recs.answer(uid, reads, k)
        except StoreUnavailable as exc:
            return error(503, str(exc), retry=True)
        except ValueError as exc:  # the loaded model cannot rank (a non-finite score): until a new one is promoted
            return error(503, f"recommendations unavailable: {exc}", retry=True)
        body["partition"] = p
        return _json(body, headers={SERVED_BY: self.url})

    @staticmethod
    def _read_partition(table: Any, partition: int, key: str) -> bytes | None:
        """``key``'s value in the partition's own RocksDB (the table's lookup when not RocksDB).

        The partition's own database: faust's lookup without a current event searches every
        open one, also those of partitions this worker no longer owns. One key's value is
        written whole (RocksDB is safe to read from another thread while it is written).
        """
        try:
            dbs = getattr(table.data, "_dbs", None)
            if dbs is None:  # not RocksDB (unit tests): the table's own lookup
                raw: bytes | None = table.get(key)
                return raw
            db = dbs.get(partition)
            return None if db is None else db.get(key.encode())
        except Exception as exc:
            raise StoreUnavailable(f"cannot read the worker's tables: {type(exc).__name__}: {exc}") from exc

    async def _forward(self, request: web.Request, owner: str) -> web.StreamResponse:
        """The owner's answer to this GET (``forward.py``), or 503 when it has none."""
        self.forwarded.inc()
        headers = {HOP: self.url, "Accept": "application/json"}
        try:
            status, got, body = await self._forwarder.get(owner, request.path_qs, headers)
        except ForwardError as exc:
            return error(503, f"the owner {owner} did not answer: {exc}", retry=True)
        out = {name: got[key] for key, name in _RELAYED if key in got}
        return web.Response(body=body, status=status, headers=out)

    async def post_decide(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > self.max_body:
            return error(413, f"the body is larger than {self.max_body} bytes (STREAM_API_MAX_BODY_BYTES)")
        body = await request.read()
        processor = self.rt.processor
        try:
            req = parse_decide(body, processor.ads.placements)
        except BadRequest as exc:
            return error(400, str(exc))
        if self.app.rebalancing or not self.recovered():
            return error(503, "the worker is rebalancing or recovering its tables", retry=True)
        try:
            counts = self._posterior()
        except StoreUnavailable as exc:
            return error(503, str(exc), retry=True)
        d = decide(processor.ads, counts, req, int(time.time() * 1000))
        if self._produced is not None:
            self._produced.set()  # its delivery report is served from now on (_poll_decisions)
        logging_began = time.perf_counter()
        try:
            await self.rt.log_decisions([d], self.forward_timeout_s, self._stream_loop, self.decision_ack.observe)
        except Exception as exc:  # not logged: not made
            return error(503, f"the decision could not be logged to Kafka: {type(exc).__name__}: {exc}", retry=True)
        self.decision_log.observe(time.perf_counter() - logging_began)
        return _json(
            {
                "decision_id": d["decision_id"],
                "request_id": d["request_id"],
                "user_id": d["user_id"],
                "context": d["context"],
                "placement": d["placement"],
                "propensity": d["propensity"],
                "policy": d["policy"],
                "arm_means": d["arm_means"],
                "decided_at": d["decided_at"],
            },
            headers={SERVED_BY: self.url},
        )

    def _posterior(self) -> Any:
        """The bandit counts as of the stream's last table write, read again when :data:`POSTERIOR_MAX_AGE_S` old.

        Reading them walks every partition's record in the GlobalTable's RocksDB: at hundreds of
        decisions a second that was a tenth of the worker's API time. Streamed decisions share
        their batch's snapshot in the same way, and other workers' counts reach this one a
        changelog round trip late anyway.
        """
        now = time.monotonic()
        if self._counts is None or now - self._counts_at > POSTERIOR_MAX_AGE_S:
            self._counts = self.rt.processor.ads.committed_snapshot(self.rt.tables["bandit"])
            self._counts_at = now
        return self._counts

    async def get_models(self, request: web.Request) -> web.StreamResponse:
        models = self.rt.models
        listed: list[dict[str, str | None]] = [
            {"name": m.name, "version": m.version, "kind": m.kind, "feature_version": m.feature_version}
            for m in list(models.models.values())  # a copy: the stream's loop may load a model meanwhile
        ]
        rec = self.recs.model if self.recs is not None else None
        if rec is not None:  # the item factors recommendations fold users into; no feature list
            listed.append(
                {"name": RECOMMEND_NAME, "version": rec.version, "kind": "recommendation", "feature_version": None}
            )
        return _json({"alias": models.alias, "models": sorted(listed, key=lambda m: str(m["name"]))})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return self._verdict(self.rt.metrics.health.live())

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        return self._verdict(self.rt.metrics.health.ready())

    def _verdict(self, verdict: Any) -> web.Response:
        return web.Response(
            body=verdict.json(),
            status=200 if verdict.ok else 503,
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body = generate_latest(self.rt.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _new_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind the worker runs (``STREAM_EVENT_LOOP``)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def register(
    app: Any,
    rt: Publisher,
    sock: socket.socket | None,
    recovered: Callable[[], bool],
    recs: Recommendations | None = None,
) -> Api | None:
    """Wire the API into the faust app when it has a socket (:func:`bind`); the app calls ``start``."""
    if sock is None:
        return None
    api = Api(app, rt, recovered, sock, recs)

    @app.on_partitions_revoked.connect
    async def api_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        api.on_revoked()

    @app.on_partitions_assigned.connect
    async def api_assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
        api.on_assigned(app.assignor.tables_metadata(), app.consumer.assignment())

    @app.on_before_shutdown.connect
    async def api_stop(app: Any, **kwargs: Any) -> None:
        await api.stop()

    return api
