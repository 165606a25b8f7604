"""Kafka security settings: what each client gets, their checks, and the log mask of secrets."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from stream.config import load_settings
from stream.errors import ConfigError
from stream.kafka import clients
from stream.redact import MASK, protect

ROOT = Path(__file__).resolve().parents[2]
SASL = {
    "kafka_security_protocol": "SASL_PLAINTEXT",
    "kafka_sasl_username": "app",
    "kafka_sasl_password": "pw-unit-7c1e",
}


def _aiokafka_auth(settings: object) -> dict[str, object]:
    """What faust hands to aiokafka for these settings (faust's own mapping)."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    return dict(credentials_to_aiokafka_auth(clients.faust_credentials(settings)))  # type: ignore[arg-type]


def test_sasl_plaintext_stays_plaintext_in_faust() -> None:
    auth = _aiokafka_auth(load_settings(**SASL, kafka_sasl_mechanism="SCRAM-SHA-512"))
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["ssl_context"] is None
    assert (auth["sasl_mechanism"], auth["sasl_plain_username"]) == ("SCRAM-SHA-512", "app")


def test_sasl_ssl_and_ssl_get_a_tls_context() -> None:
    sasl_ssl = _aiokafka_auth(load_settings(**{**SASL, "kafka_security_protocol": "SASL_SSL"}))
    assert sasl_ssl["security_protocol"] == "SASL_SSL" and sasl_ssl["ssl_context"] is not None
    only_ssl = _aiokafka_auth(load_settings(kafka_security_protocol="SSL"))
    assert only_ssl["security_protocol"] == "SSL" and only_ssl["ssl_context"] is not None
    assert _aiokafka_auth(load_settings()) == {"security_protocol": "PLAINTEXT"}


def test_every_confluent_client_gets_the_security_config() -> None:
    conf = clients.kafka_config("h:1", load_settings(**SASL), **{"group.id": "g"})
    assert conf == {
        "bootstrap.servers": "h:1",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "app",
        "sasl.password": "pw-unit-7c1e",
        "group.id": "g",
    }


def test_sasl_without_password_is_one_line_that_shows_no_secret() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^invalid configuration: STREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs "
        r"STREAM_KAFKA_SASL_USERNAME and STREAM_KAFKA_SASL_PASSWORD$",
    ):
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="app")


def test_unknown_mechanism_names_the_value_and_the_choices() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^invalid configuration STREAM_KAFKA_SASL_MECHANISM='GSSAPI': "
        r"Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'",
    ):
        load_settings(**SASL, kafka_sasl_mechanism="GSSAPI")


def test_config_command_masks_the_sasl_password() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "STREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAM_KAFKA_SASL_USERNAME": "app",
        "STREAM_KAFKA_SASL_PASSWORD": "pw-config-93af",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "config"], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert f"STREAM_KAFKA_SASL_PASSWORD={MASK}" in proc.stdout.splitlines()
    assert "pw-config-93af" not in proc.stdout + proc.stderr


def test_protected_values_are_masked_in_every_form_a_log_shows_them() -> None:
    secret = "s3c'r\\et-é"  # quote, backslash and non-ASCII: reprs escape them
    protect(secret)
    out = io.StringIO()
    handler = logging.StreamHandler(out)  # attached after protect(): the mask does not depend on handlers
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        log.debug("plain %s", secret)
        log.debug("struct %s", {"sasl_auth_bytes": b"\x00user\x00" + secret.encode()})
        log.debug("str repr %r", secret)
        log.debug("percent %s%%", secret)
        try:
            raise ValueError(f"bad password {secret}")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert secret not in text and repr(secret)[1:-1] not in text and repr(secret.encode())[2:-1] not in text
    assert text.count(MASK) == 5, text
    assert "percent **********%" in text  # a masked message is not formatted again


def test_empty_secret_masks_nothing() -> None:
    protect("")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    log = logging.getLogger("test.redact.empty")
    log.addHandler(handler)
    try:
        log.warning("nothing secret here")
    finally:
        log.removeHandler(handler)
    assert out.getvalue() == "nothing secret here\n"
