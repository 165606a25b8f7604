"""The worker's HTTP API: an aiohttp site on the worker's own event loop (docs/api.md).

In the worker process because RocksDB admits one writer: no other process can read the live
state. Handlers run between batches on the same loop, so a user's state is read whole, never in
the middle of a batch. A request for a user another worker owns is forwarded to it once
(``routing.py``); whenever the answer could be stale or wrong (this worker rebalancing or
recovering its tables, the owner not holding the partition any more, the owner unreachable) the
answer is 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

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

log = logging.getLogger(__name__)

#: the header a forwarded request carries: its receiver answers itself or 503, never forwards again
HOP = "X-Stream-Forwarded"
#: the header naming the worker (API URL) that made the answer
SERVED_BY = "X-Stream-Served-By"
RETRY_AFTER_S = 1
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


def bind(port: int, host: str = "0.0.0.0") -> socket.socket:  # noqa: S104 - clients and other workers come from outside
    """The API's listening socket, bound before faust starts: a port in use is a one-line ConfigError."""
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
    sock.listen(512)
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
    """The API of one worker: routes, owner map, forwarding client and site."""

    def __init__(
        self,
        app: Any,
        rt: Publisher,
        recovered: Callable[[], bool],
        sock: socket.socket | None = None,
        recs: Recommendations | None = None,
    ):
        s = rt.settings
        self.app = app
        self.rt = rt
        self.recovered = recovered
        self.sock = sock
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
        #: the bandit counts decisions draw from, and when they were read (``_posterior``)
        self._counts: Any = None
        self._counts_at = 0.0
        #: segmentation version -> its segment names (versions other than the loaded one)
        self._segment_names_of: dict[int, dict[int, str]] = {}
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

    # --- lifecycle --------------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._measure])
        for method, path, handler in ROUTES:
            app.router.add_route(method, path, getattr(self, handler))
        return app

    async def start(self) -> None:
        """Serve on the socket bound by :func:`bind` (on the running loop)."""
        if self.sock is None or self._runner is not None:
            return
        self._runner = web.AppRunner(self.web_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()
        log.info("API serving on port %d as %s", self.sock.getsockname()[1], self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._forwarder.close()

    def on_assigned(self, distribution: Any) -> None:
        """A new assignment: the owner of each users partition (faust's ``assignor.tables_metadata()``)."""
        self.routing.update(distribution, self.users.changelog_topic.get_topic_name(), self.partitions)
        owned = {p for p, url in self.routing.owners.items() if url == self.url}
        self.rt.latest.forget(set(range(self.partitions)) - owned)

    def on_revoked(self) -> None:
        self.routing.clear()
        self._counts = None

    # --- the checks every answer passes ----------------------------------------------------

    def _not_owned(self, partition: int) -> str | None:
        """Why this worker cannot answer for ``partition`` now (None: it can)."""
        if self.app.rebalancing or self.routing.stale:
            return "the worker group is rebalancing"
        if not self.recovered():
            return "the worker is recovering its tables"
        from faust.types import TP

        if TP(self.events_topic, partition) not in self.app.consumer.assignment():
            return f"this worker does not own partition {partition} any more"
        return None

    @web.middleware
    async def _measure(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "other"
        began = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = error(413, f"the body is larger than {self.max_body} bytes (STREAM_API_MAX_BODY_BYTES)")
        except web.HTTPException as exc:
            response = error(exc.status, exc.reason)
        self.latency.labels(route=route).observe(time.perf_counter() - began)
        self.requests.labels(route=route, status=str(response.status)).inc()
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

    async def get_user(self, request: web.Request) -> web.StreamResponse:
        try:
            uid = valid_id(request.match_info["user_id"], "user_id")
            as_of = parse_as_of(request.query.get("as_of"))
        except BadRequest as exc:
            return error(400, str(exc))
        p = partition_for(uid.encode(), self.partitions)
        elsewhere = await self._route(request, p)
        if elsewhere is not None:
            return elsewhere
        try:
            offset, state = self._read_user(p, uid)
        except StoreUnavailable as exc:
            return error(503, str(exc), retry=True)
        if offset < 0:
            return error(404, f"unknown user {uid!r}: no event of theirs processed yet")
        latest = self.rt.latest
        body = user_view(
            uid,
            p,
            offset,
            state,
            latest.get(p, uid),
            latest.since.get(p),
            as_of,
            self.rt.processor.config.state_config,
            None if state.segment is None else self._segment_names(state.segment[1]),
        )
        return _json(body, headers={SERVED_BY: self.url})

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
        try:
            reads = unpack_reads(self._read_partition(self.rt.tables["reads"], p, uid))
            body = self.recs.answer(uid, reads, k)
        except StoreUnavailable as exc:
            return error(503, str(exc), retry=True)
        body["partition"] = p
        return _json(body, headers={SERVED_BY: self.url})

    @staticmethod
    def _read_partition(table: Any, partition: int, key: str) -> bytes | None:
        """``key``'s value in the partition's own RocksDB (the table's lookup when not RocksDB)."""
        try:
            dbs = getattr(table.data, "_dbs", None)
            if dbs is None:
                raw: bytes | None = table.get(key)
                return raw
            db = dbs.get(partition)
            return None if db is None else db.get(key.encode())
        except Exception as exc:
            raise StoreUnavailable(f"cannot read the worker's tables: {type(exc).__name__}: {exc}") from exc

    def _read_user(self, partition: int, uid: str) -> tuple[int, Any]:
        """(input offset last applied, state): the processor's decoded copy, else the partition's RocksDB."""
        cached = self.rt.processor.users.cached(partition, uid)
        if cached is not None:
            return cached
        store = self.users.data
        try:
            dbs = getattr(store, "_dbs", None)
            if dbs is None:  # not RocksDB (unit tests): the table's own lookup
                raw = self.users.get(uid)
            else:
                # The partition's own database: faust's lookup without a current event searches
                # every open one, also those of partitions this worker no longer owns.
                db = dbs.get(partition)
                raw = None if db is None else db.get(uid.encode())
            return unpack_user(raw)
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
        try:
            await self.rt.log_decisions([d], self.forward_timeout_s)
        except Exception as exc:  # not logged: not made
            return error(503, f"the decision could not be logged to Kafka: {type(exc).__name__}: {exc}", retry=True)
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
        """The bandit counts, read again when :data:`POSTERIOR_MAX_AGE_S` old.

        Reading them walks every partition's record in the GlobalTable's RocksDB: at hundreds of
        decisions a second that was a tenth of the worker's API time. Streamed decisions share
        their batch's snapshot in the same way, and other workers' counts reach this one a
        changelog round trip late anyway.
        """
        now = time.monotonic()
        if self._counts is None or now - self._counts_at > POSTERIOR_MAX_AGE_S:
            self._counts = self.rt.processor.ads.posterior_snapshot(self.rt.tables["bandit"])
            self._counts_at = now
        return self._counts

    async def get_models(self, request: web.Request) -> web.StreamResponse:
        models = self.rt.models
        listed: list[dict[str, str | None]] = [
            {"name": m.name, "version": m.version, "kind": m.kind, "feature_version": m.feature_version}
            for m in models.models.values()
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
        api.on_assigned(app.assignor.tables_metadata())

    @app.on_before_shutdown.connect
    async def api_stop(app: Any, **kwargs: Any) -> None:
        await api.stop()

    return api
