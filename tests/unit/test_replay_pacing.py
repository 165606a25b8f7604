"""stream.tools.replay.Pacer: ``speed`` times real time by event timestamps, on a virtual clock.

The replay waits by polling its producer; here the wait moves the virtual clock instead, so the
waits asserted are exact.
"""

from __future__ import annotations

from stream.tools.replay import Pacer
from tests.support.clock import VirtualClock

T = 1000.0
E0 = 1_736_000_000_000  # the first record's event time, ms


def waits_for(pacer: Pacer, clock: VirtualClock, timestamp_ms: int) -> list[float]:
    """The waits the pacer asks for before this record, each moving the clock."""
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        clock.advance_sync(seconds)

    pacer.wait_for(timestamp_ms, wait)
    return waits


def test_records_go_at_speed_times_their_event_time_offsets_in_short_waits() -> None:
    clock = VirtualClock(start=T)
    pacer = Pacer(2.0, clock, start=T)
    pacer.max_wait_s = 0.25
    assert waits_for(pacer, clock, E0) == []  # the first record sets time zero
    assert waits_for(pacer, clock, E0 + 1000) == [0.25, 0.25]  # 1 s of event time at 2x: 0.5 s
    assert clock.monotonic() == T + 0.5
    assert waits_for(pacer, clock, E0 + 1000) == []  # same event time: at once
    assert waits_for(pacer, clock, E0 + 1500) == [0.25]
    assert waits_for(pacer, clock, E0 + 1250) == []  # late (out of order) records are not held
    assert waits_for(pacer, clock, E0 + 3000) == [0.25, 0.25, 0.25]
    assert clock.monotonic() == T + 1.5


def test_time_spent_producing_counts_against_the_wait() -> None:
    clock = VirtualClock(start=T)
    pacer = Pacer(1.0, clock, start=T)
    pacer.max_wait_s = 1.0
    assert waits_for(pacer, clock, E0) == []
    clock.advance_sync(0.375)  # producing took this long
    assert waits_for(pacer, clock, E0 + 1000) == [0.625]
    clock.advance_sync(2.0)  # fell behind: the next records go at once
    assert waits_for(pacer, clock, E0 + 2000) == []
    assert waits_for(pacer, clock, E0 + 3000) == []
    assert waits_for(pacer, clock, E0 + 3625) == [0.625]
    assert clock.monotonic() == T + 3.625


def test_the_offsets_count_from_the_first_paced_record_not_from_the_start() -> None:
    clock = VirtualClock(start=T)
    pacer = Pacer(4.0, clock, start=T)
    pacer.max_wait_s = 10.0
    clock.advance_sync(3.0)  # e.g. skipping records already delivered (a resumed run)
    assert waits_for(pacer, clock, E0 + 60_000) == []
    assert waits_for(pacer, clock, E0 + 80_000) == [2.0]  # 20 s at 4x = 5 s from the start; 3 s gone
