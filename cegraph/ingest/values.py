"""Checked conversions of the scalar values a log carries. A log is written by code we do not
control, so every number, time and name is converted here, once, and a value that does not
convert raises `BadValue` (which the caller turns into a quarantine row or a reported field)
instead of an arbitrary exception deep inside assembly or storage."""

from __future__ import annotations

import math
import re
from typing import Any

INT64_MAX = 2**63 - 1
#: a timestamp past this (2262-04-11) does not fit in int64 nanoseconds (OTLP's, DuckDB's)
MAX_EPOCH_S = INT64_MAX / 1e9
_INTEGER = re.compile(r"\s*[+-]?[0-9]{1,19}\s*")  # int64 has 19 digits: no 5,000-digit parse


class BadValue(ValueError):
    """A value of the wrong type or out of range; the message names the field."""


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def integer(value: Any, what: str, *, lo: int = -INT64_MAX - 1, hi: int = INT64_MAX) -> int:
    """An int64 from an int, an integral float or a decimal string (OTLP/JSON writes 64-bit
    integers as strings)."""
    if type(value) is str and 0 < len(value) < 19 and value.isascii() and value.isdigit():
        value = int(value)  # the common case, without the regex
        return value if lo <= value <= hi else integer(value, what, lo=lo, hi=hi)
    if isinstance(value, bool):
        raise BadValue(f"{what}: {_show(value)} is not an integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value)
    if not isinstance(value, int):
        raise BadValue(f"{what}: {_show(value)} is not an integer")
    if not lo <= value <= hi:
        raise BadValue(f"{what}: {value} is out of range [{lo}, {hi}]")
    return value


def unix_ns(value: Any, what: str) -> int:
    """A Unix time in nanoseconds (absent = 0, OTLP's "unknown")."""
    return 0 if value in (None, "") else integer(value, what, lo=0)


def number(value: Any, what: str) -> float:
    """A finite float from a number or a numeric string."""
    bad = BadValue(f"{what}: {_show(value)} is not a finite number")
    if isinstance(value, bool) or not isinstance(value, int | float | str) or len(
            str(value)) > 64:
        raise bad
    try:
        out = float(value)
    except (ValueError, OverflowError):
        raise bad from None
    if not math.isfinite(out):
        raise bad
    return out


def epoch_s(value: float, what: str) -> float:
    """Seconds since the epoch, within what int64 nanoseconds hold (1970 to 2262)."""
    if not 0 <= value <= MAX_EPOCH_S:
        raise BadValue(f"{what}: {value} is not a time between 1970 and 2262")
    return value


def text(value: Any, what: str) -> str:
    """A name or key: a string, or a number written as one (absent = empty)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise BadValue(f"{what}: {_show(value)} is not a string")


def lenient(convert: Any, value: Any, what: str, invalid: list[str], default: Any) -> Any:
    """`convert(value, what)`, or `default` with the reason appended to `invalid` (for a field
    of an otherwise good span: the span is kept and the bad field reported)."""
    if value is None:
        return default
    try:
        return convert(value, what)
    except BadValue as exc:
        invalid.append(str(exc))
        return default
