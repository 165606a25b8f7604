"""``Publisher.log_decisions`` (``POST /v1/decide``): how soon the handler resumes after Kafka's acknowledgement.

What is fake: the decisions producer (it keeps each record's delivery report for the test to call,
as librdkafka's delivery thread would). The event loop is real: a task counts its turns.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from stream.config import load_settings
from stream.worker.publisher import Publisher


class HeldReports:
    """A producer whose delivery reports the test calls (``reports``)."""

    def __init__(self) -> None:
        self.reports: list[Any] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any = None, **kwargs: Any) -> None:
        self.reports.append(on_delivery)

    def __len__(self) -> int:
        return len(self.reports)


def publisher(producer: HeldReports) -> Publisher:
    pub = Publisher(
        load_settings(),
        metrics=cast(Any, None),
        models=cast(Any, None),
        processor=cast(Any, None),
        sink=None,
        api_producer=producer,
        topic_names={"decisions": "bandit-decisions"},
    )
    pub.api_polled_by_caller = True  # no delivery thread: the test serves the reports
    return pub


DECISION: Any = {"user_id": "u1", "decision_id": "d1"}


def test_the_handler_resumes_two_loop_turns_after_the_acknowledgement() -> None:
    """On a busy loop each turn can hold a batch's step: the answer waits for as few turns as asyncio allows.

    One turn runs the delivery report's hand-over (``call_soon_threadsafe``), which resolves the
    acknowledgement's future; the next resumes the handler.
    """
    producer = HeldReports()
    pub = publisher(producer)

    async def run() -> int:
        turns = 0
        stop = False

        async def ticker() -> None:  # one tick per turn of the loop (a batch's steps do the same)
            nonlocal turns
            while not stop:
                turns += 1
                await asyncio.sleep(0)

        resumed_at: list[int] = []

        async def handler() -> None:
            await pub.log_decisions([DECISION], timeout_s=30)
            resumed_at.append(turns)

        ticking = asyncio.ensure_future(ticker())
        handling = asyncio.ensure_future(handler())
        while not producer.reports:
            await asyncio.sleep(0)
        acked_at = turns
        producer.reports[0](None, None)  # Kafka's acknowledgement, as the delivery thread reports it
        await handling
        stop = True
        await ticking
        return resumed_at[0] - acked_at

    assert asyncio.run(run()) <= 2


def test_a_decision_not_acknowledged_in_time_raises_and_a_late_report_is_harmless() -> None:
    producer = HeldReports()
    pub = publisher(producer)

    async def run() -> None:
        with pytest.raises(TimeoutError):
            await pub.log_decisions([DECISION], timeout_s=0.05)
        producer.reports[0](None, None)  # the acknowledgement after the deadline: nobody waits for it
        await asyncio.sleep(0.01)

    asyncio.run(run())
