"""The commit protocol (stream/worker/delivery.py) and the consumer that applies it, without a broker."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st
from intervaltree import IntervalTree

from stream.kafka.transport import LedgerConsumer
from stream.state import new_user_state
from stream.worker.delivery import Acks, Ledger, OffsetRanges, Redeliveries, hold, pack_user, unpack_user

IN = ("in", 0)


def test_a_later_batch_confirmed_first_is_not_committed_before_the_earlier_one() -> None:
    ledger = Ledger({"in"})
    ledger.assign(IN, 100)
    ledger.done(IN, 101, 103)
    assert ledger.committable(IN) == 100
    assert ledger.pending(IN) == [(101, 103)]
    ledger.done(IN, 100, 100)
    assert ledger.committable(IN) == 104
    assert ledger.pending(IN) == []


def test_a_new_group_commits_nothing_until_the_first_offsets_are_done() -> None:
    ledger = Ledger({"in"})
    ledger.assign(IN, 0)  # no committed offset: the log start
    ledger.done(IN, 53, 60)
    assert ledger.committable(IN) == 0
    ledger.done(IN, 0, 52)
    assert ledger.committable(IN) == 61


def test_offsets_done_again_or_of_a_revoked_partition_change_nothing() -> None:
    ledger = Ledger({"in"})
    ledger.assign(IN, 10)
    ledger.done(IN, 3, 9)  # delivered again after a rebalance
    assert ledger.committable(IN) == 10
    ledger.done(IN, 5, 12)  # overlaps the start
    assert ledger.committable(IN) == 13
    ledger.revoke(IN)
    ledger.done(IN, 13, 20)
    assert ledger.committable(IN) is None and not ledger.knows(IN)
    ledger.assign(IN, 13)  # assigned again: starts afresh
    assert ledger.committable(IN) == 13 and ledger.pending(IN) == []


@settings(max_examples=200, derandomize=True, deadline=None)
@given(start=st.integers(0, 1000), sizes=st.lists(st.integers(1, 20), min_size=1, max_size=15), data=st.data())
def test_the_commit_offset_is_the_first_offset_not_done(start: int, sizes: list[int], data: st.DataObject) -> None:
    ranges, first = [], start
    for n in sizes:
        ranges.append((first, first + n - 1))
        first += n
    confirmed = data.draw(st.permutations(ranges))[: data.draw(st.integers(0, len(ranges)))]
    ledger = Ledger({"in"})
    ledger.assign(IN, start)
    for lo, hi in confirmed:
        ledger.done(IN, lo, hi)
    done = {o for lo, hi in confirmed for o in range(lo, hi + 1)}
    expected = start
    while expected in done:
        expected += 1
    assert ledger.committable(IN) == expected


def _consumer(cls: type, ledger: Ledger | None, committed: int | None, acked: list[int]) -> Any:
    """A consumer object with only the bookkeeping ``_new_offset`` reads."""
    tp = TP("in", 0)
    me = cls.__new__(cls)
    me.app = SimpleNamespace(ledger=ledger)
    me._acked = defaultdict(list, {tp: list(acked)})
    me._acked_index = defaultdict(set, {tp: set(acked)})
    me._gap = defaultdict(IntervalTree)
    me._committed_offset = defaultdict(lambda: None, {tp: committed})
    return me


def test_faust_commits_past_an_unacked_offset_and_the_worker_does_not() -> None:
    tp = TP("in", 0)
    # With 100 committed and 100 not acked, faust commits past it ...
    assert _consumer(FaustConsumer, None, 100, [101, 102, 103])._new_offset(tp) == 104
    # ... and past the head of a new group (faust reads a committed 0 as none).
    assert _consumer(FaustConsumer, None, None, list(range(53, 61)))._new_offset(tp) == 61

    ledger = Ledger({"in"})
    ledger.assign(IN, 100)
    ledger.done(IN, 101, 103)
    worker = _consumer(LedgerConsumer, ledger, 100, [101, 102, 103])
    assert worker._new_offset(tp) == 100
    assert worker._acked[tp] == [] and worker._acked_index[tp] == set()  # faust's lists do not grow
    ledger.done(IN, 100, 100)
    assert worker._new_offset(tp) == 104


def test_topics_the_ledger_does_not_track_keep_faust_s_rule() -> None:
    other = TP("changelog", 0)
    me = _consumer(LedgerConsumer, Ledger({"in"}), None, [])
    me._acked[other] = [0, 1, 2]
    me._acked_index[other] = {0, 1, 2}
    assert me._new_offset(other) == 3


# --- the redelivery filter and the offset stored with each user --------------------------------


def test_offset_ranges_merge_out_of_order_offsets() -> None:
    seen = OffsetRanges()
    for o in (10, 12, 11, 3, 4, 20):
        seen.add(o)
    assert seen.ranges == [[3, 4], [10, 12], [20, 20]]
    assert [o for o in range(0, 22) if o in seen] == [3, 4, 10, 11, 12, 20]


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int


def _offsets(records: list[Rec]) -> list[int]:
    return [r.offset for r in records]


def test_a_record_handed_over_again_is_skipped_until_its_partition_is_forgotten() -> None:
    seen = Redeliveries()
    assert _offsets(seen.fresh([Rec(0, o) for o in (0, 1, 2)])) == [0, 1, 2]
    # after a seek, faust hands 1-2 again, with 3 that it skipped before
    assert _offsets(seen.fresh([Rec(0, o) for o in (1, 2, 3)])) == [3]
    assert _offsets(seen.fresh([Rec(1, 1)])) == [1]  # another partition
    seen.forget({0})
    assert _offsets(seen.fresh([Rec(0, 2)])) == [2]


def test_an_undone_attempt_forgets_the_offsets_it_handled() -> None:
    seen = Redeliveries()
    seen.fresh([Rec(0, 0), Rec(0, 1)])
    before = seen.snapshot(0)
    seen.fresh([Rec(0, 2), Rec(0, 3)])  # the attempt fails ...
    seen.restore(0, before)
    assert _offsets(seen.fresh([Rec(0, 2), Rec(0, 3)])) == [2, 3]  # ... and its records are handled again
    seen.mark(0, 7)  # a record whose dead letter is its output
    assert _offsets(seen.fresh([Rec(0, 7), Rec(0, 8)])) == [8]


def test_the_user_value_carries_the_offset_last_applied() -> None:
    state = new_user_state()
    state.max_t = 5
    offset, back = unpack_user(pack_user(41, state))
    assert offset == 41 and back.max_t == 5
    assert unpack_user(None)[0] == -1 and unpack_user(b"")[0] == -1  # a new user: every event is new


# --- settle and ack ---------------------------------------------------------------------------


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    acked_to: list[Any] = field(default_factory=list)

    def ack(self, consumer: Any) -> None:
        self.acked_to.append(consumer)


@dataclass
class Ev:
    message: Msg


def _batch(first: int, last: int) -> list[Ev]:
    return [Ev(Msg("in", 0, o)) for o in range(first, last + 1)]


class Gate:
    """An output confirmation the test resolves: True (confirmed) or False (failed)."""

    def __init__(self) -> None:
        self.future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def __call__(self) -> bool:
        return await self.future


def _acks(clock: list[float]) -> tuple[Acks, Ledger, list[str]]:
    ledger = Ledger({"in"})
    ledger.assign(IN, 0)
    consumer = "faust-consumer"
    return Acks(ledger, lambda: consumer, clock=lambda: clock[0]), ledger, []


async def test_a_batch_confirmed_first_is_acked_after_the_partition_s_earlier_batch() -> None:
    clock = [100.0]
    acks, ledger, counted = _acks(clock)
    first, second = _batch(0, 2), _batch(3, 4)
    gate1, gate2 = Gate(), Gate()
    t1 = acks.hold(IN)
    clock[0] = 101.0
    t2 = acks.hold(IN)
    acks.settle(IN, t1, first, (0, 2), gate1, lambda: counted.append("first"))
    acks.settle(IN, t2, second, (3, 4), gate2, lambda: counted.append("second"))
    clock[0] = 103.0
    assert acks.unconfirmed() == {IN: 3.0}  # the oldest held batch
    gate2.future.set_result(True)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ledger.committable(IN) == 0 and counted == [] and not second[0].message.acked_to
    gate1.future.set_result(True)
    assert await acks.drain(timeout_s=5)
    assert counted == ["first", "second"]
    assert ledger.committable(IN) == 5
    assert all(ev.message.acked_to == ["faust-consumer"] for ev in first + second)
    assert acks.unconfirmed() == {}


async def test_a_failed_batch_keeps_its_partition_s_later_batches_unacked() -> None:
    clock = [0.0]
    acks, ledger, counted = _acks(clock)
    gate1, gate2 = Gate(), Gate()
    acks.settle(IN, acks.hold(IN), _batch(0, 1), (0, 1), gate1, lambda: counted.append("first"))
    acks.settle(IN, acks.hold(IN), _batch(2, 3), (2, 3), gate2, lambda: counted.append("second"))
    gate2.future.set_result(True)
    gate1.future.set_result(False)  # its outputs were not confirmed
    assert await acks.drain(timeout_s=5)
    assert counted == [] and ledger.committable(IN) == 0
    assert set(acks.unconfirmed(now=10.0)) == {IN}  # still held: a restart reads them again


async def test_drain_gives_up_at_its_timeout_and_a_revoked_partition_is_no_longer_held() -> None:
    clock = [0.0]
    acks, ledger, _ = _acks(clock)
    token = acks.hold(IN)
    acks.settle(IN, token, _batch(0, 0), (0, 0), Gate(), lambda: None)  # never confirmed
    assert not await acks.drain(timeout_s=0.01)
    acks.forget(IN)
    assert acks.unconfirmed() == {} and not ledger.knows(IN)
    released = acks.hold(IN)
    acks.release(IN, released)  # failed before its outputs were queued
    assert acks.unconfirmed() == {}


def test_hold_takes_one_reference_on_the_event_s_message() -> None:
    refs = []
    hold(SimpleNamespace(message=SimpleNamespace(incref=lambda: refs.append(1))))
    assert refs == [1]
