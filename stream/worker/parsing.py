"""Input records to events: parsing and validation, and a dead letter for each record rejected."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from stream.events.records import DeadLetterRecord, ErrorKind
from stream.events.schema import EventRejected, dead_letter_envelope, parse_event

#: a dead-letter record: the input key and the envelope
DeadLetter = tuple[bytes | None, DeadLetterRecord]


class Record(NamedTuple):
    """One consumed Kafka record."""

    key: bytes | None
    value: bytes | None  # None: a tombstone, which goes to the dead-letter topic
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None


def dead_letter(rec: Record, reason: str, kind: ErrorKind, received_at_ms: int) -> DeadLetter:
    """The dead letter of ``rec``: rejected as ``kind`` for ``reason``."""
    return rec.key, dead_letter_envelope(
        rec.value or b"",
        rec.key,
        reason,
        kind,
        rec.topic,
        rec.partition,
        rec.offset,
        rec.timestamp_ms,
        received_at_ms=received_at_ms,
    )


class Parsed(NamedTuple):
    """A batch's valid events with their records, in order, and the dead letters of the others."""

    events: list[tuple[Record, dict[str, Any]]]
    dead_letters: list[DeadLetter]
    #: rejected records per reason (``EventRejected.kind``)
    invalid: dict[str, int]


def parse_records(records: Sequence[Record], max_event_bytes: int, received_at_ms: int) -> Parsed:
    """Parse and validate ``records``; each one rejected becomes a dead letter instead.

    >>> bad = Record(b"u", b'{"nope": 1}', "in", 0, 7, None)
    >>> parsed = parse_records([bad], 1024, 0)
    >>> parsed.events, parsed.invalid, parsed.dead_letters[0][1]["error_kind"]
    ([], {'invalid': 1}, 'invalid')
    """
    events: list[tuple[Record, dict[str, Any]]] = []
    dead: list[DeadLetter] = []
    invalid: dict[str, int] = {}
    for rec in records:
        try:
            events.append((rec, parse_event(rec.value, max_event_bytes)))
        except EventRejected as exc:
            invalid[exc.kind] = invalid.get(exc.kind, 0) + 1
            dead.append(dead_letter(rec, str(exc), exc.kind, received_at_ms))
    return Parsed(events, dead, invalid)
