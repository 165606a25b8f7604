"""Which input offsets the worker may commit: its own guarantee, not faust's bookkeeping.

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

from collections.abc import Iterable

Partition = tuple[str, int]


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
