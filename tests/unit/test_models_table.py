"""The model table (stream.models) is the one home of each model's identity; the rest reads it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson

from batch_training.cli import STEPS
from batch_training.evaluate import TARGETS
from batch_training.specs import SPECS
from stream.events.schema import load_schema
from stream.models import MODELS, REGISTERED_AS, SEGMENTS, SERVED_FEATURES, TRIGGERS
from stream.models.registry import ModelRegistry
from stream.models.scoring import ModelSet
from stream.state import USER_FEATURES
from stream.worker.processor import EXPECTED_FEATURES, BatchProcessor, Record, Stores
from tests.support.models import register_online_models

EVENT_TYPES = load_schema("session_event")["properties"]["event_type"]["enum"]


def test_every_trigger_is_an_event_type_and_every_served_model_has_one() -> None:
    assert dict(TRIGGERS) == {
        "session_end": ("churn", "conversion", "segment"),
        "article_impression": ("click",),
        "session_start": ("engagement",),
    }
    assert set(TRIGGERS) <= set(EVENT_TYPES)
    served = [name for names in TRIGGERS.values() for name in names]
    assert len(set(served)) == len(served) and set(served) == set(SERVED_FEATURES)
    assert {m.trigger for m in MODELS.values()} <= {*TRIGGERS, None}
    # the segmentation is served under its own name, from the user rows, registered as batch training names it
    assert (SEGMENTS.trigger, SEGMENTS.features, REGISTERED_AS) == (
        "session_end",
        USER_FEATURES,
        {"segment": "segmentation"},
    )
    assert SEGMENTS.registered_as in STEPS


def test_the_worker_and_the_training_read_the_table() -> None:
    assert EXPECTED_FEATURES is SERVED_FEATURES
    assert list(SPECS) == list(MODELS)
    for name, spec in SPECS.items():
        assert spec.model is MODELS[name]
    assert set(TARGETS) == set(MODELS)
    assert set(MODELS) <= set(STEPS)


def test_the_worker_scores_each_served_model_on_its_trigger(
    sim_events: list[dict[str, Any]], models_dir: Path, tmp_path: Path
) -> None:
    d = tmp_path / "models"
    shutil.copytree(models_dir, d)
    register_online_models(d, sim_events, seed=2)
    model_set = ModelSet(ModelRegistry(d), EXPECTED_FEATURES)
    model_set.refresh()
    proc = BatchProcessor(model_set.models, ("top", "side"))
    records = [
        Record(e["user_id"].encode(), orjson.dumps(e), "session-events", 0, i, None) for i, e in enumerate(sim_events)
    ]
    out = proc.process(records, Stores(users={}, ad_pending={}, articles={}, bandit={}))
    by_event = {e["event_id"]: e["event_type"] for e in sim_events}
    got = {(p["model_name"], by_event[p["event_id"]]) for p in out.predictions}
    assert got == {
        ("click", "article_impression"),
        ("engagement", "session_start"),
        ("churn", "session_end"),
        ("conversion", "session_end"),
        ("segment", "session_end"),
    }
