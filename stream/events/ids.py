"""What identifies an event, and the output ids derived from it.

An event is identified by ``(user_id, event_id)``: producers key events by user and the worker
deduplicates within a user's state, so ``event_id`` need only be unique per user. Two users'
events that share an ``event_id`` are two events, and so are their predictions. An ad request is
identified by ``(user_id, request_id)`` in the same way.

Ids hash the JSON array of their parts, so no choice of separator inside an id can make two
different identities collide.

>>> prediction_id("churn", "1", "u1", "e1") == prediction_id("churn", "1", "u2", "e1")
False
>>> len(decision_id("thompson", "u1", "r1"))
32
"""

from __future__ import annotations

import hashlib

import orjson


def _digest(*parts: str) -> str:
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()


def prediction_id(model_name: str, model_version: str, user_id: str, event_id: str) -> str:
    """Deterministic: a replay of the same event through the same model version gets the same id."""
    return _digest(model_name, model_version, user_id, event_id)


def recommendation_id(user_id: str, event_id: str) -> str:
    """Deterministic: the recommendations published at a replayed ``session_start`` get the same id."""
    return _digest("recommendation", user_id, event_id)


def decision_id(policy: str, user_id: str, request_id: str) -> str:
    """Deterministic, like prediction ids: a replayed request gets the same decision id."""
    return _digest(policy, user_id, request_id)
