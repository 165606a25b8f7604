"""A file-system model registry: versioned models in native formats plus JSON metadata.

Layout (``STREAM_MODELS_DIR``)::

    <name>/<n>/model.ubj | model.txt   # XGBoost UBJ / LightGBM text, never pickle
    <name>/<n>/metadata.json           # kind, feature list, metrics, data window, ...
    <name>/aliases.json                # {"production": "3", "candidate": "4"}

Writes are atomic (write to a temporary name, then rename), so a worker polling an alias never
reads a half-written file. Batch training registers; the worker resolves ``production``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stream.errors import StreamError

ModelKind = Literal["xgboost", "lightgbm", "json"]
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
        _atomic_write(path / "metadata.json", json.dumps(meta, indent=2, sort_keys=True).encode())
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

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.get(name, version)  # refuse an alias to a version that does not exist
        aliases = self.aliases(name)
        aliases[alias] = str(version)
        _atomic_write(self.root / name / "aliases.json", json.dumps(aliases, indent=2, sort_keys=True).encode())

    def resolve(self, name: str, alias: str = "production") -> ModelVersion:
        version = self.aliases(name).get(alias)
        if version is None:
            raise RegistryError(
                f"model {name!r} has no {alias!r} alias in {self.root}: "
                "run `python -m batch_training run` (it registers and promotes models)"
            )
        return self.get(name, version)

    def alias_token(self, name: str) -> int | None:
        """A cheap change marker for polling: the alias file's mtime (None if absent)."""
        f = self.root / name / "aliases.json"
        return f.stat().st_mtime_ns if f.exists() else None


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
