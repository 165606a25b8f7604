"""``generate(cfg) -> Dataset``: events as an Arrow table, ground truth beside them, file I/O.

Strings are never built per event in Python: ids are joined by Arrow compute kernels and
low-cardinality columns are dictionary decodes (code -> string), which keeps generation at millions
of events per second. JSON lines are assembled the same way, column by column.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from simulator import messy
from simulator.config import SimConfig
from simulator.population import NEVER, Tastes, Users, make_articles, make_tastes, make_users
from simulator.records import batch_to_dicts
from simulator.sessions import (
    AD_IMPRESSION,
    ARTICLE_IMPRESSION,
    NEWSLETTER_SIGNUP,
    SUBSCRIPTION,
    ad_ctr_by_day,
    generate_sessions,
    place_timezones,
)
from simulator.truth import first_event_day, user_daily
from simulator.world import BOT_PLACE, BRANDS, CATEGORIES, DEVICE_TYPES, PLACES, software_table, utc_offsets_minutes
from stream.errors import ConfigError
from stream.state.codes import EVENT_TYPES
from stream.state.labels import DAY_MS

#: Flat event columns (``stream.clickhouse.EVENT_COLUMNS`` order), event_time as int64 epoch ms.
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("user_id", pa.string()),
        ("session_id", pa.string()),
        ("event_time", pa.int64()),
        ("article_id", pa.string()),
        ("brand", pa.string()),
        ("category", pa.string()),
        ("position", pa.int32()),
        ("placement", pa.string()),
        ("request_id", pa.string()),
        ("revenue", pa.float64()),
        ("duration_ms", pa.int64()),
        ("device_type", pa.string()),
        ("device_os", pa.string()),
        ("device_browser", pa.string()),
        ("country", pa.string()),
        ("city", pa.string()),
        ("timezone", pa.string()),
        ("schema_version", pa.uint8()),
    ]
)
TRUTH_TABLES = (
    "users",
    "user_daily",
    "sessions",
    "article_impressions",
    "ad_impressions",
    "ad_arms",
    "articles",
    "user_preferences",
)
FORMATS = ("parquet", "jsonl")


def run_tag(cfg: SimConfig) -> str:
    """Short id prefix derived from the config, so datasets of different configs never collide."""
    d = cfg.to_dict()
    if not cfg.drift_day:  # the drift knobs do nothing then: ids stay those of the same world without them
        d = {k: v for k, v in d.items() if not k.startswith("drift_")}
    blob = json.dumps(d, sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=3).hexdigest()


def epoch_ms(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC).timestamp() * 1000)


def _ids(prefix: str, n: int) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n)), pa.string()), "")


def _lookup(vocab: Sequence[str] | pa.Array, codes: np.ndarray) -> pa.Array:
    """Strings by code; negative codes become nulls. (Decoding a dictionary array is several
    times faster than ``take`` on strings.)"""
    codes = np.asarray(codes)
    idx = pa.array(np.maximum(codes, 0), mask=codes < 0) if (codes < 0).any() else pa.array(codes)
    values = vocab if isinstance(vocab, pa.Array) else pa.array(list(vocab), pa.string())
    return pa.DictionaryArray.from_arrays(idx, values).cast(pa.string())


@dataclass
class Dataset:
    """A generated (or re-read) dataset: events in delivery order plus ground-truth tables.

    Delivery order equals event-time order unless ``late_share`` or ``duplicate_share`` is set.
    ``malformed_positions[k]`` is the number of valid events delivered before ``malformed[k]``.
    """

    config: SimConfig
    table: pa.Table
    truth_tables: dict[str, pa.Table]
    malformed: list[bytes] = field(default_factory=list)
    malformed_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    # --- views ---------------------------------------------------------------------------
    @cached_property
    def events(self) -> pd.DataFrame:
        """Events as flat columns (``EVENT_SCHEMA``), nullable pandas dtypes."""
        return self.table.to_pandas(types_mapper=_pandas_type)

    @cached_property
    def truth(self) -> dict[str, pd.DataFrame]:
        return {k: t.to_pandas() for k, t in self.truth_tables.items()}

    def __len__(self) -> int:
        return self.table.num_rows

    def iter_events(self, batch_size: int = 65_536) -> Iterator[dict[str, Any]]:
        """``session_event`` v1 dicts in delivery order (absent fields are left out)."""
        for batch in self.table.to_batches(max_chunksize=batch_size):
            yield from batch_to_dicts(batch)

    def iter_payloads(self) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` records as produced to Kafka, malformed ones interleaved."""
        pos = self.malformed_positions
        k = 0
        for i, ev in enumerate(self.iter_events()):
            while k < len(pos) and pos[k] <= i:
                yield b"", self.malformed[k]
                k += 1
            yield ev["user_id"].encode(), orjson.dumps(ev)
        for j in range(k, len(self.malformed)):
            yield b"", self.malformed[j]

    # --- files ---------------------------------------------------------------------------
    def write(self, directory: str | Path, formats: Sequence[str] = FORMATS) -> Path:
        """Write ``events.*``, ``truth/*.{parquet,jsonl}``, ``malformed.jsonl`` and ``config.json``."""
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise ConfigError(f"unknown output format {bad or formats!r}; expected any of {list(FORMATS)}")
        out = Path(directory)
        (out / "truth").mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        if "parquet" in formats:
            pq.write_table(self.table, out / "events.parquet", compression="zstd")
            for name, t in self.truth_tables.items():
                pq.write_table(t, out / "truth" / f"{name}.parquet", compression="zstd")
        if "jsonl" in formats:
            with open(out / "events.jsonl", "wb") as f:
                for batch in self.table.to_batches(max_chunksize=500_000):
                    _write_lines(f, event_json_lines(pa.Table.from_batches([batch])))
            for name, t in self.truth_tables.items():
                with open(out / "truth" / f"{name}.jsonl", "wb") as f:
                    for batch in t.to_batches(max_chunksize=500_000):
                        _write_lines(f, flat_json_lines(pa.Table.from_batches([batch])))
        if self.malformed:
            with open(out / "malformed.jsonl", "wb") as f:
                for pos, rec in zip(self.malformed_positions.tolist(), self.malformed, strict=True):
                    f.write(b"%d\t" % pos + rec + b"\n")
        return out

    @classmethod
    def read(cls, directory: str | Path) -> Dataset:
        """Read a dataset written by :meth:`write` (Parquet preferred, else JSONL)."""
        src = Path(directory)
        if not (src / "config.json").exists():
            raise ConfigError(f"not a simulator dataset: {str(src)!r} has no config.json")
        cfg = SimConfig.from_dict(json.loads((src / "config.json").read_text()))
        if (src / "events.parquet").exists():
            table = pq.read_table(src / "events.parquet")
            truth = {
                n: pq.read_table(src / "truth" / f"{n}.parquet")
                for n in TRUTH_TABLES
                if (src / "truth" / f"{n}.parquet").exists()
            }
        elif (src / "events.jsonl").exists():
            table = _events_from_jsonl(src / "events.jsonl")
            truth = {}
            for n in TRUTH_TABLES:
                p = src / "truth" / f"{n}.jsonl"
                if p.exists():
                    truth[n] = pa.Table.from_pylist([orjson.loads(x) for x in p.read_bytes().splitlines()])
        else:
            raise ConfigError(f"no events.parquet or events.jsonl in {str(src)!r}")
        malformed: list[bytes] = []
        positions: list[int] = []
        if (src / "malformed.jsonl").exists():
            for line in (src / "malformed.jsonl").read_bytes().split(b"\n"):
                if line:
                    pos, rec = line.split(b"\t", 1)
                    positions.append(int(pos))
                    malformed.append(rec)
        return cls(cfg, table, truth, malformed, np.asarray(positions, dtype=np.int64))


def _pandas_type(t: pa.DataType) -> Any:
    if pa.types.is_integer(t):
        return pd.Int64Dtype() if t != pa.uint8() else pd.UInt8Dtype()
    if pa.types.is_floating(t):
        return pd.Float64Dtype()
    return None


# --- JSON lines ---------------------------------------------------------------------------
def _field(key: str, col: pa.Array | pa.ChunkedArray, quoted: bool) -> Any:
    if quoted:
        return pc.binary_join_element_wise(f'"{key}":"', col, '"', "")
    return pc.binary_join_element_wise(f'"{key}":', pc.cast(col, pa.string()), "")


def _object(key: str, parts: list[Any], present: Any) -> Any:
    inner = pc.binary_join_element_wise(*parts, ",", null_handling="skip")
    obj = pc.binary_join_element_wise(f'"{key}":{{', inner, "}", "")
    return pc.if_else(present, obj, pa.scalar(None, pa.string()))


_NUMERIC = {"event_time", "position", "revenue", "duration_ms", "schema_version"}


def event_json_lines(t: pa.Table) -> pa.Array:
    """Each row as ``orjson.dumps(session_event dict)`` would write it, plus a newline.

    Generated strings never contain quotes, backslashes or control characters (ids and a fixed
    vocabulary), so they need no escaping; a test compares lines with orjson's output.
    """
    top = [
        "schema_version",
        "event_id",
        "event_type",
        "user_id",
        "session_id",
        "event_time",
        "article_id",
        "brand",
        "category",
        "position",
        "placement",
        "request_id",
        "revenue",
        "duration_ms",
    ]
    parts = [_field(c, t[c], c not in _NUMERIC) for c in top]
    parts.append(
        _object(
            "device",
            [
                _field("type", t["device_type"], True),
                _field("os", t["device_os"], True),
                _field("browser", t["device_browser"], True),
            ],
            pc.is_valid(t["device_type"]),
        )
    )
    parts.append(
        _object(
            "geo",
            [
                _field("country", t["country"], True),
                _field("city", t["city"], True),
                _field("timezone", t["timezone"], True),
            ],
            pc.is_valid(t["country"]),
        )
    )
    body = pc.binary_join_element_wise(*parts, ",", null_handling="skip")
    return _combine(pc.binary_join_element_wise("{", body, "}\n", ""))


def flat_json_lines(t: pa.Table) -> pa.Array:
    """JSON lines of a flat table (truth tables): strings quoted, numbers and booleans bare."""
    parts = [_field(name, t[name], pa.types.is_string(t.schema.field(name).type)) for name in t.column_names]
    body = pc.binary_join_element_wise(*parts, ",", null_handling="skip")
    return _combine(pc.binary_join_element_wise("{", body, "}\n", ""))


def _combine(arr: Any) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _write_lines(f: Any, lines: pa.Array) -> None:
    """Write a string array's values buffer directly: the lines already end with a newline."""
    if len(lines) == 0:
        return
    lines = lines.cast(pa.large_string()) if lines.type != pa.large_string() else lines
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset : lines.offset + len(lines) + 1]
    data = lines.buffers()[2]
    f.write(memoryview(data)[int(offsets[0]) : int(offsets[-1])])


def events_to_table(events: Sequence[dict[str, Any]]) -> pa.Table:
    """Flatten ``session_event`` dicts into ``EVENT_SCHEMA`` columns."""
    cols: dict[str, list[Any]] = {f.name: [] for f in EVENT_SCHEMA}
    nested = {
        "device_type": ("device", "type"),
        "device_os": ("device", "os"),
        "device_browser": ("device", "browser"),
        "country": ("geo", "country"),
        "city": ("geo", "city"),
        "timezone": ("geo", "timezone"),
    }
    for ev in events:
        for name, values in cols.items():
            if name in nested:
                outer, inner = nested[name]
                values.append((ev.get(outer) or {}).get(inner))
            else:
                values.append(ev.get(name))
    return pa.table(cols, schema=EVENT_SCHEMA)


def _events_from_jsonl(path: Path) -> pa.Table:
    return events_to_table([orjson.loads(line) for line in path.read_bytes().splitlines() if line])


# --- generation ---------------------------------------------------------------------------
def generate(cfg: SimConfig | None = None) -> Dataset:
    """Simulate ``cfg.n_users`` users for ``cfg.days`` days. Same config -> identical dataset."""
    cfg = cfg or SimConfig()
    # the sixth stream (tastes) came later: spawn(6)[:5] equals spawn(5), so the others are unchanged
    seeds = np.random.SeedSequence(cfg.seed).spawn(6)
    rng_users, rng_articles, rng_ads, rng_sessions, rng_messy, rng_tastes = (np.random.default_rng(s) for s in seeds)
    tag = run_tag(cfg)
    t0 = epoch_ms(cfg.start)

    # Step 1. World: users, articles, ad arms, timezone offsets.
    users = make_users(cfg, rng_users)
    arts = make_articles(cfg, rng_articles)
    tastes = make_tastes(cfg, users, arts.n, rng_tastes)
    ctr = ad_ctr_by_day(cfg, rng_ads)
    tz_names, place_tz = place_timezones()
    tz_off = utc_offsets_minutes(tz_names, cfg.start, cfg.days)

    # Step 2. Sessions and events (codes).
    sess, ev = generate_sessions(cfg, users, arts, tastes, ctr, tz_off, place_tz, rng_sessions, rng_tastes)

    # Step 3. Strings, by lookup.
    user_ids = _ids(f"{tag}u", users.n)
    session_ids = _ids(f"{tag}s", sess.n)
    ev_user = sess.user[ev.session]
    sid = _lookup(session_ids, ev.session)
    event_ids = pc.binary_join_element_wise(sid, pc.cast(pa.array(ev.seq), pa.string()), "-")
    has_req = ev.request >= 0
    req_seq = pc.cast(pa.array(ev.seq[np.maximum(ev.request, 0)], mask=~has_req), pa.string())
    request_ids = pc.binary_join_element_wise(sid, req_seq, "-")
    os_names, browsers, _, _ = software_table()
    dev = sess.device[ev.session].astype(np.int64)
    place = users.place[ev_user].astype(np.int64)
    countries = [p[0] for p in PLACES] + [BOT_PLACE[0]]
    cities = [p[1] for p in PLACES] + [BOT_PLACE[1]]
    tzs = [p[2] for p in PLACES] + [BOT_PLACE[2]]
    place = np.where(place < 0, len(PLACES), place)
    art = ev.article
    article_ids = _ids(f"{tag}a", arts.n)
    table = pa.table(
        {
            "event_id": event_ids,
            "event_type": _lookup(EVENT_TYPES, ev.kind),
            "user_id": _lookup(user_ids, ev_user),
            "session_id": sid,
            "event_time": pa.array(ev.time_ms, pa.int64()),
            "article_id": _lookup(article_ids, art),
            "brand": _lookup(BRANDS, np.where(art >= 0, arts.brand[np.maximum(art, 0)], -1)),
            "category": _lookup(CATEGORIES, np.where(art >= 0, arts.category[np.maximum(art, 0)], -1)),
            "position": pa.array(ev.position.astype(np.int32), mask=ev.position == 0),
            "placement": _lookup(cfg.placements, ev.placement),
            "request_id": request_ids,
            "revenue": pa.array(ev.revenue, mask=np.isnan(ev.revenue)),
            "duration_ms": pa.array(ev.duration_ms, mask=ev.duration_ms < 0),
            "device_type": _lookup(DEVICE_TYPES, dev),
            "device_os": _lookup(os_names, users.os_code[ev_user, dev]),
            "device_browser": _lookup(browsers, users.browser_code[ev_user, dev]),
            "country": _lookup(countries, place),
            "city": _lookup(cities, place),
            "timezone": _lookup(tzs, place),
            "schema_version": pa.array(np.ones(ev.n, np.uint8)),
        },
        schema=EVENT_SCHEMA,
    )

    # Step 4. Ground truth.
    s_day = sess.day.astype(np.int64)
    for_kind = {k: ev.kind == k for k in (NEWSLETTER_SIGNUP, SUBSCRIPTION, ARTICLE_IMPRESSION, AD_IMPRESSION)}
    first_nl = first_event_day(users.n, ev_user, s_day[ev.session], for_kind[NEWSLETTER_SIGNUP])
    first_sub = first_event_day(users.n, ev_user, s_day[ev.session], for_kind[SUBSCRIPTION])
    daily = user_daily(cfg, users, first_nl, first_sub)
    imp = np.flatnonzero(for_kind[ARTICLE_IMPRESSION])
    ads = np.flatnonzero(for_kind[AD_IMPRESSION])
    ads_pa = pa.array(ads)
    n_pl = len(cfg.placements)
    arm_day, arm_pl, arm_dev = (
        a.ravel() for a in np.meshgrid(np.arange(cfg.days), np.arange(n_pl), np.arange(3), indexing="ij")
    )
    place_u = np.where(users.place < 0, len(PLACES), users.place).astype(np.int64)
    truth = {
        "users": pa.table(
            {
                "user_id": user_ids,
                "is_bot": pa.array(users.is_bot),
                "join_day": pa.array(users.join_day.astype(np.int32)),
                "churn_day": pa.array(users.death_day.astype(np.int32), mask=users.death_day >= NEVER),
                "engagement": pa.array(users.engagement),
                "sessions_per_day": pa.array(users.rate),
                "churn_hazard_daily": pa.array(users.hazard),
                "click_logit": pa.array(users.click_logit),
                "video_prob": pa.array(users.video_prob),
                "newsletter_prob": pa.array(users.newsletter_prob),
                "subscription_prob": pa.array(users.subscription_prob),
                "newsletter_member_at_start": pa.array(users.newsletter_init),
                "subscriber_at_start": pa.array(users.subscriber_init),
                "primary_device": _lookup(DEVICE_TYPES, users.primary_device.astype(np.int64)),
                "country": _lookup(countries, place_u),
                "city": _lookup(cities, place_u),
                "timezone": _lookup(tzs, place_u),
            }
        ),
        "user_daily": pa.table(
            {
                "user_id": _lookup(user_ids, daily["user"]),
                "day": pa.array(daily["day"].astype(np.int32)),
                "cutoff_time": pa.array(t0 + daily["day"].astype(np.int64) * DAY_MS),
                "alive": pa.array(daily["alive"]),
                "p_churn_30d": pa.array(daily["p_churn_30d"]),
                "p_convert_14d": pa.array(daily["p_convert_14d"]),
                "p_high_value_14d": pa.array(daily["p_high_value_14d"]),
            }
        ),
        "sessions": pa.table(
            {
                "session_id": session_ids,
                "user_id": _lookup(user_ids, sess.user),
                "start_time": pa.array(sess.start_ms),
                "device_type": _lookup(DEVICE_TYPES, sess.device.astype(np.int64)),
                "expected_engagement": pa.array(sess.expected_engagement),
            }
        ),
        "article_impressions": pa.table(
            {
                "event_id": event_ids.take(pa.array(imp)),
                "p_click": pa.array(ev.p_click[imp]),
            }
        ),
        "ad_impressions": pa.table(
            {
                "event_id": event_ids.take(ads_pa),
                "request_id": table["request_id"].take(ads_pa),
                "placement": table["placement"].take(ads_pa),
                "device_type": table["device_type"].take(ads_pa),
                "p_click": pa.array(ev.p_click[ads]),
            }
        ),
        "ad_arms": pa.table(
            {
                "day": pa.array(arm_day.astype(np.int32)),
                "day_start": pa.array(t0 + arm_day.astype(np.int64) * DAY_MS),
                "placement": _lookup(cfg.placements, arm_pl),
                "device_type": _lookup(DEVICE_TYPES, arm_dev),
                "ctr": pa.array(ctr[arm_day, arm_pl, arm_dev]),
            }
        ),
        # What the oracle ranking needs: a user's preference for an article is quality_logit + the
        # user's brand, category and topic logits (user_preferences), and how often the article is
        # shown at a time follows from its exposure columns; see the DDL's comments.
        "articles": pa.table(
            {
                "article_id": article_ids,
                "publish_time": pa.array(t0 + arts.publish_ms),
                "brand_index": pa.array(arts.brand.astype(np.int32)),
                "category_index": pa.array(arts.category.astype(np.int32)),
                "topic": pa.array(tastes.topic.astype(np.int32)),
                "quality_logit": pa.array(cfg.quality_weight * arts.quality),
                # exposure: feeds and direct visits draw an article in proportion to
                # exp(popularity_logit - age_hours / popularity_decay_hours) while it is younger
                # than feed_max_age_hours (population.sample_articles)
                "popularity_logit": pa.array(cfg.quality_popularity * arts.quality),
                "popularity_decay_hours": pa.array(np.full(arts.n, cfg.popularity_decay_hours)),
                "feed_max_age_hours": pa.array(np.full(arts.n, cfg.article_max_age_hours)),
            }
        ),
        "user_preferences": _preferences(cfg, user_ids, users, tastes),
    }

    # Step 5. Messy reality (each off unless its share is > 0).
    table, malformed, positions = messy.apply(cfg, table, rng_messy)
    return Dataset(cfg, table, truth, malformed, positions)


def _preferences(cfg: SimConfig, user_ids: pa.Array, users: Users, tastes: Tastes) -> pa.Table:
    """Long table (user_id, kind, key, logit): each user's preference term per brand, category and topic."""
    parts = [
        ("brand", cfg.affinity_weight * users.brand_logaff),
        ("category", cfg.affinity_weight * users.category_logaff),
        ("topic", cfg.taste_weight * tastes.topic_logaff),
    ]
    uid, kind, key, logit = [], [], [], []
    for name, m in parts:
        n, k = m.shape
        uid.append(np.repeat(np.arange(n), k))
        kind += [name] * (n * k)
        key.append(np.tile(np.arange(k, dtype=np.int32), n))
        logit.append(m.ravel())
    return pa.table(
        {
            "user_id": user_ids.take(pa.array(np.concatenate(uid))),
            "kind": pa.array(kind, pa.string()),
            "key": pa.array(np.concatenate(key)),
            "logit": pa.array(np.concatenate(logit)),
        }
    )
