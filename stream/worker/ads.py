"""The processor's bandit: per-partition counts, the impression-click join, and decisions.

Impressions count as trials at once; a click joined to its impression (same user, request and
placement, within ``join_window_ms``) turns one into a success. Counts are kept per input
partition, so that each has one writer: one table record per partition (key ``partition``, value
``{"context|arm": [impressions, clicks], ...}``), written once per batch; decisions read every
partition's, with this worker's own counts taking precedence (:meth:`Ads.posterior_snapshot`).

Tables written before that hold one record per ``partition|context|arm``: a partition's counts
continue from those until its first record is written, and are read from that record after.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import orjson
from numpy.random import PCG64, Generator, SeedSequence

from stream.bandits.thompson import ThompsonSampling, propensities
from stream.events.ids import decision_id
from stream.events.records import DecisionRecord
from stream.worker.stores import StoreUnavailable, read, unavailable

#: per context, per arm: (impressions, clicks)
Counts = dict[str, dict[str, tuple[int, int]]]


def bandit_key(partition: int, context: str, arm: str) -> str:
    """The key of a partition's counts of one context and arm (in :attr:`Ads.own`; the table's old keys)."""
    return f"{partition}|{context}|{arm}"


def _key(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else key


def merged_counts(stats: Mapping[Any, bytes]) -> Counts:
    """Sum every partition's (impressions, clicks) per context and arm (table keys and values)."""
    return _sum_counts(_flat(stats))


def _flat(stats: Mapping[Any, bytes]) -> dict[str, Sequence[int]]:
    """The table's counts by :func:`bandit_key`: per partition its record, else its old per-key records."""
    records: dict[str, dict[str, Sequence[int]]] = {}
    old: dict[str, Sequence[int]] = {}
    for k, v in stats.items():
        key = _key(k)
        if "|" in key:
            old[key] = orjson.loads(v)
        else:
            records[key] = orjson.loads(v)
    flat = {key: counts for key, counts in old.items() if key.split("|", 1)[0] not in records}
    for partition, entries in records.items():
        for context_arm, counts in entries.items():
            flat[f"{partition}|{context_arm}"] = counts
    return flat


def _sum_counts(counts: Mapping[str, Sequence[int]]) -> Counts:
    out: Counts = {}
    for key, (imps, clicks) in counts.items():
        _, context, arm = key.split("|", 2)
        arms = out.setdefault(context, {})
        a, c = arms.get(arm, (0, 0))
        arms[arm] = (a + imps, c + clicks)
    return out


def _snapshot(stats: Mapping[Any, bytes], ours: Mapping[str, Sequence[int]]) -> Counts:
    """Every partition's counts in the table, ``ours`` (newer, same key space) replacing theirs."""
    try:
        counts = _flat(stats)
    except Exception as exc:
        raise unavailable(exc, "read the bandit counts") from exc
    counts.update(ours)
    return _sum_counts(counts)


class Ads:
    """Thompson sampling over ``placements`` per context, with this worker's own counts."""

    def __init__(
        self,
        placements: Sequence[str],
        *,
        context: str = "device",
        join_window_ms: int = 600_000,
        seed: int = 0,
        policy_name: str = "thompson",
    ) -> None:
        self.policy = ThompsonSampling(placements, seed=seed)
        self.placements = tuple(placements)
        self.context = context
        self.join_window_ms = join_window_ms
        self.seed = seed
        self.policy_name = policy_name
        #: This worker's own bandit counts, authoritative for the partitions it owns. The
        #: GlobalTable's changelog reader may briefly hand back an older value of a key we just
        #: wrote; counting on top of that would lose increments.
        self.own: dict[str, list[int]] = {}
        #: input partitions whose counts ``own`` holds in full (read from the table once)
        self.loaded: set[int] = set()
        #: ``own`` as of its last table write: a new dict each time, never changed in place, so
        #: that another thread (the API's) reads whole batches' counts, none of a batch in progress
        self.committed: dict[str, tuple[int, int]] = {}

    def begin(self, pending: MutableMapping[str, bytes], bandit: MutableMapping[str, bytes]) -> AdBatch:
        """One attempt at a batch: pending impressions and counts read from and written to these stores."""
        return AdBatch(self, pending, bandit)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the counts of partitions this worker no longer owns: the table has them."""
        gone = set(partitions)
        for key in [k for k in self.own if int(k.split("|", 1)[0]) in gone]:
            del self.own[key]
        self.loaded -= gone
        self.commit()

    def commit(self) -> None:
        """``own`` is what the table holds now: publish it as :attr:`committed`."""
        self.committed = {key: (c[0], c[1]) for key, c in self.own.items()}

    def committed_snapshot(self, bandit: Mapping[Any, bytes]) -> Counts:
        """:meth:`posterior_snapshot` as of the last table write (for a reader on another thread)."""
        return _snapshot(bandit, self.committed)

    def load(self, partition: int, bandit: Mapping[Any, bytes]) -> None:
        """Take ``partition``'s counts from the table into :attr:`own` (its record, else its old per-key records)."""
        try:
            raw = read(bandit, str(partition))
            if raw:
                found = {f"{partition}|{key}": counts for key, counts in orjson.loads(raw).items()}
            else:
                prefix = f"{partition}|"
                found = {key: orjson.loads(v) for k, v in bandit.items() if (key := _key(k)).startswith(prefix)}
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise unavailable(exc, "read the bandit counts") from exc
        for key, counts in found.items():
            self.own.setdefault(key, list(counts))
        self.loaded.add(partition)

    def context_of(self, event: Mapping[str, Any]) -> str:
        if self.context == "none":
            return "all"
        return str((event.get("device") or {}).get("type", "unknown"))

    def posterior_snapshot(self, bandit: Mapping[Any, bytes]) -> Counts:
        """Counts per context and arm: every partition's (GlobalTable) with ours taking precedence.

        The table returns its keys as bytes, the worker keeps its own as str: one key space, so
        that this worker's partitions are counted once (its newer counts replace the table's).
        """
        return _snapshot(bandit, self.own)

    def decide(
        self,
        requests: list[tuple[dict[str, Any], str]],
        counts: Counts,
        now_ms: int,
        chosen: dict[tuple[str, str], int],
    ) -> list[DecisionRecord]:
        """Decisions for ad requests (event, context) against one posterior snapshot; ``chosen`` counts them.

        Each draw is seeded by (seed, request_id), so a decision is reproducible whatever the
        worker that makes it, given the same snapshot.
        """
        snapshot: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]] = {}
        out: list[DecisionRecord] = []
        for event, context in requests:
            if context not in snapshot:
                alpha, beta = self.policy.posterior(counts.get(context, {}))
                snapshot[context] = (alpha, beta, propensities(alpha, beta), self.policy.arm_means(alpha, beta))
            alpha, beta, props, means = snapshot[context]
            rid = event["request_id"]
            uid = event["user_id"]
            # default_rng([seed, crc]) builds exactly this generator, at twice the cost
            self.policy.rng = Generator(PCG64(SeedSequence([self.seed, zlib.crc32(rid.encode())])))
            d = self.policy.choose(alpha, beta, props, means)
            chosen[(context, d.arm)] = chosen.get((context, d.arm), 0) + 1
            out.append(
                {
                    "schema_version": 1,
                    "decision_id": decision_id(self.policy_name, uid, rid),
                    "request_id": rid,
                    "event_id": event["event_id"],
                    "user_id": uid,
                    "context": context,
                    "placement": d.arm,
                    "propensity": d.propensity,
                    "policy": self.policy_name,
                    "arm_means": d.arm_means,
                    "event_time": event["event_time"],
                    "decided_at": now_ms,
                }
            )
        return out


class AdBatch:
    """One batch's ad events: :meth:`request`, :meth:`event`, then :meth:`decide` and :meth:`write`.

    Until :meth:`write`, counts change in :attr:`Ads.own` only; :meth:`undo` restores them.
    """

    __slots__ = ("ads", "bandit", "before", "counts", "delta", "partitions", "pending", "pending_store", "requests")

    def __init__(self, ads: Ads, pending: MutableMapping[str, bytes], bandit: MutableMapping[str, bytes]) -> None:
        self.ads = ads
        self.pending_store = pending
        self.bandit = bandit
        #: per user, its impressions within the join window: request_id -> [placement, context, time, clicked]
        self.pending: dict[str, dict[str, list[Any]]] = {}
        #: the counts this batch changed (the lists of ``ads.own``)
        self.delta: dict[str, list[int]] = {}
        #: own counts before the batch (None: the key had no counts)
        self.before: dict[str, list[int] | None] = {}
        #: the input partitions whose counts the batch changed (one record each in :meth:`write`)
        self.partitions: set[int] = set()
        self.requests: list[tuple[dict[str, Any], str]] = []
        self.counts: Counts = {}

    def request(self, event: dict[str, Any]) -> None:
        """An ad request, decided in :meth:`decide`."""
        if not self.requests:  # posterior as of the batch's first request: no look-ahead
            self.counts = self.ads.posterior_snapshot(self.bandit)
        self.requests.append((event, self.ads.context_of(event)))

    def event(self, event: Mapping[str, Any], kind: str, partition: int) -> None:
        """An ``ad_impression`` or ``ad_click`` of input ``partition``."""
        ads = self.ads
        uid, rid, t = event["user_id"], event["request_id"], event["event_time"]
        placement = event["placement"]
        if placement not in ads.placements:
            return
        window = ads.join_window_ms
        if uid not in self.pending:
            raw = read(self.pending_store, uid)
            stored = orjson.loads(raw) if raw else {}
            self.pending[uid] = {r: v for r, v in stored.items() if t - v[2] <= window}
        mine = self.pending[uid]
        if kind == "ad_impression":
            if rid in mine:  # duplicate delivery of the impression
                return
            context = ads.context_of(event)
            mine[rid] = [placement, context, t, 0]
            self._bump(partition, bandit_key(partition, context, placement), 1, 0)
        else:
            imp = mine.get(rid)
            if imp is None or imp[3] or imp[0] != placement or not 0 <= t - imp[2] <= window:
                return  # no impression in the window, or already clicked
            imp[3] = 1
            self._bump(partition, bandit_key(partition, imp[1], placement), 0, 1)

    def _bump(self, partition: int, key: str, imps: int, clicks: int) -> None:
        ads = self.ads
        if partition not in ads.loaded:
            ads.load(partition, self.bandit)  # not undone: what it takes is what the table holds
        delta = self.delta
        if key not in delta:
            own = ads.own.get(key)
            self.before[key] = None if own is None else list(own)
            if own is None:
                own = ads.own[key] = [0, 0]
            delta[key] = own
            self.partitions.add(partition)
        delta[key][0] += imps
        delta[key][1] += clicks

    def decide(self, now_ms: int, chosen: dict[tuple[str, str], int]) -> list[DecisionRecord]:
        """The decisions of the batch's requests, against the counts as of its first request."""
        if not self.requests:
            return []
        return self.ads.decide(self.requests, self.counts, now_ms, chosen)

    def write(self) -> None:
        """One store write per user with ad events, and one per partition whose counts changed.

        A partition's record holds all of its counts: one changelog record per batch, where a
        record per changed (context, arm) cost up to a dozen.
        """
        own = self.ads.own
        try:
            for uid, ads in self.pending.items():
                self.pending_store[uid] = orjson.dumps(ads)
            for partition in self.partitions:
                prefix = f"{partition}|"
                cut = len(prefix)
                record = {key[cut:]: counts for key, counts in own.items() if key.startswith(prefix)}
                self.bandit[str(partition)] = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        except Exception as exc:
            raise unavailable(exc) from exc
        if self.partitions:
            self.ads.commit()

    def undo(self) -> None:
        """Restore the own counts of before the batch (the stores hold nothing of it)."""
        own = self.ads.own
        for key, counts in self.before.items():
            if counts is None:
                own.pop(key, None)
            else:
                own[key] = counts
