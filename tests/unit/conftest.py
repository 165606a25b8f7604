"""Fixtures of the broker-free unit tests: a small simulated history and real models trained on it.

Everything is seeded: the simulator (``SimConfig.seed``), the training labels (``seed``) and
XGBoost itself (``seed`` param, one thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from simulator import SimConfig, generate
from stream.models.registry import ModelRegistry
from stream.models.scoring import LoadedModel, ModelSet
from stream.worker.processor import EXPECTED_FEATURES
from tests.support.models import train_and_register

#: ~950 events: 40 users over 3 days (generated in about half a second).
SIM = SimConfig(n_users=40, days=3, seed=5)


@pytest.fixture(scope="session")
def sim_events() -> list[dict[str, Any]]:
    """Clean events in delivery (= event-time) order."""
    return list(generate(SIM).iter_events())


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, sim_events: list[dict[str, Any]]) -> Path:
    d = tmp_path_factory.mktemp("models")
    events: list[Mapping[str, Any]] = list(sim_events)
    train_and_register(d, events, seed=3, rounds=10)
    return d


@pytest.fixture(scope="session")
def models(models_dir: Path) -> dict[str, LoadedModel]:
    """The production models as the worker loads them (version "1" of each)."""
    model_set = ModelSet(ModelRegistry(models_dir), EXPECTED_FEATURES)
    model_set.refresh()
    assert sorted(model_set.models) == ["churn", "click", "engagement"]
    return model_set.models
