"""The commit rule (stream/worker/delivery.py) and the consumer that applies it, without a broker."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st
from intervaltree import IntervalTree

from stream.kafka.transport import LedgerConsumer
from stream.worker.delivery import Ledger

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
    confirmed = data.draw(st.permutations(ranges))[:data.draw(st.integers(0, len(ranges)))]
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
