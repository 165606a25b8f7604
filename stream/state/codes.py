"""Stable numeric codes for categorical values, and the compact event tuple the state consumes.

Codes must be identical in every process and across restarts (they live in RocksDB and in
trained models), so nothing here uses Python's salted ``hash()``: strings are hashed with CRC-32
of their UTF-8 bytes, small known vocabularies get fixed ordinals.

>>> country_code("DE"), country_code(None), device_code("mobile")
(83, 0, 2)
>>> str_hash("Berlin") == str_hash("Berlin") and str_hash(None)
0
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, NamedTuple

#: Event types in schema order; the index is the type code (< 16, fits 4 bits). The one Python copy of
#: the session_event schema's enum, spelled out because the codes are stored (states, models):
#: tests/unit/test_event_types.py fails until a type added to the schema is appended here.
EVENT_TYPES: tuple[str, ...] = (
    "session_start",
    "page_view",
    "article_view",
    "article_impression",
    "article_click",
    "video_play",
    "newsletter_signup",
    "subscription",
    "ad_request",
    "ad_impression",
    "ad_click",
    "session_end",
)
TYPE_CODE: dict[str, int] = {name: i for i, name in enumerate(EVENT_TYPES)}
T_SESSION_START = TYPE_CODE["session_start"]
T_ARTICLE_VIEW = TYPE_CODE["article_view"]
T_IMPRESSION = TYPE_CODE["article_impression"]
T_CLICK = TYPE_CODE["article_click"]
T_VIDEO = TYPE_CODE["video_play"]
T_NEWSLETTER = TYPE_CODE["newsletter_signup"]
T_SUBSCRIPTION = TYPE_CODE["subscription"]
T_SESSION_END = TYPE_CODE["session_end"]
#: Events that express a content choice (brand preference, distinct brands/categories).
CONSUMPTION_TYPES = frozenset({T_ARTICLE_VIEW, T_CLICK, T_VIDEO})
#: Order of events with the same timestamp: a session starts before and ends after the rest.
TYPE_RANK: tuple[int, ...] = tuple(
    0 if i == T_SESSION_START else (2 if i == T_SESSION_END else 1) for i in range(len(EVENT_TYPES))
)

DEVICE_TYPES: tuple[str, ...] = ("desktop", "mobile", "tablet")
_DEVICE = {d: i + 1 for i, d in enumerate(DEVICE_TYPES)}
#: Ordinals for known operating systems / browsers; anything else is OTHER, absent is 0.
OS_VOCAB: tuple[str, ...] = ("windows", "macos", "ios", "android", "linux", "chromeos")
BROWSER_VOCAB: tuple[str, ...] = ("chrome", "safari", "firefox", "edge", "samsung", "opera")
OTHER = 99
_OS_ALIASES = {
    "mac os": "macos",
    "mac os x": "macos",
    "os x": "macos",
    "osx": "macos",
    "ipados": "ios",
    "chrome os": "chromeos",
    "win": "windows",
}
_BROWSER_ALIASES = {
    "samsung internet": "samsung",
    "samsungbrowser": "samsung",
    "microsoft edge": "edge",
    "mobile safari": "safari",
    "chrome mobile": "chrome",
}


@lru_cache(maxsize=65_536)
def str_hash(value: str | None) -> int:
    """CRC-32 of the UTF-8 bytes (0 = absent); stable across processes, unlike ``hash()``."""
    if not value:
        return 0
    return zlib.crc32(value.encode()) or 1


def feature_code(h: int) -> float:
    """A 32-bit hash cut to 24 bits so that it is exact in float32 (used for hashed categoricals)."""
    return float(h & 0xFFFFFF)


def device_code(value: str | None) -> int:
    """1 desktop, 2 mobile, 3 tablet, 0 absent/unknown."""
    return _DEVICE.get(value or "", 0)


@lru_cache(maxsize=1024)
def os_code(value: str | None) -> int:
    """Ordinal in :data:`OS_VOCAB` (1-based), :data:`OTHER` for unknown names, 0 when absent."""
    if not value:
        return 0
    v = value.strip().lower()
    v = _OS_ALIASES.get(v, v)
    return OS_VOCAB.index(v) + 1 if v in OS_VOCAB else OTHER


@lru_cache(maxsize=1024)
def browser_code(value: str | None) -> int:
    """Ordinal in :data:`BROWSER_VOCAB` (1-based), :data:`OTHER` for unknown names, 0 when absent."""
    if not value:
        return 0
    v = value.strip().lower()
    v = _BROWSER_ALIASES.get(v, v)
    return BROWSER_VOCAB.index(v) + 1 if v in BROWSER_VOCAB else OTHER


@lru_cache(maxsize=1024)
def country_code(value: str | None) -> int:
    """ISO alpha-2 to 1..676 (AA=1, ZZ=676): stable with no vocabulary to ship; 0 when absent."""
    if not value or len(value) != 2 or not value.isascii() or not value.isupper():
        return 0
    return 1 + (ord(value[0]) - 65) * 26 + (ord(value[1]) - 65)


class Ev(NamedTuple):
    """One event reduced to what the state needs: ints only, so it is cheap to buffer and order.

    ``t`` event time (ms), ``typ`` type code, ``idh``/``sidh`` hashes of event and session id,
    categorical codes (0 = absent), ``dur`` the session_end ``duration_ms`` (-1 = absent),
    ``cents`` revenue in integer cents (integers add up identically in any order), ``pos`` the
    impression position (0 = absent).
    """

    t: int
    typ: int
    idh: int
    sidh: int
    brand: int
    category: int
    device: int
    os: int
    browser: int
    country: int
    city: int
    tz: int
    dur: int
    cents: int
    pos: int = 0


@lru_cache(maxsize=65_536)
def _place_codes(
    device: str | None, os: str | None, browser: str | None, country: str | None, city: str | None, tz: str | None
) -> tuple[int, int, int, int, int, int]:
    """Device, os, browser, country, city and time-zone codes: one cache lookup per event, not six."""
    return device_code(device), os_code(os), browser_code(browser), country_code(country), str_hash(city), tz_code(tz)


_crc32 = zlib.crc32
_new_tuple = tuple.__new__
_NO_FIELDS: Mapping[str, Any] = {}


def encode_event(event: Mapping[str, Any]) -> Ev:
    """Reduce a ``session_event`` v1 dict to an :class:`Ev` (raises KeyError on an unknown type)."""
    get = event.get
    dev = get("device") or _NO_FIELDS
    geo = get("geo") or _NO_FIELDS
    dur = get("duration_ms")
    rev = get("revenue")
    eid = event["event_id"]
    place = _place_codes(
        dev.get("type"), dev.get("os"), dev.get("browser"), geo.get("country"), geo.get("city"), geo.get("timezone")
    )
    # tuple.__new__ skips the NamedTuple's Python-level __new__; event ids are unique, so hashing
    # them directly beats the str_hash cache (every lookup a miss that evicts a useful entry)
    return _new_tuple(
        Ev,
        (
            int(event["event_time"]),
            TYPE_CODE[event["event_type"]],
            (_crc32(eid.encode()) or 1) if eid else 0,
            str_hash(event["session_id"]),
            str_hash(get("brand")),
            str_hash(get("category")),
            *place,
            -1 if dur is None else int(dur),
            0 if rev is None else round(float(rev) * 100),
            int(get("position") or 0),
        ),
    )


# --- time zones ---------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def tz_code(name: str | None) -> int:
    """Hash code of an IANA zone name; :func:`tz_name` maps it back for the zones Python knows."""
    return str_hash(name)


@lru_cache(maxsize=1)
def _tz_names() -> dict[int, str]:
    import zoneinfo

    return {str_hash(n): n for n in zoneinfo.available_timezones()}


def tz_name(code: int) -> str | None:
    """The IANA name for a :func:`tz_code`, or None if unknown (then UTC is used)."""
    return _tz_names().get(code) if code else None


@lru_cache(maxsize=1024)
def _zone(name: str) -> Any:
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def local_time(t_ms: int, tz: int) -> tuple[int, int, float]:
    """(local hour 0-23, weekday 0=Monday, UTC offset in hours) of ``t_ms`` in zone code ``tz``.

    Unknown zones are UTC. The offset is looked up once per zone and quarter hour (every real
    UTC-offset change happens on a quarter hour), the rest is integer arithmetic.

    >>> local_time(1_700_000_000_000, tz_code("Europe/Berlin"))
    (23, 1, 1.0)
    """
    off = _offset_ms(tz, t_ms // 900_000) if tz else 0
    local = t_ms + off
    # 1970-01-01 was a Thursday (weekday 3).
    return (local // 3_600_000) % 24, (local // 86_400_000 + 3) % 7, off / 3_600_000


@lru_cache(maxsize=16_384)
def _offset_ms(tz: int, quarter: int) -> int:
    from datetime import UTC, datetime

    name = tz_name(tz)
    zone = _zone(name) if name else None
    if zone is None:
        return 0
    off = datetime.fromtimestamp(quarter * 900.0, UTC).astimezone(zone).utcoffset()
    return int(off.total_seconds() * 1000) if off is not None else 0
