"""Batch training on a history no simulator setting produces (tests/support/history.py).

150 days (more than 100 partitions per insert) go in through ``python -m stream ingest``; then
``batch_training run``: every step runs or says in one line why it was skipped (no ad events, a
single-class click label), and every model is promoted or skipped with its reason. Without the
simulator's truth tables the reports say "no ground truth" and show no oracle bar.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from batch_training.context import Context
from stream.cli import main as stream_main
from tests.batch.conftest import make_context
from tests.support.chdb import fresh_database
from tests.support.history import foreign_events, write_jsonl


@pytest.fixture(scope="module")
def foreign_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Context, list[str], dict[str, Any]]]:
    from batch_training.cli import pipeline

    tmp = tmp_path_factory.mktemp("foreign")
    path = tmp / "history.jsonl"
    write_jsonl(path, foreign_events(n_users=150, days=150, seed=8), bad_every=5000)
    with fresh_database("foreign") as ch:
        assert (
            stream_main(
                [
                    "ingest",
                    "--from-file",
                    str(path),
                    "--database",
                    ch.database,
                    "--quiet",
                    "--rejects",
                    str(tmp / "rejects.jsonl"),
                ]
            )
            == 0
        )
        ctx = make_context(tmp, ch.database, ch)
        lines: list[str] = []
        timings = pipeline(ctx, log=lines.append)
        yield ctx, lines, timings


def _json(ctx: Context, name: str) -> Any:
    return json.loads((ctx.reports_dir / f"{name}.json").read_text())


def test_every_step_runs_or_says_in_one_line_why_not(foreign_run: tuple[Context, list[str], dict]) -> None:
    ctx, lines, _ = foreign_run
    steps = _json(ctx, "steps")
    skipped = {name: s["reason"] for name, s in steps.items() if s["status"] == "skipped"}
    assert set(skipped) == {"click", "ads"}, steps
    assert "single class" in skipped["click"] and "no ad events" in skipped["ads"]
    for name, reason in skipped.items():
        assert "\n" not in reason
        assert [line for line in lines if line.startswith(name) and "skipped" in line and reason in line], lines
    assert {s["status"] for name, s in steps.items() if name not in skipped} == {"ran"}


def test_every_model_is_promoted_or_skipped_with_its_reason(foreign_run: tuple[Context, list[str], dict]) -> None:
    ctx, _, _ = foreign_run
    promoted = _json(ctx, "promotion")
    assert {n: p["status"] for n, p in promoted.items()} == {
        "churn": "promoted",
        "conversion": "promoted",
        "engagement": "promoted",
        "click": "skipped",
        "segmentation": "promoted",
    }
    assert "single class" in promoted["click"]["reason"]
    assert ctx.registry.resolve("segmentation").version == promoted["segmentation"]["candidate"]
    for name in ("churn", "conversion", "engagement"):
        assert ctx.registry.resolve(name).version == promoted[name]["candidate"]


def test_features_step_warns_of_the_single_class_label(foreign_run: tuple[Context, list[str], dict]) -> None:
    ctx, lines, _ = foreign_run
    manifest = json.loads((ctx.data_dir / "manifest.json").read_text())
    assert manifest["label_rates"]["clicked"] == 1.0
    assert any("clicked" in w and "single class" in w for w in manifest["warnings"])
    assert any(line.startswith("features") and "clicked" in line for line in lines)


def test_reports_without_ground_truth_have_no_oracle(foreign_run: tuple[Context, list[str], dict]) -> None:
    ctx, _, _ = foreign_run
    md = (ctx.reports_dir / "evaluation.md").read_text()
    assert "no ground truth" in md
    assert "oracle" not in md.replace("no ground truth", "").lower().replace("no oracle", "")
    for row in _json(ctx, "evaluation")["rows"]:
        assert row["oracle"] is None and row["oracle_pass"] is None


def test_segment_names_match_what_the_segments_contain(foreign_run: tuple[Context, list[str], dict]) -> None:
    ctx, _, _ = foreign_run
    names = set(_json(ctx, "segmentation")["summary"]["segments"])
    assert "video consumers" not in names  # the history has no video play at all


def test_recommendation_is_evaluated_on_every_eligible_user(foreign_run: tuple[Context, list[str], dict]) -> None:
    ctx, _, _ = foreign_run
    rec = _json(ctx, "recommendation")
    ev = rec["evaluation"]
    assert ev["split"].startswith("leave-last-")
    assert ev["users"] == ev["eligible_users"] > 50
    for model in ("hybrid", "popularity"):
        m = ev["models"][model]
        assert m["ci95"][0] <= m["precision@10"] <= m["ci95"][1]
