"""Command-line plumbing shared by ``python -m stream``, ``simulator`` and ``batch_training``.

A parser whose errors are one line (:class:`Parser`), argument types whose errors name the value
and what was expected, and :func:`run_command`, the one way a command's error becomes one line on
stderr: exit 1 when the data a command needs is not there yet (it says what to run first), 2 for
any other error of ours (bad input, settings, an unreachable or refusing cluster), 130 for Ctrl-C.

>>> integer(lo=1)("3")
3
>>> integer(lo=1)("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: expected an integer >= 1, got '0'
>>> number(lo=0, hi=1)("1.5")
Traceback (most recent call last):
argparse.ArgumentTypeError: expected a number in [0, 1], got '1.5'
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from collections.abc import Callable
from typing import NoReturn

from stream.errors import ConfigError, PrerequisiteError, StreamError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a ConfigError naming the command, without the usage block.

    Its subcommands' parsers are of this class too (argparse's default ``parser_class``).
    """

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def _bounds(lo: float | None, hi: float | None, lo_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    return f" <= {hi:g}" if hi is not None else ""


def integer(lo: int | None = None, hi: int | None = None, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type: an integer within ``[lo, hi]`` (either bound may be left open)."""
    expected = what + _bounds(lo, hi, False)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def number(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, what: str = "a number"
) -> Callable[[str], float]:
    """An argparse type: a finite number within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    expected = what + _bounds(lo, hi, lo_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        low = lo is not None and (value <= lo if lo_open else value < lo)
        if not math.isfinite(value) or low or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


port = integer(0, 65535, what="a port number")
positive_int = integer(lo=1)
share = number(0, 1, what="a share")


def date(text: str) -> dt.date:
    """An argparse type: a calendar date, YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """An argparse type: a duration in seconds, ``90``, ``90s``, ``30m``, ``24h`` or ``2d`` (>= 0).

    >>> duration("24h"), duration("1.5m"), duration("0")
    (86400.0, 90.0, 0.0)
    """
    t = text.strip().lower()
    scale = _UNITS.get(t[-1:])
    try:
        value = float(t[:-1] if scale is not None else t) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 30m, 24h or 2d, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 30m, 24h or 2d, got {text!r}")
    return value


def run_command(prog: str | None, command: Callable[[], int]) -> int:
    """Run ``command``; a StreamError becomes one line ``{prog}: error: ...`` (``error: ...``) on stderr."""
    prefix = f"{prog}: error" if prog else "error"
    try:
        return command()
    except PrerequisiteError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 1
    except StreamError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
