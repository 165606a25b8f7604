"""Leakage, registry round trip, the promote gate and the CLI's one-line errors."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from batch_training.cli import main
from batch_training.context import Context
from batch_training.datasets import Sampling, build_training_sets
from batch_training.modeling import register
from batch_training.promote import PromotionRefused, promote
from batch_training.specs import SPECS
from stream.clickhouse import connect, insert_events
from stream.config import load_settings
from stream.models.registry import ModelRegistry, load_booster
from stream.state import CHURN_FEATURES, USER_FEATURES
from stream.state.labels import DAY_MS
from stream.state.synthetic import generate_events


def test_a_planted_future_event_changes_the_label_not_the_features(unique: str) -> None:
    events = generate_events(n_users=12, days=30, seed=4)
    uid = events[0]["user_id"]
    last = max(e["event_time"] for e in events if e["user_id"] == uid)
    cutoff = (events[0]["event_time"] // DAY_MS + 3) * DAY_MS  # a cut-off early in the data
    planted = {
        **next(e for e in events if e["user_id"] == uid),
        "event_id": "planted-sub",
        "event_type": "subscription",
        "event_time": cutoff + 2 * DAY_MS,
        "revenue": 999.0,
    }
    planted.pop("article_id", None)
    sets = []
    for tag, evs in (("a", events), ("b", [*events, planted])):
        ch = connect(load_settings(clickhouse_database=f"leak_{tag}_{unique}"))
        try:
            insert_events(ch, evs)
            sets.append(build_training_sets(ch, sampling=Sampling()).users)
        finally:
            ch.command("DROP DATABASE IF EXISTS {db}")
            ch.close()
    a, b = (s[(s["user_id"] == uid) & (s["cutoff_ms"] == cutoff)] for s in sets)
    assert len(a) == len(b) == 1, "the user must be active at the cut-off"
    names = list(USER_FEATURES.names)
    np.testing.assert_array_equal(a[names].to_numpy(), b[names].to_numpy())  # features: unchanged
    assert int(b["converted"].iloc[0]) == 1 and int(b["high_value"].iloc[0]) == 1  # the label sees it
    assert last > cutoff  # (the user did have later events: the plant is not the only future)
    # ...and the planted revenue shows up only at cut-offs after it
    later = sets[1][(sets[1]["user_id"] == uid) & (sets[1]["cutoff_ms"] > planted["event_time"])]
    assert (later["subscription_flag"] == 1).all() and len(later) > 0


def test_registry_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(CHURN_FEATURES))).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=400) > 0).astype(int)
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(x, y)
    reg = ModelRegistry(tmp_path)
    mv = register(
        reg,
        "churn",
        "xgboost",
        lambda p: model.get_booster().save_model(str(p)),
        features=CHURN_FEATURES,
        metrics={},
        window={},
        rows={"train": 400},
        fingerprint="x",
    )
    assert mv.model_file.suffix == ".ubj"
    again = load_booster(reg.get("churn", mv.version))
    np.testing.assert_array_equal(again.inplace_predict(x), model.get_booster().inplace_predict(x))
    np.testing.assert_allclose(again.inplace_predict(x), model.predict_proba(x)[:, 1], rtol=1e-6)


# the first test to use pipeline_run pays for the whole pipeline (see tests/batch/test_pipeline.py)
@pytest.mark.timeout(900)
def test_promote_refuses_a_worse_model_unless_forced(
    sim_ctx: Context, pipeline_run: dict, tmp_path: Path, make_ctx: Any
) -> None:
    shutil.copytree(sim_ctx.settings.models_dir, tmp_path / "models")
    ctx = make_ctx(tmp_path, sim_ctx.db, sim_ctx.ch)
    shutil.copytree(sim_ctx.data_dir, ctx.data_dir, dirs_exist_ok=True)
    reg = ctx.registry
    before = reg.resolve("churn").version
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, len(CHURN_FEATURES))).astype(np.float32)
    bad = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, rng.integers(0, 2, 300))  # noise
    worse = register(
        reg,
        "churn",
        "xgboost",
        lambda p: bad.get_booster().save_model(str(p)),
        features=SPECS["churn"].features,
        metrics={},
        window={},
        rows={},
        fingerprint="noise",
    )
    with pytest.raises(PromotionRefused, match="churn"):
        promote(ctx, ["churn"])
    assert reg.resolve("churn").version == before
    promote(ctx, ["churn"], force=True)
    assert reg.resolve("churn").version == worse.version


def test_cli_bad_argument_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--no-such-option"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert main(["churn", "--profile", "huge"]) == 2


def test_cli_missing_data_says_what_to_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sim_ctx: Context
) -> None:
    monkeypatch.setenv("STREAM_CLICKHOUSE_DATABASE", f"empty_{uuid.uuid4().hex[:8]}")
    assert main(["prerequisites", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no events in table" in err and "python -m simulator backfill" in err and "STREAM_CLICKHOUSE_URL" in err
