"""Record size limits, all derived from one setting: ``STREAM_MAX_MESSAGE_BYTES``.

Kafka refuses a record batch larger than the topic's ``max.message.bytes`` (the broker's
``message.max.bytes`` when the topic sets none). librdkafka refuses, at ``produce()``, a record
whose key, value and framing exceed the producer's ``message.max.bytes``, and fills a batch with
at most that many bytes of records, to which it adds the batch header. The worker gives topics
and the embedded broker the setting itself, the producer the setting minus the batch header
(:func:`producer_max_bytes`), and keeps every record it produces within :func:`record_budget`:
no output is ever refused for its size.

>>> record_budget(1_048_576)
1047552
>>> record_budget(1_048_576, b"user-1")
1047546
"""

from __future__ import annotations

#: Kafka's default record-batch limit (the broker's is 1 MiB + 12 bytes of legacy overhead)
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

#: The smallest limit the worker accepts: every prediction, decision and shrunk dead letter
#: (``stream.events.schema.fit_dead_letter``) is far below it.
MIN_MAX_MESSAGE_BYTES = 64 * 1024

#: Room for the record batch header (61 bytes) that librdkafka adds to a batch of at most its
#: ``message.max.bytes``. Compression cannot push a batch over the limit: librdkafka sends a
#: batch uncompressed when compressing made it larger.
BATCH_HEADER_BYTES = 128

#: Bytes a record may not use for its key and value: the batch header allowance, the record's
#: own header (at most 36 bytes) and slack.
FRAMING_BYTES = 1024


def producer_max_bytes(max_message_bytes: int) -> int:
    """librdkafka's ``message.max.bytes``: its largest batch plus header fits the topic's limit."""
    return max_message_bytes - BATCH_HEADER_BYTES


def record_budget(max_message_bytes: int, key: bytes | None = None) -> int:
    """The largest value a record with ``key`` may have under ``max_message_bytes``."""
    return max_message_bytes - FRAMING_BYTES - (len(key) if key else 0)
