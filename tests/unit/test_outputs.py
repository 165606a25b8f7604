"""Output records under the size limit: article chunks by size, produce error classification, settings."""

from __future__ import annotations

import random

import orjson
import pytest
from confluent_kafka import KafkaError

from stream.config import load_settings
from stream.errors import ConfigError
from stream.kafka.limits import record_budget
from stream.kafka.partitioner import partition_for
from stream.worker.publisher import ARTICLE_CHUNK, OutputError, article_messages, produce_error


def _events(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(f"a{rng.randrange(7)}", orjson.dumps({"i": i, "pad": "p" * rng.randrange(0, 16_000)})) for i in range(n)]


def test_article_records_stay_under_the_limit_and_keep_every_event_in_order() -> None:
    # 500 events of up to 16 KB (STREAM_MAX_EVENT_BYTES) make a chunk of about 4 MB by count alone
    events = _events(2000, seed=7)
    budget = record_budget(1024 * 1024)
    records = article_messages(events, 4, budget)
    assert all(len(value) <= budget for _, value in records)
    got: dict[int, list[bytes]] = {}
    for p, value in records:
        got.setdefault(p, []).extend(orjson.dumps(e) for e in orjson.loads(value))
    want: dict[int, list[bytes]] = {}
    for aid, raw in events:
        want.setdefault(partition_for(aid.encode(), 4), []).append(raw)
    assert got == want
    assert max(len(orjson.loads(v)) for _, v in records) < ARTICLE_CHUNK


def test_article_chunks_still_end_at_the_count_limit() -> None:
    records = article_messages([("a", b"{}")] * (2 * ARTICLE_CHUNK + 1), 1, 1 << 30)
    assert [len(orjson.loads(v)) for _, v in records] == [ARTICLE_CHUNK, ARTICLE_CHUNK, 1]


def test_an_event_as_large_as_allowed_is_one_record() -> None:
    budget = record_budget(65_536)
    raw = b'"' + b"x" * (budget - 4) + b'"'  # a JSON string: with the brackets exactly the budget
    assert article_messages([("a", raw), ("a", b"1")], 1, budget) == [(0, b"[" + raw + b"]"), (0, b"[1]")]


@pytest.mark.parametrize("code", [KafkaError._QUEUE_FULL])
def test_a_full_local_queue_is_retried(code: int) -> None:
    assert produce_error("t", KafkaError(code), 1_048_576) is None


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, "MSG_SIZE_TOO_LARGE"),
        (KafkaError._MSG_TIMED_OUT, "_MSG_TIMED_OUT"),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, "UNKNOWN_TOPIC_OR_PART"),
        (KafkaError._UNKNOWN_TOPIC, "_UNKNOWN_TOPIC"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "TOPIC_AUTHORIZATION_FAILED"),
        (KafkaError._FATAL, "_FATAL"),
    ],
)
def test_every_other_error_stops_the_worker_naming_topic_and_error(code: int, name: str) -> None:
    err = produce_error("out-topic", KafkaError(code), 1_048_576)
    assert isinstance(err, OutputError)
    assert (err.topic, err.error) == ("out-topic", name)
    assert str(err).startswith(f"output to topic 'out-topic' not delivered: {name} (")
    assert "\n" not in str(err)


def test_a_size_error_names_the_setting() -> None:
    err = produce_error("dlq", KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), 1_048_576)
    assert err is not None and "STREAM_MAX_MESSAGE_BYTES=1048576" in str(err)


def test_an_event_limit_over_one_record_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_MAX_MESSAGE_BYTES", "65536")
    monkeypatch.setenv("STREAM_MAX_EVENT_BYTES", "65000")
    with pytest.raises(
        ConfigError,
        match=r"^invalid configuration STREAM_MAX_EVENT_BYTES='65000': .*at most 64510 "
        r"bytes \(STREAM_MAX_MESSAGE_BYTES=65536 minus 1026 of framing\)$",
    ):
        load_settings()
    monkeypatch.setenv("STREAM_MAX_EVENT_BYTES", "64510")
    assert load_settings().max_event_bytes == 64510


def test_the_message_limit_has_a_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_MAX_MESSAGE_BYTES", "1000")
    with pytest.raises(ConfigError, match=r"^invalid configuration STREAM_MAX_MESSAGE_BYTES='1000': .*65536"):
        load_settings()
