"""Conversion and segments online, in the batch processor on plain-dict stores (no Kafka).

The expected scores come from the model files themselves (LightGBM's own predict) and from the
scikit-learn objects the segmentation was fitted with, on user rows rebuilt from ``stream.state``
directly (``tests/support/models.py``), never from the worker's scoring code.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.models.registry import ModelRegistry
from stream.models.scoring import LoadedModel, ModelSet
from stream.state import CHURN_FEATURES, USER_FEATURES
from stream.worker.api.answers import segment_view, user_view
from stream.worker.processor import EXPECTED_FEATURES, BatchProcessor, Record, Stores, unpack_user
from tests.support.models import Segmenter, offline_online_scores, register_online_models

NOW_MS = 1_736_500_000_000


def records(events: Sequence[Mapping[str, Any]]) -> list[Record]:
    return [
        Record(e["user_id"].encode(), orjson.dumps(e), "session-events", 0, i, e["event_time"])
        for i, e in enumerate(events)
    ]


def new_stores() -> Stores:
    return Stores(users={}, ad_pending={}, articles={}, bandit={})


@pytest.fixture(scope="module")
def online(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, sim_events: list[dict[str, Any]]
) -> tuple[Path, Segmenter]:
    """The unit registry (churn, click, engagement) plus conversion and a segmentation, all in production."""
    d = tmp_path_factory.mktemp("online") / "models"
    shutil.copytree(models_dir, d)
    versions, segmenter = register_online_models(d, list(sim_events), seed=4)
    assert versions == {"conversion": "1", "segmentation": "1"} and segmenter is not None
    return d, segmenter


@pytest.fixture(scope="module")
def all_models(online: tuple[Path, Segmenter]) -> dict[str, LoadedModel]:
    model_set = ModelSet(ModelRegistry(online[0]), EXPECTED_FEATURES)
    assert sorted(model_set.refresh()) == [
        "churn:1",
        "click:1",
        "conversion:1",
        "engagement:1",
        "segment:1",
    ]
    return model_set.models


def test_session_end_scores_churn_conversion_and_segment_as_offline(
    sim_events: list[dict[str, Any]], all_models: dict[str, LoadedModel], online: tuple[Path, Segmenter]
) -> None:
    proc = BatchProcessor(all_models, ("top", "side"))
    stores = new_stores()
    recs = records(sim_events)
    preds = [p for i in range(0, len(recs), 64) for p in proc.process(recs[i : i + 64], stores, NOW_MS).predictions]
    ends = [e["event_id"] for e in sim_events if e["event_type"] == "session_end"]
    assert len(ends) > 30
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for p in preds:
        assert p["event_id"] not in by_model.setdefault(p["model_name"], {})  # one score per event and model
        by_model[p["model_name"]][p["event_id"]] = p
    for name in ("churn", "conversion", "segment"):
        assert sorted(by_model[name]) == sorted(ends), name

    offline = offline_online_scores(online[0], sim_events, online[1])
    for eid in ends:
        assert abs(by_model["conversion"][eid]["score"] - offline["conversion"][eid]) <= 1e-9, eid
        seg = by_model["segment"][eid]
        assert seg["score"] == offline["segment"][eid], eid
        assert seg["label"] == f"test segment {int(seg['score'])}"
        assert seg["feature_version"] == USER_FEATURES.version
    assert len({p["score"] for p in by_model["segment"].values()}) > 1  # more than one segment in use
    assert len({p["score"] for p in by_model["conversion"].values()}) > 10
    assert not any("label" in p for n in ("churn", "conversion", "click") for p in by_model[n].values())

    # each user's state keeps the segment of their newest session_end
    newest: dict[str, tuple[int, int, int]] = {}
    for eid in ends:  # sim events come in event-time order
        p = by_model["segment"][eid]
        newest[p["user_id"]] = (int(p["score"]), 1, p["event_time"])
    for uid, raw in stores.users.items():
        assert unpack_user(raw)[1].segment == newest.get(uid), uid


def test_a_replay_scores_again_without_changing_the_stored_states(
    sim_events: list[dict[str, Any]], all_models: dict[str, LoadedModel]
) -> None:
    stores = new_stores()
    recs = records(sim_events[:600])
    first = BatchProcessor(all_models, ("top", "side")).process(recs, stores, NOW_MS).predictions
    stored = dict(stores.users)
    # a new worker given the same records (a crash before the commit): states hold them already, so
    # their segments are scored from the stored state (marked replayed unless it is the one they need)
    again = BatchProcessor(all_models, ("top", "side")).process(recs, stores, NOW_MS).predictions
    assert stores.users == stored
    first_seg = {p["event_id"]: p for p in first if p["model_name"] == "segment"}
    again_seg = {p["event_id"]: p for p in again if p["model_name"] == "segment"}
    assert first_seg and set(again_seg) == set(first_seg)
    exact = [eid for eid, p in again_seg.items() if "replayed" not in p]
    assert exact and all(again_seg[eid]["score"] == first_seg[eid]["score"] for eid in exact)
    assert any("replayed" in p for p in again_seg.values())


def test_without_a_segmentation_the_others_are_scored(
    tmp_path: Path, models_dir: Path, sim_events: list[dict[str, Any]]
) -> None:
    d = tmp_path / "models"
    shutil.copytree(models_dir, d)
    register_online_models(d, list(sim_events), seed=4, segmentation=False)
    model_set = ModelSet(ModelRegistry(d), EXPECTED_FEATURES)
    model_set.refresh()
    assert sorted(model_set.models) == ["churn", "click", "conversion", "engagement"]
    proc = BatchProcessor(model_set.models, ("top", "side"))
    stores = new_stores()
    out = proc.process(records(sim_events), stores, NOW_MS)
    n_ends = sum(e["event_type"] == "session_end" for e in sim_events)
    counts = {n: sum(p["model_name"] == n for p in out.predictions) for n in ("churn", "conversion", "segment")}
    assert counts == {"churn": n_ends, "conversion": n_ends, "segment": 0}
    assert proc.metrics.value("stream_unscored_events_total", model="segment") == n_ends
    assert all(unpack_user(raw)[1].segment is None for raw in stores.users.values())


def test_a_segmentation_for_other_features_is_refused_and_the_others_load(
    tmp_path: Path, online: tuple[Path, Segmenter]
) -> None:
    d = tmp_path / "models"
    shutil.copytree(online[0], d)
    registry = ModelRegistry(d)
    good = registry.resolve("segmentation")
    doc = json.loads(good.model_file.read_text())
    # registered with another feature list (the churn model's): refused, as boosters are
    bad = registry.register(
        "segmentation", "json", lambda p: p.write_text(json.dumps(doc)), {"features": CHURN_FEATURES.to_dict()}
    )
    registry.set_alias("segmentation", "production", bad.version)
    refused: list[tuple[str, str]] = []
    model_set = ModelSet(registry, EXPECTED_FEATURES, on_refused=lambda n, v, r: refused.append((n, v)))
    model_set.refresh()
    assert refused == [("segment", bad.version)]
    assert sorted(model_set.models) == ["churn", "click", "conversion", "engagement"]
    # parameters that read a column the user rows lack: refused with the reason, nothing raised
    broken = registry.register(
        "segmentation",
        "json",
        lambda p: p.write_text(json.dumps({**doc, "columns": ["no_such_feature"]})),
        {"features": USER_FEATURES.to_dict()},
    )
    registry.set_alias("segmentation", "production", broken.version)
    model_set.refresh()
    assert refused[-1] == ("segment", broken.version) and "segment" not in model_set.models
    registry.set_alias("segmentation", "production", good.version)
    model_set.refresh()
    assert model_set.models["segment"].version == good.version


def test_the_user_view_names_the_stored_segment(sim_events: list[dict[str, Any]]) -> None:
    from stream.state import DEFAULT_CONFIG, new_user_state, update_user

    st = new_user_state()
    for e in sim_events[:20]:
        update_user(st, e)
    view = user_view("u", 0, 19, st, {}, None, None, DEFAULT_CONFIG)
    assert view["segment"] is None
    st.segment = (2, 7, st.max_t)
    view = user_view("u", 0, 19, st, {}, None, None, DEFAULT_CONFIG, {2: "mobile-first"})
    assert view["segment"] == {"id": 2, "name": "mobile-first", "model_version": "7", "event_time": st.max_t}
    assert segment_view((5, 1, 10), None) == {"id": 5, "name": None, "model_version": "1", "event_time": 10}
