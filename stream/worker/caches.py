"""The processor's decoded copies of its tables: user states and article states.

Both save a decode per event; both are exact, because this worker is the only writer of what it
caches from its own partitions (user states) or keeps the authoritative copy itself (the states
of the articles its article agent owns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping

from stream.state import ArticleState, UserState, new_article_state
from stream.worker.delivery import pack_user, unpack_user
from stream.worker.stores import read, unavailable

#: read-only: click rows never modify the article state
EMPTY_ARTICLE = new_article_state()
_MAX_CACHED_ARTICLES = 200_000

#: a user's cached value: the input offset its state last applied, and the state
Cached = tuple[int, UserState]


class UserStates:
    """Deserialized user states per owned input partition (LRU, at most ``max_cached`` per partition).

    This worker is their only writer, so the cache equals the table. One batch works on a
    :class:`UserBatch` (:meth:`begin`), which writes each changed user once and can be undone.
    """

    __slots__ = ("_parts", "max_cached")

    def __init__(self, max_cached: int = 250_000) -> None:
        self.max_cached = max_cached
        self._parts: dict[int, dict[str, Cached]] = {}

    def begin(self, partition: int, store: MutableMapping[str, bytes]) -> UserBatch:
        """One attempt at a batch of ``partition``'s users, read from and written to ``store``."""
        users = self._parts.get(partition)
        if users is None:
            users = self._parts[partition] = {}
        return UserBatch(users, store, self.max_cached)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop partitions this worker no longer owns: their next owner writes them."""
        for p in partitions:
            self._parts.pop(p, None)


class UserBatch:
    """One batch's view of a partition's user states: :meth:`load`, :meth:`applied`, :meth:`write`, :meth:`trim`.

    Until :meth:`write`, the changes are in the cache only (states are changed in place):
    :meth:`undo` drops every user the batch touched, so that the next batch reads them again.
    """

    __slots__ = ("dirty", "max_cached", "store", "touched", "users")

    def __init__(self, users: dict[str, Cached], store: MutableMapping[str, bytes], max_cached: int) -> None:
        self.users = users
        self.store = store
        self.max_cached = max_cached
        self.touched: set[str] = set()
        #: users whose state changed, with the input offset last applied
        self.dirty: dict[str, int] = {}

    def load(self, uid: str) -> Cached:
        """The user's (offset last applied, state), cached or read from the store; most recently used now."""
        users = self.users
        cached = users.pop(uid, None)  # re-inserted below: most recently used last
        self.touched.add(uid)
        if cached is None:
            cached = unpack_user(read(self.store, uid))
        users[uid] = cached
        return cached

    def applied(self, uid: str, offset: int, state: UserState) -> None:
        """``state`` (loaded, changed in place) now holds the event at ``offset``."""
        self.users[uid] = (offset, state)
        self.dirty[uid] = offset

    def assign_segment(self, uid: str, segment: tuple[int, int, int]) -> None:
        """Keep ``(segment id, model version, event time)`` in the user's state unless it holds a later one.

        The user was loaded by this batch. A session_end the state held already (a replay) assigns
        the segment its first processing wrote with the state, so this rarely writes a state the
        batch did not change.
        """
        offset, state = self.users[uid]
        old = state.segment
        if old == segment or (old is not None and old[2] > segment[2]):
            return
        state.segment = segment
        self.dirty[uid] = offset

    def write(self) -> None:
        """One store write per changed user."""
        users = self.users
        try:
            for uid, offset in self.dirty.items():
                self.store[uid] = pack_user(offset, users[uid][1])
        except Exception as exc:
            raise unavailable(exc) from exc

    def trim(self) -> None:
        """Drop the least recently used users beyond the cache's size (after :meth:`write`)."""
        users = self.users
        while len(users) > self.max_cached:
            del users[next(iter(users))]

    def undo(self) -> None:
        """Forget the batch: its users' cached states were changed in place, the store has their previous values."""
        for uid in self.touched:
            self.users.pop(uid, None)


class ArticleStates:
    """Article states for click rows: the owned ones directly, others decoded once per stored value."""

    __slots__ = ("_decoded", "owned")

    def __init__(self) -> None:
        #: States of the articles this worker's article agent owns (agents/articles.py keeps them
        #: up to date): read directly, they are never older than the table, and the table's
        #: GlobalTable lookup (every partition's RocksDB) is the costly part of an impression.
        self.owned: dict[str, ArticleState] = {}
        #: Decoded article states with the bytes they came from: an article's value changes once
        #: per article-agent batch, while every impression of it needs the decoded state.
        self._decoded: dict[str, tuple[bytes, ArticleState]] = {}

    def get(self, table: Mapping[str, bytes], article_id: str) -> ArticleState:
        """The article's state: owned, else as ``table`` holds it (an empty one if it has none)."""
        owned = self.owned.get(article_id)
        if owned is not None:
            return owned
        raw = read(table, article_id)
        if not raw:
            return EMPTY_ARTICLE
        cached = self._decoded.get(article_id)
        if cached is not None and (cached[0] is raw or cached[0] == raw):
            return cached[1]
        if len(self._decoded) >= _MAX_CACHED_ARTICLES:
            self._decoded.clear()
        state = ArticleState.from_bytes(raw)
        self._decoded[article_id] = (raw, state)
        return state
