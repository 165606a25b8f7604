"""The fixed vocabulary of the simulated world: places, brands, categories, devices.

Kept as plain tuples so that the generator can index them with integer codes and write
dictionary-encoded columns without building a string per event.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np

#: (country ISO2, city, IANA timezone, weight): a user's geo is one row, for life.
PLACES: tuple[tuple[str, str, str, float], ...] = (
    ("US", "New York", "America/New_York", 9.0),
    ("US", "Chicago", "America/Chicago", 4.0),
    ("US", "Los Angeles", "America/Los_Angeles", 5.0),
    ("CA", "Toronto", "America/Toronto", 2.5),
    ("CA", "Vancouver", "America/Vancouver", 1.2),
    ("BR", "São Paulo", "America/Sao_Paulo", 2.0),
    ("GB", "London", "Europe/London", 10.0),
    ("GB", "Manchester", "Europe/London", 3.0),
    ("IE", "Dublin", "Europe/Dublin", 1.2),
    ("DE", "Berlin", "Europe/Berlin", 4.0),
    ("DE", "München", "Europe/Berlin", 2.5),
    ("FR", "Paris", "Europe/Paris", 4.0),
    ("NL", "Amsterdam", "Europe/Amsterdam", 2.0),
    ("ES", "Madrid", "Europe/Madrid", 2.0),
    ("IT", "Milan", "Europe/Rome", 1.8),
    ("SE", "Stockholm", "Europe/Stockholm", 1.0),
    ("ZA", "Johannesburg", "Africa/Johannesburg", 1.0),
    ("IN", "Mumbai", "Asia/Kolkata", 3.0),
    ("IN", "Bengaluru", "Asia/Kolkata", 2.0),
    ("SG", "Singapore", "Asia/Singapore", 1.2),
    ("JP", "Tokyo", "Asia/Tokyo", 1.5),
    ("AU", "Sydney", "Australia/Sydney", 2.5),
    ("AU", "Melbourne", "Australia/Melbourne", 1.8),
    ("NZ", "Auckland", "Pacific/Auckland", 0.6),
)
#: Where bots come from: a data-centre town.
BOT_PLACE = ("US", "Ashburn", "America/New_York")

BRANDS: tuple[str, ...] = (
    "daily_herald",
    "tech_pulse",
    "sport_arena",
    "money_week",
    "style_edit",
    "travel_scout",
)
CATEGORIES: tuple[str, ...] = (
    "news",
    "politics",
    "business",
    "technology",
    "science",
    "sports",
    "entertainment",
    "lifestyle",
    "travel",
    "opinion",
)
#: Which categories each brand mostly publishes (unnormalised weights, BRANDS x CATEGORIES).
BRAND_CATEGORY_MIX = np.array(
    [
        [6, 5, 2, 1, 1, 1, 1, 1, 0.5, 3],
        [1, 0.2, 2, 8, 4, 0.1, 0.5, 0.5, 0.2, 1],
        [1, 0.2, 0.5, 0.2, 0.1, 10, 1, 0.5, 0.2, 1],
        [1, 2, 8, 2, 0.5, 0.2, 0.2, 1, 0.2, 2],
        [0.5, 0.1, 0.5, 0.5, 0.2, 0.5, 4, 8, 2, 1],
        [0.5, 0.1, 0.5, 0.2, 0.5, 0.5, 1, 3, 10, 0.5],
    ]
)

DEVICE_TYPES: tuple[str, ...] = ("desktop", "mobile", "tablet")
#: (os, browser, weight) per device type; a user has one os/browser per device type.
SOFTWARE: tuple[tuple[tuple[str, str, float], ...], ...] = (
    (
        ("Windows", "Chrome", 5.0),
        ("Windows", "Edge", 2.0),
        ("macOS", "Safari", 2.0),
        ("macOS", "Chrome", 2.0),
        ("Windows", "Firefox", 0.8),
        ("Linux", "Firefox", 0.4),
    ),
    (("Android", "Chrome", 5.0), ("iOS", "Safari", 4.5), ("Android", "Samsung Internet", 1.0), ("iOS", "Chrome", 0.8)),
    (("iPadOS", "Safari", 3.0), ("Android", "Chrome", 1.5)),
)
BOT_SOFTWARE = ("Linux", "HeadlessChrome")


def software_table() -> tuple[list[str], list[str], np.ndarray, list[np.ndarray]]:
    """Flattened software vocabulary: os names, browser names, codes per device, weights."""
    os_names: list[str] = []
    browsers: list[str] = []
    codes_by_device: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for options in SOFTWARE:
        codes = []
        for os_name, browser, _w in options:
            for name, vocab in ((os_name, os_names), (browser, browsers)):
                if name not in vocab:
                    vocab.append(name)
            codes.append((os_names.index(os_name), browsers.index(browser)))
        codes_by_device.append(np.array(codes, dtype=np.int16))
        w = np.array([o[2] for o in options])
        weights.append(w / w.sum())
    for vocab, name in ((os_names, BOT_SOFTWARE[0]), (browsers, BOT_SOFTWARE[1])):
        if name not in vocab:
            vocab.append(name)
    return os_names, browsers, np.array(codes_by_device, dtype=object), weights


def utc_offsets_minutes(timezones: list[str], start: dt.date, days: int) -> np.ndarray:
    """UTC offset (minutes) of each timezone at noon UTC of each day: shape (n_tz, days).

    Noon is used so that a day's offset is well defined; DST switches (at night, local time)
    shift at most the first hours of the switch day, which the rhythm does not notice.
    """
    out = np.zeros((len(timezones), days), dtype=np.int32)
    for i, name in enumerate(timezones):
        tz = ZoneInfo(name)
        for d in range(days):
            noon = dt.datetime.combine(start + dt.timedelta(days=d), dt.time(12), tzinfo=dt.UTC)
            off = noon.astimezone(tz).utcoffset()
            out[i, d] = int(off.total_seconds() // 60) if off is not None else 0
    return out
