"""Drift detection on seeded streams: the false-alarm rate on unchanged data, and the delay after a shift.

Figures measured with these generators and seeds, over more seeds than the tests run
(docs/monitoring.md quotes them):

* feature drift at the default alpha 0.01, reference of 20 000 rows, 6 features + the prediction:
  windows with any alarm on a stationary stream: 13 of 2000 (0.65 %) at 100 rows, 2 of 300 (0.67 %)
  at 1000 rows. A fixed PSI > 0.1 fires on at least one column in 80 % of the 100-row windows
  (on the normal column alone in 32 %), and in none of the 1000-row windows;
* a 0.5 sd mean shift of one feature, starting mid-window: found 50-250 rows after onset with
  100-row windows (median 150) and 250-750 rows after with 500-row windows (17 of 20 seeds in the
  window of the onset), 20 seeds;
* loss (ADWIN, delta 0.002): 0 rises in 10 x 100 000 stationary calibrated classifier predictions,
  4 in 10 x 100 000 regression ones; when the outcomes stop depending on the score, found after
  215-1079 predictions (20 seeds, median about 500); a regression offset of one noise sd, after 95.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.monitoring import DriftWindow, LossDrift, build_profile
from stream.monitoring.drift import column_drift, ks_threshold, psi, psi_threshold
from tests.monitoring.streams import NAMES, rows

REF_ROWS = 20_000


@pytest.fixture(scope="module")
def profile():
    x, p = rows(REF_ROWS, np.random.default_rng(1))
    return build_profile(NAMES, x, p)


def _reports(profile, size: int, x: np.ndarray, p: np.ndarray):
    return DriftWindow("m", "1", profile, size).update(x, p, np.arange(len(x)))


@pytest.mark.parametrize(("size", "windows", "bound"), [(100, 2000, 0.015), (1000, 300, 0.015)])
def test_stationary_stream_false_alarm_rate_is_at_most_alpha(profile, size: int, windows: int, bound: float) -> None:
    """At alpha = 1 % per window; the bound leaves room for the sampling error of the measured rate
    (2000 windows: one standard error of 1 % is 0.22 %)."""
    x, p = rows(size * windows, np.random.default_rng(2))
    reports = _reports(profile, size, x, p)
    assert len(reports) == windows
    rate = sum(bool(r.drifted) for r in reports) / windows
    assert rate <= bound, rate


def test_a_fixed_psi_of_0_1_fires_on_unchanged_small_windows_and_the_derived_threshold_does_not(profile) -> None:
    x, p = rows(100 * 1000, np.random.default_rng(3))
    reports = _reports(profile, 100, x, p)
    fixed = np.mean([r.columns["normal"].psi > 0.1 for r in reports])
    derived = np.mean([r.columns["normal"].psi > r.columns["normal"].psi_threshold for r in reports])
    assert fixed > 0.25 and derived < 0.01, (fixed, derived)


@pytest.mark.parametrize(("size", "windows"), [(100, 1000), (1000, 400)])
@pytest.mark.parametrize("column", ["normal", "zero_mass", "discrete", "gappy", "prediction"])
def test_each_threshold_matches_its_null_distribution(profile, size: int, windows: int, column: str) -> None:
    """Without the floor or the Bonferroni split, a test at alpha = 5 % fires in about 5 % of unchanged
    windows (the chi-square approximation holds at 100 rows; KS is conservative on a point mass)."""
    x, p = rows(size * windows, np.random.default_rng(4))
    ref = profile.columns[column]
    values = p if column == "prediction" else x[:, NAMES.index(column)]
    over_psi, over_ks = [], []
    for w in range(windows):
        v = values[w * size : (w + 1) * size]
        b = ref.bin_counts(v)
        over_psi.append(psi(ref.counts, b) > psi_threshold(size, ref.rows, int((ref.counts > 0).sum()), 0.05, 0.0))
        if ref.kind == "numeric":
            n = int(b[:-1].sum())
            ks = np.max(np.abs(ref.cdf_counts(v) / n - ref.cdf_p))
            over_ks.append(ks > ks_threshold(n, ref.rows - int(ref.counts[-1]), 0.05))
    assert 0.01 <= np.mean(over_psi) <= 0.08  # not liberal, and not so conservative that it never fires
    if over_ks:
        assert np.mean(over_ks) <= 0.08


@pytest.mark.parametrize(("size", "max_delay"), [(100, 250), (500, 750)])
def test_a_mean_shift_of_one_feature_is_found_within_a_window_and_a_half(profile, size: int, max_delay: int) -> None:
    onset = 5 * size + size // 2  # mid-window: the worst case has half a window of shifted rows
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        xa, pa = rows(onset, rng)
        xb, pb = rows(10 * size, rng, shift=0.5)
        reports = _reports(profile, size, np.vstack([xa, xb]), np.concatenate([pa, pb]))
        first = next(i for i, r in enumerate(reports) if "normal" in r.drifted)
        assert (first + 1) * size - onset <= max_delay, seed
        assert reports[first].window_end_ms >= onset


def test_missing_values_and_unseen_categories_are_drift(profile) -> None:
    x, p = rows(1000, np.random.default_rng(6), missing=0.3)
    assert "gappy" in _reports(profile, 1000, x, p)[0].drifted
    x, p = rows(1000, np.random.default_rng(7))
    x[:100, NAMES.index("discrete")] = 5.0  # a value the model never saw
    x[:, NAMES.index("constant")] = 2.0
    drifted = _reports(profile, 1000, x, p)[0].drifted
    assert {"discrete", "constant"} <= set(drifted)


def test_skipped_columns_are_not_tested_and_leave_the_others_their_share_of_alpha(profile) -> None:
    """The worker skips the clock's features: a window of a few hours holds one weekday whatever the data."""
    x, p = rows(1000, np.random.default_rng(8), shift=3.0)  # "normal" moved by 3 sd: drift by any measure
    x[:, NAMES.index("discrete")] = 5.0
    report = DriftWindow("m", "1", profile, 1000, skip={"normal"}).update(x, p, np.arange(1000))[0]
    assert "normal" not in report.columns and "discrete" in report.drifted
    # five columns and the prediction tested instead of six and the prediction: each gets a larger share
    full = DriftWindow("m", "1", profile, 1000).update(x, p, np.arange(1000))[0]
    assert "normal" in full.drifted
    skewed = profile.columns["skewed"]
    assert report.columns["skewed"].psi_threshold <= full.columns["skewed"].psi_threshold
    assert report.columns["skewed"].ks_threshold < full.columns["skewed"].ks_threshold
    assert skewed.kind == "numeric"


def _clustered(n: int, rng: np.random.Generator, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows in runs of 10 sharing their "normal" and "skewed" values, like a session's rows sharing its user."""
    x, p = rows(n, rng)
    x[:, 0] = np.repeat(rng.normal(shift, 1, n // 10), 10)
    x[:, 1] = np.repeat(rng.lognormal(0, 1, n // 10), 10)
    return x, p


def test_calibration_absorbs_a_streams_own_dependence_and_still_finds_a_shift() -> None:
    """Measured (5 seeds x 200 windows of 250 rows): alarms in 99.9 % of unchanged windows with the
    thresholds for independent rows, 0.2 % after calibrating on 8 windows; a 1 sd shift of "normal"
    found 0-15 windows after it (10 seeds, median 0)."""
    prof = build_profile(NAMES, *_clustered(20_000, np.random.default_rng(1)))
    alarms = {0: [], 8: []}
    for cal in alarms:
        for seed in range(3):
            x, p = _clustered(250 * 100, np.random.default_rng(50 + seed))
            reports = DriftWindow("m", "1", prof, 250, calibrate=cal).update(x, p, np.arange(len(x)))
            assert not any(r.drifted for r in reports[:cal])  # calibration windows never alarm
            alarms[cal] += [bool(r.drifted) for r in reports[cal:]]
    assert np.mean(alarms[0]) > 0.5  # the dependence alone: nearly every window
    assert np.mean(alarms[8]) <= 0.02  # alpha is 0.01; margin for the fit from 8 windows
    delays = []
    for seed in range(6):
        rng = np.random.default_rng(200 + seed)
        xa, pa = _clustered(250 * 20, rng)
        xb, pb = _clustered(250 * 20, rng, shift=1.0)
        window = DriftWindow("m", "1", prof, 250, calibrate=8)
        reports = window.update(np.vstack([xa, xb]), np.concatenate([pa, pb]), np.arange(10_000))
        delays.append(next(i for i, r in enumerate(reports) if i >= 20 and "normal" in r.drifted) - 20)
    assert sorted(delays)[len(delays) // 2] <= 3, delays


def test_windows_span_batches_and_keep_their_times(profile) -> None:
    x, p = rows(250, np.random.default_rng(8))
    w = DriftWindow("click", "4", profile, 100)
    assert w.update(x[:60], p[:60], np.arange(60) + 1000) == []
    reports = w.update(x[60:], p[60:], np.arange(60, 250) + 1000)
    assert [(r.n, r.window_start_ms, r.window_end_ms) for r in reports] == [(100, 1000, 1099), (100, 1100, 1199)]
    assert w.n == 50
    whole = DriftWindow("click", "4", profile, 100).update(x, p, np.arange(250) + 1000)
    assert [repr(r.columns) for r in whole] == [repr(r.columns) for r in reports]  # nan != nan, reprs match


def _calibrated(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    p = rng.beta(2, 5, n)
    return (rng.random(n) < p).astype(float), p


def _rises(det: LossDrift, y: np.ndarray, p: np.ndarray) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(y, p, strict=True)) if det.update(float(a), float(b))]


def test_loss_detector_stays_quiet_on_a_calibrated_stationary_stream() -> None:
    for seed in range(3):
        y, p = _calibrated(100_000, np.random.default_rng(seed))
        assert _rises(LossDrift("binary"), y, p) == [], seed
    rng = np.random.default_rng(9)
    pr = rng.gamma(2, 10, 100_000)
    assert len(_rises(LossDrift("regression"), pr + rng.normal(0, 5, len(pr)), pr)) <= 2


def test_loss_detector_fires_when_the_label_relation_changes() -> None:
    onset = 5000
    for seed in range(10):
        rng = np.random.default_rng(1000 + seed)
        y, p = _calibrated(12_000, rng)
        # from onset on, outcomes follow a shuffled score: the base rate stays, the relation is gone
        q = rng.permutation(p[onset:])
        y[onset:] = (rng.random(len(q)) < q).astype(float)
        rises = _rises(LossDrift("binary"), y, p)
        assert rises and rises[0] >= onset, seed
        assert rises[0] - onset <= 1500, seed


def test_loss_detector_fires_on_a_regression_offset_and_ignores_an_improvement() -> None:
    rng = np.random.default_rng(11)
    pr = rng.gamma(2, 10, 8000)
    y = pr + rng.normal(0, 5, len(pr))
    y[4000:] += 5.0  # one noise sd
    det = LossDrift("regression")
    rises = _rises(det, y, pr)
    assert rises and 4000 <= rises[0] <= 4300
    better = LossDrift("regression")
    y2 = pr + rng.normal(0, 5, len(pr))
    y2[4000:] = pr[4000:] + rng.normal(0, 1, 4000)  # the loss falls: not drift
    assert _rises(better, y2, pr) == []


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_a_windows_report_equals_column_drift_of_each_column(shift: float) -> None:
    """The window computes all columns at once; column_drift, one column from its own counts, agrees."""
    x, p = rows(5000, np.random.default_rng(21))
    prof = build_profile(NAMES, x, p)
    w = DriftWindow("m", "1", prof, 1000)
    lx, lp = rows(700, np.random.default_rng(22), shift=shift, missing=0.2)
    w.update(lx, lp, np.arange(700))
    got = w.report()
    tests = sum(2 if c.kind == "numeric" else 1 for c in prof.columns.values())
    live = {**{n: lx[:, i] for i, n in enumerate(NAMES)}, "prediction": lp}
    for name, ref in prof.columns.items():
        alpha = 0.01 * (2 if ref.kind == "numeric" else 1) / tests
        want = column_drift(ref, ref.bin_counts(live[name]), ref.cdf_counts(live[name]), alpha, 0.1)
        have = got.columns[name]
        assert have.psi == pytest.approx(want.psi, rel=1e-12, abs=1e-15), name
        assert have.psi_threshold == want.psi_threshold, name
        assert (math.isnan(have.ks) and math.isnan(want.ks)) or have.ks == pytest.approx(want.ks, abs=1e-15), name
        assert (math.isnan(have.ks_threshold) and math.isnan(want.ks_threshold)) or have.ks_threshold == pytest.approx(
            want.ks_threshold, rel=1e-15
        ), name
