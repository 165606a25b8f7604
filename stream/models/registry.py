"""A file-system model registry: versioned models in native formats plus JSON metadata.

Layout (``STREAM_MODELS_DIR``)::

    <name>/<n>/model.ubj | model.txt   # XGBoost UBJ / LightGBM text, never pickle
    <name>/<n>/metadata.json           # kind, feature list, metrics, data window, ...
    <name>/aliases.json                # {"production": "3", "challenger": "4"}
    <name>/history.jsonl               # every registration and alias change, oldest first

Writes are atomic (write to a temporary name, then rename), so a worker polling an alias never
reads a half-written file. Batch training registers; the worker resolves ``production``.

The history is append-only: one JSON line per step (``register``, ``challenger``, ``promote``,
``rollback``, ``retire``, and steps that change nothing but are worth a record, such as a
``compare`` that kept the champion or a model ``retrain`` skipped), each with its time, the alias,
the version it moved from and to, a reason and the evidence (metrics). A line is appended with one
``write`` on a file opened ``O_APPEND`` under an exclusive ``flock``, then fsynced: concurrent
writers never interleave, and a reader sees whole lines. :meth:`ModelRegistry.rollback` walks it
back to the previous production version.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stream.errors import StreamError

ModelKind = Literal["xgboost", "lightgbm", "json"]
PRODUCTION = "production"
CHALLENGER = "challenger"
_FILES: dict[str, str] = {"xgboost": "model.ubj", "lightgbm": "model.txt", "json": "model.json"}


class RegistryError(StreamError):
    """A model, version or alias is missing or malformed."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version."""

    name: str
    version: str
    path: Path
    metadata: dict[str, Any] = field(repr=False)

    @property
    def kind(self) -> ModelKind:
        kind: ModelKind = self.metadata["kind"]
        return kind

    @property
    def model_file(self) -> Path:
        return self.path / _FILES[self.kind]

    @property
    def features(self) -> dict[str, Any]:
        """The serialized FeatureList the model was trained on."""
        features: dict[str, Any] = self.metadata.get("features", {})
        return features


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class ModelRegistry:
    """Register, alias and resolve model versions under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _versions_dir(self, name: str) -> Path:
        return self.root / name

    def versions(self, name: str) -> list[str]:
        d = self._versions_dir(name)
        if not d.exists():
            return []
        return sorted((p.name for p in d.iterdir() if p.is_dir() and p.name.isdigit()), key=int)

    def register(self, name: str, kind: ModelKind, write_model: Any, metadata: dict[str, Any]) -> ModelVersion:
        """Create the next version. ``write_model(path)`` saves the model in its native format."""
        if kind not in _FILES:
            raise RegistryError(f"unknown model kind {kind!r}; expected one of {sorted(_FILES)}")
        vdir = self._versions_dir(name)
        vdir.mkdir(parents=True, exist_ok=True)
        while True:  # mkdir is atomic: concurrent trainers get distinct versions
            version = str(int(self.versions(name)[-1]) + 1 if self.versions(name) else 1)
            try:
                (vdir / version).mkdir()
                break
            except FileExistsError:
                continue
        path = vdir / version
        write_model(path / _FILES[kind])
        meta = {"name": name, "version": version, "kind": kind, "registered_at": int(time.time() * 1000), **metadata}
        _atomic_write(path / "metadata.json", json.dumps(meta, indent=2, sort_keys=True, default=_jsonable).encode())
        metrics = metadata.get("metrics")
        self.record(
            name,
            "register",
            to_version=version,
            reason=str(metadata.get("reason", "")),
            evidence={"metrics": metrics} if isinstance(metrics, dict) else None,
        )
        return ModelVersion(name, version, path, meta)

    def get(self, name: str, version: str) -> ModelVersion:
        path = self._versions_dir(name) / str(version)
        meta_file = path / "metadata.json"
        if not meta_file.exists():
            known = ", ".join(self.versions(name)) or "none"
            raise RegistryError(f"model {name!r} has no version {version!r} (known: {known})")
        return ModelVersion(name, str(version), path, json.loads(meta_file.read_text()))

    def aliases(self, name: str) -> dict[str, str]:
        f = self.root / name / "aliases.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def set_alias(
        self,
        name: str,
        alias: str,
        version: str,
        *,
        action: str | None = None,
        reason: str = "",
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """Point ``alias`` at ``version`` and record it in the history.

        ``action`` names the step in the history (default: ``promote`` for production,
        ``challenger`` for the challenger, else ``alias``). Moving production retires a challenger
        at or below the new production version (it can no longer challenge it).
        """
        self.get(name, version)  # refuse an alias to a version that does not exist
        aliases = self.aliases(name)
        before = aliases.get(alias)
        aliases[alias] = str(version)
        retired = None
        if alias == PRODUCTION and CHALLENGER in aliases and int(aliases[CHALLENGER]) <= int(version):
            retired = aliases.pop(CHALLENGER)
        self._write_aliases(name, aliases)
        if action is None:
            action = {PRODUCTION: "promote", CHALLENGER: "challenger"}.get(alias, "alias")
        self.record(
            name, action, alias=alias, from_version=before, to_version=str(version), reason=reason, evidence=evidence
        )
        if retired is not None:
            self.record(
                name,
                "retire",
                alias=CHALLENGER,
                from_version=retired,
                to_version=None,
                reason=f"production moved to v{version}",
            )

    def _write_aliases(self, name: str, aliases: dict[str, str]) -> None:
        # The aliases are written before the history line: alias_token changes with both, so a
        # poller that read the token between the two writes still sees the change (see alias_token).
        _atomic_write(self.root / name / "aliases.json", json.dumps(aliases, indent=2, sort_keys=True).encode())

    def resolve(self, name: str, alias: str = PRODUCTION) -> ModelVersion:
        version = self.aliases(name).get(alias)
        if version is None:
            hint = (
                "run `python -m batch_training retrain` (it registers challengers)"
                if alias == CHALLENGER
                else "run `python -m batch_training run` (it registers and promotes models)"
            )
            raise RegistryError(f"model {name!r} has no {alias!r} alias in {self.root}: {hint}")
        return self.get(name, version)

    def alias_token(self, name: str) -> int | None:
        """A cheap change marker for polling (None if the model has no alias yet).

        The alias file's mtime alone can miss a change: two writes within one tick of the file
        system's clock give the same mtime. Every alias change also appends to the history, whose
        size only grows, so the pair changes with every write.
        """
        f = self.root / name / "aliases.json"
        if not f.exists():
            return None
        h = self._history_file(name)
        return hash((f.stat().st_mtime_ns, h.stat().st_size if h.exists() else -1))

    # --- history ------------------------------------------------------------------------------

    def _history_file(self, name: str) -> Path:
        return self.root / name / "history.jsonl"

    def record(
        self,
        name: str,
        action: str,
        *,
        alias: str | None = None,
        from_version: str | None = None,
        to_version: str | None = None,
        reason: str = "",
        evidence: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one step to the model's history; returns the record."""
        now = time.time()
        rec = {
            "time_ms": int(now * 1000),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "model": name,
            "action": action,
            "alias": alias,
            "from_version": from_version,
            "to_version": to_version,
            "reason": reason,
            "evidence": evidence or {},
        }
        line = (json.dumps(rec, sort_keys=True, default=_jsonable) + "\n").encode()
        f = self._history_file(name)
        f.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        return rec

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every recorded step of the model, oldest first (a torn last line, from a crash, is left out)."""
        f = self._history_file(name)
        if not f.exists():
            return []
        out = []
        for line in f.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def production_lineage(self, name: str) -> list[str]:
        """The production versions a rollback walks back through, the current one last.

        Replays the history: a promotion pushes its version, a rollback pops one. A production
        alias set before the history existed is the first ``from_version`` seen.
        """
        stack: list[str] = []
        for rec in self.history(name):
            if rec.get("alias") != PRODUCTION or rec.get("to_version") is None:
                continue  # records of other aliases, and steps that moved nothing
            if not stack and rec.get("from_version"):
                stack.append(rec["from_version"])
            if rec["action"] == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != rec["to_version"]:
                    stack.append(rec["to_version"])
            elif not stack or stack[-1] != rec["to_version"]:
                stack.append(rec["to_version"])
        return stack

    def rollback(self, name: str, reason: str = "") -> tuple[str, str]:
        """Move production back to the version it had before the current one; returns (from, to)."""
        current = self.aliases(name).get(PRODUCTION)
        if current is None:
            raise RegistryError(f"model {name!r} has no production version to roll back in {self.root}")
        lineage = self.production_lineage(name)
        if not lineage or lineage[-1] != current:  # the alias file was edited by hand: trust it
            lineage.append(current)
        if len(lineage) < 2:
            raise RegistryError(
                f"model {name!r}: production v{current} has no previous production version in its history"
            )
        target = lineage[-2]
        self.set_alias(name, PRODUCTION, target, action="rollback", reason=reason or f"rollback from v{current}")
        return current, target


def _jsonable(o: Any) -> Any:
    """numpy scalars and arrays (metrics) as plain JSON."""
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def load_booster(mv: ModelVersion, nthread: int = 1) -> Any:
    """Load the model in its native format (XGBoost Booster or LightGBM Booster)."""
    if mv.kind == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(mv.model_file))
        booster.set_param({"nthread": nthread})
        return booster
    if mv.kind == "lightgbm":
        import lightgbm as lgb

        return lgb.Booster(model_file=str(mv.model_file), params={"num_threads": nthread})
    return json.loads(mv.model_file.read_text())
