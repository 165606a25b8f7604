"""Every Kafka client the product builds gets its address and security settings here.

confluent-kafka clients (admin, producers, consumers of the CLI tools, the worker's output
producer) take :func:`kafka_config`; the worker's faust app takes :func:`faust_credentials`.
Both follow ``STREAM_KAFKA_SECURITY_PROTOCOL``: SASL_PLAINTEXT stays plaintext, SSL and
SASL_SSL verify the broker's certificate and host name against ``STREAM_KAFKA_SSL_CAFILE`` (else
the system CAs).

:func:`cluster_metadata` is the first contact of a command with the cluster: a wrong password
becomes a one-line error within seconds instead of a timeout that says "cannot reach".
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any

from stream.config import Settings
from stream.errors import InfraError
from stream.redact import redact


def kafka_config(bootstrap: str, settings: Settings | None, **extra: Any) -> dict[str, Any]:
    """A confluent-kafka client's configuration: address, security, then ``extra``.

    ``settings`` None means a plaintext listener without credentials (the embedded broker's).
    """
    security = settings.confluent_config() if settings is not None else {}
    return {"bootstrap.servers": bootstrap, **security, **extra}


def for_embedded(settings: Settings) -> Settings:
    """``settings`` for the embedded broker, whose client listener is plaintext."""
    return settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})


def admin_client(bootstrap: str, settings: Settings | None, **extra: Any) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(kafka_config(bootstrap, settings, **extra))


#: where producers' and consumers' librdkafka lines go (its own stderr otherwise): Python's logging
#: masks secrets in them (stream/redact.py) and, in the worker, rate-limits them (stream/worker/logs.py)
LIBRDKAFKA_LOG = logging.getLogger("stream.kafka.librdkafka")


def producer(bootstrap: str, settings: Settings | None, **extra: Any) -> Any:
    """A producer; its log lines are served by its ``poll()`` and ``flush()``.

    Keys are partitioned as Kafka's Java clients do (murmur2), not by librdkafka's default
    (CRC32): the worker's API finds a user's owner by that partition (stream/kafka/partitioner.py).
    """
    from confluent_kafka import Producer

    conf = {"logger": LIBRDKAFKA_LOG, "partitioner": "murmur2_random", **extra}
    return Producer(kafka_config(bootstrap, settings, **conf))


def consumer(bootstrap: str, settings: Settings | None, **extra: Any) -> Any:
    """A consumer; its log lines are served by its ``poll()`` and ``consume()``."""
    from confluent_kafka import Consumer

    return Consumer(kafka_config(bootstrap, settings, **{"logger": LIBRDKAFKA_LOG, **extra}))


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the faust (aiokafka) clients; None for the protocols without TLS."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile = settings.kafka_ssl_cafile
    return ssl.create_default_context(cafile=str(cafile) if cafile else None)


def faust_credentials(settings: Settings) -> Any:
    """faust's ``broker_credentials`` (None for PLAINTEXT).

    faust picks the protocol from the credentials: SASL with a TLS context is SASL_SSL, without
    one SASL_PLAINTEXT; so the context is given only to the protocols that use TLS.
    """
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username or "",
        password=settings.kafka_sasl_password.get_secret_value(),
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=context,
    )


class _Errors:
    """A client's ``error_cb``: keeps its errors for :func:`cluster_metadata` to explain."""

    def __init__(self) -> None:
        self.auth: str | None = None
        self.tls: str | None = None
        self.last: str | None = None

    def __call__(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        self.last = err.str()
        if err.code() == KafkaError._AUTHENTICATION and self.auth is None:  # noqa: SLF001 - librdkafka names local errors with "_"
            self.auth = err.str()
        if err.code() == KafkaError._SSL and self.tls is None:  # noqa: SLF001 - librdkafka's local error code
            self.tls = err.str()


def cluster_metadata(
    bootstrap: str, settings: Settings | None, topic: str | None = None, timeout_s: float = 8.0
) -> Any:
    """The cluster's metadata, or a one-line :class:`InfraError`.

    A rejected login or TLS handshake fails within about a second and names the mechanism and
    the user (never the password) or the CA file; an unreachable cluster fails after
    ``timeout_s``. The probe's own librdkafka log lines are silenced: the error says what they would.
    """
    from confluent_kafka import KafkaException

    errors = _Errors()
    admin = admin_client(bootstrap, settings, error_cb=errors, log_level=0)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin.list_topics(topic, timeout=min(1.0, max(deadline - time.monotonic(), 0.1)))
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            if errors.auth is not None:
                raise InfraError(auth_failure(bootstrap, settings, errors.auth)) from None
            if errors.tls is not None:
                raise InfraError(tls_failure(bootstrap, settings, errors.tls)) from None
            if time.monotonic() >= deadline:
                detail = redact(errors.last or str(exc))
                raise InfraError(f"cannot reach Kafka at {bootstrap} within {timeout_s:g} s: {detail}") from None


def auth_failure(bootstrap: str, settings: Settings | None, reason: str) -> str:
    """The one-line message of a rejected login: who tried how, and the broker's reason."""
    conf: Mapping[str, Any] = settings.confluent_config() if settings is not None else {}
    who = (
        f"SASL {conf.get('sasl.mechanism', 'PLAIN')} login of user {conf.get('sasl.username', '')!r}"
        if "sasl.username" in conf
        else f"{conf.get('security.protocol', 'PLAINTEXT')} connection"
    )
    # librdkafka's text: "<listener>: SASL authentication error: <broker reason> (after N ms in state X)"
    why = reason.split("authentication error: ", 1)[-1].split(" (after ", 1)[0]
    return (
        f"Kafka at {bootstrap} refused the {who}: authentication failed ({redact(why)}); "
        "check STREAM_KAFKA_SASL_USERNAME, STREAM_KAFKA_SASL_PASSWORD and STREAM_KAFKA_SASL_MECHANISM"
    )


def tls_failure(bootstrap: str, settings: Settings | None, reason: str) -> str:
    """The one-line message of a failed TLS handshake: the broker's certificate and the CA file used."""
    cafile = settings.kafka_ssl_cafile if settings is not None else None
    trusted = f"the CA file {str(cafile)!r}" if cafile else "the system CAs (STREAM_KAFKA_SSL_CAFILE is unset)"
    # librdkafka's text: "<listener>: SSL handshake failed: <reason> (after N ms in state X)"
    why = reason.split("handshake failed: ", 1)[-1].split(" (after ", 1)[0]
    return (
        f"TLS handshake with Kafka at {bootstrap} failed, checked against {trusted}: {redact(why)}; "
        "check STREAM_KAFKA_SSL_CAFILE and STREAM_KAFKA_SECURITY_PROTOCOL"
    )
