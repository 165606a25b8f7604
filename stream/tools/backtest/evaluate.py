"""Backtest evaluation: model quality against labels realized later, bandit policies, OPE.

Labels come from the window's own events (the same definitions as batch training and the
simulator, ``stream/state/labels.py``); the oracle columns come from the simulator's truth
tables when the window is a simulated dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd

from stream.bandits.ope import Estimate, ips, replay, snips
from stream.bandits.thompson import EpsilonGreedyPolicy, Policy, ThompsonPolicy, ThompsonSampling, simulate
from stream.state.labels import CHURN_HORIZON_MS, DAY_MS, engagement_score


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import r2_score

    return float(r2_score(y, p)) if len(y) > 1 else float("nan")


def predictions_frame(predictions: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per prediction id (duplicates of an at-least-once run dropped)."""
    df = pd.DataFrame(
        list(predictions),
        columns=[
            "prediction_id",
            "model_name",
            "event_id",
            "user_id",
            "session_id",
            "article_id",
            "event_time",
            "score",
        ],
    )
    return df.drop_duplicates("prediction_id")


def realized_labels(events: pd.DataFrame, window_end_ms: int) -> dict[str, pd.DataFrame]:
    """Labels per scored event: click (impression), engagement (session_start), churn (session_end).

    * click: an ``article_click`` of the same session and article at or after the impression;
    * engagement: :func:`~stream.state.labels.session_engagement` of the session's events;
    * churn: no event of the user within 30 days after the session_end; only where those 30 days
      lie inside the window (else the label is not realized yet and the row is left out).
    """
    ev = events.drop_duplicates("event_id")
    out: dict[str, pd.DataFrame] = {}
    imp = ev[ev.event_type == "article_impression"][["event_id", "session_id", "article_id", "event_time"]]
    clicks = ev[ev.event_type == "article_click"].groupby(["session_id", "article_id"])["event_time"].max()
    j = imp.join(clicks.rename("click_time"), on=["session_id", "article_id"])
    out["click"] = pd.DataFrame(
        {
            "event_id": j.event_id.to_numpy(),
            "label": (j.click_time.notna() & (j.click_time >= j.event_time)).to_numpy(float),
        }
    )

    counts = ev.groupby(["session_id", "event_type"]).size().unstack(fill_value=0)
    span = ev.groupby("session_id")["event_time"].agg(["min", "max"])
    ends = ev[ev.event_type == "session_end"].groupby("session_id")["duration_ms"].last()
    duration = (span["max"] - span["min"]).astype("float64")
    if len(ends):
        duration.loc[ends.dropna().index] = ends.dropna().astype("float64")
    dur = {str(k): float(v) for k, v in duration.items()}
    eng = {
        str(sid): engagement_score({str(k): int(v) for k, v in row.items() if v}, int(dur[str(sid)]))
        for sid, row in counts.to_dict("index").items()
    }
    starts = ev[ev.event_type == "session_start"][["event_id", "session_id"]]
    out["engagement"] = pd.DataFrame(
        {
            "event_id": starts.event_id.to_numpy(),
            "label": starts.session_id.map(eng).to_numpy(float),
            "session_id": starts.session_id.to_numpy(),
        }
    )

    ends_df = ev[ev.event_type == "session_end"][["event_id", "user_id", "event_time"]]
    times = ev.sort_values("event_time")[["user_id", "event_time"]]
    by_user = {u: g.to_numpy() for u, g in times.groupby("user_id")["event_time"]}
    labels = []
    for eid, uid, t in ends_df.itertuples(index=False):
        if t + CHURN_HORIZON_MS > window_end_ms:
            continue
        ts = by_user[uid]
        k = np.searchsorted(ts, t, side="right")
        nxt = ts[k] if k < len(ts) else None
        labels.append((eid, uid, t, float(nxt is None or nxt - t > CHURN_HORIZON_MS)))
    out["churn"] = pd.DataFrame(labels, columns=["event_id", "user_id", "event_time", "label"])
    return out


def oracle_scores(truth: Mapping[str, pd.DataFrame], events: pd.DataFrame, start_ms: int) -> dict[str, pd.Series]:
    """The simulator's true probabilities / expectations per scored event_id."""
    out: dict[str, pd.Series] = {}
    if "article_impressions" in truth:
        out["click"] = truth["article_impressions"].set_index("event_id")["p_click"]
    if "sessions" in truth:
        starts = events[events.event_type == "session_start"][["event_id", "session_id"]]
        exp = truth["sessions"].set_index("session_id")["expected_engagement"]
        out["engagement"] = pd.Series(starts.session_id.map(exp).to_numpy(), index=starts.event_id.to_numpy())
    if "user_daily" in truth:  # the next daily cut-off after the session_end: close to its 30-day horizon
        ends = events[events.event_type == "session_end"][["event_id", "user_id", "event_time"]]
        # matched by the cut-off's time, not its day number: a window cut from a dataset does not
        # start on the dataset's day 0
        cutoff = start_ms + ((ends.event_time.to_numpy("int64") - start_ms) // DAY_MS + 1) * DAY_MS
        daily = truth["user_daily"].set_index(["user_id", "cutoff_time"])["p_churn_30d"]
        idx = pd.MultiIndex.from_arrays([ends.user_id.to_numpy(), cutoff])
        out["churn"] = pd.Series(daily.reindex(idx).to_numpy(), index=ends.event_id.to_numpy())
    return out


@dataclass
class Quality:
    """Per model: overall and per-day metric, model vs oracle, and a calibration curve."""

    metric: dict[str, str] = field(default_factory=dict)
    overall: dict[str, dict[str, float]] = field(default_factory=dict)
    per_day: dict[str, pd.DataFrame] = field(default_factory=dict)
    calibration: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def model_quality(
    predictions: Sequence[Mapping[str, Any]],
    events: pd.DataFrame,
    truth: Mapping[str, pd.DataFrame] | None,
    start_ms: int,
    window_end_ms: int,
) -> Quality:
    """AUC (churn, click) or R² (engagement) per day and overall, next to the oracle's."""
    from sklearn.calibration import calibration_curve

    preds = predictions_frame(predictions)
    labels = realized_labels(events, window_end_ms)
    oracle = oracle_scores(truth, events, start_ms) if truth else {}
    q = Quality()
    for name, lab in labels.items():
        metric = "R2" if name == "engagement" else "AUC"
        q.metric[name] = metric
        p = preds[preds.model_name == name][["event_id", "event_time", "score"]]
        df = p.merge(lab[["event_id", "label"]], on="event_id")
        if name in oracle:
            df["oracle"] = df.event_id.map(oracle[name]).astype(float)
        if df.empty:
            q.notes.append(
                f"{name}: no realized labels in the window"
                + (" (its 30-day horizon does not fit)" if name == "churn" else "")
            )
            continue
        fn = _r2 if metric == "R2" else _auc
        df["day"] = (df.event_time - start_ms) // DAY_MS
        rows = []
        for day, g in df.groupby("day"):
            assert isinstance(day, int | np.integer)
            rows.append(
                {
                    "day": int(day),
                    "n": len(g),
                    "model": fn(g.label.to_numpy(), g.score.to_numpy()),
                    "oracle": fn(g.label.to_numpy(), g.oracle.to_numpy()) if "oracle" in g else float("nan"),
                }
            )
        q.per_day[name] = pd.DataFrame(rows)
        q.overall[name] = {
            "n": float(len(df)),
            "label_mean": float(df.label.mean()),
            "model": fn(df.label.to_numpy(), df.score.to_numpy()),
            "oracle": fn(df.label.to_numpy(), df.oracle.to_numpy()) if "oracle" in df else float("nan"),
        }
        if metric == "AUC" and df.label.nunique() == 2:
            cal = {}
            for col in ("score", "oracle"):
                if col in df and df[col].notna().all():
                    frac, mean = calibration_curve(df.label, df[col].clip(0, 1), n_bins=10, strategy="quantile")
                    cal[col] = (mean, frac)
            q.calibration[name] = pd.concat(
                {k: pd.DataFrame({"predicted": v[0], "observed": v[1]}) for k, v in cal.items()}, names=["who"]
            )
    return q


# --- bandits ------------------------------------------------------------------------------------
def ad_log(events: pd.DataFrame, truth: Mapping[str, pd.DataFrame] | None, start_ms: int) -> pd.DataFrame:
    """The site's logged ad decisions: one row per ad_impression with its context and click.

    ``day`` counts from ``start_ms`` (the window's start). ``device_type`` is the context as
    logged (``"unknown"`` where the event lacks it, as the worker's bandit reads it);
    ``true_device`` is the device the click was drawn for: the truth's where there is one, else
    the logged one. Bots are left out when the truth names them (their clicks do not depend on
    the placement).
    """
    ev = events.drop_duplicates("event_id")
    cols = ["event_id", "request_id", "user_id", "placement", "device_type", "event_time"]
    imp = ev[ev.event_type == "ad_impression"][cols]
    clicked = set(ev[ev.event_type == "ad_click"].request_id)
    device = imp.device_type.astype(object).where(imp.device_type.notna(), "unknown").astype(str)
    log = imp.assign(
        device_type=device,
        true_device=device,
        click=imp.request_id.isin(clicked).astype(float),
        day=((imp.event_time - start_ms) // DAY_MS).astype(int),
    )
    if truth and "ad_impressions" in truth:
        true_dev = truth["ad_impressions"].set_index("event_id")["device_type"]
        log["true_device"] = log.event_id.map(true_dev).fillna(log.device_type).astype(str)
    if truth and "users" in truth:
        bots = set(truth["users"].loc[truth["users"].is_bot, "user_id"])
        log = log[~log.user_id.isin(bots)]
    return log.reset_index(drop=True)


def arm_ctr(
    truth: Mapping[str, pd.DataFrame], placements: Sequence[str], start_ms: int
) -> dict[tuple[int, str], np.ndarray]:
    """(day, device) -> true CTR per placement, in ``placements`` order; ``day`` counts from ``start_ms``.

    Days are matched by time (the truth's ``day_start``), as :func:`ad_log` counts them: a window
    cut from a dataset (the demo's live days) does not start on the dataset's day 0.
    """
    arms = truth["ad_arms"]
    day = (arms.day_start.to_numpy(np.int64) - start_ms) // DAY_MS
    t = arms.assign(day=day).pivot_table(index=["day", "device_type"], columns="placement", values="ctr")
    out: dict[tuple[int, str], np.ndarray] = {}
    for key, row in t.iterrows():
        d, dev = cast(tuple[int, str], key)
        out[(int(d), str(dev))] = row[list(placements)].to_numpy(float)
    return out


@dataclass
class BanditResult:
    """Expected cumulative reward per policy over the request stream, and summary figures."""

    cumulative: pd.DataFrame  # columns: policies, index: request number
    summary: pd.DataFrame  # policy, mean reward, regret vs oracle


def bandit_comparison(
    log: pd.DataFrame,
    decisions: Sequence[Mapping[str, Any]],
    ctr: Mapping[tuple[int, str], np.ndarray],
    placements: Sequence[str],
    *,
    epsilon: float = 0.1,
    seed: int = 0,
) -> BanditResult:
    """The worker's Thompson-sampling decisions against the oracle arm, uniform and epsilon-greedy.

    Rewards are *expected* clicks (the true CTR of the chosen arm that day, for that device),
    which removes click noise from the comparison. Epsilon-greedy and an interactive Thompson
    sampler are simulated over the same requests, learning from Bernoulli clicks drawn from the
    true CTRs (seeded). The worker's sampler learned from the site's logged (uniform) traffic.
    """
    idx = {a: i for i, a in enumerate(placements)}
    chosen = {d["request_id"]: d["placement"] for d in decisions}
    rows = log[log.request_id.isin(chosen.keys())]
    n = len(rows)
    curves = {name: np.zeros(n) for name in ("oracle", "worker_thompson", "uniform")}
    rounds = []
    cols = ["request_id", "device_type", "true_device", "day"]
    for i, (rid, dev, true_dev, day) in enumerate(rows[cols].itertuples(index=False)):
        p = ctr[(int(day), str(true_dev))]
        curves["oracle"][i] = p.max()
        curves["uniform"][i] = p.mean()
        curves["worker_thompson"][i] = p[idx[chosen[rid]]]
        rounds.append((dev, p))
    rng = np.random.default_rng(seed)
    learners: dict[str, Policy] = {
        "epsilon_greedy": EpsilonGreedyPolicy(len(placements), epsilon, rng, prior=None),
        "thompson_interactive": ThompsonPolicy(ThompsonSampling(placements, seed=seed)),
    }
    for name, sim in simulate(learners, rounds, rng).items():
        curves[name] = sim.expected
    cum = pd.DataFrame({name: np.cumsum(v) for name, v in curves.items()})
    summary = pd.DataFrame(
        [
            {
                "policy": name,
                "requests": n,
                "mean_reward": float(v.mean()) if n else float("nan"),
                "cumulative_reward": float(v.sum()),
                "regret_vs_oracle": float(curves["oracle"].sum() - v.sum()),
            }
            for name, v in curves.items()
        ]
    )
    return BanditResult(cum, summary)


# --- off-policy evaluation ----------------------------------------------------------------------
def target_policies(
    placements: Sequence[str],
    ctr: Mapping[tuple[int, str], np.ndarray] | None,
) -> dict[str, dict[str, np.ndarray]]:
    """Alternative policies as ``device -> probability per placement`` (``"unknown"``: no device logged).

    Each fixed placement, a stochastic mix, and (with truth) the best placement per device on
    the window's first day (for an unknown device: the best on average over the devices).
    """
    k = len(placements)
    devices = ("desktop", "mobile", "tablet", "unknown")
    pols: dict[str, dict[str, np.ndarray]] = {}
    for i, a in enumerate(placements):
        pols[f"always {a}"] = {d: np.eye(k)[i] for d in devices}
    mix = np.full(k, 0.4 / max(k - 1, 1))
    mix[0] = 0.6
    pols[f"60% {placements[0]}, rest uniform"] = {d: mix for d in devices}
    first = {d: ctr[(0, d)] for d in devices if ctr is not None and (0, d) in ctr}
    if first:
        best = {d: np.eye(k)[int(np.argmax(c))] for d, c in first.items()}
        best["unknown"] = np.eye(k)[int(np.argmax(np.mean(list(first.values()), axis=0)))]
        pols["best per device on the first day"] = best
    return pols


@dataclass
class OpeRow:
    policy: str
    truth: float
    replay: Estimate | None
    ips: Estimate
    snips: Estimate


def off_policy(
    log: pd.DataFrame,
    placements: Sequence[str],
    policies: Mapping[str, Mapping[str, np.ndarray]],
    ctr: Mapping[tuple[int, str], np.ndarray] | None,
    logging_propensity: float | None = None,
) -> list[OpeRow]:
    """Replay / IPS / SNIPS of each policy from the logged (context, placement, click) data.

    The logging propensity is the log's ``propensity`` column when it has one (the worker's logged
    decisions, ``stream/tools/ope.py``; replay is then left out, being unbiased only under uniform
    logging), else ``logging_propensity``, by default uniform over ``placements`` (the simulator's
    site policy).
    Every estimate is of the policy's expected clicks per ad impression over the logged
    impressions (bots left out, see :func:`ad_log`). The true value (with truth) is that same
    quantity: the mean over the logged impressions of ``sum_a pi(a | logged device) *
    ctr(day, a, true device)``, ``day`` being the impression's UTC day (``ctr`` as from
    :func:`arm_ctr` with the log's start).
    """
    idx = {a: i for i, a in enumerate(placements)}
    logged_mu = "propensity" in log.columns
    uniform = logging_propensity or 1.0 / len(placements)
    mu = log.propensity.to_numpy(float) if logged_mu else np.full(len(log), uniform)
    logged = log.placement.map(idx).to_numpy()
    r = log.click.to_numpy(float)
    devices = log.device_type.to_numpy()
    out = []
    for name, pol in policies.items():
        probs = np.vstack([pol.get(d, np.full(len(placements), 1 / len(placements))) for d in devices])
        pi_logged = probs[np.arange(len(log)), logged]
        deterministic = bool(np.isin(probs, (0.0, 1.0)).all())
        rep = replay(logged, r, probs.argmax(axis=1)) if deterministic and not logged_mu else None
        truth = float("nan")
        if ctr is not None:
            true_ctr = np.vstack([ctr[(int(d), str(dev))] for d, dev in zip(log.day, log.true_device, strict=True)])
            truth = float((probs * true_ctr).sum(axis=1).mean())
        out.append(OpeRow(name, truth, rep, ips(r, mu, pi_logged), snips(r, mu, pi_logged)))
    return out
