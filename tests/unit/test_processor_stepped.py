"""The agent's batches in steps (``process_stepped``): the loop runs between them, the batch is still one unit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream.models.scoring import LoadedModel
from stream.worker.processor import APPLY_STEP, BatchProcessor, Outputs, Record, Stores, unpack_user
from tests.unit.test_processor import NOW_MS, PLACEMENTS, event_records, new_stores, scores_by_key

BATCH = 3 * APPLY_STEP + 5  # four apply steps, then scoring and the decisions


def _states(stores: Stores) -> dict[str, bytes]:
    return {u: unpack_user(v)[1].to_bytes() for u, v in stores.users.items()}


def _decisions(out: Outputs) -> list[tuple[Any, ...]]:
    return [(d["decision_id"], d["placement"], d["propensity"]) for d in out.decisions]


def _batches(sim_events: list[dict[str, Any]]) -> list[list[Record]]:
    records = event_records(sim_events)
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


def test_stepped_batches_give_what_whole_batches_give(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    whole, stepped = BatchProcessor(models, PLACEMENTS), BatchProcessor(models, PLACEMENTS)
    whole_stores, stepped_stores = new_stores(), new_stores()
    steps: list[float] = []

    async def run() -> list[Outputs]:
        return [
            await stepped.process_stepped(b, stepped_stores, now_ms=NOW_MS, observe=steps.append)
            for b in _batches(sim_events)
        ]

    got = asyncio.run(run())
    expected = [whole.process(b, whole_stores, now_ms=NOW_MS) for b in _batches(sim_events)]
    assert sum(len(o.decisions) for o in expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert scores_by_key(a.predictions) == scores_by_key(b.predictions)
        assert _decisions(a) == _decisions(b)
        assert a.article_events == b.article_events
        assert a.dead_letters == b.dead_letters
    assert _states(stepped_stores) == _states(whole_stores)
    assert stepped_stores.bandit == whole_stores.bandit
    assert len(steps) >= len(expected) * 4  # every batch of BATCH events took several steps


def test_the_loop_runs_between_the_steps_of_a_batch(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    proc = BatchProcessor(models, PLACEMENTS)
    batch = _batches(sim_events)[0]
    assert len(batch) == BATCH

    async def run() -> tuple[int, bool]:
        ticks = 0
        stop = False

        async def other() -> None:  # what an API request does: runs whenever the loop is free
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other())
        await asyncio.sleep(0)
        before = ticks
        await proc.process_stepped(batch, new_stores(), now_ms=NOW_MS)
        during = ticks - before
        stop = True
        await task
        return during, proc.stepping.locked()

    during, locked = asyncio.run(run())
    assert during >= 4  # at least once after each apply step and after scoring
    assert not locked


def test_a_batch_cancelled_between_its_steps_leaves_no_effect(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    proc = BatchProcessor(models, PLACEMENTS)
    stores = new_stores()
    batch = _batches(sim_events)[0]

    async def cancelled_then_again() -> Outputs:
        task = asyncio.ensure_future(proc.process_stepped(batch, stores, now_ms=NOW_MS))
        for _ in range(2):  # the batch is past its first steps, not done
            await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stores.users == {} and stores.bandit == {}  # nothing written
        assert not proc.stepping.locked()
        return await proc.process_stepped(batch, stores, now_ms=NOW_MS)  # as if delivered again

    again = asyncio.run(cancelled_then_again())
    fresh, fresh_stores = BatchProcessor(models, PLACEMENTS), new_stores()
    expected = fresh.process(batch, fresh_stores, now_ms=NOW_MS)
    assert scores_by_key(again.predictions) == scores_by_key(expected.predictions)
    assert _decisions(again) == _decisions(expected)
    assert _states(stores) == _states(fresh_stores)
    assert proc.metrics.value("stream_redelivered_events_total") == 0  # the cancelled attempt marked nothing


def test_batches_of_two_partitions_are_processed_one_at_a_time(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    first, second = _batches(sim_events)[:2]
    # the second batch from another partition, as another actor of the worker hands it over
    second = [Record(r.key, r.value, r.topic, 1, r.offset, r.timestamp_ms) for r in second]
    proc, stores = BatchProcessor(models, PLACEMENTS), new_stores()

    async def both() -> list[Outputs]:
        return list(
            await asyncio.gather(
                proc.process_stepped(first, stores, now_ms=NOW_MS), proc.process_stepped(second, stores, now_ms=NOW_MS)
            )
        )

    got = asyncio.run(both())
    seq, seq_stores = BatchProcessor(models, PLACEMENTS), new_stores()
    expected = [seq.process(first, seq_stores, now_ms=NOW_MS), seq.process(second, seq_stores, now_ms=NOW_MS)]
    for a, b in zip(got, expected, strict=True):
        assert scores_by_key(a.predictions) == scores_by_key(b.predictions)
        assert _decisions(a) == _decisions(b)
    assert _states(stores) == _states(seq_stores)
