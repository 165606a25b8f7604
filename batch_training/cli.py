"""``python -m batch_training {run,prerequisites,explore,features,...,promote,retrain,compare,rollback,history}``.

``run`` executes the ten steps in order (the original master script) and promotes at the end;
``--skip-exploration``, ``--skip-features``, ``--models-only`` and ``--skip-prerequisites`` keep
their original meaning. ``retrain`` registers challengers trained on the latest window,
``compare`` tests them against production, ``promote``/``rollback`` move the production alias and
``history`` prints what the registry recorded (docs/training.md, "Retraining"). A bad argument or
a missing prerequisite prints one line (exit 2 / 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from batch_training.context import PROFILES, Context, Skipped, get_profile
from batch_training.specs import SPECS
from stream import arguments
from stream.config import load_settings
from stream.errors import ConfigError
from stream.models import SEGMENTS
from stream.models.registry import RegistryError


def _step(module: str, func: str) -> Callable[[Context], Any]:
    def run(ctx: Context) -> Any:
        import importlib

        return getattr(importlib.import_module(f"batch_training.{module}"), func)(ctx)

    return run


def _model(name: str) -> Callable[[Context], Any]:
    def run(ctx: Context) -> Any:
        from batch_training.supervised import train_model

        return train_model(ctx, name)

    return run


#: step name -> runner, in pipeline order
STEPS: dict[str, Callable[[Context], Any]] = {
    "prerequisites": _step("features", "prerequisites"),
    "explore": _step("explore", "explore"),
    "features": _step("features", "features"),
    "baselines": _step("baselines", "baselines"),
    "churn": _model("churn"),
    "segmentation": _step("segmentation", "segmentation"),
    "recommendation": _step("recommendation", "recommendation"),
    "conversion": _model("conversion"),
    "click": _model("click"),
    "engagement": _model("engagement"),
    "ads": _step("ads", "ads"),
    "evaluate": _step("evaluate", "evaluate"),
}


def build_parser() -> argparse.ArgumentParser:
    common = arguments.Parser(add_help=False)
    common.add_argument(
        "--profile",
        default="default",
        choices=sorted(PROFILES),
        help="size/time knobs: default (20k-user demo data), fast (tests), full (every row)",
    )
    common.add_argument(
        "--processes", type=arguments.positive_int, default=None, help="worker processes for the training sets"
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p = arguments.Parser(prog="python -m batch_training", description="Batch training: ClickHouse history -> models")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=arguments.Parser)
    run = sub.add_parser("run", parents=[common], help="the whole pipeline, then promote")
    run.add_argument("--skip-exploration", action="store_true", help="skip step 2 (exploration report)")
    run.add_argument("--skip-features", action="store_true", help="reuse the training sets on disk")
    run.add_argument("--models-only", action="store_true", help="skip exploration and features")
    run.add_argument("--skip-prerequisites", action="store_true", help="skip the prerequisite checks")
    run.add_argument("--force", action="store_true", help="promote even models worse than production")
    for name in STEPS:
        sub.add_parser(name, parents=[common], help=f"step {name}")
    supervised = sorted(SPECS)
    pr = sub.add_parser("promote", parents=[common], help="move the production alias (gated)")
    pr.add_argument(
        "models", nargs="*", help="models to promote (default: churn conversion click engagement segmentation)"
    )
    pr.add_argument("--model", action="append", choices=supervised, default=[], help="a model to promote (repeatable)")
    pr.add_argument(
        "--version", default=None, help="version to promote (default: the challenger if there is one, else the latest)"
    )
    pr.add_argument("--force", action="store_true", help="promote even if worse than production")
    pr.add_argument("--reason", default="", help="why, for the registry's history")
    rt = sub.add_parser("retrain", parents=[common], help="train challengers on the latest window of events")
    rt.add_argument(
        "--window-days",
        type=arguments.positive_int,
        default=None,
        help="train on the latest N days of archived events (default: STREAM_RETRAIN_WINDOW_DAYS)",
    )
    rt.add_argument("--models", nargs="+", choices=supervised, default=None, help="models to retrain (default: all)")
    rt.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="train every challenger from scratch (default: an XGBoost model continues from its production version)",
    )
    rt.add_argument(
        "--after-drift",
        action="store_true",
        help="start the window no earlier than the current drift streak of the models' production versions "
        "(the worker's feature_drift windows)",
    )
    rt.add_argument(
        "--min-drift-days",
        type=arguments.number(0, 3650, what="days"),
        default=None,
        help="with --after-drift: train nothing until the drift began this many days of events ago "
        "(default: STREAM_RETRAIN_MIN_DRIFT_DAYS)",
    )
    cp = sub.add_parser("compare", parents=[common], help="champion vs challenger on the same held-out events")
    cp.add_argument("--model", required=True, choices=supervised)
    cp.add_argument("--promote", action="store_true", help="promote the challenger if the test says so")
    cp.add_argument(
        "--shadow",
        action="store_true",
        help="on the live events the worker scored with both (predictions / predictions_shadow), with their "
        "outcomes from the archived events, instead of re-scoring the latest archived events offline",
    )
    cp.add_argument(
        "--min-pairs",
        type=arguments.positive_int,
        default=None,
        help="with --shadow: fewer labelled pairs than this: decision 'wait', nothing tested nor recorded",
    )
    cp.add_argument(
        "--looks",
        type=arguments.positive_int,
        default=1,
        help="looks planned at this challenger (stream monitor looks again as pairs grow): each look tests at "
        "confidence 1 - (1 - confidence)/LOOKS (Bonferroni), so all of them promote falsely at most 1 - confidence "
        "of the time (default 1)",
    )
    cp.add_argument("--look", type=arguments.positive_int, default=1, help="which of the --looks this is (default 1)")
    cp.add_argument("--metric", choices=["auc", "log_loss", "mse"], default=None, help="default: auc, mse (engagement)")
    cp.add_argument(
        "--margin",
        type=arguments.number(0),
        default=None,
        help="how much better the challenger must be (default: 0.005 AUC or log loss; 1%% of the variance for mse)",
    )
    cp.add_argument(
        "--confidence",
        type=arguments.number(0.5, 1, what="a confidence"),
        default=None,
        help="of the one-sided bound (default: STREAM_COMPARE_CONFIDENCE)",
    )
    cp.add_argument("--resamples", type=arguments.positive_int, default=1000, help="bootstrap resamples (default 1000)")
    cp.add_argument("--seed", type=arguments.integer(0), default=0)
    cp.add_argument(
        "--min-events", type=arguments.positive_int, default=100, help="fewer held-out events: keep (default 100)"
    )
    rb = sub.add_parser("rollback", help="production back to its previous version (from the history)")
    rb.add_argument("--model", required=True)
    rb.add_argument("--reason", default="", help="why, for the registry's history")
    hi = sub.add_parser("history", help="the registry's history of a model")
    hi.add_argument("--model", required=True)
    hi.add_argument("--json", action="store_true", help="one JSON record a line")
    return p


def pipeline(
    ctx: Context,
    *,
    skip_exploration: bool = False,
    skip_features: bool = False,
    skip_prerequisites: bool = False,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run the steps in order, then promote; returns wall seconds per step.

    A step that cannot run on this history raises :class:`Skipped`: its one-line reason is logged
    and written to ``steps.json``, its stale report removed, and the other steps still run.
    """
    from batch_training.modeling import write_json
    from batch_training.promote import promote

    timings: dict[str, float] = {}
    steps: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    for name, fn in STEPS.items():
        if (
            (name == "prerequisites" and skip_prerequisites)
            or (name == "explore" and skip_exploration)
            or (name == "features" and skip_features)
        ):
            continue
        t = time.perf_counter()
        try:
            result = fn(ctx)
        except Skipped as exc:
            timings[name] = time.perf_counter() - t
            steps[name] = {"status": "skipped", "reason": str(exc)}
            (ctx.reports_dir / f"{name}.json").unlink(missing_ok=True)  # not last run's result
            log(f"{name:<15} skipped: {exc}")
        else:
            timings[name] = time.perf_counter() - t
            steps[name] = {"status": "ran", "seconds": round(timings[name], 3)}
            log(f"{name:<15} {timings[name]:7.1f} s")
            for warning in (result.get("warnings") or []) if isinstance(result, dict) else []:
                log(f"{name:<15} warning: {warning}")
        write_json(ctx.reports_dir / "steps.json", steps)  # evaluate lists the skipped steps
    t = time.perf_counter()
    skipped = {n: s["reason"] for n, s in steps.items() if s["status"] == "skipped"}
    promote(ctx, force=force, skipped=skipped)
    timings["promote"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all
    log(f"{'promote':<15} {timings['promote']:7.1f} s")
    log(f"{'total':<15} {timings['total']:7.1f} s")
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    return arguments.run_command("batch_training", lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("rollback", "history"):
        return _registry_command(args)
    if args.cmd == "compare" and args.look > args.looks:
        raise ConfigError(f"--look: expected at most --looks ({args.looks}), got {args.look}")
    ctx = Context(load_settings(), get_profile(args.profile, processes=args.processes), progress=not args.no_progress)
    try:
        if args.cmd == "run":
            pipeline(
                ctx,
                skip_exploration=args.skip_exploration or args.models_only,
                skip_features=args.skip_features or args.models_only,
                skip_prerequisites=args.skip_prerequisites,
                force=args.force,
            )
            from batch_training.evaluate import format_table

            ev = json.loads((ctx.reports_dir / "evaluation.json").read_text())
            print(format_table(ev["rows"]))
            print(f"reports: {ctx.reports_dir}  models: {ctx.settings.models_dir}")
        elif args.cmd == "promote":
            from batch_training.promote import promote

            names = [*args.models, *args.model] or None
            known = sorted([*SPECS, SEGMENTS.registered_as])
            for name in names or []:
                if name not in known:
                    raise ConfigError(f"unknown model {name!r}; expected one of {known}")
            result = promote(
                ctx, names, version=args.version, force=args.force, challenger_first=True, reason=args.reason
            )
            for name, entry in result.items():
                print(f"{name}: {entry}")
        elif args.cmd == "retrain":
            from batch_training.retrain import retrain

            days = args.window_days or ctx.settings.retrain_window_days
            min_drift = ctx.settings.retrain_min_drift_days if args.min_drift_days is None else args.min_drift_days
            out = retrain(
                ctx,
                window_days=days,
                models=args.models,
                warm_start=args.warm_start,
                after_drift=args.after_drift,
                min_drift_days=min_drift,
            )
            if "waiting" in out:
                print(f"retrain: waiting: {out['waiting']['reason']}")
            else:
                n_new, n_skipped = _count(out["models"], "challenger"), _count(out["models"], "skipped")
                print(f"retrain: {n_new} challengers, {n_skipped} skipped (python -m batch_training compare --model M)")
        elif args.cmd == "compare":
            from batch_training.retrain import compare, compare_shadow, summary

            confidence = args.confidence if args.confidence is not None else ctx.settings.compare_confidence
            if confidence >= 1:
                raise ConfigError(f"--confidence: expected a confidence in [0.5, 1), got {confidence}")
            if args.min_pairs is not None and not args.shadow:
                raise ConfigError("--min-pairs: expected with --shadow only (it counts the live pairs of both models)")
            shadow = {"min_pairs": args.min_pairs or 0} if args.shadow else {}
            result = (compare_shadow if args.shadow else compare)(
                ctx,
                args.model,
                metric=args.metric,
                margin=args.margin,
                confidence=confidence,
                resamples=args.resamples,
                seed=args.seed,
                min_events=args.min_events,
                promote=args.promote,
                look=(args.look, args.looks),
                **shadow,
            )
            print(summary(result))
        else:
            result = STEPS[args.cmd](ctx)
            _summary(args.cmd, result)
    except Skipped as exc:
        print(f"{args.cmd} skipped: {exc}", file=sys.stderr)
    finally:
        ctx.close()
    return 0


def _count(models: dict[str, Any], status: str) -> int:
    return sum(1 for m in models.values() if m["status"] == status)


def _registry_command(args: argparse.Namespace) -> int:
    """``rollback`` and ``history``: the registry only, no ClickHouse."""
    from stream.models.registry import ModelRegistry

    settings = load_settings()
    reg = ModelRegistry(Path(settings.models_dir))
    if not reg.versions(args.model):
        raise RegistryError(f"no model {args.model!r} in {reg.root}")
    if args.cmd == "rollback":
        before, after = reg.rollback(args.model, reason=args.reason)
        print(f"{args.model}: production v{before} -> v{after}")
        return 0
    for rec in reg.history(args.model):
        print(json.dumps(rec, sort_keys=True) if args.json else format_record(rec))
    return 0


def format_record(rec: dict[str, Any]) -> str:
    """One history record as a line: time, action, alias, from -> to, reason, evidence's key numbers."""
    move = f"v{rec['from_version'] or '-'} -> v{rec['to_version'] or '-'}"
    alias = rec.get("alias") or "-"
    ev = rec.get("evidence") or {}
    facts = ev.get("metrics") or ev.get("test") or {}
    numbers = " ".join(
        f"{k}={v:.4g}"
        for k, v in facts.items()
        if k in ("auc", "r2", "log_loss", "rmse", "champion", "challenger", "lower_bound", "n", "margin")
        and isinstance(v, int | float)
    )
    return f"{rec['time']} {rec['action']:<10} {alias:<10} {move:<12} {rec.get('reason', '')}" + (
        f"  [{numbers}]" if numbers else ""
    )


def _summary(cmd: str, result: Any) -> None:
    if cmd == "evaluate":
        from batch_training.evaluate import format_table

        print(format_table(result["rows"]))
    elif isinstance(result, dict) and "metrics" in result:
        m = {k: round(v, 4) for k, v in result["metrics"].items() if isinstance(v, float)}
        print(f"{cmd} v{result.get('version')}: {m} oracle={result.get('oracle')}")
    else:
        print(f"{cmd}: {result if not isinstance(result, dict) else {k: v for k, v in result.items() if k != 'rows'}}")
