"""A small client of the worker's HTTP API (docs/api.md), standard library only.

>>> client = WorkerClient("http://localhost:8080")  # doctest: +SKIP
>>> client.user("u42")["features"]["total_events"]  # doctest: +SKIP
17.0
>>> client.decide("u42", context={"device": "mobile"})["placement"]  # doctest: +SKIP
'sidebar'

Any worker of the group answers for any user. A 503 (rebalancing, recovering, owner unreachable)
is retried after its ``Retry-After``, at most ``retries`` times; other errors raise :class:`ApiError`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ApiError(Exception):
    """An error answer: its status, the API's one-line reason, and ``Retry-After`` (s) of a 503."""

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class WorkerClient:
    """A worker API client: users, their recommendations, decide, models and the probes."""

    def __init__(self, base_url: str, timeout_s: float = 5.0, retries: int = 5) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s):// URL of a worker's API, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries

    def user(self, user_id: str, as_of: int | None = None) -> dict[str, Any]:
        """The user's current features and latest scores (404: unknown user, as :class:`ApiError`)."""
        path = "/v1/users/" + urllib.parse.quote(user_id, safe="")
        if as_of is not None:
            path += f"?as_of={int(as_of)}"
        return self.request("GET", path)

    def recommendations(self, user_id: str, k: int = 10) -> dict[str, Any]:
        """Up to ``k`` articles the user has not read, best first, each with its score and reason."""
        return self.request("GET", "/v1/users/" + urllib.parse.quote(user_id, safe="") + f"/recommendations?k={int(k)}")

    def decide(
        self,
        user_id: str,
        context: dict[str, str] | None = None,
        placements: list[str] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """A placement from the current posterior, its propensity and decision id (logged like streamed ones)."""
        body: dict[str, Any] = {"user_id": user_id}
        if context is not None:
            body["context"] = context
        if placements is not None:
            body["placements"] = placements
        if request_id is not None:
            body["request_id"] = request_id
        return self.request("POST", "/v1/decide", body)

    def models(self) -> dict[str, Any]:
        return self.request("GET", "/v1/models")

    def ready(self) -> bool:
        """Whether the worker answers ``/readyz`` with 200 (not while it is not listening yet, or not answering)."""
        try:
            self.request("GET", "/readyz", retry=False)
        except (ApiError, OSError):  # a 503; the connection refused (starting) or timed out
            return False
        return True

    def request(self, method: str, path: str, body: Any = None, *, retry: bool = True) -> dict[str, Any]:
        """One call; a 503 is retried after its ``Retry-After`` (``retries`` times)."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.base_url + path, data=data, method=method)  # noqa: S310 - checked in __init__
            req.add_header("Accept", "application/json")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as response:  # noqa: S310 - as above
                    result: dict[str, Any] = json.loads(response.read())
                    return result
            except urllib.error.HTTPError as exc:
                err = _api_error(exc)
                if err.status != 503 or not retry or attempt == self.retries:
                    raise err from None
                time.sleep(err.retry_after or 1.0)
        raise AssertionError("unreachable")  # pragma: no cover


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    raw = exc.read()
    try:
        doc = json.loads(raw)
        reason = str(doc.get("error") or doc.get("reasons") or doc)
    except ValueError:
        reason = raw.decode(errors="replace")[:200]
    retry = exc.headers.get("Retry-After")
    return ApiError(exc.code, reason, float(retry) if retry else None)


def outcome_events(
    decision: dict[str, Any],
    session_id: str,
    shown_at_ms: int,
    clicked_at_ms: int | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """The events an ad server produces to ``session-events`` for a decision it showed (docs/api.md).

    An ``ad_impression`` of the decided placement, and an ``ad_click`` if it was clicked, both with
    the decision's ``user_id`` and ``request_id``: that is how an outcome names its decision (the
    decision id is derived from the policy, user and request id). ``device`` is the request's
    ``context.device``. Event ids are derived from the decision id: a resend is the same event.

    >>> d = {"decision_id": "9f2c", "request_id": "r1", "user_id": "u42", "placement": "sidebar"}
    >>> [(e["event_type"], e["event_id"], e["placement"]) for e in outcome_events(d, "s1", 1000, 1500)]
    [('ad_impression', '9f2c-imp', 'sidebar'), ('ad_click', '9f2c-click', 'sidebar')]
    """
    base: dict[str, Any] = {
        "schema_version": 1,
        "user_id": decision["user_id"],
        "session_id": session_id,
        "request_id": decision["request_id"],
        "placement": decision["placement"],
    }
    if device is not None:
        base["device"] = {"type": device}
    did = decision["decision_id"]
    out = [{**base, "event_id": f"{did}-imp", "event_type": "ad_impression", "event_time": shown_at_ms}]
    if clicked_at_ms is not None:
        out.append({**base, "event_id": f"{did}-click", "event_type": "ad_click", "event_time": clicked_at_ms})
    return out
