"""Step 2: exploration report (Markdown + HTML, PNG plots): totals, range, users, missing values,
numeric statistics and distributions, a correlation heatmap, target distributions and balance."""

from __future__ import annotations

import html
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from batch_training.context import Context
from batch_training.modeling import write_json
from stream.clickhouse import EVENT_COLUMNS
from stream.state.labels import ENGAGEMENT_CAP

_SESSION_SQL = """
SELECT session_id, any(user_id) AS user_id, count() AS events,
       countIf(event_type = 'article_view') AS article_views, countIf(event_type = 'article_click') AS article_clicks,
       countIf(event_type = 'video_play') AS video_plays,
       countIf(event_type = 'newsletter_signup') AS newsletter_signups,
       countIf(event_type = 'subscription') AS subscriptions, countIf(event_type = 'ad_click') AS ad_clicks,
       (toUnixTimestamp64Milli(max(event_time)) - toUnixTimestamp64Milli(min(event_time))) / 60000 AS minutes
FROM {db}.events GROUP BY session_id
"""


def explore(ctx: Context) -> dict[str, Any]:
    ch = ctx.ch
    tot = ch.query_df(
        "SELECT count() AS events, uniqExact(user_id) AS users, uniqExact(session_id) AS sessions, "
        "uniqExact(article_id) AS articles, min(event_time) AS first, max(event_time) AS last "
        "FROM {db}.events"
    ).iloc[0]
    by_type = ch.query_df("SELECT event_type, count() AS n FROM {db}.events GROUP BY event_type ORDER BY n DESC")
    nulls = ", ".join(f"countIf(isNull({c})) AS `{c}`" for c in EVENT_COLUMNS)
    missing = ch.query_df(f"SELECT {nulls} FROM {{db}}.events").iloc[0] / max(int(tot["events"]), 1)
    sess = ch.query_df(_SESSION_SQL + " ORDER BY cityHash64(session_id) LIMIT 200000")
    num = sess.drop(columns=["session_id", "user_id"]).astype(float)
    stats = num.describe().T
    out = ctx.reports_dir / "exploration"
    out.mkdir(exist_ok=True)
    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, c in zip(axes.ravel(), num.columns, strict=False):
        ax.hist(num[c], bins=40)
        ax.set_title(c, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "distributions.png", dpi=80)
    plt.close(fig)
    corr = num.corr()
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(corr, cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(len(corr)), corr.columns, rotation=90, fontsize=8)
    ax.set_yticks(range(len(corr)), corr.columns, fontsize=8)
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(out / "correlation.png", dpi=80)
    plt.close(fig)
    targets = _targets(ctx, sess)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rates = dict(targets)
    axes[0].bar([k.split(" (")[0][:28] for k in rates], list(rates.values()))
    axes[0].set_title("label rates" if any("label rate" in k for k in rates) else "label proxies (not labels)")
    axes[0].tick_params(axis="x", labelrotation=30)
    from batch_training.datasets import engagement_labels  # same label as the engagement model

    eng = ch.query_df(
        "SELECT session_id, event_type, toUnixTimestamp64Milli(event_time) AS t, duration_ms "
        "FROM {db}.events WHERE cityHash64(session_id) % 20 = 0"
    )
    eng_values = np.array(list(engagement_labels(eng).values()))
    axes[1].hist(eng_values, bins=50)
    axes[1].set_title("session engagement (5 % of sessions)")
    fig.tight_layout()
    fig.savefig(out / "targets.png", dpi=80)
    plt.close(fig)
    targets["session engagement, mean (the engagement label, 5 % of sessions)"] = (
        float(eng_values.mean()) if len(eng_values) else float("nan")
    )
    targets[f"sessions at the engagement cap of {ENGAGEMENT_CAP:g} (share)"] = (
        float((eng_values >= ENGAGEMENT_CAP).mean()) if len(eng_values) else float("nan")
    )
    summary = {
        "events": int(tot["events"]),
        "users": int(tot["users"]),
        "sessions": int(tot["sessions"]),
        "articles": int(tot["articles"]),
        "first": str(tot["first"]),
        "last": str(tot["last"]),
        "events_by_type": dict(zip(by_type["event_type"], by_type["n"].astype(int), strict=True)),
        "missing_share": {k: float(v) for k, v in missing.items() if v > 0},
        "targets": targets,
    }
    md = _markdown(summary, stats)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_html(summary, stats))
    write_json(ctx.reports_dir / "exploration.json", summary)
    return summary


def _targets(ctx: Context, sess: pd.DataFrame) -> dict[str, float]:
    """Label rates from the training sets when built; else SQL measures named for what they measure.

    The measures are not the labels (those need the point-in-time pass of the features step): a
    user inactive for the last 30 days of the data is not a churn label, and clicks per impression
    is not the share of impressions clicked within the click window.
    """
    f = ctx.data_dir / "users.parquet"
    if f.exists():
        u = pd.read_parquet(f, columns=["churned", "converted", "high_value"])
        c = pd.read_parquet(ctx.data_dir / "clicks.parquet", columns=["clicked"])
        return {
            "churned label rate": float(u["churned"].mean()),
            "converted label rate": float(u["converted"].mean()),
            "high_value label rate": float(u["high_value"].mean()),
            "clicked label rate": float(c["clicked"].mean()),
        }
    last = ctx.ch.query_df("SELECT toUnixTimestamp64Milli(max(event_time)) AS last FROM {db}.events GROUP BY user_id")[
        "last"
    ].to_numpy()
    inactive = float((last < last.max() - 30 * 86_400_000).mean()) if len(last) else float("nan")
    conv = float((sess["newsletter_signups"] + sess["subscriptions"] > 0).mean())
    n = ctx.ch.query_df(
        "SELECT countIf(event_type = 'article_click') AS clicks, "
        "countIf(event_type = 'article_impression') AS impressions FROM {db}.events"
    ).iloc[0]
    per_impression = float(n["clicks"]) / float(n["impressions"]) if int(n["impressions"]) else float("nan")
    return {
        "users inactive in the last 30 days (share; not the churn label)": inactive,
        "sessions with a sign-up or subscription (share; not the conversion label)": conv,
        "article clicks per article impression (not the click label)": per_impression,
    }


def _markdown(s: dict[str, Any], stats: pd.DataFrame) -> str:
    lines = [
        "# Data exploration",
        "",
        f"- events: {s['events']:,}",
        f"- users: {s['users']:,}",
        f"- sessions: {s['sessions']:,}",
        f"- articles: {s['articles']:,}",
        f"- date range: {s['first']} .. {s['last']}",
        "",
        "## Events by type",
        "",
        "| type | events |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:,} |" for k, v in s["events_by_type"].items()]
    lines += ["", "## Missing values (share of events)", "", "| column | share |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in s["missing_share"].items()]
    lines += [
        "",
        "## Session statistics",
        "",
        stats.round(3).to_markdown() if _has_tabulate() else stats.round(3).to_string(),
        "",
        "## Targets",
        "",
    ]
    lines += [f"- {k}: {v:.4f}" for k, v in s["targets"].items()]
    lines += ["", "![distributions](distributions.png)", "![correlation](correlation.png)", "![targets](targets.png)"]
    return "\n".join(lines) + "\n"


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _html(s: dict[str, Any], stats: pd.DataFrame) -> str:
    body = [
        f"<h1>Data exploration</h1><p>{s['events']:,} events, {s['users']:,} users, {s['sessions']:,} sessions, "
        f"{html.escape(s['first'])} .. {html.escape(s['last'])}</p>",
        "<h2>Session statistics</h2>",
        stats.round(3).to_html(),
        "<h2>Missing values</h2>",
        pd.Series(s["missing_share"], dtype=float).to_frame("share").to_html(),
        "<h2>Targets</h2>",
        pd.Series(s["targets"]).to_frame("value").to_html(),
        '<img src="distributions.png"><img src="correlation.png"><img src="targets.png">',
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>exploration</title></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )
