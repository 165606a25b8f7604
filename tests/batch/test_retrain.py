"""retrain -> challenger -> compare -> promote -> rollback on the simulator's history in chdb."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from batch_training.cli import main
from batch_training.context import Context, get_profile
from batch_training.modeling import register
from batch_training.promote import PromotionRefused, promote
from batch_training.retrain import compare, drift_start, retrain
from batch_training.specs import SPECS
from stream.config import load_settings
from stream.models.registry import CHALLENGER, PRODUCTION
from stream.monitoring.outputs import insert_monitoring
from stream.state.labels import DAY_MS
from tests.support.chdb import fresh_database

USERS, DAYS, WINDOW_DAYS = 400, 30, 20


def _noise_model(ctx: Context, name: str, workspace: str = "") -> str:
    """A production model that learnt nothing: what a world that changed makes of an old model."""
    spec = SPECS[name]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, len(spec.features.names))).astype(np.float32)
    if spec.task == "binary":
        model: Any = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, rng.integers(0, 2, 300))
    else:
        model = xgb.XGBRegressor(n_estimators=5, max_depth=2).fit(x, rng.normal(20, 5, 300))
    mv = register(
        ctx.registry,
        name,
        "xgboost",
        lambda p: model.get_booster().save_model(str(p)),
        features=spec.features,
        metrics={},
        window={"val_end_ms": 0},
        rows={},
        fingerprint="noise",
        extra={"workspace": workspace},
    )
    return mv.version


def _noise_champion(ctx: Context, name: str) -> str:
    version = _noise_model(ctx, name)
    ctx.registry.set_alias(name, PRODUCTION, version, reason="test champion")
    return version


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A small simulated history of its own (the retrain loop, not model quality, is under test)."""
    from simulator import SimConfig, generate
    from simulator.sinks import backfill

    with fresh_database("retrain") as ch:
        backfill(ch, generate(SimConfig(n_users=USERS, days=DAYS, seed=5)))
        tmp = tmp_path_factory.mktemp("retrain")
        settings = load_settings(
            clickhouse_database=ch.database,
            data_dir=tmp / "var",
            models_dir=tmp / "models",
            reports_dir=tmp / "reports",
        )
        prof = get_profile("fast", search_iter=1, cv_folds=0, n_estimators=120, processes=1)
        ctx = Context(settings, prof, progress=False, _ch=ch)
        champions = {name: _noise_champion(ctx, name) for name in ("click", "engagement")}
        result = retrain(ctx, window_days=WINDOW_DAYS, models=["churn", "click", "engagement"], log=lambda _s: None)
        yield {"ctx": ctx, "champions": champions, "retrain": result}


def test_retrain_registers_challengers_on_the_latest_window(loop: dict[str, Any]) -> None:
    ctx, out = loop["ctx"], loop["retrain"]
    reg = ctx.registry
    models = out["models"]
    # churn's 30-day horizon does not fit in a 20-day window's rows: skipped with its reason
    assert models["churn"]["status"] == "skipped" and "labelled rows" in models["churn"]["reason"]
    assert reg.history("churn")[-1]["action"] == "skip"
    assert reg.aliases("churn") == {}
    latest = int(ctx.ch.query_df("SELECT toUnixTimestamp64Milli(max(event_time)) AS t FROM {db}.events")["t"].iloc[0])
    for name in ("click", "engagement"):
        assert models[name]["status"] == "challenger"
        aliases = reg.aliases(name)
        assert aliases[CHALLENGER] == models[name]["version"] != aliases[PRODUCTION] == loop["champions"][name]
        mv = reg.get(name, aliases[CHALLENGER])
        assert mv.metadata["workspace"] == "retrain"
        # an XGBoost model continues from its production version (built for the same features)
        assert mv.metadata["warm_start_from"] == models[name]["warm_start_from"] == loop["champions"][name]
        assert mv.metadata["params"]["max_depth"] in (2, 3)
        # trained on rows of the window only
        assert mv.metadata["training_window"]["min_ms"] >= latest - WINDOW_DAYS * DAY_MS
        assert [h["action"] for h in reg.history(name)][-2:] == ["register", "challenger"]
    rows = pd.read_parquet(ctx.in_workspace("retrain").data_dir / "clicks.parquet")
    assert rows["event_time_ms"].min() >= latest - WINDOW_DAYS * DAY_MS
    # the pipeline's own training sets are not touched
    assert not (ctx.data_dir / "clicks.parquet").exists()


def test_compare_promotes_a_better_challenger(loop: dict[str, Any]) -> None:
    ctx = loop["ctx"]
    reg = ctx.registry
    challenger = reg.aliases("click")[CHALLENGER]
    out = compare(ctx, "click", resamples=300, promote=True)
    test = out["test"]
    assert out["promoted"] and reg.resolve("click").version == challenger
    assert test["metric"] == "auc" and test["challenger"] > test["champion"] + 0.1 and test["n"] >= 200
    assert test["lower_bound"] > test["margin"] == 0.005
    # the held-out events are after both models' training
    held = out["held_out"]["from_ms"]
    assert held > reg.get("click", challenger).metadata["training_window"]["val_end_ms"]
    steps = reg.history("click")
    assert [h["action"] for h in steps[-2:]] == ["promote", "retire"]
    assert steps[-2]["evidence"]["test"]["lower_bound"] == test["lower_bound"]


def test_compare_keeps_a_challenger_no_better_than_the_champion(loop: dict[str, Any]) -> None:
    ctx = loop["ctx"]
    reg = ctx.registry
    if reg.resolve("click").version == loop["champions"]["click"]:  # run alone: promote first
        compare(ctx, "click", resamples=300, promote=True)
    champion = reg.resolve("click").version
    reg.set_alias("click", CHALLENGER, champion, reason="test: the champion against itself")
    same = compare(ctx, "click", resamples=300, promote=True)
    assert same["decision"] == "keep" and not same["promoted"] and same["test"]["improvement"] == 0
    assert "<= margin 0.005" in same["reason"]
    assert reg.resolve("click").version == champion
    last = reg.history("click")[-1]
    assert last["action"] == "compare" and last["reason"].startswith("keep:")


def test_compare_a_regression_model_on_squared_error(loop: dict[str, Any]) -> None:
    ctx = loop["ctx"]
    eng = compare(ctx, "engagement", resamples=300, promote=True)
    # a margin of 1 % of the held-out outcomes' variance
    assert eng["test"]["metric"] == "mse" and eng["promoted"], eng["reason"]
    assert eng["test"]["improvement"] > eng["test"]["margin"] > 0


def test_rollback_and_history_commands(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    ctx = loop["ctx"]
    monkeypatch.setenv("STREAM_MODELS_DIR", str(Path(ctx.settings.models_dir)))
    promoted = ctx.registry.resolve("engagement").version
    assert main(["rollback", "--model", "engagement", "--reason", "test"]) == 0
    assert ctx.registry.resolve("engagement").version == loop["champions"]["engagement"]
    assert f"v{promoted} -> v{loop['champions']['engagement']}" in capsys.readouterr().out
    assert main(["history", "--model", "engagement"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1] for line in lines] == [
        "register",
        "promote",
        "register",
        "challenger",
        "promote",
        "retire",
        "rollback",
    ]
    assert "lower_bound=" in lines[4]


def test_cli_retrain_and_compare(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    ctx = loop["ctx"]
    s = ctx.settings
    for key, value in (
        ("CLICKHOUSE_DATABASE", s.clickhouse_database),
        ("MODELS_DIR", s.models_dir),
        ("DATA_DIR", s.data_dir),
        ("REPORTS_DIR", s.reports_dir),
    ):
        monkeypatch.setenv(f"STREAM_{key}", str(value))
    common = ["--profile", "fast", "--processes", "1", "--no-progress"]
    assert main(["retrain", "--window-days", str(WINDOW_DAYS), "--models", "churn", *common]) == 0
    out = capsys.readouterr().out
    assert "churn" in out and "skipped: only 0 labelled rows" in out and "retrain: 0 challengers, 1 skipped" in out
    assert ctx.registry.history("churn")[-1]["reason"].startswith(f"retrain on the latest {WINDOW_DAYS} days: ")
    ctx.registry.set_alias("click", CHALLENGER, ctx.registry.resolve("click").version)
    assert main(["compare", "--model", "click", "--resamples", "100", *common]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("click: champion v") and "decision keep" in line and len(line.splitlines()) == 1
    assert main(["compare", "--model", "churn", *common]) == 2  # churn has no challenger
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no 'challenger' alias" in err


def test_promote_gates_a_challenger_on_its_own_test_split(loop: dict[str, Any]) -> None:
    ctx = loop["ctx"]
    reg = ctx.registry
    good = reg.resolve("click").version
    noise = _noise_model(ctx, "click", workspace="retrain")
    reg.set_alias("click", CHALLENGER, noise, reason="test: a worse challenger")
    with pytest.raises(PromotionRefused, match="click"):
        promote(ctx, ["click"], challenger_first=True)
    refused = reg.history("click")[-1]
    assert refused["action"] == "refused" and refused["to_version"] == noise
    assert refused["evidence"]["holdout"].endswith("retrain")  # the challenger's own test split
    assert refused["evidence"]["candidate_score"] < refused["evidence"]["production_score"]
    out = promote(ctx, ["click"], challenger_first=True, force=True, reason="test: forced")
    assert out["click"]["status"] == "promoted (forced)" and reg.resolve("click").version == noise
    assert reg.history("click")[-2]["reason"] == "test: forced"
    assert reg.rollback("click") == (noise, good)


def test_retrain_after_drift_starts_its_window_at_the_drift(loop: dict[str, Any]) -> None:
    ctx = loop["ctx"]
    reg = ctx.registry
    champion = reg.resolve("click").version
    latest = int(ctx.ch.query_df("SELECT toUnixTimestamp64Milli(max(event_time)) AS t FROM {db}.events")["t"].iloc[0])
    began = latest - 5 * DAY_MS
    drift: list[dict[str, Any]] = []

    def window(start: int, end: int, drifted: int, feature: str = "position", version: str = champion) -> None:
        drift.append(
            {
                "model_name": "click",
                "model_version": version,
                "window_start": start,
                "window_end": end,
                "feature": feature,
                "rows": 500,
                "psi": 0.5 if drifted else 0.01,
                "psi_threshold": 0.1,
                "ks": None,
                "ks_threshold": None,
                "drifted": drifted,
                "computed_at": end,
            }
        )

    window(latest - 12 * DAY_MS, latest - 9 * DAY_MS, 1)  # an earlier alarm, ended by a quiet window
    window(latest - 9 * DAY_MS, began, 0)
    window(began, latest - 3 * DAY_MS, 1)  # the streak: a window alarms if any column drifted
    window(began, latest - 3 * DAY_MS, 0, feature="tenure_days")
    window(latest - 3 * DAY_MS, latest - DAY_MS, 1)
    window(latest - 19 * DAY_MS, latest - DAY_MS, 1, version="not-production")  # other versions do not count
    insert_monitoring(ctx.ch, [], drift)
    assert drift_start(ctx, "click") == began
    assert drift_start(ctx, "engagement") is None  # no drift windows of its own

    # too little of the changed world yet: nothing trained nor registered, and from when there will be
    steps = len(reg.history("click"))
    early = retrain(
        ctx, window_days=WINDOW_DAYS, models=["click"], log=lambda _s: None, after_drift=True, min_drift_days=6
    )
    assert early["models"] == {} and early["waiting"]["until_ms"] == began + 6 * DAY_MS
    assert "began 5.00 days of events ago" in early["waiting"]["reason"]
    assert len(reg.history("click")) == steps
    # exactly the days asked for: trained
    out = retrain(
        ctx, window_days=WINDOW_DAYS, models=["click"], log=lambda _s: None, after_drift=True, min_drift_days=5
    )
    assert out["window"]["from_ms"] == out["window"]["drift_from_ms"] == began
    mv = reg.get("click", out["models"]["click"]["version"])
    assert mv.metadata["training_window"]["min_ms"] >= began
    rows = pd.read_parquet(ctx.in_workspace("retrain").data_dir / "clicks.parquet")
    assert rows["event_time_ms"].min() >= began
    assert latest - WINDOW_DAYS * DAY_MS < began  # the latest 20 days alone would reach back before the drift
