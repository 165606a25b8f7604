"""Step 5: one report comparing every model with the original targets, the oracle and its baselines."""

from __future__ import annotations

import json
from typing import Any

from batch_training.context import Context
from batch_training.modeling import write_json

#: The original pipeline's targets: (metric, direction, bound).
TARGETS: dict[str, list[tuple[str, str, float | None]]] = {
    "churn": [("auc", ">", 0.85), ("precision", ">", 0.80), ("recall", ">", 0.75)],
    "conversion": [("auc", ">", 0.80), ("precision", ">", 0.75), ("recall", ">", 0.70)],
    "click": [("auc", ">", None), ("precision", ">", 0.75)],
    "engagement": [("r2", ">", 0.70), ("rmse", "<", 10.0), ("mae", "<", 5.0)],
}
ORACLE_BAR = 0.97


def _load(ctx: Context, name: str) -> dict[str, Any] | None:
    f = ctx.reports_dir / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() else None


def evaluation_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, targets in TARGETS.items():
        r = results.get(name)
        if r is None:
            continue
        m, oracle = r["metrics"], r.get("oracle") or {}
        for metric, op, bound in targets:
            v = m[metric]
            o = oracle.get("oracle") if oracle.get("metric") == metric else oracle.get(f"oracle_{metric}")
            ratio = oracle.get("ratio") if oracle.get("metric") == metric else None
            ok = None if bound is None else (v > bound if op == ">" else v < bound)
            rows.append(
                {
                    "model": name,
                    "metric": metric,
                    "value": v,
                    "oracle": o,
                    "ratio": ratio,
                    "target": "–" if bound is None else f"{op} {bound}",
                    "target_pass": None if ok is None else bool(ok),
                    "oracle_pass": None if ratio is None else bool(ratio >= ORACLE_BAR),
                    "baseline": r.get("baselines", {}).get("linear", {}).get(metric),
                }
            )
    return rows


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "pass" if v else "FAIL"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _steps(ctx: Context) -> dict[str, Any]:
    f = ctx.reports_dir / "steps.json"
    return json.loads(f.read_text()) if f.exists() else {}


def evaluate(ctx: Context) -> dict[str, Any]:
    names = ["baselines", "churn", "conversion", "click", "engagement", "segmentation", "recommendation", "ads"]
    results = {n: r for n in names if (r := _load(ctx, n)) is not None}
    rows = evaluation_rows(results)
    truth = ctx.has_table_rows("truth_users")
    intro = (
        "Test split = the latest 15 % of each set's time range. Precision/recall/F1 at the threshold with "
        "the best F1 on the validation split (stated per model below). "
    )
    if truth:
        intro += (
            "Oracle = the simulator's true probability (expected engagement) on the same test rows; the bar "
            f"is ratio >= {ORACLE_BAR}."
        )
        head = ["model", "metric", "value", "oracle", "ratio", "target", "target", "oracle bar", "linear baseline"]
    else:
        intro += (
            "There is no ground truth for this history (no simulator truth tables): models are compared with "
            "the original targets and their baselines only."
        )
        head = ["model", "metric", "value", "target", "target", "linear baseline"]
    lines = ["# Model evaluation", "", intro, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["metric"], _fmt(r["value"])]
        if truth:
            cells += [_fmt(r["oracle"]), _fmt(r["ratio"], 3)]
        cells += [r["target"], _fmt(r["target_pass"])]
        if truth:
            cells.append(_fmt(r["oracle_pass"]))
        cells.append(_fmt(r["baseline"]))
        lines.append("| " + " | ".join(cells) + " |")
    skipped = {n: s["reason"] for n, s in _steps(ctx).items() if s.get("status") == "skipped"}
    if skipped:
        lines += ["", "## Skipped steps", ""] + [f"- {n}: {reason}" for n, reason in skipped.items()]
    lines += [
        "",
        "| model | version | threshold | train s | rows train/val/test | CV scores | "
        "latency 1 row µs | latency batched µs/row |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("churn", "conversion", "click", "engagement"):
        r = results.get(name)
        if r is None:
            continue
        rw, lat = r["rows"], r["latency"]
        cv = ", ".join(f"{s:.3f}" for s in r["cv_scores"]) or "–"
        thr = f"{r['threshold']:.3f}" if r["task"] == "binary" else "–"
        lines.append(
            f"| {name} | {r.get('version', '?')} | {thr} | {r['train_seconds']:.1f} | "
            f"{rw['train']}/{rw['validation']}/{rw['test']} | {cv} | {lat['single_row_us']:.0f} | "
            f"{lat['batched_per_row_us']:.2f} |"
        )
    b = results.get("baselines")
    if b:
        lines += [
            "",
            "## Churn: baselines vs XGBoost (same split)",
            "",
            "| model | AUC | precision | recall | F1 |",
            "|---|---|---|---|---|",
        ]
        for name, m in b["models"].items():
            lines.append(f"| {name} | {m['auc']:.4f} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} |")
    for name in ("segmentation", "recommendation", "ads"):
        r = results.get(name)
        if r:
            lines += ["", f"## {name}", "", "```", json.dumps(r.get("summary", r), indent=1, default=str)[:3000], "```"]
    (ctx.reports_dir / "evaluation.md").write_text("\n".join(lines) + "\n")
    out = {"rows": rows, "models": sorted(results), "ground_truth": truth, "skipped": skipped}
    write_json(ctx.reports_dir / "evaluation.json", out)
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """The console table; the oracle columns only when some row has an oracle (simulator truth)."""
    oracle = any(r["oracle"] is not None for r in rows)
    head = f"{'model':<11} {'metric':<9} {'value':>7} "
    head += f"{'oracle':>7} {'ratio':>6} " if oracle else ""
    head += f"{'target':>8} {'tgt':>5}" + (f" {'>=.97':>5}" if oracle else "")
    out = [head]
    for r in rows:
        line = f"{r['model']:<11} {r['metric']:<9} {_fmt(r['value']):>7} "
        line += f"{_fmt(r['oracle']):>7} {_fmt(r['ratio'], 3):>6} " if oracle else ""
        line += f"{r['target']:>8} {_fmt(r['target_pass']):>5}" + (f" {_fmt(r['oracle_pass']):>5}" if oracle else "")
        out.append(line)
    if not oracle:
        out.append("(no ground truth for this history: no oracle comparison)")
    return "\n".join(out)
