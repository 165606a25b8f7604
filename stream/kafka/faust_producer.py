"""faust's own producer on librdkafka: table changelogs (and any other faust send) through confluent-kafka.

faust writes every table change to the table's changelog with its aiokafka producer: about 90 µs
of Python per record (aiokafka builds and compresses record batches and parses the broker's
answers on the event loop). :class:`LibrdkafkaProducer` keeps faust's producer interface and its
buffer, and hands each record to a confluent-kafka producer instead (librdkafka: a few µs per
record in Python; batching, lz4 and the broker round trips run on librdkafka's threads).

What stays as faust does it:

- **Partitions.** A table write names its partition (the current event's); a send without one
  and with a key gets Java's murmur2 partition from librdkafka (``murmur2_random``), the same as
  aiokafka's default partitioner; :meth:`key_partition` is still aiokafka's.
- **Results.** :meth:`send` returns a future of faust's ``RecordMetadata``: faust's topic sets it
  on the ``FutureMessage`` and runs the table's callback, which keeps the changelog offset in
  RocksDB (where a recovery starts reading). Delivery reports are served by a thread of their
  own and handed to the event loop once per burst (:meth:`_delivered`).
- **Back-pressure.** A table write (faust's ``send_soon``) is handed to librdkafka at once
  (:meth:`send_soon`: what faust's buffer task and topic would do for it, minus the queue, the
  task switch and a future per record). When librdkafka's queue is full, it and every later
  one go to faust's producer buffer as before, in order, until the buffer is drained: the buffer
  stops the streams when it holds more than its ``max_messages``, and :meth:`send` waits for
  room in librdkafka's queue.
- **At-least-once.** faust flushes its producer before it commits input offsets: :meth:`flush`
  returns once every record sent before it is acknowledged, and raises if one of them was not.
  A record librdkafka gives up on (after its own retries) also stops the worker at once
  (``app.on_producer_failure``, else ``app.crash``): a lost changelog record is never skipped.
- **Topic creation, metadata and transactions** stay with faust's aiokafka producer, which is
  started as before but carries no records. The worker does not run faust's ``exactly_once``
  processing guarantee (its producers would be aiokafka's transactional ones): it is refused.

``STREAM_FAUST_PRODUCER=aiokafka`` switches back to faust's own producer.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from confluent_kafka import KafkaException
from faust.exceptions import ImproperlyConfigured, ProducerSendError
from faust.transport.drivers import aiokafka as driver
from faust.types.topics import TopicT
from faust.types.tuples import TP, FutureMessage, RecordMetadata, _get_len

from stream.errors import InfraError
from stream.redact import redact

log = logging.getLogger(__name__)

#: how long a send waits before it offers a record again to a full librdkafka queue (s)
QUEUE_FULL_WAIT_S = 0.005
#: how long the producer's stop waits for the records still in flight (s)
STOP_TIMEOUT_S = 30.0


class DeliveryError(InfraError):
    """A record of faust's (a table's changelog, mostly) that Kafka did not take: the worker stops.

    ``error`` is librdkafka's name for the error (e.g. ``MSG_TIMED_OUT``).
    """

    def __init__(self, topic: str, error: str, detail: str) -> None:
        super().__init__(f"record to topic {topic!r} not delivered: {error} ({redact(detail)})")
        self.topic = topic
        self.error = error


class LibrdkafkaProducer(driver.Producer):
    """faust's producer whose records go through confluent-kafka (module docstring).

    ``app.librdkafka_producer(**conf)`` builds the confluent-kafka producer (the app's address,
    security and partitioner: stream/kafka/clients.py); ``conf`` carries faust's producer
    settings (linger, batch size, compression, request size) and idempotence.
    """

    _rd: Any = None
    _poller: threading.Thread | None = None
    _closing: bool = False
    _failure: BaseException | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        #: sent and not yet reported: what a flush waits for
        self._pending: set[asyncio.Future[Any]] = set()
        #: delivery reports not yet handed to the event loop: (what was sent, error, message), where what
        #: was sent is send()'s future or send_soon()'s (FutureMessage, sensor state)
        self._reports: collections.deque[tuple[Any, Any, Any]] = collections.deque()
        self._waking = False
        self._event_loop: asyncio.AbstractEventLoop | None = None
        #: records handed to faust's buffer, and of those the ones handed on to librdkafka since (in order):
        #: while some wait there, send_soon queues behind them
        self._buffered_in = 0
        self._buffered_out = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        send_pending = self.buffer._send_pending  # type: ignore[attr-defined]  # noqa: SLF001 - the buffer task's hand-off, counted here

        async def _send_buffered(fut: FutureMessage) -> None:
            try:
                await send_pending(fut)
            finally:
                self._buffered_out += 1

        self.buffer._send_pending = _send_buffered  # type: ignore[attr-defined]  # noqa: SLF001

    def librdkafka_settings(self) -> dict[str, Any]:
        """librdkafka's names for faust's producer settings (the app's ``producer_*``), idempotent."""
        return {
            "client.id": self.client_id,
            "linger.ms": self.linger_ms,
            "batch.size": self.max_batch_size,
            "compression.type": self.compression_type or "none",
            "message.max.bytes": self.max_request_size,
            "enable.idempotence": True,  # with acks=all: no record doubled or reordered by a retry
        }

    async def on_start(self) -> None:
        conf = self.app.conf
        if self.app.in_transaction:
            raise ImproperlyConfigured(
                "processing_guarantee=exactly_once needs faust's aiokafka producer: set STREAM_FAUST_PRODUCER=aiokafka"
            )
        if conf.producer_threaded:
            raise ImproperlyConfigured(
                "producer_threaded needs faust's aiokafka producer: set STREAM_FAUST_PRODUCER=aiokafka"
            )
        build = getattr(self.app, "librdkafka_producer", None)
        if build is None:
            raise ImproperlyConfigured("LibrdkafkaProducer needs app.librdkafka_producer (stream/worker/app.py)")
        await super().on_start()  # the aiokafka producer: topic creation and metadata only
        self._event_loop = asyncio.get_running_loop()
        self._rd = build(**self.librdkafka_settings())
        self._closing = False
        self._poller = threading.Thread(target=self._poll, name="faust-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        rd = self._rd
        while not self._closing:
            rd.poll(0.05)  # serves the delivery reports (_delivered) and librdkafka's log lines

    async def on_stop(self) -> None:
        if self._rd is not None:
            try:
                await asyncio.wait_for(self.flush(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning(
                    "%d records of faust's (table changelogs) still undelivered after %.0f s at shutdown; "
                    "their input was not committed and is read again after a restart",
                    len(self._pending),
                    STOP_TIMEOUT_S,
                )
            except Exception as exc:  # a delivery error: already reported by _fail
                log.debug("flush at stop: %r", exc)
            self._closing = True
            if self._poller is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._poller.join)
            self._poller = None
            self._rd.flush(0)  # serves what is left; nothing waits for it any more
            self._rd = None
        await super().on_stop()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        """Queue a record on librdkafka; the future resolves with its metadata once Kafka has it."""
        if transactional_id:
            raise ProducerSendError(f"no transactions with the librdkafka producer: {transactional_id}")
        rd = self._rd
        if rd is None:
            raise ProducerSendError(f"the producer is not running: cannot send to {topic!r}")
        headers = _header_list(headers)
        self._send_on_produce_message(key=key, value=value, partition=partition, timestamp=timestamp, headers=headers)
        loop = self._event_loop
        assert loop is not None
        fut: asyncio.Future[RecordMetadata] = loop.create_future()
        on_delivery = functools.partial(self._delivered, fut)
        while True:
            try:
                _produce(rd, topic, key, value, partition, timestamp, headers, on_delivery)
                break
            except BufferError:  # librdkafka's queue is full: the delivery thread drains it
                await asyncio.sleep(QUEUE_FULL_WAIT_S)
            except KafkaException as exc:  # refused before queueing (e.g. larger than message.max.bytes)
                raise ProducerSendError(f"Error while sending: {exc!r}") from exc
        self._pending.add(fut)
        return fut

    def send_soon(self, fut: FutureMessage) -> None:
        """Produce a record of faust's ``send_soon`` (a table write) now, as faust's topic would from its buffer.

        faust's buffer takes it instead when librdkafka's queue is full, when records wait there
        already (their order is kept) or for what is not a plain topic's record.
        """
        message = fut.message
        channel = message.channel
        rd = self._rd
        if (
            self._buffered_in != self._buffered_out
            or rd is None
            or not isinstance(channel, TopicT)
            or len(channel.topics) != 1
        ):
            self._to_buffer(fut)
            return
        topic = channel.get_topic_name()
        key, value, partition, timestamp = message.key, message.value, message.partition, message.timestamp
        headers = _header_list(message.headers)
        state = self.app.sensors.on_send_initiated(
            self, topic, message=message, keysize=_get_len(key), valsize=_get_len(value)
        )
        on_delivery = functools.partial(self._delivered, (fut, state))
        try:
            _produce(rd, topic, key, value, partition, timestamp, headers, on_delivery)
        except BufferError:  # librdkafka's queue is full: faust's buffer waits for room (send)
            self._to_buffer(fut)
            return
        except KafkaException as exc:  # refused before queueing, as faust's buffer task would see it
            self._to_buffer(fut)
            log.debug("record refused by librdkafka, left to faust's buffer: %r", exc)
            return
        self._send_on_produce_message(key=key, value=value, partition=partition, timestamp=timestamp, headers=headers)
        self._pending.add(fut)

    def _to_buffer(self, fut: FutureMessage) -> None:
        self._buffered_in += 1
        self.buffer.put(fut)

    async def send_and_wait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> RecordMetadata:
        fut = await self.send(topic, key, value, partition, timestamp, headers, transactional_id=transactional_id)
        return await fut

    async def flush(self) -> None:
        """Return once faust's buffer is drained and every record sent so far is acknowledged.

        Raises the delivery error that stops the worker, if there was one: faust then does not
        commit the input whose changelog records were lost.
        """
        await self.buffer.flush()
        buffered = self._buffered_in  # also the last of these taken from the buffer, and not yet produced
        while self._buffered_out < buffered and not self.buffer.should_stop and self._failure is None:
            await asyncio.sleep(QUEUE_FULL_WAIT_S)
        waits = list(self._pending)
        if waits:
            await asyncio.wait(waits)
        if self._failure is not None:
            raise self._failure

    def _delivered(self, fut: Any, err: Any, msg: Any) -> None:
        """librdkafka's delivery report (on the thread that polls): queued for the event loop."""
        self._reports.append((fut, err, msg))
        if not self._waking:  # one hand-over per burst of reports, not one per record
            self._waking = True
            loop = self._event_loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        """Resolve the futures of the delivery reports received so far (on the event loop)."""
        self._waking = False  # before reading: a report queued after this wakes the loop again
        reports = self._reports
        pending = self._pending
        sensors = self.app.sensors
        while reports:
            sent, err, msg = reports.popleft()
            state = None
            if type(sent) is tuple:  # send_soon's: faust's Topic._on_published, below
                sent, state = sent
            pending.discard(sent)
            if sent.done():  # cancelled by its sender
                continue
            topic = msg.topic()
            if err is None:
                partition = msg.partition()
                ts_type, ts = msg.timestamp()
                md = RecordMetadata(topic, partition, TP(topic, partition), msg.offset(), ts, ts_type)
                sent.set_result(md)
                if state is not None:
                    callback = sent.message.callback
                    if callback:
                        try:
                            callback(sent)  # a table's: keeps the changelog offset in RocksDB
                        except Exception:  # as asyncio logs a failed done-callback: the other reports go on
                            log.exception("the callback of a record to %r failed", topic)
                    sensors.on_send_completed(self, state, md)
            else:
                exc = DeliveryError(topic, err.name(), err.str())
                sent.set_exception(exc)
                if state is not None:
                    sensors.on_send_error(self, exc, state)
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """The first lost record stops the worker (``app.on_producer_failure``, else faust's crash)."""
        if self._failure is not None:
            return
        self._failure = exc
        hook: Callable[[BaseException], None] | None = getattr(self.app, "on_producer_failure", None)
        if hook is not None:
            hook(exc)
            return
        log.error("stopping the worker: %s", exc)
        _tasks.add(task := asyncio.ensure_future(self.app.crash(exc)))
        task.add_done_callback(_tasks.discard)


_tasks: set[asyncio.Future[Any]] = set()  # keeps a crash task alive until it ran


def _header_list(headers: Any) -> Any:
    """faust's headers as librdkafka takes them: a mapping becomes a list of pairs."""
    return list(headers.items()) if isinstance(headers, Mapping) else headers


def _produce(
    rd: Any,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    partition: int | None,
    timestamp: float | None,
    headers: Any,
    on_delivery: Callable[[Any, Any], None],
) -> None:
    """Queue one record on librdkafka (raises its BufferError when the queue is full).

    No partition: librdkafka's partitioner (murmur2 of the key); no timestamp: now, as aiokafka.
    """
    p = -1 if partition is None else partition
    ts = int(timestamp * 1000) if timestamp else 0
    if headers:
        rd.produce(topic, value, key, p, on_delivery=on_delivery, timestamp=ts, headers=headers)
    else:
        rd.produce(topic, value, key, p, on_delivery=on_delivery, timestamp=ts)


def with_librdkafka_producer(transport: type[driver.Transport]) -> type[driver.Transport]:
    """``transport`` (faust's aiokafka transport or a subclass) with :class:`LibrdkafkaProducer`."""
    return type(transport.__name__, (transport,), {"Producer": LibrdkafkaProducer, "__module__": __name__})
