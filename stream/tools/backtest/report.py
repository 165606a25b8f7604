"""The backtest report: ``report.md`` and ``report.html`` with PNG plots, in one directory."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stream.tools.backtest.evaluate import BanditResult, OpeRow, Quality
from stream.tools.backtest.run import RunOutput


@dataclass
class _Doc:
    md: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, df: pd.DataFrame) -> None:
        def fmt(v: Any) -> str:
            if isinstance(v, float):
                return "–" if math.isnan(v) else f"{v:.4g}"
            return str(v)

        cols = list(df.columns)
        lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
        self.md.append("\n".join(lines) + "\n")
        self.html.append(df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0))

    def image(self, name: str, alt: str) -> None:
        self.md.append(f"![{alt}]({name})\n")
        self.html.append(f'<img src="{html.escape(name)}" alt="{html.escape(alt)}" width="640">')


def _fig(path: Path, draw: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(
    out_dir: Path,
    *,
    title: str,
    runs: Sequence[RunOutput],
    quality: Quality | None,
    bandits: BanditResult | None,
    ope: list[OpeRow] | None,
    agreement: dict[str, Any] | None,
    context: dict[str, str],
) -> Path:
    """Write ``report.md``, ``report.html`` and the PNGs into ``out_dir``; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = _Doc()
    doc.heading(title, 1)
    doc.table(pd.DataFrame({"": list(context), "value": list(context.values())}))

    if quality is not None:
        doc.heading("Model quality against labels realized later")
        rows = [
            {
                "model": m,
                "metric": quality.metric[m],
                "n": int(v["n"]),
                "label mean": v["label_mean"],
                "model score": v["model"],
                "oracle": v["oracle"],
            }
            for m, v in quality.overall.items()
        ]
        if rows:
            doc.table(pd.DataFrame(rows))
        for note in quality.notes:
            doc.para(note)
        for name, per_day in quality.per_day.items():
            png = f"quality_{name}.png"

            def draw(ax: Any, d: pd.DataFrame = per_day, n: str = name) -> None:
                ax.plot(d.day, d.model, "o-", label="model")
                if d.oracle.notna().any():
                    ax.plot(d.day, d.oracle, "s--", label="oracle (simulator truth)")
                ax.set(xlabel="day of window", ylabel=quality.metric[n], title=f"{n}: {quality.metric[n]} per day")
                ax.legend()

            _fig(out_dir / png, draw)
            doc.heading(f"{name}: {quality.metric[name]} per day", 3)
            doc.table(per_day)
            doc.image(png, f"{name} per day")
        for name, cal in quality.calibration.items():
            png = f"calibration_{name}.png"

            def draw_cal(ax: Any, c: pd.DataFrame = cal, n: str = name) -> None:
                for who, g in c.groupby(level="who"):
                    ax.plot(g.predicted, g.observed, "o-", label="model" if who == "score" else "oracle")
                ax.plot([0, 1], [0, 1], "k:", lw=1)
                hi = float(max(c.predicted.max(), c.observed.max()))
                ax.set(
                    xlim=(0, hi * 1.05),
                    ylim=(0, hi * 1.05),
                    xlabel="predicted",
                    ylabel="observed rate",
                    title=f"{n}: calibration (quantile bins)",
                )
                ax.legend()

            _fig(out_dir / png, draw_cal)
            doc.heading(f"{name}: calibration", 3)
            doc.image(png, f"{name} calibration")

    if bandits is not None:
        doc.heading("Bandits: expected reward and regret")
        doc.para(
            "Expected clicks per request (true CTR of the chosen placement for the day and device). "
            "worker_thompson = the worker's decisions; epsilon_greedy (10%) and thompson_interactive "
            "are simulated over the same requests with Bernoulli feedback from the true CTRs."
        )
        doc.table(bandits.summary)
        cum = bandits.cumulative

        def draw_regret(ax: Any) -> None:
            for col in cum.columns:
                if col != "oracle":
                    ax.plot(cum.index, cum["oracle"] - cum[col], label=col)
            ax.set(xlabel="ad requests", ylabel="cumulative regret (expected clicks)", title="regret vs the oracle arm")
            ax.legend()

        _fig(out_dir / "bandit_regret.png", draw_regret)
        doc.image("bandit_regret.png", "cumulative regret")

    if ope:
        doc.heading("Off-policy estimates from the logged (uniform) ad decisions")
        meaning = "the policy's expected clicks per ad impression over the window's logged impressions"
        if any(not math.isnan(r.truth) for r in ope):
            doc.para(
                f"Each estimate and its true value: {meaning} (bots left out), the truth from the "
                "simulator's CTR per placement, device and day (docs/replay.md)."
            )
        else:
            doc.para(f"Each estimate: {meaning}. No ground truth: there is no true value to compare with.")
        rows = []
        for r in ope:
            row: dict[str, Any] = {"policy": r.policy, "true value": r.truth}
            for est in (r.replay, r.ips, r.snips):
                if est is None:
                    row["replay"] = float("nan")
                    continue
                row[est.method] = est.value
                row[f"{est.method} se"] = est.stderr
            ok = [e.within(r.truth, sigmas=3) for e in (r.replay, r.ips, r.snips) if e is not None]
            row["within 3 se"] = "–" if math.isnan(r.truth) else f"{sum(ok)}/{len(ok)}"
            rows.append(row)
        df = pd.DataFrame(rows)
        doc.table(df)

        def draw_ope(ax: Any) -> None:
            x = range(len(ope))
            ax.scatter(list(x), [r.truth for r in ope], marker="*", s=120, color="k", label="truth", zorder=3)
            for off, name in ((-0.2, "replay"), (0.0, "ips"), (0.2, "snips")):
                vals = [getattr(r, name) for r in ope]
                xs = [i + off for i, v in zip(x, vals, strict=True) if v is not None]
                es = [v for v in vals if v is not None]
                ax.errorbar(xs, [e.value for e in es], yerr=[2 * e.stderr for e in es], fmt="o", label=name)
            ax.set_xticks(list(x), [r.policy for r in ope], rotation=30, ha="right", fontsize=7)
            ax.set(ylabel="CTR", title="off-policy estimates (±2 se) vs truth")
            ax.legend()

        _fig(out_dir / "ope.png", draw_ope)
        doc.image("ope.png", "off-policy estimates")

    if agreement is not None:
        doc.heading("Offline vs end-to-end agreement")
        rows = [{"model": m, **v} for m, v in agreement["models"].items()]
        doc.table(pd.DataFrame(rows))
        d = agreement["decisions"]
        doc.para(
            f"Decisions: {d['offline']} offline, {d['e2e']} end to end, {d['common']} common ids; "
            f"same placement for {d['same_arm']:.1%} (the bandit-stats GlobalTable lags in the worker)."
        )
        doc.para(
            "Churn and engagement scores depend only on the user's own events and must agree exactly. "
            "Click scores also read article popularity from a GlobalTable that lags by a few "
            "micro-batches in the worker; they agree only where that lag does not change the features "
            "(see docs/replay.md)."
        )

    doc.heading("Throughput and latency")
    rows = []
    for run in runs:
        rows.append(
            {
                "mode": run.mode,
                "events": run.events,
                "seconds": run.seconds,
                "events/s": run.events_per_s,
                "predictions": len(run.predictions),
                "decisions": len(run.decisions),
                "latency p50 ms": run.latency(50),
                "latency p99 ms": run.latency(99),
                "latency is": "per batch" if run.mode == "offline" else "event in -> prediction out",
            }
        )
    doc.table(pd.DataFrame(rows))
    for run in runs:
        for note in run.notes:
            doc.para(f"{run.mode}: {note}")

    md = out_dir / "report.md"
    md.write_text("\n".join(doc.md))
    (out_dir / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}</style></head><body>"
        + "\n".join(doc.html)
        + "</body></html>\n"
    )
    return md
