"""Keep secrets out of every log record, whoever logs it and at whatever level.

Client libraries log what they send: aiokafka's DEBUG log of a ``SaslAuthenticateRequest``
holds the SASL/PLAIN password in clear. A filter on some logger or handler misses records of
other loggers and handlers that faust installs later, so the mask is applied where every record
is made: :func:`protect` wraps the process's log record factory (once), and from then on every
record whose text holds a protected value (as is, or escaped as ``repr`` shows it in ``str`` and
``bytes``) has it replaced by ``**********`` before any handler sees it.

``stream.config.load_settings`` protects every secret setting, so a process that read its
settings masks them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

MASK = "**********"  # what pydantic's SecretStr shows

_forms: tuple[str, ...] = ()  # the text forms to mask, longest first
_lock = threading.Lock()
_installed = False


def _variants(secret: str) -> Iterator[str]:
    """The forms a secret takes in log text: as is, in a str or bytes repr, in JSON."""
    yield secret
    yield repr(secret)[1:-1]
    yield repr(secret.encode())[2:-1]
    yield json.dumps(secret)[1:-1]


def protect(*secrets: str) -> None:
    """Mask these values in every log record made from now on (empty values are ignored)."""
    global _forms
    new = {form for s in secrets if s for form in _variants(s) if form}
    if not new:
        return
    with _lock:
        _forms = tuple(sorted(set(_forms) | new, key=len, reverse=True))
        _install()


def redact(text: str) -> str:
    """``text`` with every protected value replaced by the mask."""
    for form in _forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def _scrub(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:
        # a bad format string: logging would print msg and args raw in its error report
        message = f"{record.msg} {record.args!r}"
        record.msg, record.args = message, ()
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()  # not None: mode's formatter would make it (None,)
    if record.exc_info and not record.exc_text:
        # formatters reuse a record's exc_text: fill it, masked, before they format the traceback
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _install() -> None:
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _forms:
            _scrub(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
