"""The worker's click and engagement predictions joined with their outcomes, as the events that decide them arrive.

Labels are batch training's (stream/state/labels.py, batch_training/datasets.py), so online quality
measures the quantity each model was trained on:

* **click** (scored at an ``article_impression``): 1 if an ``article_click`` of the same user,
  session and article comes at most :data:`~stream.state.labels.CLICK_WINDOW_MS` after it (event
  times); 0 once that window has passed: at the user's first later event past it, at the end of
  the impression's session, or, for a user who went quiet, once the partition's event time is past
  it by the allowed lateness (:meth:`OutcomeJoiner.join` sweeps a partition once per minute of its
  event time);
* **engagement** (scored at a ``session_start``): :func:`~stream.state.labels.engagement_score` of
  the session's events, at its ``session_end`` (duration: the end's ``duration_ms``, else the span
  of the session's events). A session with no end is dropped, unlabelled, once the partition's
  event time is ``session_timeout_ms`` plus the lateness past its last event.

Churn (30 days) and conversion (14 days) are joined later by a scheduled job over ClickHouse, not here.

**Where pending predictions live**: in this process's memory, per input partition and user. The
events of one user arrive in order on the user's partition, so one partition's pending predictions
are only ever resolved by that partition's batches; on a revoke they are dropped
(:meth:`OutcomeJoiner.forget`). They are monitoring samples, not data: a crash or a rebalance loses
the pending samples and nothing else (nothing is written to a table or changelog, and the next
owner starts with none). At most ``max_pending`` predictions wait; beyond it new ones are not
kept (counted in :attr:`OutcomeJoiner.dropped`).

Per batch, the predictions are added first, then the batch's events are walked in order; only an
event of a user with something pending costs more than one dict lookup. Replayed predictions
(scored from a state that already held their event, after a crash) are not joined: their first
copy was the exact score, and its sample was lost with the crashed process.

>>> j = OutcomeJoiner(click_window_ms=1000)
>>> pred = {"model_name": "click", "model_version": "3", "prediction_id": "p1", "user_id": "u",
...         "session_id": "s", "article_id": "a", "event_time": 0, "score": 0.7}
>>> click = {"event_type": "article_click", "user_id": "u", "session_id": "s", "article_id": "a", "event_time": 400}
>>> j.join(0, [pred], [click])
[Joined(model='click', version='3', outcome=1.0, score=0.7, t_ms=400)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from stream.state.labels import CLICK_WINDOW_MS, engagement_score

#: the models whose outcomes the worker joins itself
JOINED_MODELS = ("click", "engagement")
#: how far (event time) a partition advances between two sweeps of its quiet users
SWEEP_EVERY_MS = 60_000
_NEVER = 2**63


class Joined(NamedTuple):
    """One prediction with its outcome; ``t_ms`` is the event time that decided the outcome."""

    model: str
    version: str
    outcome: float
    score: float
    t_ms: int


class _Click:
    __slots__ = ("article", "score", "session", "t", "version")

    def __init__(self, version: str, score: float, t: int, session: str, article: str) -> None:
        self.version, self.score, self.t, self.session, self.article = version, score, t, session, article


class _Session:
    __slots__ = ("counts", "first", "last", "score", "version")

    def __init__(self, version: str, score: float, t: int) -> None:
        self.version, self.score = version, score
        self.counts: dict[str, int] = {}
        self.first = self.last = t


class _User:
    __slots__ = ("clicks", "closes", "sessions")

    def __init__(self) -> None:
        #: pending click predictions by prediction_id (a prediction published twice waits once)
        self.clicks: dict[str, _Click] = {}
        #: the end of the earliest pending click window: only a click, a session end or an event
        #: past it can resolve a click, so other events skip the clicks
        self.closes = _NEVER
        #: pending engagement predictions by session_id
        self.sessions: dict[str, _Session] = {}

    def __len__(self) -> int:
        return len(self.clicks) + len(self.sessions)


class OutcomeJoiner:
    """Pending click and engagement predictions per input partition and user (see the module docstring)."""

    def __init__(
        self,
        *,
        click_window_ms: int = CLICK_WINDOW_MS,
        lateness_ms: int = 5 * 60_000,
        session_timeout_ms: int = 30 * 60_000,
        max_pending: int = 200_000,
    ) -> None:
        self.click_window_ms = click_window_ms
        self.lateness_ms = lateness_ms
        self.session_timeout_ms = session_timeout_ms
        self.max_pending = max_pending
        self._users: dict[int, dict[str, _User]] = {}
        #: per partition: the newest event time seen, and the event time of its last sweep
        self._hwm: dict[int, int] = {}
        self._swept: dict[int, int] = {}
        #: predictions waiting for their outcome, over all partitions
        self.pending = 0
        #: predictions given up without an outcome, by reason: ``revoked`` (partition moved),
        #: ``full`` (``max_pending`` reached), ``no_session_end`` (a session that never ended)
        self.dropped: dict[str, int] = {}

    def join(
        self, partition: int, predictions: Iterable[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
    ) -> list[Joined]:
        """Add one batch's predictions, then walk its events (in order); returns the pairs they completed."""
        users = self._users.get(partition)
        if users is None:
            users = self._users[partition] = {}
        for p in predictions:
            name = p["model_name"]
            if name in JOINED_MODELS and not p.get("replayed"):
                self._add(users, p)
        out: list[Joined] = []
        hwm = self._hwm.get(partition, -1)
        if users:
            # the common case inline (this runs for every event): a session's counts, and the clicks
            # only when the event can resolve one
            get = users.get
            for ev in events:
                t = ev["event_time"]
                if t > hwm:
                    hwm = t
                user = get(ev["user_id"])
                if user is None:
                    continue
                kind = ev["event_type"]
                sessions = user.sessions
                if sessions:
                    session = sessions.get(ev["session_id"])
                    if session is not None:
                        counts = session.counts
                        counts[kind] = counts.get(kind, 0) + 1
                        if t < session.first:
                            session.first = t
                        elif t > session.last:
                            session.last = t
                        if kind == "session_end":
                            self._end_session(user, ev, session, t, out)
                clicks = user.clicks
                if clicks and (kind == "article_click" or kind == "session_end" or t > user.closes):
                    self._close_clicks(user, ev, kind, t, out)
                if not clicks and not sessions:
                    del users[ev["user_id"]]
        elif events:
            hwm = max(hwm, max(ev["event_time"] for ev in events))
        self._hwm[partition] = hwm
        if hwm - self._swept.get(partition, hwm - SWEEP_EVERY_MS) >= SWEEP_EVERY_MS:
            self._swept[partition] = hwm
            self._sweep(users, hwm, out)
        return out

    def _add(self, users: dict[str, _User], p: Mapping[str, Any]) -> None:
        if self.pending >= self.max_pending:
            self.dropped["full"] = self.dropped.get("full", 0) + 1
            return
        uid = p["user_id"]
        user = users.get(uid)
        if user is None:
            user = users[uid] = _User()
        if p["model_name"] == "click":
            pid = p["prediction_id"]
            if pid not in user.clicks:
                self.pending += 1
            t = p["event_time"]
            user.clicks[pid] = _Click(p["model_version"], p["score"], t, p["session_id"], p["article_id"])
            user.closes = min(user.closes, t + self.click_window_ms)
        else:
            sid = p["session_id"]
            if sid not in user.sessions:
                self.pending += 1
            user.sessions[sid] = _Session(p["model_version"], p["score"], p["event_time"])

    def _end_session(self, user: _User, ev: Mapping[str, Any], session: _Session, t: int, out: list[Joined]) -> None:
        duration = ev.get("duration_ms")
        y = engagement_score(session.counts, session.last - session.first if duration is None else duration)
        out.append(Joined("engagement", session.version, y, session.score, t))
        del user.sessions[ev["session_id"]]
        self.pending -= 1

    def _close_clicks(self, user: _User, ev: Mapping[str, Any], kind: str, t: int, out: list[Joined]) -> None:
        """Resolve the user's pending clicks that ``ev`` decides: its click, its session's end, or its time."""
        window = self.click_window_ms
        clicked = kind == "article_click"
        ended = kind == "session_end"
        sid = ev["session_id"]
        done = []
        for pid, c in user.clicks.items():
            if clicked and c.session == sid and c.article == ev.get("article_id") and c.t <= t <= c.t + window:
                out.append(Joined("click", c.version, 1.0, c.score, t))
            elif t > c.t + window or (ended and c.session == sid):
                out.append(Joined("click", c.version, 0.0, c.score, t))
            else:
                continue
            done.append(pid)
        if done:
            for pid in done:
                del user.clicks[pid]
            self.pending -= len(done)
            user.closes = min((c.t for c in user.clicks.values()), default=_NEVER - window) + window

    def _sweep(self, users: dict[str, _User], hwm: int, out: list[Joined]) -> None:
        """Close what the partition's event time has left behind: click windows, sessions that never ended."""
        click_by = hwm - self.lateness_ms - self.click_window_ms
        session_by = hwm - self.lateness_ms - self.session_timeout_ms
        for uid in list(users):
            user = users[uid]
            for pid in [pid for pid, c in user.clicks.items() if c.t < click_by]:
                c = user.clicks.pop(pid)
                out.append(Joined("click", c.version, 0.0, c.score, c.t + self.click_window_ms))
                self.pending -= 1
                user.closes = min((c.t for c in user.clicks.values()), default=_NEVER - self.click_window_ms)
                user.closes += self.click_window_ms
            for sid in [sid for sid, s in user.sessions.items() if s.last < session_by]:
                del user.sessions[sid]
                self.pending -= 1
                self.dropped["no_session_end"] = self.dropped.get("no_session_end", 0) + 1
            if not len(user):
                del users[uid]

    def forget(self, partitions: Iterable[int]) -> int:
        """Drop the pending predictions of partitions this worker no longer owns; returns how many."""
        n = 0
        for p in partitions:
            users = self._users.pop(p, {})
            n += sum(len(u) for u in users.values())
            self._hwm.pop(p, None)
            self._swept.pop(p, None)
        if n:
            self.pending -= n
            self.dropped["revoked"] = self.dropped.get("revoked", 0) + n
        return n
