"""Drift of live features and predictions against the reference profile, and of the loss over time.

**Feature and prediction drift** (:class:`DriftWindow`): live rows are counted into the profile's
bins over tumbling windows of ``size`` rows; at the end of each window every column gets

* PSI = sum over bins of (a - e) · ln(a / e), live shares ``a`` against reference shares ``e``, both
  with half a pseudo-count per bin (an empty bin would make the log infinite); bins empty on both
  sides are left out;
* for numeric columns, KS = max |F_live - F_ref| over the profile's CDF points.

Thresholds come from each statistic's distribution when nothing changed, so they grow for small
windows instead of firing on noise:

* PSI is a symmetrised KL divergence; to second order it is Pearson's X²/n, so for a window of n rows
  against a reference of m rows, PSI ≈ (1/n + 1/m) · χ²(k - 1), k the bins the reference fills. The
  threshold is that χ² quantile at ``1 - alpha'`` times (1/n + 1/m), but never below ``min_psi``
  (default 0.1, the usual "moderate shift" level: with thousands of rows per window the null
  quantile is far below any change worth an alert). At n = 100 and 10 bins the null 99th percentile is
  about 0.2, so a fixed 0.1 fires on most unchanged windows (tests/monitoring/test_drift.py shows it).
* KS: the two-sample critical value sqrt(-ln(alpha'/2) / 2) · sqrt(1/n + 1/m) (asymptotic; for
  discrete data and on a grid of CDF points the test is conservative).
* alpha' = alpha / (number of tests in the window): a Bonferroni split over all columns and both
  statistics, so a window of unchanged data raises any alarm with probability at most ``alpha``
  (default 0.01). Windows come one after another, so alarms per day = alpha × windows per day.
* Those hold for windows of independent rows. A live stream's rows are not independent: a session
  brings several rows of one user, and who is awake depends on the hour. With ``calibrate`` = N,
  the first N windows of a model version are reported but never alarm; their PSI, per column, fits
  the law of that column's statistic on this stream (a scaled chi-square), whose quantile then
  raises the column's thresholds (:meth:`DriftWindow._calibrate`). A change already present when
  the version starts serving is absorbed into the thresholds; one after is measured against the
  reference as before.

**Loss drift** (:class:`LossDrift`): river's ADWIN on each joined prediction's loss (Brier score for
classifiers, absolute error for regression). ADWIN also fires when the loss *drops*; only a rise
is reported as drift.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from stream.monitoring.profile import PREDICTION, ColumnProfile, ReferenceProfile
from stream.monitoring.quality import Task, pointwise_loss

DEFAULT_ALPHA = 0.01
DEFAULT_MIN_PSI = 0.1


def psi(ref_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """Population stability index of live bin counts against reference bin counts (same bins)."""
    ref = np.asarray(ref_counts, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    used = (ref > 0) | (live > 0)
    ref, live = ref[used] + 0.5, live[used] + 0.5
    e, a = ref / ref.sum(), live / live.sum()
    return float(np.sum((a - e) * np.log(a / e)))


@functools.lru_cache(maxsize=4096)  # scipy's chi2.ppf costs about 1 ms; windows repeat the same arguments
def psi_threshold(n: int, m: int, bins: int, alpha: float, min_psi: float = DEFAULT_MIN_PSI) -> float:
    """PSI above which a window of ``n`` rows differs from a reference of ``m`` rows over ``bins``
    filled bins, at false-alarm probability ``alpha`` (chi-square approximation, floored at ``min_psi``)."""
    df = max(bins - 1, 1)
    from scipy.stats import chi2  # imported on first use: scipy.stats takes seconds to import, at worker start

    return max(min_psi, float(chi2.ppf(1 - alpha, df)) * (1 / max(n, 1) + 1 / max(m, 1)))


def ks_threshold(n: int, m: int, alpha: float) -> float:
    """Two-sample KS critical value at ``alpha`` for samples of ``n`` and ``m`` (asymptotic)."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt(1 / max(n, 1) + 1 / max(m, 1))


@dataclass(frozen=True)
class ColumnDrift:
    """One column's statistics in one window (``ks`` is nan for discrete columns)."""

    psi: float
    psi_threshold: float
    ks: float
    ks_threshold: float
    #: a window of the version's calibration (see :class:`DriftWindow`): reported, never an alarm
    calibrating: bool = False

    @property
    def drifted(self) -> bool:
        if self.calibrating:
            return False
        return self.psi > self.psi_threshold or (not math.isnan(self.ks) and self.ks > self.ks_threshold)


@dataclass(frozen=True)
class DriftReport:
    """One window's drift of every profiled column."""

    model: str
    version: str
    window_start_ms: int
    window_end_ms: int
    n: int
    columns: dict[str, ColumnDrift]

    @property
    def drifted(self) -> list[str]:
        """The columns over their threshold."""
        return [c for c, d in self.columns.items() if d.drifted]


def column_drift(
    ref: ColumnProfile, live_bins: np.ndarray, live_cdf: np.ndarray, alpha: float, min_psi: float
) -> ColumnDrift:
    """PSI and (numeric columns) KS of accumulated live counts; ``alpha`` is this column's share."""
    n = int(live_bins.sum())
    a_psi = alpha / 2 if ref.kind == "numeric" else alpha
    value = psi(ref.counts, live_bins)
    thr = psi_threshold(n, ref.rows, int((ref.counts > 0).sum()), a_psi, min_psi)
    if ref.kind != "numeric":
        return ColumnDrift(value, thr, float("nan"), float("nan"))
    n_finite = int(live_bins[:-1].sum())
    m_finite = ref.rows - int(ref.counts[-1])
    if n_finite == 0 or m_finite == 0 or len(ref.cdf_x) == 0:
        return ColumnDrift(value, thr, float("nan"), float("nan"))
    ks = float(np.max(np.abs(live_cdf / n_finite - ref.cdf_p)))
    return ColumnDrift(value, thr, ks, ks_threshold(n_finite, m_finite, alpha / 2))


class DriftWindow:
    """Tumbling windows of ``size`` live rows of one model version, compared with its profile.

    ``update`` takes a batch (a feature matrix in the profile's feature order, the predictions, the
    event times) and returns the reports of the windows it completed. Columns in ``skip`` are not
    tested (nor counted in the Bonferroni split): the worker leaves out the clock's features
    (:data:`stream.state.features.CLOCK_FEATURES`), whose share in a window of a few hours is set
    by the hours it spans. Only bin counts are kept, so
    memory does not grow with the window. The counts of all columns sit in one padded matrix, so a
    report computes every column's PSI and KS with a few array operations (:func:`column_drift`,
    one column at a time, gives the same values; a test checks it).
    """

    def __init__(
        self,
        model: str,
        version: str,
        profile: ReferenceProfile,
        size: int = 1000,
        *,
        alpha: float = DEFAULT_ALPHA,
        min_psi: float = DEFAULT_MIN_PSI,
        skip: Collection[str] = (),
        calibrate: int = 0,
    ) -> None:
        if size < 10:
            raise ValueError(f"drift window size {size} is too small; expected at least 10 rows")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha {alpha} is not a probability in (0, 1)")
        self.model, self.version, self.profile, self.size = model, str(version), profile, size
        self.min_psi = min_psi
        checked = {name: c for name, c in profile.columns.items() if name not in skip}
        tests = sum(2 if c.kind == "numeric" else 1 for c in checked.values())
        self._alpha = {name: alpha * (2 if c.kind == "numeric" else 1) / tests for name, c in checked.items()}
        # Static per-column arrays, padded to the widest column: reference counts (missing last of
        # each row's used part), CDF reference shares (padded with 1: no difference), and sizes.
        self._names = list(checked)
        self._index = {name: i for i, name in enumerate(profile.features)}  # column of x
        refs = [profile.columns[n] for n in self._names]
        self._nb = np.array([len(c.counts) for c in refs])
        self._nc = np.array([len(c.cdf_x) for c in refs])
        self._ref = np.zeros((len(refs), int(self._nb.max(initial=1))))
        self._cdf_p = np.ones((len(refs), int(self._nc.max(initial=1))))
        for j, c in enumerate(refs):
            self._ref[j, : len(c.counts)] = c.counts
            self._cdf_p[j, : len(c.cdf_x)] = c.cdf_p
        self._m = np.array([c.rows for c in refs])
        self._m_finite = self._m - np.array([int(c.counts[-1]) for c in refs])
        self._filled = (self._ref > 0).sum(axis=1)
        self._numeric = np.array([c.kind == "numeric" for c in refs])
        #: calibration: per column, each calibration window's PSI (and KS) over its i.i.d. expectation
        self.calibrate = calibrate
        self._ratios: list[np.ndarray] = []
        self.psi_scale = np.ones(len(refs))
        self.ks_scale = np.ones(len(refs))
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self._start: int | None = None
        self._end = 0
        self._live = np.zeros(self._ref.shape, dtype=np.int64)
        self._cdf = np.zeros(self._cdf_p.shape, dtype=np.int64)

    def update(self, x: np.ndarray, predictions: np.ndarray | None, t_ms: np.ndarray) -> list[DriftReport]:
        x = np.asarray(x, dtype=np.float64)
        t_ms = np.asarray(t_ms, dtype=np.int64)
        features = self.profile.features
        if x.ndim != 2 or x.shape[1] != len(features):
            raise ValueError(f"feature batch has shape {x.shape}; expected (rows, {len(features)})")
        reports = []
        i = 0
        while i < len(x):
            j = min(len(x), i + self.size - self.n)
            self._add(x[i:j], None if predictions is None else np.asarray(predictions)[i:j], t_ms[i:j])
            if self.n == self.size:
                reports.append(self.report())
                if self.calibrating:
                    self._calibrate(reports[-1])
                self._reset()
            i = j
        return reports

    def _add(self, x: np.ndarray, p: np.ndarray | None, t: np.ndarray) -> None:
        columns = self.profile.columns
        for j, name in enumerate(self._names):
            if name == PREDICTION:
                if p is None:
                    continue
                values = p
            else:
                values = x[:, self._index[name]]
            ref = columns[name]
            self._live[j, : self._nb[j]] += ref.bin_counts(values)
            if ref.kind == "numeric":
                self._cdf[j, : self._nc[j]] += ref.cdf_counts(values)
        self.n += len(x)
        if len(t):
            self._start = int(t.min()) if self._start is None else min(self._start, int(t.min()))
            self._end = max(self._end, int(t.max()))

    @property
    def calibrating(self) -> bool:
        return len(self._ratios) < self.calibrate

    def _calibrate(self, r: DriftReport) -> None:
        """Fold one calibration window in; after the last, fix each column's threshold inflation.

        The thresholds assume a window of independent rows. A live window is not: a session brings
        several rows of one user, and which users are awake depends on the hour, so the statistics of
        unchanged data are larger and vary more, by how much depends on the column. Per column, the
        calibration windows' ratios r = PSI / ((bins - 1)(1/n + 1/m)) (1 on average for independent
        rows) are matched to a scaled chi-square, r ~ c chi2(v) / v (c their mean, v = 2 c^2 / their
        variance, between 1 and bins - 1: Satterthwaite's approximation). The column's PSI threshold
        is then multiplied by that law's 1 - alpha' quantile over the independent one's, and its KS
        threshold by the square root (never below 1).
        """
        psi_r = np.full(len(self._names), np.nan)
        for j, name in enumerate(self._names):
            c = r.columns.get(name)
            if c is not None:
                psi_r[j] = c.psi / (max(int(self._filled[j]) - 1, 1) * (1 / r.n + 1 / int(self._m[j])))
        self._ratios.append(psi_r)
        if self.calibrating:
            return
        from scipy.stats import chi2

        ratios = np.array(self._ratios)
        for j, name in enumerate(self._names):
            rj = ratios[:, j][~np.isnan(ratios[:, j])]
            if len(rj) < 2:
                continue
            nu0 = max(int(self._filled[j]) - 1, 1)
            mean, var = float(rj.mean()), float(rj.var(ddof=1))
            nu = nu0 if var <= 0 else min(float(nu0), max(1.0, 2 * mean * mean / var))
            a = self._alpha[name] / (2 if self._numeric[j] else 1)
            fitted = mean * float(chi2.ppf(1 - a, nu)) / nu
            independent = float(chi2.ppf(1 - a, nu0)) / nu0
            self.psi_scale[j] = max(1.0, fitted / independent)
        self.ks_scale = self.psi_scale.copy()

    def report(self) -> DriftReport:
        """The statistics of the rows so far in this window (columns with no live rows are left out)."""
        live = self._live.astype(np.float64)
        n = live.sum(axis=1)
        # PSI of every column at once: bins empty on both sides are left out, half a pseudo-count each
        used = (self._ref > 0) | (live > 0)
        ref = np.where(used, self._ref + 0.5, 0.0)
        cur = np.where(used, live + 0.5, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            e = ref / ref.sum(axis=1, keepdims=True)
            a = cur / cur.sum(axis=1, keepdims=True)
            psis = np.where(used, (a - e) * np.log(a / e), 0.0).sum(axis=1)
        # KS of numeric columns over their CDF points (padding: live share 1 = reference share 1)
        missing = live[np.arange(len(live)), self._nb - 1]
        n_finite = n - missing
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(np.arange(self._cdf.shape[1]) < self._nc[:, None], self._cdf / n_finite[:, None], 1.0)
            ks = np.abs(share - self._cdf_p).max(axis=1)
        cols = {}
        calibrating = self.calibrating
        for j, name in enumerate(self._names):
            if n[j] <= 0:
                continue
            numeric = bool(self._numeric[j])
            alpha = self._alpha[name]
            a_psi = alpha / 2 if numeric else alpha
            thr = psi_threshold(int(n[j]), int(self._m[j]), int(self._filled[j]), a_psi, self.min_psi)
            thr = max(self.min_psi, thr * float(self.psi_scale[j]))
            if not numeric or n_finite[j] == 0 or self._m_finite[j] == 0 or self._nc[j] == 0:
                cols[name] = ColumnDrift(float(psis[j]), thr, float("nan"), float("nan"), calibrating)
            else:
                kt = ks_threshold(int(n_finite[j]), int(self._m_finite[j]), alpha / 2) * math.sqrt(self.ks_scale[j])
                cols[name] = ColumnDrift(float(psis[j]), thr, float(ks[j]), kt, calibrating)
        return DriftReport(self.model, self.version, self._start or 0, self._end, self.n, cols)


class LossDrift:
    """ADWIN on one model version's per-prediction loss; ``update`` says whether the loss rose.

    ``delta`` is ADWIN's confidence (river's default 0.002); it checks every ``clock`` pairs.
    """

    def __init__(self, task: Task, delta: float = 0.002, clock: int = 32) -> None:
        from river.drift import ADWIN

        self.task = task
        self._adwin = ADWIN(delta=delta, clock=clock)
        #: rises detected (ADWIN's detections in the other direction are not counted)
        self.detections = 0

    @property
    def mean_loss(self) -> float:
        return float(self._adwin.estimation)

    def update(self, y: float, p: float) -> bool:
        before = self._adwin.estimation
        self._adwin.update(pointwise_loss(self.task, y, p))
        if self._adwin.drift_detected and self._adwin.estimation > before:
            self.detections += 1
            return True
        return False
