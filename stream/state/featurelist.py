"""The contract between state and models: feature names, dtypes and a version hash.

Every trained model stores its :class:`FeatureList`; the worker compares it with the one the
running code produces and refuses a model built for other features (other names, other order,
another definition version or other feature parameters).

>>> fl = FeatureList.create("demo", ["a", "b"], definition_version=1)
>>> FeatureList.from_json(fl.to_json()).matches(fl)
True
>>> fl.matches(FeatureList.create("demo", ["b", "a"], definition_version=1))
False
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from stream.errors import SchemaError

#: Bumped whenever a feature's meaning changes (user, article, click, engagement); part of every
#: feature list's version.
DEFINITION_VERSION = 1


@dataclass(frozen=True, slots=True)
class FeatureList:
    """Ordered feature names with dtypes; ``version`` hashes names, dtypes, definition and params."""

    kind: str
    names: tuple[str, ...]
    dtypes: tuple[str, ...]
    definition_version: int
    params: str
    version: str

    @classmethod
    def create(
        cls,
        kind: str,
        names: list[str] | tuple[str, ...],
        *,
        definition_version: int,
        params: str = "",
        dtype: str = "float32",
    ) -> FeatureList:
        names = tuple(names)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise SchemaError(f"feature list {kind!r} has duplicate names: {dup}")
        dtypes = (dtype,) * len(names)
        return cls(
            kind, names, dtypes, definition_version, params, _version(kind, names, dtypes, definition_version, params)
        )

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Column of ``name`` in the vector."""
        return self.names.index(name)

    def matches(self, other: FeatureList) -> bool:
        """True if a model trained on ``other`` can be fed vectors built for ``self``."""
        return self.version == other.version and self.names == other.names

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "names": list(self.names),
            "dtypes": list(self.dtypes),
            "definition_version": self.definition_version,
            "params": self.params,
            "version": self.version,
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureList:
        """Parse and verify: a stored version that does not match its own content is an error."""
        d = orjson.loads(text)
        try:
            fl = cls(
                d["kind"],
                tuple(d["names"]),
                tuple(d["dtypes"]),
                int(d["definition_version"]),
                d.get("params", ""),
                d["version"],
            )
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"not a feature list: missing or bad field {exc}") from exc
        expected = _version(fl.kind, fl.names, fl.dtypes, fl.definition_version, fl.params)
        if expected != fl.version:
            raise SchemaError(
                f"feature list {fl.kind!r} claims version {fl.version!r} but its content hashes to {expected!r}"
            )
        return fl


def _version(kind: str, names: tuple[str, ...], dtypes: tuple[str, ...], definition_version: int, params: str) -> str:
    blob = orjson.dumps([kind, list(names), list(dtypes), definition_version, params])
    return f"{kind}-v{definition_version}-{hashlib.sha256(blob).hexdigest()[:12]}"
