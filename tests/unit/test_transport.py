"""stream.kafka.transport._Interrupt: faust's wait_first(hand-off, suspend_flow.wait()) at one task per record.

Each test states what faust's ``Service.wait_first`` does in the same situation.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream.kafka.transport import LedgerConsumer, _Interrupt
from tests.support.aio import settle


def _events() -> tuple[asyncio.Event, asyncio.Event, asyncio.Event]:
    return asyncio.Event(), asyncio.Event(), asyncio.Event()


async def test_a_hand_off_that_does_not_block_completes() -> None:
    suspend, stopped, crashed = _events()
    it = _Interrupt(asyncio.get_running_loop(), suspend, stopped, crashed)
    done: list[int] = []

    async def hand_off(i: int) -> None:
        done.append(i)

    for i in range(5):
        assert await it.race(hand_off(i)) is True  # delivered: the read offset may advance
    assert done == [0, 1, 2, 3, 4]
    it.close()


async def test_a_blocked_hand_off_is_cancelled_when_the_flow_is_suspended() -> None:
    suspend, stopped, crashed = _events()
    it = _Interrupt(asyncio.get_running_loop(), suspend, stopped, crashed)
    gate = asyncio.Event()
    log: list[str] = []

    async def hand_off() -> None:
        try:
            await gate.wait()  # a full stream buffer
            log.append("delivered")
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    race = asyncio.ensure_future(it.race(hand_off()))
    await settle()  # the race has started and is blocked
    assert not race.done()
    suspend.set()  # a rebalance starts
    assert await asyncio.wait_for(race, 1) is False  # not delivered: the read offset must stay
    await asyncio.sleep(0)
    assert log == ["cancelled"]

    # after the flow resumes, hand-offs wait for completion again
    suspend.clear()
    gate.set()
    await it.race(hand_off())
    assert log == ["cancelled", "delivered"]
    it.close()


@pytest.mark.parametrize("which", [1, 2])
async def test_stop_or_crash_interrupts_like_the_flow(which: int) -> None:
    events = _events()
    it = _Interrupt(asyncio.get_running_loop(), *events)

    async def blocked() -> None:
        await asyncio.Event().wait()

    race = asyncio.ensure_future(it.race(blocked()))
    await settle()  # the race has started and is blocked
    events[which].set()
    await asyncio.wait_for(race, 1)
    it.close()


async def test_with_the_flow_already_suspended_the_hand_off_still_gets_its_first_step() -> None:
    suspend, stopped, crashed = _events()
    suspend.set()
    it = _Interrupt(asyncio.get_running_loop(), suspend, stopped, crashed)
    done: list[str] = []

    async def quick() -> None:
        done.append("quick")

    async def blocked() -> None:
        await asyncio.Event().wait()
        done.append("blocked")  # pragma: no cover

    assert await it.race(quick()) is True  # wait_first: both finish in the same turn, the record is delivered
    assert await it.race(blocked()) is False  # ... while a hand-off that blocks is cancelled
    await asyncio.sleep(0)
    assert done == ["quick"]
    it.close()


async def test_a_hand_off_error_propagates() -> None:
    it = _Interrupt(asyncio.get_running_loop(), *_events())

    async def boom() -> None:
        raise KeyError("decode")

    with pytest.raises(KeyError):
        await it.race(boom())
    it.close()


@pytest.mark.parametrize(
    ("handoff", "module"), [("lean", "stream.kafka.transport"), ("faust", "faust.transport.consumer")]
)
def test_the_handoff_setting_picks_the_consumer(handoff: str, module: str, tmp_path: Any) -> None:
    """Either hand-off commits what the worker's ledger allows (stream/worker/delivery.py)."""
    from stream.config import load_settings
    from stream.worker.app import create_app

    settings = load_settings(consumer_handoff=handoff, state_dir=tmp_path / "state", models_dir=tmp_path / "m")
    app, rt = create_app(settings, "localhost:1", clickhouse=False)
    assert type(app.consumer)._drain_messages.__module__ == module
    assert isinstance(app.consumer, LedgerConsumer)
    rt.close(timeout_s=0)
    rt.producer = None  # drop the output producer now: it would keep retrying localhost:1


async def test_the_read_position_is_aiokafkas_and_none_until_known() -> None:
    """FetchThread.read_position reads aiokafka's partition state (the batch idle limit's check)."""
    from types import SimpleNamespace

    from aiokafka.consumer.subscription_state import Assignment
    from aiokafka.structs import TopicPartition

    from stream.kafka.transport import FetchThread

    tp = TopicPartition("events", 2)
    assignment = Assignment([tp])
    thread = SimpleNamespace(_consumer=SimpleNamespace(_subscription=SimpleNamespace(subscription=None)))
    assert FetchThread.read_position(thread, tp) is None  # type: ignore[arg-type]  # not subscribed yet
    thread._consumer._subscription.subscription = SimpleNamespace(assignment=assignment)
    assert FetchThread.read_position(thread, tp) is None  # type: ignore[arg-type]  # assigned, no position yet
    assert FetchThread.read_position(thread, TopicPartition("events", 3)) is None  # type: ignore[arg-type]
    assignment.state_value(tp).seek(41)
    assignment.state_value(tp).consumed_to(43)  # what aiokafka does past a fetch's records and control records
    assert FetchThread.read_position(thread, tp) == 43  # type: ignore[arg-type]
