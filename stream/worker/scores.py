"""The latest score per user and model, as this worker published it: what ``GET /v1/users/{id}`` shows.

Kept in memory, per owned input partition, and not in the user's state: writing it into the state
would add a table write and a changelog record per prediction. The price is that a worker knows
only the scores it made itself since it took the partition (:attr:`LatestScores.since`): after a
rebalance or restart a user's scores reappear with their next prediction. Bounded per partition
(least recently scored users dropped first).

The stream's loop writes it and the API's thread reads it: a user's scores are never changed in
place but replaced by a new mapping, so a reader gets one batch's scores of a user whole.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: per model: (score, model version, event id, event time, predicted at)
Score = tuple[float, str, str, int, int]
_NONE: Mapping[str, Score] = {}


class LatestScores:
    """Per input partition, per user, per model: the newest score (by event time) this worker made."""

    __slots__ = ("_parts", "max_users", "since")

    def __init__(self, max_users: int = 250_000) -> None:
        self.max_users = max_users
        self._parts: dict[int, OrderedDict[str, Mapping[str, Score]]] = {}
        #: per partition: when this worker recorded its first score of it (epoch ms)
        self.since: dict[int, int] = {}

    def record(self, partition: int, predictions: Sequence[Mapping[str, Any]]) -> None:
        """Keep the newest of ``predictions`` (one batch of ``partition``) per user and model."""
        if not predictions:
            return
        users = self._parts.get(partition)
        if users is None:
            users = self._parts[partition] = OrderedDict()
            self.since[partition] = int(time.time() * 1000)
        fresh: dict[str, dict[str, Score]] = {}
        for p in predictions:
            uid = p["user_id"]
            mine = fresh.get(uid)
            if mine is None:  # a copy: the API's thread may be reading the current one
                mine = fresh[uid] = dict(users.get(uid, _NONE))
            name, t = p["model_name"], p["event_time"]
            old = mine.get(name)
            if old is None or t >= old[3]:
                mine[name] = (p["score"], p["model_version"], p["event_id"], t, p["predicted_at"])
        for uid, mine in fresh.items():
            users[uid] = mine  # replaced whole: a reader sees the user's old scores or the new ones
            users.move_to_end(uid)  # most recently scored last
        while len(users) > self.max_users:
            users.popitem(last=False)

    def get(self, partition: int, user_id: str) -> Mapping[str, Score]:
        """The user's latest score per model (empty if this worker made none since it took the partition)."""
        users = self._parts.get(partition)
        return _NONE if users is None else users.get(user_id, _NONE)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop partitions this worker no longer owns."""
        for p in partitions:
            self._parts.pop(p, None)
            self.since.pop(p, None)
