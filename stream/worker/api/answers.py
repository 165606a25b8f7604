"""What the API answers, as pure functions of the worker's state: user views, decide requests, decisions.

No faust or aiohttp here: ``server.py`` reads the tables and calls these.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream.bandits.thompson import propensities
from stream.events.ids import decision_id
from stream.events.records import DecisionRecord
from stream.state import USER_FEATURES, StateConfig, UserState, user_row
from stream.worker.ads import Ads, Counts
from stream.worker.scores import Score

#: the longest user id, request id, context value and placement name (as in the event schema)
MAX_ID = 64
#: suffix of the policy name on decisions made by ``POST /v1/decide``, so that off-policy
#: evaluation tells them from the decisions made for streamed ad requests
API_POLICY_SUFFIX = "-api"


class BadRequest(ValueError):
    """A request the API refuses with 400; the message is the one-line reason."""


def valid_id(value: object, what: str) -> str:
    """``value`` if it is a string of 1 to :data:`MAX_ID` characters, else :class:`BadRequest`.

    >>> valid_id("u1", "user_id")
    'u1'
    >>> valid_id("", "user_id")
    Traceback (most recent call last):
    ...
    stream.worker.api.answers.BadRequest: user_id must be a string of 1 to 64 characters
    """
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID:
        raise BadRequest(f"{what} must be a string of 1 to {MAX_ID} characters")
    return value


def parse_as_of(raw: str | None) -> int | None:
    """The ``as_of`` query parameter: epoch milliseconds, or None when absent."""
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"as_of must be epoch milliseconds (a whole number), got {raw[:40]!r}") from None
    if value < 0:
        raise BadRequest(f"as_of must be epoch milliseconds (a whole number), got {value}")
    return value


#: the most recommendations one request may ask for
MAX_K = 100


def parse_k(raw: str | None) -> int:
    """The ``k`` query parameter of recommendations: 1 to :data:`MAX_K`, 10 when absent.

    >>> parse_k(None), parse_k("3")
    (10, 3)
    """
    if raw is None:
        return 10
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_K:
        raise BadRequest(f"k must be a whole number from 1 to {MAX_K}, got {raw[:40]!r}")
    return value


def feature_values(state: UserState, as_of: int, config: StateConfig) -> dict[str, float | None]:
    """The user's feature values by name (:data:`USER_FEATURES`), NaN (undefined) as None."""
    row = user_row(state, as_of, config)
    return {name: (None if math.isnan(v) else v) for name, v in zip(USER_FEATURES.names, row, strict=True)}


def segment_view(segment: tuple[int, int, int] | None, names: Mapping[int, str] | None) -> dict[str, Any] | None:
    """The user's last assigned segment (``UserState.segment``) with its name, None if none was assigned.

    ``names`` are the segment names of the segmentation version that assigned it (None: unknown).

    >>> segment_view((2, 5, 1700000000000), {2: "mobile-first"})
    {'id': 2, 'name': 'mobile-first', 'model_version': '5', 'event_time': 1700000000000}
    """
    if segment is None:
        return None
    sid, version, event_time = segment
    name = None if names is None else names.get(sid)
    return {"id": sid, "name": name, "model_version": str(version), "event_time": event_time}


def user_view(
    user_id: str,
    partition: int,
    offset: int,
    state: UserState,
    scores: Mapping[str, Score],
    scores_since: int | None,
    as_of: int | None,
    config: StateConfig,
    segment_names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The body of ``GET /v1/users/{user_id}`` (see schemas/openapi/worker-api.v1.yaml).

    ``as_of`` defaults to the user's latest event time, so that the answer depends on the events
    applied only, not on the clock; an earlier one is raised to it (the state cannot un-see events).
    ``segment_names``: the names of the segmentation version that assigned the stored segment.
    """
    last = state.max_t
    at = last if as_of is None else max(as_of, last)
    return {
        "user_id": user_id,
        "partition": partition,
        "offset": offset,
        "last_event_time": last,
        "as_of": at,
        "feature_version": USER_FEATURES.version,
        "features": feature_values(state, at, config),
        "scores": {
            model: {
                "score": score,
                "model_version": version,
                "event_id": event_id,
                "event_time": event_time,
                "predicted_at": predicted_at,
            }
            for model, (score, version, event_id, event_time, predicted_at) in sorted(scores.items())
        },
        "scores_since": scores_since,
        "segment": segment_view(state.segment, segment_names),
    }


@dataclass(frozen=True)
class DecideRequest:
    user_id: str
    request_id: str
    #: the device type the bandit's context comes from (None: not given)
    device: str | None
    #: the arms to choose among, in the configured order
    placements: tuple[str, ...]


#: request ids made for requests without one; seeded once from the system's randomness
_IDS = random.Random()


def new_request_id() -> str:
    """A random 128-bit id (32 hex digits), as ``uuid4().hex`` is.

    Not ``uuid4``: ``os.urandom`` releases the GIL, and on the API's thread taking it back waited
    for the stream's thread (up to the switch interval) on every decision without a request id.
    """
    return f"{_IDS.getrandbits(128):032x}"


def parse_decide(body: bytes, placements: Sequence[str]) -> DecideRequest:
    """A ``POST /v1/decide`` body, or :class:`BadRequest` with the one-line reason.

    >>> parse_decide(b'{"user_id": "u1", "context": {"device": "mobile"}}', ("a", "b")).placements
    ('a', 'b')
    >>> parse_decide(b'{"user_id": "u1", "placements": ["c"]}', ("a", "b"))
    Traceback (most recent call last):
    ...
    stream.worker.api.answers.BadRequest: placements: unknown placement 'c'; known: a, b
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(doc) - {"user_id", "context", "placements", "request_id"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)[:200]}")
    user_id = valid_id(doc.get("user_id"), "user_id")
    request_id = valid_id(doc["request_id"], "request_id") if "request_id" in doc else new_request_id()
    context = doc.get("context", {})
    if not isinstance(context, dict):
        raise BadRequest('context must be an object, like {"device": "mobile"}')
    if set(context) - {"device"}:
        raise BadRequest(f"context: unknown field(s): {', '.join(sorted(set(context) - {'device'}))[:200]}")
    device = valid_id(context["device"], "context.device") if "device" in context else None
    chosen = doc.get("placements")
    if chosen is None:
        arms = tuple(placements)
    else:
        if not isinstance(chosen, list) or not chosen or len(set(map(str, chosen))) != len(chosen):
            raise BadRequest("placements must be a non-empty list of distinct placement names")
        for name in chosen:
            if name not in placements:
                raise BadRequest(f"placements: unknown placement {str(name)[:64]!r}; known: {', '.join(placements)}")
        arms = tuple(p for p in placements if p in chosen)
    return DecideRequest(user_id, request_id, device, arms)


def context_key(ads: Ads, device: str | None) -> str:
    """The bandit context of a request, as the stream derives it from an event's device."""
    return ads.context_of({"device": {"type": device}} if device is not None else {})


#: propensities by posterior (the arms' Beta parameters): most requests share the current one
_PROPENSITIES: dict[tuple[float, ...], np.ndarray] = {}
_MAX_CACHED = 1024
#: the draws of ``decide``, reseeded per request (requests are answered on one thread)
_RNG = random.Random()


#: (ads, counts) of the posterior snapshot whose arms ``_ARMS`` holds
_ARMS_OF: list[Any] = [None, None]
#: per (context, placements offered): Beta parameters, propensities and means of the arms
_ARMS: dict[tuple[str, tuple[str, ...]], tuple[list[float], list[float], np.ndarray, dict[str, float]]] = {}


def _arms(
    ads: Ads, counts: Counts, context: str, placements: tuple[str, ...]
) -> tuple[list[float], list[float], np.ndarray, dict[str, float]]:
    """The offered arms' posterior in ``counts``, once per snapshot (requests share one for 50 ms).

    A snapshot is never changed in place (``Api._posterior`` reads a new one), so it is known by identity.
    """
    if _ARMS_OF[0] is not ads or _ARMS_OF[1] is not counts:
        _ARMS.clear()
        _ARMS_OF[:] = [ads, counts]
    key = (context, placements)
    got = _ARMS.get(key)
    if got is None:
        policy = ads.policy
        alpha, beta = policy.posterior(counts.get(context, {}))
        idx = [policy.arms.index(p) for p in placements]
        a, b = alpha[idx], beta[idx]
        pkey = (*a.tolist(), *b.tolist())
        props = _PROPENSITIES.get(pkey)
        if props is None:  # the quadrature is most of a decision's cost
            if len(_PROPENSITIES) >= _MAX_CACHED:
                _PROPENSITIES.clear()
            props = _PROPENSITIES[pkey] = propensities(a, b)
        means = {p: float(m) for p, m in zip(placements, a / (a + b), strict=True)}
        got = _ARMS[key] = (a.tolist(), b.tolist(), props, means)
    return got


def decide(ads: Ads, counts: Counts, req: DecideRequest, now_ms: int) -> DecisionRecord:
    """Thompson sampling among ``req.placements`` from the posterior ``counts``, with the chosen arm's propensity.

    The draw is seeded by (seed, request_id), so that a request made again gets the same
    placement; the propensity is that of the arms offered (Thompson sampling restricted to them).
    """
    context = context_key(ads, req.device)
    a, b, props, means = _arms(ads, counts, context, req.placements)
    # Python's generator, seeded per request: a tenth of the cost of numpy's seeded Generator
    # (0.2 ms, a fifth of a decision's CPU) for these few draws
    _RNG.seed((ads.seed << 32) | zlib.crc32(req.request_id.encode()))
    draws = [_RNG.betavariate(x, y) for x, y in zip(a, b, strict=True)]
    i = max(range(len(draws)), key=draws.__getitem__)
    name = ads.policy_name + API_POLICY_SUFFIX
    return {
        "schema_version": 1,
        "decision_id": decision_id(name, req.user_id, req.request_id),
        "request_id": req.request_id,
        "user_id": req.user_id,
        "context": context,
        "placement": req.placements[i],
        "propensity": float(props[i]),
        "policy": name,
        "arm_means": dict(means),
        "event_time": now_ms,
        "decided_at": now_ms,
    }
