"""The model table (stream.models) is the one home of each model's identity; the rest reads it."""

from __future__ import annotations

from typing import Any

import orjson

from batch_training.cli import STEPS
from batch_training.evaluate import TARGETS
from batch_training.specs import SPECS
from stream.events.schema import load_schema
from stream.models import MODELS, SERVED_FEATURES, TRIGGERS
from stream.models.scoring import LoadedModel
from stream.worker.processor import EXPECTED_FEATURES, BatchProcessor, Record, Stores

EVENT_TYPES = load_schema("session_event")["properties"]["event_type"]["enum"]


def test_every_trigger_is_an_event_type_and_triggers_one_model() -> None:
    triggers = [m.trigger for m in MODELS.values() if m.trigger is not None]
    assert set(triggers) <= set(EVENT_TYPES)
    assert len(set(triggers)) == len(triggers)
    assert {TRIGGERS[t] for t in triggers} == set(SERVED_FEATURES)


def test_the_worker_and_the_training_read_the_table() -> None:
    assert EXPECTED_FEATURES is SERVED_FEATURES
    assert list(SPECS) == list(MODELS)
    for name, spec in SPECS.items():
        assert spec.model is MODELS[name]
    assert set(TARGETS) == set(MODELS)
    assert set(MODELS) <= set(STEPS)


def test_the_worker_scores_each_served_model_on_its_trigger(
    sim_events: list[dict[str, Any]], models: dict[str, LoadedModel]
) -> None:
    proc = BatchProcessor(models, ("top", "side"))
    records = [
        Record(e["user_id"].encode(), orjson.dumps(e), "session-events", 0, i, None) for i, e in enumerate(sim_events)
    ]
    out = proc.process(records, Stores(users={}, ad_pending={}, articles={}, bandit={}))
    by_event = {e["event_id"]: e["event_type"] for e in sim_events}
    got = {(p["model_name"], by_event[p["event_id"]]) for p in out.predictions}
    assert got == {(m.name, m.trigger) for m in MODELS.values() if m.trigger is not None}
