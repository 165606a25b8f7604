"""The worker's commit protocol: when an input offset may be committed, and what a redelivery does.

One batch of one input partition, in order:

1. **Hold**: every event gets one extra reference as it arrives (:func:`hold`, from
   agents/batching.py), so no ack of faust's makes its offset committable behind the worker's back.
2. **Filter**: a record this process has handled already is skipped (:class:`Redeliveries`); one the
   stored user state holds already (its value carries the offset last applied, :func:`pack_user`)
   is scored again, not applied again, and its predictions are marked ``replayed``.
3. **Settle**: once Kafka and ClickHouse confirmed the batch's outputs and the partition's earlier
   batches are acked, the batch is acked (:class:`Acks`): its span of offsets is *done* in the
   :class:`Ledger`, and its events are acked to faust, which counts them for rebalances.
4. **Commit**: every :data:`COMMIT_INTERVAL_S` and at rebalances, faust commits what the ledger
   allows (stream/kafka/transport.py): the first offset not done of each partition.

An input offset is *done* once the outputs of its record are confirmed by Kafka and ClickHouse,
or once it is known to hold no record (a transaction marker, a compacted record). Per partition
the worker commits the offset after the longest run of done offsets that begins where it started
reading the partition: the group's committed offset or, for a group without one, the partition's
log start (the worker reads with ``auto.offset.reset=earliest``).

faust's own rule (``Consumer._new_offset``) commits the first run of consecutive acked offsets,
checks for a hole before that run only when the committed offset is neither unknown nor 0, and
lets a hole of one offset pass: with 100 committed, 100 not acked and 101-103 acked, it commits
104. A new group whose first batches wait for ClickHouse could so commit past them. The worker's
consumer (stream/kafka/transport.py) asks the :class:`Ledger` instead.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from stream.state import UserState, new_user_state

log = logging.getLogger(__name__)

Partition = tuple[str, int]
#: the input offsets a batch completes, first and last (inclusive), or None if it completes none
Span = tuple[int, int] | None
#: how often faust commits what the ledger allows (its ``broker_commit_interval``), in seconds
COMMIT_INTERVAL_S = 1.0


def hold(event: Any) -> None:
    """Keep ``event``'s offset uncommittable until :meth:`Acks.ack` (one extra reference on its message)."""
    event.message.incref()


class Ledger:
    """Done input offsets per partition, and the offset each partition may commit.

    ``start`` is a partition's first offset not yet done. Ranges done beyond it wait in ``_ahead``
    until the offsets before them are done too; the batches of one partition are confirmed in
    order in practice, but nothing here relies on it.

    >>> ledger = Ledger({"in"})
    >>> ledger.assign(("in", 0), 100)
    >>> ledger.done(("in", 0), 101, 103)
    >>> ledger.committable(("in", 0))  # offset 100 is not done: nothing past it may be committed
    100
    >>> ledger.done(("in", 0), 100, 100)
    >>> ledger.committable(("in", 0))
    104
    """

    def __init__(self, topics: Iterable[str]) -> None:
        #: the topics whose commits this ledger decides
        self.topics = frozenset(topics)
        self._start: dict[Partition, int] = {}
        self._ahead: dict[Partition, list[tuple[int, int]]] = {}

    def tracks(self, topic: str) -> bool:
        return topic in self.topics

    def knows(self, tp: Partition) -> bool:
        """Whether ``tp`` has a start since it was last assigned."""
        return tp in self._start

    def assign(self, tp: Partition, start: int) -> None:
        """Begin ``tp`` at ``start``, the first offset this worker reads of it; forget what it knew before."""
        self._start[tp] = start
        self._ahead[tp] = []

    def revoke(self, tp: Partition) -> None:
        self._start.pop(tp, None)
        self._ahead.pop(tp, None)

    def done(self, tp: Partition, first: int, last: int) -> None:
        """Offsets ``first``..``last`` (inclusive) of ``tp`` are done.

        Offsets below the start were done before (a record delivered again); a partition this
        ledger does not know (revoked since the batch was read) is ignored.
        """
        start = self._start.get(tp)
        if start is None or last < start:
            return
        ahead = self._ahead[tp]
        ahead.append((max(first, start), last))
        ahead.sort()
        while ahead and ahead[0][0] <= start:
            start = max(start, ahead.pop(0)[1] + 1)
        self._start[tp] = start

    def committable(self, tp: Partition) -> int | None:
        """The offset ``tp`` may be committed at (the next one to read), or ``None`` if not known."""
        return self._start.get(tp)

    def pending(self, tp: Partition) -> list[tuple[int, int]]:
        """Ranges done beyond a hole, which wait for the offsets before them."""
        return list(self._ahead.get(tp, ()))


_OFFSET = struct.Struct(">q")


def pack_user(offset: int, state: UserState) -> bytes:
    """Table value: the input offset last applied (for exact replays after a crash) + the state."""
    return _OFFSET.pack(offset) + state.to_bytes()


def unpack_user(value: bytes | None) -> tuple[int, UserState]:
    """The offset last applied (-1: none) and the state of a :func:`pack_user` value."""
    if not value:
        return -1, new_user_state()
    return _OFFSET.unpack_from(value)[0], UserState.from_bytes(value[_OFFSET.size :])


_MAX_OFFSET = 2**63
_MAX_RANGES = 1024


class OffsetRanges:
    """A set of offsets kept as sorted, disjoint ``[lo, hi]`` ranges (O(1) when offsets come in order).

    >>> seen = OffsetRanges()
    >>> for o in (5, 6, 7, 10, 8):
    ...     seen.add(o)
    >>> seen.ranges, 9 in seen, 8 in seen
    ([[5, 8], [10, 10]], False, True)
    """

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []

    def __contains__(self, offset: int) -> bool:
        r = self.ranges
        if r and r[-1][0] <= offset <= r[-1][1]:
            return True
        i = bisect.bisect_right(r, [offset, _MAX_OFFSET]) - 1
        return i >= 0 and r[i][0] <= offset <= r[i][1]

    def add(self, offset: int) -> None:
        r = self.ranges
        if r and r[-1][0] <= offset:
            if offset <= r[-1][1] + 1:
                r[-1][1] = max(r[-1][1], offset)
            else:
                r.append([offset, offset])
                if len(r) > _MAX_RANGES:  # gaps (e.g. transaction markers): old ones cannot come back
                    del r[:-_MAX_RANGES]
            return
        bisect.insort(r, [offset, offset])
        merged: list[list[int]] = []
        for lo, hi in r:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        r[:] = merged


class _Offset(Protocol):
    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


R = TypeVar("R", bound=_Offset)


class Redeliveries:
    """Per input partition, the offsets this process has handled: the redelivery filter.

    faust can hand a record to the stream again (after the seek to committed offsets that ends a
    recovery, the records fetched before it come once more): its outputs exist, so it is skipped.
    A record the stored *state* has seen but this process has not (a replay after a crash or a
    handover) is not filtered here: :func:`unpack_user` gives the offset its state holds. Exact
    offsets, not a high-water mark: a record faust skipped before the seek must still be
    processed when it comes.

    >>> from collections import namedtuple
    >>> Rec = namedtuple("Rec", "partition offset")
    >>> seen = Redeliveries()
    >>> [r.offset for r in seen.fresh([Rec(0, 5), Rec(0, 6)])], [r.offset for r in seen.fresh([Rec(0, 6), Rec(0, 7)])]
    ([5, 6], [7])
    """

    __slots__ = ("_handled",)

    def __init__(self) -> None:
        self._handled: dict[int, OffsetRanges] = {}

    def fresh(self, records: Sequence[R]) -> list[R]:
        """The records of one partition's batch not handled before; they count as handled from now on."""
        if not records:
            return []
        handled = self._handled.get(records[0].partition)
        if handled is None:
            handled = self._handled[records[0].partition] = OffsetRanges()
        out = []
        for rec in records:
            if rec.offset not in handled:
                handled.add(rec.offset)
                out.append(rec)
        return out

    def mark(self, partition: int, offset: int) -> None:
        """``offset`` is handled (its output, e.g. a dead letter, exists)."""
        self._handled.setdefault(partition, OffsetRanges()).add(offset)

    def snapshot(self, partition: int) -> list[list[int]]:
        """What :meth:`restore` needs to forget what is marked after this call (a few ranges)."""
        handled = self._handled.get(partition)
        return [] if handled is None else [r[:] for r in handled.ranges]

    def restore(self, partition: int, snapshot: list[list[int]]) -> None:
        self._handled.setdefault(partition, OffsetRanges()).ranges = snapshot

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop partitions this worker no longer owns: their next owner handles them."""
        for p in partitions:
            self._handled.pop(p, None)


class Acks:
    """Acks each input partition's batches in order, once their outputs are confirmed.

    A batch is *held* from :meth:`hold` until it is acked (or its partition revoked): its age is
    what :meth:`unconfirmed` reports. :meth:`settle` acks it after the partition's batch before it,
    so that a failed batch keeps every later batch of its partition unacked: nothing past it is
    committed, and a restart reads it again.
    """

    def __init__(
        self, ledger: Ledger, consumer: Callable[[], Any] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ledger = ledger
        #: the faust consumer that input offsets are acked to
        self.consumer = consumer
        self.clock = clock
        #: per input partition, when each of its unconfirmed batches was held, oldest first
        self.held: dict[Partition, dict[int, float]] = {}
        self._tokens: Iterator[int] = itertools.count()
        #: per input partition, the settling of its latest batch: a batch is acked after the ones before it
        self._tails: dict[Partition, asyncio.Task[bool]] = {}
        self._settling: set[asyncio.Task[bool]] = set()

    def hold(self, tp: Partition) -> int:
        """Start the clock of a batch of ``tp``; the token names it to :meth:`release` and :meth:`settle`."""
        token = next(self._tokens)
        self.held.setdefault(tp, {})[token] = self.clock()
        return token

    def release(self, tp: Partition, token: int) -> None:
        """The batch will not be settled (it failed before its outputs were queued)."""
        self.held.get(tp, {}).pop(token, None)

    def settle(
        self,
        tp: Partition,
        token: int,
        batch: Sequence[Any],
        span: Span,
        confirm: Callable[[], Awaitable[bool]],
        on_acked: Callable[[], None],
    ) -> None:
        """Ack the batch once ``confirm()`` returns True and the partition's earlier batches are acked.

        ``on_acked`` runs right after the ack (the publisher counts the outputs then).
        """
        task = asyncio.ensure_future(self._settle(tp, token, list(batch), span, confirm, self._tails.get(tp), on_acked))
        self._tails[tp] = task
        self._settling.add(task)
        task.add_done_callback(lambda t: self._settled(tp, t))

    async def _settle(
        self,
        tp: Partition,
        token: int,
        batch: list[Any],
        span: Span,
        confirm: Callable[[], Awaitable[bool]],
        before: asyncio.Task[bool] | None,
        on_acked: Callable[[], None],
    ) -> bool:
        ok = await confirm()
        if before is not None:
            if not before.done():
                await asyncio.wait([before])  # not ``await before``: cancelling this task must not cancel it
            ok = ok and not before.cancelled() and before.exception() is None and before.result()
        if not ok:
            return False
        self.ack(batch, span)
        self.held.get(tp, {}).pop(token, None)
        on_acked()
        return True

    def _settled(self, tp: Partition, task: asyncio.Task[bool]) -> None:
        self._settling.discard(task)
        if self._tails.get(tp) is task:
            del self._tails[tp]

    def ack(self, batch: Sequence[Any], span: Span = None) -> None:
        """The batch is done: ``span``, the input offsets it completes, becomes committable.

        The events are acked to faust's consumer too, which counts them to know when a
        rebalance or shutdown may go on; what it commits is the ledger's.
        """
        if span is not None:
            msg = batch[0].message
            self.ledger.done((msg.topic, msg.partition), *span)
        consumer = self.consumer() if self.consumer is not None else None
        if consumer is not None:
            for event in batch:
                event.message.ack(consumer)

    def forget(self, tp: Partition) -> None:
        """``tp`` was revoked: its held batches are no longer reported, and its ledger starts afresh."""
        self.ledger.revoke(tp)
        self.held.pop(tp, None)

    def unconfirmed(self, now: float | None = None) -> dict[Partition, float]:
        """Per input partition with unconfirmed batches: seconds since the oldest was held."""
        now = self.clock() if now is None else now
        return {tp: now - next(iter(held.values())) for tp, held in self.held.items() if held}

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every settling batch is settled (before shutdown), at most ``timeout_s``.

        Returns whether all settled; the others stay unacked (read again after a restart).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while self._settling:
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            _, pending = await asyncio.wait(list(self._settling), timeout=left)
            if pending and deadline is not None and loop.time() >= deadline:
                log.warning(
                    "%d batches still unconfirmed at the end of the wait for them (STREAM_SETTLE_TIMEOUT_S) "
                    "on %s; they stay uncommitted and are read again after a restart",
                    len(pending),
                    describe(self.unconfirmed()),
                )
                return False
        return True


def describe(ages: dict[Partition, float]) -> str:
    """``topic[partition] (age s)`` for each partition, for log lines."""
    return ", ".join(f"{t}[{p}] ({age:.0f} s)" for (t, p), age in sorted(ages.items())) or "no partition"
