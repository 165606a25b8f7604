"""``python -m stream report``: the monitoring report, one self-contained HTML file.

It reads what the workers publish to ClickHouse (``model_quality`` and ``feature_drift``,
docs/monitoring.md) and the registry's alias history, and draws per model:

* online quality per model version over time (AUC for classifiers, R² for regression), with a
  vertical line at each promotion or rollback;
* drift per feature over time, as PSI over its window-size threshold (above 1 is an alarm), and
  a table of the windows that alarmed.

The charts are inline SVG, so the file opens anywhere without a network or a plotting package.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stream.clickhouse import ClickHouse

#: the headline metric per task, and its axis
HEADLINE = {"binary": ("auc", "online AUC"), "regression": ("r2", "online R²")}
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

Point = tuple[float, float]


@dataclass(frozen=True)
class Marker:
    """A moment drawn as a vertical line: a promotion or a rollback of ``model``."""

    time_ms: int
    model: str
    label: str


@dataclass
class ReportData:
    quality: pd.DataFrame  # model_quality FINAL rows
    drift: pd.DataFrame  # feature_drift FINAL rows
    markers: list[Marker] = field(default_factory=list)


def load(ch: ClickHouse, markers: Sequence[Marker] = ()) -> ReportData:
    """The report's rows: ``model_quality`` and ``feature_drift`` (``FINAL``: a window published again counts once)."""
    quality = ch.query_df(
        "SELECT model_name, model_version, toUnixTimestamp64Milli(window_end) AS window_end_ms, pairs, "
        "auc, log_loss, ece, r2, mae FROM {db}.model_quality FINAL ORDER BY window_end_ms"
    )
    drift = ch.query_df(
        "SELECT model_name, model_version, toUnixTimestamp64Milli(window_end) AS window_end_ms, feature, rows, "
        "psi, psi_threshold, ks, ks_threshold, drifted FROM {db}.feature_drift FINAL ORDER BY window_end_ms"
    )
    return ReportData(quality, drift, list(markers))


def _time(ms: Any) -> str:
    return dt.datetime.fromtimestamp(float(ms) / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi - lo < 1e-9:
        return lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def svg_lines(
    series: Mapping[str, Sequence[Point]],
    *,
    y_label: str,
    markers: Sequence[tuple[float, str]] = (),
    hline: float | None = None,
    width: int = 760,
    height: int = 260,
) -> str:
    """A line chart of ``series`` (label -> (epoch ms, value) points), as an inline ``<svg>``.

    Each series is a ``<polyline>`` with one vertex per finite point (NaN points are left out);
    ``markers`` are dashed vertical lines with a label, ``hline`` a dotted horizontal one.
    """
    pts = [(x, y) for s in series.values() for x, y in s if math.isfinite(y)]
    xs = [x for x, _ in pts] + [m for m, _ in markers]
    ys = [y for _, y in pts] + ([hline] if hline is not None else [])
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1.0
    y0, y1 = _nice_range(min(ys, default=0.0), max(ys, default=1.0))
    left, right, top, bottom = 56, 150, 12, 36
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" font-size="10" text-anchor="end">{y:.3g}</text>')
    for i in range(3):
        x = x0 + (x1 - x0) * i / 2
        anchor = ("start", "middle", "end")[i]
        out.append(
            f'<text x="{sx(x):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="{anchor}">{_time(x)}</text>'
        )
    out.append(
        f'<text x="12" y="{top + ph / 2:.1f}" font-size="11" transform="rotate(-90 12 {top + ph / 2:.1f})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>'
    )
    if hline is not None:
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(hline):.1f}" y2="{sy(hline):.1f}" '
            'stroke="#666" stroke-dasharray="2,3"/>'
        )
    for x, label in markers:
        out.append(
            f'<line class="marker" x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + ph}" '
            'stroke="#000" stroke-dasharray="5,4"/>'
        )
        out.append(f'<text x="{sx(x) + 3:.1f}" y="{top + 10}" font-size="10">{html.escape(label)}</text>')
    for i, (label, points) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        finite = [(x, y) for x, y in points if math.isfinite(y)]
        if finite:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in finite)
            out.append(
                f'<polyline data-series="{html.escape(label)}" points="{coords}" fill="none" '
                f'stroke="{color}" stroke-width="1.6"/>'
            )
        ly = top + 14 * i + 8
        out.append(f'<rect x="{left + pw + 10}" y="{ly - 8}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{left + pw + 24}" y="{ly + 1}" font-size="11">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _fmt(v: Any) -> str:
    """A number with 3 decimals; empty for a null (KS of a discrete column)."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"


def _task(rows: pd.DataFrame) -> str:
    return "binary" if rows["auc"].notna().any() or rows["log_loss"].notna().any() else "regression"


def _quality_section(model: str, rows: pd.DataFrame, markers: Sequence[Marker]) -> str:
    metric, label = HEADLINE[_task(rows)]
    series = {
        f"version {version}": list(zip(g["window_end_ms"].astype(float), g[metric].astype(float), strict=True))
        for version, g in rows.groupby("model_version", sort=True)
    }
    lines = [(m.time_ms, m.label) for m in markers if m.model == model]
    last = rows.sort_values("window_end_ms").groupby("model_version").tail(1)
    table = "".join(
        f"<tr><td>{html.escape(str(r.model_version))}</td><td>{_time(r.window_end_ms)}</td><td>{r.pairs}</td>"
        f"<td>{getattr(r, metric):.4f}</td></tr>"
        for r in last.itertuples()
    )
    return (
        f"<h3>{label} per model version</h3>{svg_lines(series, y_label=label, markers=lines)}"
        f"<table><tr><th>version</th><th>last window</th><th>pairs</th><th>{metric}</th></tr>{table}</table>"
    )


def _drift_section(model: str, rows: pd.DataFrame, markers: Sequence[Marker]) -> str:
    rows = rows.assign(ratio=rows["psi"] / rows["psi_threshold"])
    # every feature that ever alarmed, and the prediction; the chart would not read with all of them
    shown = sorted(set(rows.loc[rows["drifted"] == 1, "feature"]) | {"prediction"} & set(rows["feature"]))
    series = {}
    for feature in shown:
        g = rows[rows["feature"] == feature].groupby("window_end_ms")["ratio"].max()
        series[feature] = list(zip(g.index.astype(float), g.to_numpy(dtype=float), strict=True))
    lines = [(m.time_ms, m.label) for m in markers if m.model == model]
    alarms = rows[rows["drifted"] == 1].sort_values("window_end_ms")
    table = "".join(
        f"<tr><td>{_time(r.window_end_ms)}</td><td>{html.escape(str(r.model_version))}</td>"
        f"<td>{html.escape(str(r.feature))}</td><td>{r.rows}</td><td>{r.psi:.3f}</td><td>{r.psi_threshold:.3f}</td>"
        f"<td>{_fmt(r.ks)}</td></tr>"
        for r in alarms.itertuples()
    )
    return (
        f"<h3>Drift: PSI / threshold (above 1 alarms), features that alarmed and the prediction</h3>"
        f"{svg_lines(series, y_label='PSI / threshold', markers=lines, hline=1.0)}"
        f"<p>{len(alarms)} alarmed (window, feature) pairs of {len(rows)}.</p>"
        f"<table><tr><th>window end</th><th>version</th><th>feature</th><th>rows</th><th>PSI</th>"
        f"<th>threshold</th><th>KS</th></tr>{table}</table>"
    )


def render(data: ReportData, title: str = "publisher-stream monitoring report") -> str:
    """The report as one HTML document."""
    # an empty result has no columns at all
    models = sorted({m for df in (data.quality, data.drift) if len(df) for m in df["model_name"]})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}table{border-collapse:collapse;"
        "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;font-size:12px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if not models:
        parts.append("<p>No monitoring rows yet: the workers publish them once predictions have outcomes.</p>")
    if data.markers:
        rows = "".join(
            f"<tr><td>{_time(m.time_ms)}</td><td>{html.escape(m.model)}</td><td>{html.escape(m.label)}</td></tr>"
            for m in sorted(data.markers, key=lambda m: m.time_ms)
        )
        parts.append(
            f"<h2>Promotions and rollbacks</h2><table><tr><th>time</th><th>model</th><th></th></tr>{rows}</table>"
        )
    for model in models:
        parts.append(f"<h2 id='{html.escape(model)}'>{html.escape(model)}</h2>")
        q = data.quality[data.quality["model_name"] == model] if len(data.quality) else data.quality
        if len(q):
            parts.append(_quality_section(model, q, data.markers))
        d = data.drift[data.drift["model_name"] == model] if len(data.drift) else data.drift
        if len(d):
            parts.append(_drift_section(model, d, data.markers))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(ch: ClickHouse, out: Path, markers: Sequence[Marker] = ()) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(load(ch, markers)), encoding="utf-8")
    return out


def cmd_report(args: argparse.Namespace) -> int:
    from stream.clickhouse import connect
    from stream.config import load_settings

    ch = connect(load_settings())
    try:
        path = write_report(ch, args.out)
    finally:
        ch.close()
    print(f"wrote {path}")
    return 0


def register(sub: Any) -> None:
    report = sub.add_parser("report", help="write the monitoring report (HTML: online quality, drift, promotions)")
    report.add_argument("--out", type=Path, default=Path("var/monitoring-report.html"), help="the HTML file to write")
    report.set_defaults(func=cmd_report)
