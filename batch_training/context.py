"""What every step needs: settings, the ClickHouse connection, paths, the registry and a profile.

A :class:`Profile` bundles the knobs that trade time for rows (sampling of training rows, search
budget, processes). ``default`` is sized for the 20k-user demo dataset on a 2-core machine,
``fast`` for tests and quick demos, ``full`` builds every row (slow on big data).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from batch_training.datasets import Sampling
from stream.clickhouse import ClickHouse, connect
from stream.config import Settings
from stream.errors import ConfigError, PrerequisiteError, StreamError
from stream.models.registry import ModelRegistry


class Skipped(StreamError):
    """A step that cannot run on this history; the message is the one-line reason.

    ``run`` reports it and goes on with the other steps (a missing prerequisite of the whole
    pipeline, such as an empty events table, is a :class:`PrerequisiteError` and stops it).
    """


@dataclass(frozen=True)
class Profile:
    """Size/time knobs of one pipeline run (all seeded)."""

    name: str
    sampling: Sampling
    processes: int = 2
    users_per_chunk: int = 1_500
    search_iter: int = 6
    cv_folds: int = 3
    max_train_rows: int = 150_000
    n_estimators: int = 400
    min_events: int = 10_000
    seed: int = 42


PROFILES: dict[str, Profile] = {
    # 20k users x 60 d (12.7 M events) in < 10 min on 2 cores: rows from a 35 % user sample,
    # snapshots every 3 days, a quarter of the impressions.
    "default": Profile(
        "default", Sampling(cutoff_every_days=3, user_share=0.35, impression_share=0.25, session_share=1.0, seed=7)
    ),
    # tests and the demo: every user, snapshots every 2 days, smaller search
    "fast": Profile(
        "fast",
        Sampling(cutoff_every_days=2, user_share=1.0, impression_share=0.3, session_share=1.0, seed=7),
        search_iter=3,
        cv_folds=2,
        n_estimators=250,
        min_events=1_000,
    ),
    # the README's demo: a few thousand users, about a minute of training on 2 cores
    "demo": Profile(
        "demo",
        Sampling(cutoff_every_days=3, user_share=0.6, impression_share=0.15, session_share=1.0, seed=7),
        search_iter=2,
        cv_folds=2,
        n_estimators=150,
        max_train_rows=40_000,
        min_events=1_000,
    ),
    "full": Profile("full", Sampling()),
}


def get_profile(name: str, **overrides: Any) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; valid profiles are {sorted(PROFILES)}")
    return replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Context:
    """Shared by the steps of one run. ``ch`` is opened on first use."""

    settings: Settings
    profile: Profile
    progress: bool = True
    _ch: ClickHouse | None = field(default=None, repr=False)
    #: a subdirectory of the training data and reports: ``retrain`` and ``compare`` keep theirs
    #: apart from the pipeline's (empty: the pipeline's own)
    workspace: str = ""
    #: build training rows at or after this time only (``retrain``'s window); None: every row
    rows_from_ms: int | None = None

    def in_workspace(self, workspace: str, rows_from_ms: int | None = None) -> Context:
        """The same run (settings, profile, connection) in another workspace; closing stays with ``self``."""
        return replace(self, workspace=workspace, rows_from_ms=rows_from_ms)

    @property
    def ch(self) -> ClickHouse:
        if self._ch is None:
            self._ch = connect(self.settings)
        return self._ch

    def close(self) -> None:
        if self._ch is not None:
            self._ch.close()
            self._ch = None

    @property
    def db(self) -> str:
        return self.settings.clickhouse_database

    @property
    def data_dir(self) -> Path:
        d = Path(self.settings.data_dir) / "training" / self.workspace
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def reports_dir(self) -> Path:
        d = Path(self.settings.reports_dir) / "training" / self.workspace
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(Path(self.settings.models_dir))

    def bar(self, total: int | None, desc: str) -> Any:
        """A tqdm bar on stderr (silent when progress is off)."""
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, disable=not self.progress, leave=False)

    def has_table_rows(self, table: str) -> bool:
        try:
            df = self.ch.query_df(f"SELECT count() AS n FROM {{db}}.{table}")
        except Exception:  # table absent (a server without the simulator DDL)
            return False
        return int(df["n"].iloc[0]) > 0

    def need_features(self) -> None:
        if not (self.data_dir / "users.parquet").exists():
            raise PrerequisiteError(f"no training sets in {self.data_dir}: run `python -m batch_training features`")
