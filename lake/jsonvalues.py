"""JSON values for the projection, numbers kept as pushed.

orjson is the fast path, but it reads an integer beyond 64 bits as a float
(``123456789012345678901234567890`` becomes ``1.2345678901234569e+32``), refuses ``1e999``, and
any double forgets digits beyond its precision. A body whose text holds such a number (a long
run of digits, or an exponent of three digits) is read instead by the standard library's parser
with hooks that keep the number's text as an ``Exact``; ``dumps`` writes it back verbatim into
the ``extra`` column, so the raw log and the lake agree. The check is a regular expression over
the bytes, which costs far less than the parse it guards; a false alarm (such digits inside a
string) only takes the slower, equally correct path.
"""
from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

# a number token (first, or after ':', '[' or ',') with 16+ digits (a dot may sit between them), or a
# 3-digit exponent: the only numbers a double or a 64-bit integer might not hold exactly
_RISKY = re.compile(rb"(?:^|[:\[,])\s*-?(?:(?:[0-9]\.?){16,}|[0-9][0-9.]*[eE][-+]?[0-9]{3,})")
_I64 = (-(1 << 63), (1 << 64) - 1)  # what orjson writes as an integer


class Exact:
    """A number that neither a double nor a 64-bit integer holds exactly: its text, and its
    value as a float where it has one (``None`` beyond the double's range)."""
    __slots__ = ("text", "value")

    def __init__(self, text: str, value: float | None):
        self.text = text
        self.value = value

    def __repr__(self) -> str:
        return f"Exact({self.text})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Exact) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _float_or_none(text: str) -> float | None:
    f = float(text)
    return f if math.isfinite(f) else None


def _int(text: str) -> int | Exact:
    if len(text) <= 18:
        return int(text)
    v = int(text) if len(text) < 4000 else None  # Python refuses longer int conversions
    if v is not None and _I64[0] <= v <= _I64[1]:
        return v
    return Exact(text, _float_or_none(text))


def _float(text: str) -> float | Exact:
    f = float(text)
    if math.isfinite(f):
        try:
            if Decimal(repr(f)) == Decimal(text):
                return f
        except InvalidOperation:
            pass
    return Exact(text, f if math.isfinite(f) else None)


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(raw: bytes | memoryview) -> Any:
    """The value of a JSON text, with ``Exact`` where a number would otherwise change."""
    raw = bytes(raw)
    if _RISKY.search(raw) is None:
        return orjson.loads(raw)
    return json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_constant)


def _default(o: Any) -> Any:
    if isinstance(o, Exact):
        return orjson.Fragment(o.text.encode())
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def dumps(value: Any) -> str:
    """JSON text of a value from ``loads``: ``Exact`` numbers come back as they were pushed."""
    try:
        return orjson.dumps(value, default=_default).decode()
    except TypeError:
        # an integer beyond 64 bits that did not come from ``loads`` (e.g. from msgspec)
        return orjson.dumps(_exact_ints(value), default=_default).decode()


def _exact_ints(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and not _I64[0] <= v <= _I64[1]:
        return Exact(str(v), _float_or_none(str(v)))
    if isinstance(v, dict):
        return {k: _exact_ints(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_exact_ints(x) for x in v]
    return v
