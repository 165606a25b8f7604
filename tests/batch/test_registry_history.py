"""The registry's history: every alias change recorded, rollback walks it back, workers follow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from batch_training.cli import main
from batch_training.modeling import register
from stream.models.registry import ModelRegistry, RegistryError
from stream.models.scoring import ModelSet
from stream.state import CLICK_FEATURES


def _register(reg: ModelRegistry, seed: int) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, len(CLICK_FEATURES))).astype(np.float32)
    y = (x[:, seed % 5] > 0).astype(int)
    model = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, y)
    mv = register(
        reg,
        "click",
        "xgboost",
        lambda p: model.get_booster().save_model(str(p)),
        features=CLICK_FEATURES,
        metrics={"auc": 0.5 + seed / 100},
        window={},
        rows={"train": 200},
        fingerprint=str(seed),
    )
    return mv.version


def test_every_alias_change_is_recorded_and_rollback_walks_back(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v1, v2, v3 = (_register(reg, s) for s in (1, 2, 3))
    reg.set_alias("click", "production", v1, reason="first")
    reg.set_alias("click", "production", v2, evidence={"auc": 0.7})
    reg.set_alias("click", "challenger", v3, reason="retrain")
    reg.set_alias("click", "production", v3)  # the challenger is promoted: it retires
    assert reg.aliases("click") == {"production": v3}
    steps = [(h["action"], h["alias"], h["from_version"], h["to_version"]) for h in reg.history("click")]
    assert steps == [
        ("register", None, None, "1"),
        ("register", None, None, "2"),
        ("register", None, None, "3"),
        ("promote", "production", None, "1"),
        ("promote", "production", "1", "2"),
        ("challenger", "challenger", None, "3"),
        ("promote", "production", "2", "3"),
        ("retire", "challenger", "3", None),
    ]
    hist = reg.history("click")
    assert hist[0]["evidence"] == {"metrics": {"auc": 0.51}} and hist[3]["reason"] == "first"
    assert hist[4]["evidence"] == {"auc": 0.7}
    assert all(isinstance(h["time_ms"], int) and h["time"].endswith("Z") for h in hist)
    # rollback goes back through the production versions, not forth again
    assert reg.rollback("click") == ("3", "2")
    assert reg.rollback("click", reason="bad clicks") == ("2", "1")
    assert reg.history("click")[-1]["reason"] == "bad clicks"
    with pytest.raises(RegistryError, match="no previous production version"):
        reg.rollback("click")
    reg.set_alias("click", "production", v3)
    assert reg.production_lineage("click") == ["1", "3"]
    assert reg.rollback("click") == ("3", "1")


def test_a_production_alias_older_than_the_history_is_its_first_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v1, v2 = _register(reg, 1), _register(reg, 2)
    (tmp_path / "click" / "aliases.json").write_text(json.dumps({"production": v1}))  # before history existed
    reg.set_alias("click", "production", v2)
    assert reg.rollback("click") == (v2, v1)


_APPEND = """
import sys
from pathlib import Path
from stream.models.registry import ModelRegistry
reg = ModelRegistry(Path(sys.argv[1]))
for i in range(50):
    reg.record("click", "compare", reason=f"{sys.argv[2]}-{i}", evidence={"pad": "x" * (i * 37 % 5000)})
"""


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _APPEND, str(tmp_path), str(k)]) for k in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    lines = (tmp_path / "click" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 200
    reasons = {json.loads(line)["reason"] for line in lines}
    assert reasons == {f"{k}-{i}" for k in range(4) for i in range(50)}


def test_a_torn_last_line_is_left_out(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    _register(reg, 1)
    with (tmp_path / "click" / "history.jsonl").open("a") as f:
        f.write('{"action": "prom')  # a crash mid-write
    assert [h["action"] for h in reg.history("click")] == ["register"]


def test_workers_follow_promotion_and_rollback_at_once(tmp_path: Path) -> None:
    """The worker's ModelSet reloads on every alias change, even two within one mtime tick."""
    reg = ModelRegistry(tmp_path)
    v1, v2 = _register(reg, 1), _register(reg, 2)
    models = ModelSet(reg, {"click": CLICK_FEATURES})
    reg.set_alias("click", "production", v1)
    assert models.refresh() == [f"click:{v1}"]
    reg.set_alias("click", "challenger", v2)
    assert models.refresh() == []  # a challenger does not change what production serves
    for _ in range(20):  # back and forth faster than the file system's clock ticks
        reg.set_alias("click", "production", v2)
        assert models.refresh() == [f"click:{v2}"]
        reg.rollback("click")
        assert models.refresh() == [f"click:{v1}"]


def test_cli_promote_rollback_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("STREAM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("STREAM_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("STREAM_DATA_DIR", str(tmp_path / "var"))
    reg = ModelRegistry(tmp_path / "models")
    v1, v2 = _register(reg, 1), _register(reg, 2)
    reg.set_alias("click", "production", v1)
    reg.set_alias("click", "challenger", v2)
    assert main(["promote", "--model", "click", "--force", "--no-progress"]) == 0
    assert reg.aliases("click") == {"production": v2}
    assert main(["rollback", "--model", "click", "--reason", "clicks fell"]) == 0
    assert reg.resolve("click").version == v1
    capsys.readouterr()
    assert main(["history", "--model", "click"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1] for line in out[-3:]] == ["promote", "retire", "rollback"]
    assert "clicks fell" in out[-1]
    assert main(["history", "--model", "click", "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["action"] == "rollback" and last["to_version"] == v1
    assert main(["rollback", "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err
