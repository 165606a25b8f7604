"""Backtest: offline vs end-to-end agreement, the report, and OPE against the simulator's truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator import SimConfig, generate
from simulator.dataset import epoch_ms
from stream.cli import main
from stream.tools.backtest import evaluate as E
from stream.tools.backtest.run import compare, load_models, run_e2e, run_offline
from tests.backtest.models import train_models


@pytest.fixture(scope="module")
def window(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """A small simulated window and article-blind models trained on another seed."""
    root = tmp_path_factory.mktemp("bt")
    train = generate(SimConfig(n_users=200, days=4, seed=8))
    train_models(root / "models", list(train.iter_events()), article_blind=True)
    ds = generate(SimConfig(n_users=150, days=4, seed=5, duplicate_share=0.01, malformed_share=0.005))
    return ds.write(root / "data", formats=("parquet",)), root / "models", ds


@pytest.mark.kafka
def test_offline_and_end_to_end_agree(kafka_bootstrap: str, window: tuple[Path, Path, object], tmp_path: Path) -> None:
    _, models_dir, ds = window
    payloads = list(ds.iter_payloads())  # type: ignore[attr-defined]
    off = run_offline(payloads, load_models(models_dir), placements=ds.config.placements)  # type: ignore[attr-defined]
    e2e = run_e2e(
        payloads,
        models_dir,
        bootstrap=kafka_bootstrap,
        expected_predictions=len(off.predictions),
        expected_decisions=len(off.decisions),
        workdir=tmp_path / "e2e",
        timeout_s=120,
    )
    agreement = compare(off, e2e)
    assert set(agreement["models"]) == {"churn", "click", "engagement"}
    for name, m in agreement["models"].items():
        assert m["offline"] > 50, name
        assert m["only_offline"] == 0 and m["only_e2e"] == 0, (name, m)  # same prediction ids
        assert m["max_abs_diff"] <= 1e-6, (name, m)  # same scores
    d = agreement["decisions"]
    assert d["offline"] > 100 and d["common"] == d["offline"] == d["e2e"]  # same decision ids
    assert e2e.latencies_ms and e2e.events_per_s > 0


def test_backtest_cli_writes_report(
    window: tuple[Path, Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, models_dir, _ = window
    out = tmp_path / "report"
    assert main(["backtest", str(data), "--models", str(models_dir), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for section in ("Model quality", "click: AUC per day", "calibration", "Bandits", "Off-policy", "Throughput"):
        assert section in text, section
    for png in ("quality_click.png", "calibration_click.png", "bandit_regret.png", "ope.png"):
        assert (out / png).stat().st_size > 1000
    assert "<table" in (out / "report.html").read_text()
    assert "click: AUC" in capsys.readouterr().out
    assert main(["backtest", str(tmp_path / "missing"), "--models", str(models_dir)]) == 2


def test_click_labels_match_truth(window: tuple[Path, Path, object]) -> None:
    """Realized click labels average to the simulator's true click probabilities (independent oracle)."""
    _, _, ds = window
    labels = E.realized_labels(ds.events, 10**15)["click"]  # type: ignore[attr-defined]
    truth = ds.truth["article_impressions"].set_index("event_id")["p_click"]  # type: ignore[attr-defined]
    joined = labels.join(truth, on="event_id")
    se = (joined.p_click * (1 - joined.p_click)).sum() ** 0.5 / len(joined)
    assert abs(joined.label.mean() - joined.p_click.mean()) < 4 * se


def test_off_policy_estimates_near_truth() -> None:
    """Replay, IPS and SNIPS of alternative placement policies from the site's uniform log.

    Tolerance: each estimate within 3 of its own standard errors of the true value (the mean
    true CTR of the policy's placements over the logged contexts). ~72k logged impressions.
    """
    ds = generate(SimConfig(n_users=6000, days=10, seed=5))
    log = E.ad_log(ds.events, ds.truth, epoch_ms(ds.config.start))
    ctr = E.arm_ctr(ds.truth, ds.config.placements, epoch_ms(ds.config.start))
    rows = E.off_policy(log, ds.config.placements, E.target_policies(ds.config.placements, ctr), ctr)
    assert len(log) > 50_000 and len(rows) == len(ds.config.placements) + 2
    for r in rows:
        for est in (r.replay, r.ips, r.snips):
            if est is not None:
                assert est.within(r.truth, sigmas=3.0), (r.policy, est, r.truth)
                assert est.stderr < 0.1 * r.truth
    fixed = [r for r in rows if r.policy.startswith("always")]
    assert max(fixed, key=lambda r: r.ips.value).policy == max(fixed, key=lambda r: r.truth).policy


DAY_MS = 86_400_000


def _logged_arm_ctr(
    log: pd.DataFrame, ctr: dict[tuple[int, str], np.ndarray], placements: tuple[str, ...]
) -> np.ndarray:
    idx = {a: i for i, a in enumerate(placements)}
    return np.array(
        [ctr[(int(d), dev)][idx[a]] for d, dev, a in zip(log.day, log.true_device, log.placement, strict=True)]
    )


def test_off_policy_estimates_near_truth_on_the_demo_s_live_window() -> None:
    """The demo's window at `stream demo --rate 1500`: days 45..57 of 2000 users x 57 days (seed 42).

    The true CTR of each logged impression's arm must be the probability the simulator drew its
    click from (``ad_impressions.p_click``), exactly; truth read by the dataset's day numbers
    instead of the window's put the CTRs of days 0..11 on days 45..56 (``always in_article``:
    truth 0.025 against estimates of 0.035 ± 0.0023). Tolerance: every estimate within 3 of its
    own standard errors of the true value (~26k logged impressions).
    """
    ds = generate(SimConfig(n_users=2000, days=57, seed=42))
    start = epoch_ms(ds.config.start) + 45 * DAY_MS
    placements = ds.config.placements
    log = E.ad_log(ds.events[ds.events.event_time >= start], ds.truth, start)
    ctr = E.arm_ctr(ds.truth, placements, start)
    assert len(log) > 20_000 and log.day.min() == 0 and log.day.max() == 11
    p_click = ds.truth["ad_impressions"].set_index("event_id")["p_click"]
    np.testing.assert_array_equal(_logged_arm_ctr(log, ctr, placements), log.event_id.map(p_click).to_numpy())
    rows = E.off_policy(log, placements, E.target_policies(placements, ctr), ctr)
    assert len(rows) == len(placements) + 2
    for r in rows:
        for est in (r.replay, r.ips, r.snips):
            if est is not None:
                assert est.within(r.truth, sigmas=3.0), (r.policy, est, r.truth)


def test_off_policy_truth_uses_the_true_device_where_the_event_lost_it() -> None:
    """Impressions without a device are logged in the context "unknown"; their truth is their real device's CTR."""
    ds = generate(SimConfig(n_users=400, days=6, seed=3, missing_share=0.2))
    start = epoch_ms(ds.config.start)
    placements = ds.config.placements
    log = E.ad_log(ds.events, ds.truth, start)
    ctr = E.arm_ctr(ds.truth, placements, start)
    assert (log.device_type == "unknown").sum() > 20 and "unknown" not in set(log.true_device)
    p_click = ds.truth["ad_impressions"].set_index("event_id")["p_click"]
    np.testing.assert_array_equal(_logged_arm_ctr(log, ctr, placements), log.event_id.map(p_click).to_numpy())
    rows = {r.policy: r for r in E.off_policy(log, placements, E.target_policies(placements, ctr), ctr)}
    # "always top_banner" places top_banner whatever the device, logged or not
    want = np.mean([ctr[(int(d), dev)][0] for d, dev in zip(log.day, log.true_device, strict=True)])
    assert rows[f"always {placements[0]}"].truth == pytest.approx(want)


def test_churn_oracle_of_a_window_is_the_truth_at_the_next_cut_off_after_the_session_end() -> None:
    ds = generate(SimConfig(n_users=150, days=10, seed=5))
    start = epoch_ms(ds.config.start) + 4 * DAY_MS  # a window from day 4: its day 0 is the dataset's day 4
    events = ds.events[ds.events.event_time >= start]
    oracle = E.oracle_scores(ds.truth, events, start)["churn"]
    ends = events[events.event_type == "session_end"][["event_id", "user_id", "event_time"]].astype(
        {"event_time": "int64"}
    )
    daily = ds.truth["user_daily"][["user_id", "cutoff_time", "p_churn_30d"]].sort_values("cutoff_time")
    want = pd.merge_asof(
        ends.sort_values("event_time"),
        daily,
        left_on="event_time",
        right_on="cutoff_time",
        by="user_id",
        direction="forward",
        allow_exact_matches=False,
    ).set_index("event_id")["p_churn_30d"]
    assert len(want) > 100 and want.notna().all()
    np.testing.assert_allclose(oracle.reindex(want.index).to_numpy(), want.to_numpy())
