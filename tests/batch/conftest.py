"""One small simulated dataset in its own chdb database, and one fast pipeline run over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_training.context import Context, get_profile
from stream.config import load_settings
from tests.support.chdb import fresh_database

USERS, DAYS, SEED = 1500, 42, 11


def make_context(tmp: Path, database: str, ch: Any = None) -> Context:
    settings = load_settings(
        clickhouse_database=database, data_dir=tmp / "var", models_dir=tmp / "models", reports_dir=tmp / "reports"
    )
    prof = get_profile("fast", search_iter=2, cv_folds=2, n_estimators=200, processes=2)
    return Context(settings, prof, progress=False, _ch=ch)


@pytest.fixture
def make_ctx() -> Any:
    return make_context


@pytest.fixture(scope="session")
def sim_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    from simulator import SimConfig, generate
    from simulator.sinks import backfill

    with fresh_database("batch") as ch:
        backfill(ch, generate(SimConfig(n_users=USERS, days=DAYS, seed=SEED)))
        yield make_context(tmp_path_factory.mktemp("batch"), ch.database, ch)


@pytest.fixture(scope="session")
def pipeline_run(sim_ctx: Context) -> dict[str, float]:
    from batch_training.cli import pipeline

    return pipeline(sim_ctx, log=lambda _s: None)
