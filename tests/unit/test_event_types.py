"""The event vocabulary has one source, the ``session_event`` schema; the state's codes are checked against it.

The codes are stored (RocksDB states, trained models), so ``stream.state.codes.EVENT_TYPES`` is
spelled out rather than read from the schema at run time: a type added to the schema must be added
there too, at the end, with a new state format. These tests fail until it is.
"""

from __future__ import annotations

import pytest

from stream.events.schema import load_schema, validate
from stream.state.codes import EVENT_TYPES, TYPE_CODE, encode_event

SCHEMA_TYPES: tuple[str, ...] = tuple(load_schema("session_event")["properties"]["event_type"]["enum"])


def test_state_codes_are_the_schema_enum_in_its_order() -> None:
    assert EVENT_TYPES == SCHEMA_TYPES, (
        "stream/state/codes.py EVENT_TYPES must equal the session_event schema's enum, in order "
        "(append a new type at the end: the codes are stored)"
    )


@pytest.mark.parametrize("event_type", SCHEMA_TYPES)
def test_every_type_the_schema_accepts_encodes(event_type: str) -> None:
    # Every optional field filled in: the schema's per-type requirements are all met.
    event = {
        "schema_version": 1,
        "event_id": "e1",
        "event_type": event_type,
        "user_id": "u1",
        "session_id": "s1",
        "event_time": 1_700_000_000_000,
        "article_id": "a1",
        "position": 1,
        "request_id": "r1",
        "placement": "top",
        "revenue": 1.5,
        "duration_ms": 10,
    }
    validate("session_event", event)
    assert encode_event(event).typ == SCHEMA_TYPES.index(event_type)


def test_the_simulator_uses_the_state_codes() -> None:
    from simulator import sessions

    assert {name: getattr(sessions, name.upper()) for name in SCHEMA_TYPES} == TYPE_CODE
