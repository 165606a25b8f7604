"""Off-policy evaluation from the worker's own logged decisions (``python -m stream ope``).

A decision, streamed (policy ``thompson``, at an ``ad_request``) or made by ``POST /v1/decide``
(policy ``thompson-api``), is logged to ClickHouse's ``bandit_decisions`` with the propensity of
the placement it chose. Its outcome is what the ad server reports as events, keyed like the
decision by user and request id (``decision_id`` is ``decision_id(policy, user_id, request_id)``,
docs/api.md "Decisions and their outcomes"):

* an ``ad_impression`` with the decision's ``user_id``, ``request_id`` and ``placement``: the
  decided ad was shown. A decision without one was not shown (yet), and one shown in another
  placement was not followed: neither is in the log (their propensity says nothing of what was
  shown); both are counted.
* an ``ad_click`` with the same three, at most the click join window after the impression (as
  the worker's bandit credits clicks): reward 1, else 0.

The log then gives, per decision, (context, placement, propensity, reward), and the estimators of
:mod:`stream.bandits.ope` value other policies from it with those propensities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from stream.tools.backtest.evaluate import OpeRow, off_policy

#: the columns :func:`decision_log` needs of the decisions and of the outcome events
DECISION_COLUMNS = [
    "decision_id",
    "request_id",
    "user_id",
    "context",
    "placement",
    "propensity",
    "policy",
    "event_time",
]
OUTCOME_COLUMNS = ["event_type", "user_id", "request_id", "placement", "event_time"]


@dataclass
class DecisionLog:
    """The decisions shown as decided, with their rewards, and what was left out."""

    #: one row per decision shown: DECISION_COLUMNS + ``click`` (0/1) and ``device_type`` (= context)
    rows: pd.DataFrame
    decisions: int
    not_shown: int
    other_placement: int


def decision_log(decisions: pd.DataFrame, outcomes: pd.DataFrame, click_window_ms: int) -> DecisionLog:
    """The logged decisions joined with their ad outcomes (see the module docstring).

    >>> d = pd.DataFrame([["d1", "r1", "u", "mobile", "sidebar", 0.4, "thompson-api", 0],
    ...                   ["d2", "r2", "u", "mobile", "footer", 0.2, "thompson-api", 0]], columns=DECISION_COLUMNS)
    >>> o = pd.DataFrame([["ad_impression", "u", "r1", "sidebar", 10], ["ad_click", "u", "r1", "sidebar", 20]],
    ...                  columns=OUTCOME_COLUMNS)
    >>> log = decision_log(d, o, 600_000)
    >>> log.rows[["decision_id", "propensity", "click"]].values.tolist(), log.not_shown
    ([['d1', 0.4, 1.0]], 1)
    """
    dec = decisions[DECISION_COLUMNS].drop_duplicates("decision_id")
    out = outcomes[OUTCOME_COLUMNS]
    key = ["user_id", "request_id"]
    imps = (
        out[out.event_type == "ad_impression"]
        .sort_values("event_time")
        .drop_duplicates(key)[[*key, "placement", "event_time"]]
        .rename(columns={"placement": "shown", "event_time": "shown_at"})
    )
    joined = dec.merge(imps, on=key, how="left")
    shown = joined[joined.shown.notna()]
    followed = shown[shown.shown == shown.placement].drop(columns=["shown"])
    clicks = out[out.event_type == "ad_click"][[*key, "placement", "event_time"]].rename(
        columns={"event_time": "clicked_at"}
    )
    c = followed.merge(clicks, on=[*key, "placement"], how="left")
    c["hit"] = (c.clicked_at >= c.shown_at) & (c.clicked_at - c.shown_at <= click_window_ms)
    clicked = set(c.loc[c.hit, "decision_id"])
    rows = followed.drop(columns=["shown_at"]).reset_index(drop=True)
    rows["click"] = rows.decision_id.isin(clicked).astype(float)
    rows["device_type"] = rows.context.astype(str)
    return DecisionLog(
        rows=rows,
        decisions=len(dec),
        not_shown=int(joined.shown.isna().sum()),
        other_placement=len(shown) - len(followed),
    )


def decision_policies(placements: Sequence[str], contexts: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Target policies over the log's contexts: each fixed placement, and uniform.

    >>> decision_policies(["a", "b"], ["mobile"])["always b"]["mobile"].tolist()
    [0.0, 1.0]
    """
    k = len(placements)
    pols: dict[str, dict[str, np.ndarray]] = {
        f"always {a}": {c: np.eye(k)[i] for c in contexts} for i, a in enumerate(placements)
    }
    pols["uniform"] = {c: np.full(k, 1.0 / k) for c in contexts}
    return pols


def decision_ope(log: DecisionLog, placements: Sequence[str]) -> list[OpeRow]:
    """IPS and SNIPS of :func:`decision_policies` from ``log`` with its logged propensities."""
    rows = log.rows[log.rows.placement.isin(list(placements))]
    if rows.empty:
        return []
    contexts = sorted(set(rows.device_type))
    return off_policy(rows, placements, decision_policies(placements, contexts), None)


def read_decision_log(ch: Any, policy: str | None, click_window_ms: int, since_ms: int | None = None) -> DecisionLog:
    """:func:`decision_log` of the decisions in ClickHouse (of ``policy``, or all; decided since ``since_ms``)."""
    where = ["1"]
    params: dict[str, Any] = {}
    if policy is not None:
        where.append("policy = {policy:String}")
        params["policy"] = policy
    if since_ms is not None:
        where.append("decided_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')")
        params["since"] = since_ms
    cond = " AND ".join(where)
    decisions = ch.query_df(
        "SELECT decision_id, request_id, user_id, toString(context) AS context, toString(placement) AS placement, "
        "propensity, toString(policy) AS policy, toUnixTimestamp64Milli(event_time) AS event_time "
        f"FROM {{db}}.bandit_decisions FINAL WHERE {cond}",
        params=params,
    )
    outcomes = ch.query_df(
        "SELECT toString(event_type) AS event_type, user_id, request_id, toString(placement) AS placement, "
        "toUnixTimestamp64Milli(event_time) AS event_time FROM {db}.events FINAL "
        "WHERE event_type IN ('ad_impression', 'ad_click') AND (user_id, request_id) IN "
        f"(SELECT user_id, request_id FROM {{db}}.bandit_decisions WHERE {cond})",
        params=params,
    )
    if decisions.empty:
        decisions = pd.DataFrame(columns=DECISION_COLUMNS)
    if outcomes.empty:
        outcomes = pd.DataFrame(columns=OUTCOME_COLUMNS)
    return decision_log(decisions, outcomes, click_window_ms)


def summary(log: DecisionLog, rows: Sequence[OpeRow], policy: str | None) -> str:
    """The log's size and each policy's estimates, as text."""
    lines = [
        f"decisions{'' if policy is None else f' of policy {policy}'}: {log.decisions}; shown as decided: "
        f"{len(log.rows)} ({int(log.rows.click.sum()) if len(log.rows) else 0} clicked); not shown: "
        f"{log.not_shown}; shown in another placement: {log.other_placement}",
    ]
    if len(log.rows):
        lines.append(f"logging policy's own value (clicks per shown decision): {log.rows.click.mean():.5f}")
    lines.append("| policy | IPS | ± se | SNIPS | ± se | effective n |")
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        lines.append(
            f"| {r.policy} | {r.ips.value:.5f} | {r.ips.stderr:.5f} | {r.snips.value:.5f} | "
            f"{r.snips.stderr:.5f} | {r.ips.n_effective:.1f} |"
        )
    return "\n".join(lines)


def cmd_ope(args: Any) -> int:
    from stream.clickhouse import connect
    from stream.config import load_settings

    settings = load_settings()
    since = None if args.since is None else int((pd.Timestamp.now("UTC").timestamp() - args.since) * 1000)
    ch = connect(settings, apply_schema=False)
    try:
        log = read_decision_log(ch, args.policy or None, settings.click_join_window_ms, since)
    finally:
        ch.close()
    print(summary(log, decision_ope(log, settings.placements), args.policy or None))
    return 0


def register(sub: Any) -> None:
    """Add ``ope`` to the CLI (called by :func:`stream.cli.build_parser`)."""
    from stream import arguments

    p = sub.add_parser(
        "ope", help="off-policy estimates from the worker's logged decisions and their ad outcomes (ClickHouse)"
    )
    p.add_argument(
        "--policy",
        default="thompson-api",
        help="the logging policy's decisions (default thompson-api: POST /v1/decide; thompson: streamed; '' all)",
    )
    p.add_argument("--since", type=arguments.duration, help="decisions made in the last DURATION, like 7d")
    p.set_defaults(func=cmd_ope)
