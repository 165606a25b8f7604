"""Reference profiles: what each feature and the prediction looked like when the model was trained.

Batch training builds one per model version (:func:`build_profile`) and stores it in the version's
``metadata.json`` under ``reference_profile`` (one file, written atomically with the rest of the
metadata, so no registered version has a half-written profile). :func:`load_profile` reads it back.

One column's profile (:class:`ColumnProfile`):

* **bins**: right-closed intervals (-inf, e0], (e0, e1], ..., (e_last, inf) over ``edges``, plus one
  bin for missing values (NaN or infinite), with the reference counts of each.
  - numeric (more than ``bins`` distinct values): the inner edges are the reference deciles (for
    10 bins), deduplicated, so a point mass (say 60 % zeros) becomes one bin with its real share
    rather than several empty ones;
  - discrete (at most ``bins`` distinct values, constant included): one bin per value, plus one
    below the smallest and one above the largest (empty in the reference), so a value the model
    never saw shows up instead of merging into a neighbour;
* **cdf**: up to ``cdf_points`` (value, share of the reference <= value) pairs at the reference
  percentiles, for the KS statistic (exact at those points; between them KS is a lower bound).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.column_stack([rng.normal(size=1000), rng.integers(0, 3, 1000)]).astype(np.float32)
>>> prof = build_profile(["a", "b"], x, rng.random(1000), bins=10)
>>> [len(prof.columns["a"].edges), prof.columns["b"].kind, int(prof.columns["b"].counts[1:4].sum())]
[9, 'discrete', 1000]
>>> ReferenceProfile.from_dict(prof.to_dict()) == prof
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from stream.errors import SchemaError
from stream.models.registry import ModelVersion

PROFILE_VERSION = 1
#: the metadata.json key that holds the profile
METADATA_KEY = "reference_profile"
#: the profile's name for the model's output
PREDICTION = "prediction"

ColumnKind = Literal["numeric", "discrete"]


@dataclass(frozen=True, eq=False)
class ColumnProfile:
    """One column's reference: bin edges with counts (missing last), and CDF points for KS."""

    kind: ColumnKind
    edges: np.ndarray  # inner edges, increasing; len(edges) + 1 value bins
    counts: np.ndarray  # reference count per value bin, then the missing count
    cdf_x: np.ndarray
    cdf_p: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.counts.sum())

    @property
    def missing_share(self) -> float:
        return float(self.counts[-1] / max(self.rows, 1))

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """Counts of ``values`` in this profile's bins (missing last), the same layout as ``counts``."""
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        idx = np.searchsorted(self.edges, v[ok], side="left")  # (e[i-1], e[i]] -> i
        out = np.bincount(idx, minlength=len(self.edges) + 1).astype(np.int64)
        return np.append(out, int((~ok).sum()))

    def cdf_counts(self, values: np.ndarray) -> np.ndarray:
        """How many finite ``values`` are <= each CDF point."""
        v = np.asarray(values, dtype=np.float64)
        v = np.sort(v[np.isfinite(v)])
        return np.searchsorted(v, self.cdf_x, side="right").astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "cdf": [self.cdf_x.tolist(), self.cdf_p.tolist()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ColumnProfile:
        edges = np.asarray(d["edges"], dtype=np.float64)
        counts = np.asarray(d["counts"], dtype=np.int64)
        if len(counts) != len(edges) + 2:
            raise SchemaError(
                f"column profile has {len(edges)} edges and {len(counts)} counts; "
                f"expected {len(edges) + 2} counts (one per bin, then missing)"
            )
        return cls(
            d["kind"],
            edges,
            counts,
            np.asarray(d["cdf"][0], dtype=np.float64),
            np.asarray(d["cdf"][1], dtype=np.float64),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ColumnProfile) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def column_profile(values: np.ndarray, bins: int = 10, cdf_points: int = 101) -> ColumnProfile:
    """The reference of one column (see the module docstring for the binning rules)."""
    if bins < 2:
        raise ValueError(f"a profile needs at least 2 bins, got {bins}")
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    distinct = np.unique(finite)
    kind: ColumnKind
    if len(distinct) <= bins:
        kind = "discrete"
        if len(distinct):
            # below the smallest | one bin per value (split at midpoints) | above the largest
            edges = np.concatenate(
                [[np.nextafter(distinct[0], -np.inf)], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1]]]
            )
        else:
            edges = np.zeros(0)
    else:
        kind = "numeric"
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    if len(finite):
        cdf_x = np.unique(np.quantile(finite, np.linspace(0, 1, cdf_points)))
        cdf_p = np.searchsorted(np.sort(finite), cdf_x, side="right") / len(finite)
    else:
        cdf_x = cdf_p = np.zeros(0)
    counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)
    return ColumnProfile(kind, edges, np.append(counts, len(v) - len(finite)).astype(np.int64), cdf_x, cdf_p)


@dataclass(frozen=True)
class ReferenceProfile:
    """Every feature's and the prediction's reference, in feature-list order (the prediction last)."""

    columns: dict[str, ColumnProfile]
    bins: int

    @property
    def features(self) -> list[str]:
        return [c for c in self.columns if c != PREDICTION]

    def to_dict(self) -> dict[str, Any]:
        # a list, not a mapping: the registry writes JSON with sorted keys, and the order is the feature order
        return {
            "profile_version": PROFILE_VERSION,
            "bins": self.bins,
            "columns": [{"name": name, **c.to_dict()} for name, c in self.columns.items()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        if d.get("profile_version") != PROFILE_VERSION:
            raise SchemaError(
                f"reference profile version {d.get('profile_version')!r} is not supported; expected {PROFILE_VERSION}"
            )
        return cls({c["name"]: ColumnProfile.from_dict(c) for c in d["columns"]}, int(d["bins"]))


def build_profile(
    names: Sequence[str], x: np.ndarray, predictions: np.ndarray | None = None, *, bins: int = 10, cdf_points: int = 101
) -> ReferenceProfile:
    """The profile of a feature matrix (columns in ``names`` order) and, if given, of the predictions.

    ``x`` and ``predictions`` may come from different rows (batch training profiles the features
    the model was fitted on and its predictions on held-out rows); each column keeps its own count.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"feature matrix has shape {x.shape}; expected (rows, {len(names)}) for {len(names)} names")
    if PREDICTION in names:
        raise ValueError(f"{PREDICTION!r} is reserved for the model's output; rename the feature")
    cols = {n: column_profile(x[:, i], bins, cdf_points) for i, n in enumerate(names)}
    if predictions is not None:
        cols[PREDICTION] = column_profile(np.asarray(predictions), bins, cdf_points)
    return ReferenceProfile(cols, bins)


def load_profile(mv: ModelVersion) -> ReferenceProfile | None:
    """The reference profile stored with a registered version; None for versions registered without one."""
    d = mv.metadata.get(METADATA_KEY)
    return None if d is None else ReferenceProfile.from_dict(d)
