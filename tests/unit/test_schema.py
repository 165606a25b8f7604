"""RawSchema builds the same events as faust's own raw Schema, without the serializer registry."""

from __future__ import annotations

from typing import Any

import faust
import pytest
from faust.types import TP, Message

from stream.kafka.schema import RawSchema


def _message(key: bytes | None, value: bytes | None, headers: Any) -> Message:
    return Message(
        topic="t",
        partition=3,
        offset=17,
        timestamp=1.5,
        timestamp_type=0,
        headers=headers,
        key=key,
        value=value,
        checksum=None,
        tp=TP("t", 3),
    )


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (b"u-1", b'{"a": 1}', []),
        (None, b"\xff\x00 not json", [("h", b"1")]),
        (b"u-2", None, None),  # a tombstone
        (b"", b"", {"x": b"y"}),
    ],
)
async def test_decodes_like_fausts_raw_schema(key: bytes | None, value: bytes | None, headers: Any) -> None:
    app = faust.App("raw-schema-test", broker="kafka://localhost:1")
    faust_decode = faust.Schema(key_serializer="raw", value_serializer="raw").compile(app)
    ours = await RawSchema().compile(app)(_message(key, value, headers))
    theirs = await faust_decode(_message(key, value, headers))
    assert type(ours) is type(theirs)
    assert (ours.key, ours.value, ours.headers) == (theirs.key, theirs.value, theirs.headers)
    assert ours.app is app
    assert (ours.message.partition, ours.message.offset) == (3, 17)
