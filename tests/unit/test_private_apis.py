"""The private parts of other libraries the worker relies on are still there and still mean the same.

Each is named in a ``noqa: SLF001`` (or a comment) where it is used; a version pin alone would let a
minor release change them silently. A failure here names what to re-check before raising a pin.
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect

import faust
import faust.streams
from confluent_kafka import KafkaError
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from prometheus_client import CollectorRegistry, Histogram

#: sha256 of faust 0.15.3's ``Consumer._drain_messages``, which stream/kafka/transport.py copies
DRAIN_MESSAGES_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


def test_faust_drain_messages_is_the_loop_the_transport_copies() -> None:
    source = inspect.getsource(Consumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest() == DRAIN_MESSAGES_SHA256, (
        "faust's Consumer._drain_messages changed: re-copy it into stream/kafka/transport.py"
    )


def test_faust_current_event_is_a_context_variable() -> None:
    # agents/batching.enter_partition sets it so table writes of a batch task find their partition
    assert isinstance(faust.streams._current_event, contextvars.ContextVar)


def test_faust_app_has_the_monitor_and_producer_buffer_the_worker_replaces_and_sizes() -> None:
    app = faust.App("private-apis-probe", broker="kafka://localhost:1", store="memory://")
    app.on_init_dependencies()
    assert app.monitor in app.sensors  # WorkerApp.on_init_dependencies removes it
    assert isinstance(app.producer.buffer, ProducerBuffer)
    assert isinstance(app.producer.buffer.max_messages, int)  # WorkerApp sizes it to the batch


def test_prometheus_histogram_fields_used_by_observe_many() -> None:
    h = Histogram("probe_seconds", "probe", buckets=(0.1, 1.0), registry=CollectorRegistry())
    h.observe(0.5)
    assert list(h._upper_bounds) == [0.1, 1.0, float("inf")]
    assert [b.get() for b in h._buckets] == [0.0, 1.0, 0.0]
    assert h._sum.get() == 0.5


def test_librdkafka_local_error_codes_exist() -> None:
    for name in ("_AUTHENTICATION", "_SSL", "_PARTITION_EOF", "_QUEUE_FULL", "_MSG_TIMED_OUT", "_UNKNOWN_TOPIC"):
        assert isinstance(getattr(KafkaError, name), int), name


def test_faust_recovery_flushes_buffers_on_demand() -> None:
    # app._apply_at_once applies other workers' GlobalTable writes at once through these
    from faust.tables.recovery import Recovery

    assert isinstance(inspect.getattr_static(Recovery, "in_recovery"), property | bool)
    assert list(inspect.signature(Recovery.flush_buffers).parameters) == ["self"]


def test_aiokafka_rejoin_request_and_faust_consumer_thread() -> None:
    # LedgerConsumer.rejoin (the start-up stall recovery) asks aiokafka's coordinator through these
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert list(inspect.signature(GroupCoordinator.request_rejoin).parameters) == ["self"]
    assert list(inspect.signature(AIOKafkaConsumerThread._ensure_consumer).parameters) == ["self"]


def test_aiokafka_reads_past_control_records_and_keeps_its_position_where_the_transport_reads_it() -> None:
    # stream/kafka/transport.py: more_waiting counts on aiokafka's read position moving past a
    # transaction's commit marker, and FetchThread.read_position reads that position
    from aiokafka import AIOKafkaConsumer
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.consumer.subscription_state import TopicPartitionState

    unpack = inspect.getsource(PartitionRecords._unpack_records)
    assert "if next_batch.is_control_batch:\n                self.next_fetch_offset = next_batch.next_offset" in unpack
    assert "self._subscription = SubscriptionState(" in inspect.getsource(AIOKafkaConsumer.__init__)
    assert "self._position = position" in inspect.getsource(TopicPartitionState.consumed_to)
