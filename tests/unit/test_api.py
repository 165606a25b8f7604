"""The API's pure parts: the owner map, the latest scores, request parsing, decisions and user views."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from stream.bandits.thompson import propensities
from stream.events.ids import decision_id
from stream.state import DEFAULT_CONFIG, USER_FEATURES, new_user_state, update_user
from stream.worker.ads import Ads
from stream.worker.api.answers import BadRequest, DecideRequest, decide, parse_as_of, parse_decide, user_view
from stream.worker.api.routing import Routing, owner_map
from stream.worker.scores import LatestScores

PLACEMENTS = ("top_banner", "sidebar", "in_article", "footer")


def test_owner_map_refuses_partitions_with_no_single_owner() -> None:
    # faust's leader keys the map by URL: two members sharing one URL leave one entry, and the
    # partitions of the other are simply absent
    collapsed = {"http://w:6066": {"users-changelog": [2, 3], "other": [0, 1]}}
    owners, missing = owner_map(collapsed, "users-changelog", 4)
    assert owners == {2: "http://w:6066", 3: "http://w:6066"} and missing == [0, 1]
    owners, missing = owner_map({"http://a": {"t": [0, 1]}, "http://b": {"t": [1, 2]}}, "t", 3)
    assert owners == {0: "http://a", 2: "http://b"} and missing == [1]


def test_routing_knows_no_owner_between_revocation_and_assignment() -> None:
    routing = Routing("http://a")
    assert routing.owner(0) is None  # before the first assignment
    routing.update({"http://a": {"t": [0]}, "http://b": {"t": [1]}}, "t", 2)
    assert (routing.owner(0), routing.owner(1)) == ("http://a", "http://b")
    routing.clear()
    assert routing.owner(0) is None and routing.owner(1) is None


def _prediction(uid: str, model: str, t: int, score: float, event_id: str = "e") -> dict[str, object]:
    return {
        "user_id": uid,
        "model_name": model,
        "model_version": "3",
        "event_id": event_id,
        "event_time": t,
        "score": score,
        "predicted_at": t + 5,
    }


def test_latest_scores_keep_the_newest_by_event_time_per_model_and_are_bounded() -> None:
    latest = LatestScores(max_users=2)
    latest.record(0, [_prediction("u1", "churn", 100, 0.1, "a"), _prediction("u1", "click", 90, 0.7, "b")])
    latest.record(0, [_prediction("u1", "churn", 50, 0.9, "late")])  # older event: not the latest
    assert latest.get(0, "u1") == {"churn": (0.1, "3", "a", 100, 105), "click": (0.7, "3", "b", 90, 95)}
    latest.record(0, [_prediction("u2", "churn", 1, 0.5), _prediction("u3", "churn", 1, 0.5)])
    assert latest.get(0, "u1") == {}  # least recently scored, dropped past the bound
    assert 0 in latest.since
    latest.forget([0])
    assert latest.get(0, "u2") == {} and 0 not in latest.since


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b'"u1"', "JSON object"),
        (b"{}", "user_id must be a string"),
        (b'{"user_id": "' + b"x" * 65 + b'"}', "1 to 64"),
        (b'{"user_id": "u", "context": "mobile"}', "context must be an object"),
        (b'{"user_id": "u", "context": {"os": "x"}}', "context: unknown field"),
        (b'{"user_id": "u", "placements": []}', "non-empty list"),
        (b'{"user_id": "u", "placements": ["sidebar", "sidebar"]}', "distinct"),
        (b'{"user_id": "u", "placements": ["moon"]}', "unknown placement 'moon'"),
        (b'{"user_id": "u", "extra": 1}', "unknown field(s): extra"),
    ],
)
def test_bad_decide_bodies_get_a_one_line_reason(body: bytes, reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_decide(body, PLACEMENTS)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_decide_restricted_to_the_offered_placements_reports_their_propensity() -> None:
    ads = Ads(PLACEMENTS, seed=5)
    counts = {"mobile": {"top_banner": (1000, 10), "sidebar": (1000, 30), "footer": (50, 1)}}
    req = parse_decide(
        b'{"user_id": "u1", "context": {"device": "mobile"}, "placements": ["footer", "top_banner"], '
        b'"request_id": "r1"}',
        PLACEMENTS,
    )
    assert req == DecideRequest("u1", "r1", "mobile", ("top_banner", "footer"))  # configured order
    d = decide(ads, counts, req, 1_000)
    # Beta(1 + clicks, 1 + impressions - clicks) of the two offered arms only
    alpha, beta = np.array([11.0, 2.0]), np.array([991.0, 50.0])
    expected = dict(zip(("top_banner", "footer"), propensities(alpha, beta), strict=True))
    assert d["placement"] in ("top_banner", "footer")
    assert d["propensity"] == pytest.approx(expected[d["placement"]])
    assert d["policy"] == "thompson-api" and d["context"] == "mobile"
    assert d["decision_id"] == decision_id("thompson-api", "u1", "r1")
    assert decide(ads, counts, req, 2_000)["placement"] == d["placement"]  # seeded by the request id
    single = decide(ads, counts, DecideRequest("u1", "r2", None, ("sidebar",)), 1_000)
    assert (single["placement"], single["propensity"], single["context"]) == ("sidebar", 1.0, "unknown")


def test_decide_draws_follow_the_propensities() -> None:
    ads = Ads(PLACEMENTS, seed=1, context="none")
    counts = {"all": {"top_banner": (100, 5), "sidebar": (100, 6)}}
    picks = [
        decide(ads, counts, DecideRequest("u", f"r{i}", "mobile", ("top_banner", "sidebar")), 0)["placement"]
        for i in range(4000)
    ]
    share = picks.count("sidebar") / len(picks)
    want = float(propensities(np.array([6.0, 7.0]), np.array([96.0, 95.0]))[1])
    assert abs(share - want) < 4 * math.sqrt(want * (1 - want) / len(picks))


def test_user_view_counts_events_and_shows_undefined_features_as_null() -> None:
    st = new_user_state()
    t0 = 1_700_000_000_000
    for i, kind in enumerate(("session_start", "page_view", "page_view")):
        update_user(
            st,
            {
                "schema_version": 1,
                "event_id": f"e{i}",
                "event_type": kind,
                "user_id": "u1",
                "session_id": "s1",
                "event_time": t0 + i * 1000,
            },
        )
    view = user_view("u1", 2, 41, st, {}, None, None, DEFAULT_CONFIG)
    assert view["as_of"] == view["last_event_time"] == t0 + 2000
    assert view["features"]["total_events"] == 3.0 and view["features"]["total_sessions"] == 1.0
    assert list(view["features"]) == list(USER_FEATURES.names)
    assert view["features"]["days_since_newsletter"] is None  # never signed up: NaN in the row
    assert view["scores"] == {} and view["offset"] == 41 and view["partition"] == 2
    earlier = user_view("u1", 2, 41, st, {}, None, t0, DEFAULT_CONFIG)
    assert earlier["as_of"] == t0 + 2000  # raised to the last event: the state cannot un-see events


def test_as_of_must_be_whole_milliseconds() -> None:
    assert parse_as_of(None) is None and parse_as_of("12") == 12
    for bad in ("soon", "-1", "1.5"):
        with pytest.raises(BadRequest, match="as_of"):
            parse_as_of(bad)


async def test_forwarder_relays_the_owners_answer_on_kept_alive_connections() -> None:
    """stream/worker/api/forward.py against a real aiohttp server: reuse, a closed idle connection, errors."""
    import asyncio

    from aiohttp import web

    from stream.kafka.embedded import free_port
    from stream.worker.api.forward import Forwarder, ForwardError

    peers: list[object] = []
    slow = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        if request.path == "/slow":
            await slow.wait()
        return web.json_response(
            {"path": request.path_qs, "hop": request.headers.get("X-Stream-Forwarded")},
            status=503 if request.path == "/busy" else 200,
            headers={"Retry-After": "1", "X-Stream-Served-By": "owner"} if request.path == "/busy" else None,
        )

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    owner = f"http://127.0.0.1:{port}"
    fwd = Forwarder(timeout_s=0.5)
    try:
        status, headers, body = await fwd.get(owner, "/v1/users/u1?as_of=5", {"X-Stream-Forwarded": "me"})
        assert status == 200 and orjson.loads(body) == {"path": "/v1/users/u1?as_of=5", "hop": "me"}
        assert headers["content-type"].startswith("application/json")
        status, headers, _ = await fwd.get(owner, "/busy", {})
        assert status == 503 and headers["retry-after"] == "1" and headers["x-stream-served-by"] == "owner"
        assert peers[0] == peers[1]  # the same kept-alive connection

        # the owner closes its idle connections (a restart): the next request goes on a new one
        await runner.cleanup()
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        status, _, body = await fwd.get(owner, "/again", {})
        assert status == 200 and orjson.loads(body)["path"] == "/again"

        with pytest.raises(ForwardError, match="TimeoutError"):
            await fwd.get(owner, "/slow", {})
        slow.set()
        with pytest.raises(ForwardError):
            await fwd.get(f"http://127.0.0.1:{free_port()}", "/nobody-listens", {})
        with pytest.raises(ForwardError, match="expected http"):
            await fwd.get("ftp://127.0.0.1:1", "/", {})
    finally:
        fwd.close()
        await runner.cleanup()


async def test_forwarder_keeps_a_connection_per_request_in_flight_and_refuses_malformed_answers() -> None:
    """A burst of concurrent forwards leaves one kept-alive connection each (no new connects for the
    next burst); an answer without Content-Length, or with more bytes than it says, is an error."""
    await _forward_bursts()


def test_forwarder_on_uvloop() -> None:
    """The same on uvloop, the worker's loop (its transports are no subclass of asyncio's)."""
    import uvloop

    uvloop.run(_forward_bursts())


async def _forward_bursts() -> None:
    import asyncio

    from stream.kafka.embedded import free_port
    from stream.worker.api.forward import MAX_IDLE, Forwarder, ForwardError

    accepted = 0
    release = asyncio.Event()
    answers = {
        b"/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"/no-length": b"HTTP/1.1 200 OK\r\n\r\nok",
        b"/too-long": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nok",
        b"/not-http": b"SSH-2.0-OpenSSH\r\n\r\n",
    }

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                path = head.split(b" ", 2)[1]
                if path == b"/ok":
                    await release.wait()
                writer.write(answers[path])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    owner = f"http://127.0.0.1:{port}"
    fwd = Forwarder(timeout_s=5)
    burst = 40
    assert burst <= MAX_IDLE
    try:
        pending = [asyncio.ensure_future(fwd.get(owner, "/ok", {})) for _ in range(burst)]
        while accepted < burst:  # every request of the burst is on a connection of its own
            await asyncio.sleep(0.01)
        release.set()
        assert [(s, b) for s, _, b in await asyncio.gather(*pending)] == [(200, b"ok")] * burst
        again = await asyncio.gather(*(fwd.get(owner, "/ok", {}) for _ in range(burst)))
        assert [b for _, _, b in again] == [b"ok"] * burst
        assert accepted == burst  # the second burst reused the first one's connections
        for path, reason in (("/no-length", "Content-Length"), ("/too-long", "Content-Length"), ("/not-http", "HTTP")):
            with pytest.raises(ForwardError, match=reason):
                await fwd.get(owner, path, {})
        assert (await fwd.get(owner, "/ok", {}))[2] == b"ok"  # a failed answer's connection is not reused
    finally:
        fwd.close()
        server.close()
        await server.wait_closed()
