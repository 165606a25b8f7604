"""Challengers scored in shadow: the same rows as production, marked, apart, and never at production's cost."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.models.registry import ModelRegistry
from stream.models.scoring import LoadedModel, ModelSet
from stream.worker.processor import EXPECTED_FEATURES
from tests.support.models import offline_scores, train_and_register
from tests.unit.test_processor import event_records, new_stores, processor, run


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, sim_events: list[dict[str, Any]]) -> Path:
    """The unit tests' production models plus challengers trained with another seed and more rounds."""
    d = tmp_path_factory.mktemp("shadow") / "models"
    shutil.copytree(models_dir, d)
    train_and_register(d, list(sim_events), seed=11, rounds=25, alias="challenger")
    return d


def _loaded(d: Path, alias: str) -> dict[str, LoadedModel]:
    models = ModelSet(ModelRegistry(d), EXPECTED_FEATURES, alias=alias, required=False)
    models.refresh()
    return models.models


def test_challengers_score_the_rows_production_scores_and_only_in_shadow(
    registry_dir: Path, sim_events: list[dict[str, Any]]
) -> None:
    production, challengers = _loaded(registry_dir, "production"), _loaded(registry_dir, "challenger")
    assert {n: m.version for n, m in challengers.items()} == {"churn": "2", "click": "2", "engagement": "2"}
    records = event_records(sim_events)
    alone = processor(production)
    with_shadow = processor(production)
    with_shadow.shadow = challengers
    outs_alone = run(alone, records, new_stores(), 150)
    outs = run(with_shadow, records, new_stores(), 150)

    # production's outputs are those of a worker without challengers
    strip = [{k: v for k, v in p.items() if k != "predicted_at"} for o in outs for p in o.predictions]
    assert strip == [{k: v for k, v in p.items() if k != "predicted_at"} for o in outs_alone for p in o.predictions]
    assert all("shadow" not in p and p["model_version"] == "1" for o in outs for p in o.predictions)

    # one shadow score per production score, of the challenger, equal to an independent offline scoring
    shadow = [p for o in outs for p in o.shadow_predictions]
    assert sorted((p["model_name"], p["event_id"]) for p in shadow) == sorted(
        (p["model_name"], p["event_id"]) for o in outs for p in o.predictions
    )
    assert all(p["shadow"] is True and p["model_version"] == "2" for p in shadow)
    # churn and engagement: an independent replay of the rows (click rows need the article table,
    # which these runs leave empty); click: the challenger run as production on the same records
    expected = offline_scores(registry_dir, sim_events, alias="challenger")
    as_production = run(processor(challengers), records, new_stores(), 150)
    expected["click"] = {p["event_id"]: p["score"] for o in as_production for p in o.predictions}
    for p in shadow:
        assert p["score"] == pytest.approx(expected[p["model_name"]][p["event_id"]], abs=1e-6)
    # the challengers are different models: their scores differ from production's
    prod = {(p["model_name"], p["event_id"]): p["score"] for o in outs for p in o.predictions}
    assert sum(abs(p["score"] - prod[(p["model_name"], p["event_id"])]) > 1e-6 for p in shadow) > len(shadow) / 2


def test_a_challenger_that_is_the_production_version_is_not_scored_twice(models_dir: Path, sim_events) -> None:
    production = _loaded(models_dir, "production")
    proc = processor(production)
    proc.shadow = dict(production)
    outs = run(proc, event_records(sim_events[:300]), new_stores(), 100)
    assert sum(len(o.predictions) for o in outs) > 0
    assert all(not o.shadow_predictions for o in outs)


class _NaN(LoadedModel):
    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), np.nan)


def test_a_failing_challenger_costs_no_production_output_and_is_counted(
    models: Mapping[str, LoadedModel], sim_events: list[dict[str, Any]]
) -> None:
    click = models["click"]
    proc = processor(models)
    proc.shadow = {"click": _NaN("click", "9", click.kind, click.booster, click.feature_version)}
    outs = run(proc, event_records(sim_events), new_stores(), 150)
    reference = run(processor(models), event_records(sim_events), new_stores(), 150)
    assert [p["prediction_id"] for o in outs for p in o.predictions] == [
        p["prediction_id"] for o in reference for p in o.predictions
    ]
    assert all(not o.dead_letters and not o.shadow_predictions for o in outs)
    batches_with_clicks = sum(any(p["model_name"] == "click" for p in o.predictions) for o in outs)
    assert batches_with_clicks > 0
    assert proc.metrics.shadow_errors.labels(model="click")._value.get() == batches_with_clicks


def test_a_challenger_alias_that_goes_away_stops_shadow_scoring(registry_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "models"
    shutil.copytree(registry_dir, d)
    unloaded: list[str] = []
    shadow = ModelSet(
        ModelRegistry(d), EXPECTED_FEATURES, alias="challenger", required=False, on_unloaded=unloaded.append
    )
    shadow.refresh()
    assert sorted(shadow.models) == ["churn", "click", "engagement"]
    aliases = d / "click" / "aliases.json"
    data = json.loads(aliases.read_text())
    assert data.pop("challenger") == "2"
    aliases.write_text(json.dumps(data))
    shadow.refresh()
    assert sorted(shadow.models) == ["churn", "engagement"]
    assert unloaded == ["click"]
