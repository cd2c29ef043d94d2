"""Reference-runtime (JavaScript) semantics that leak into observable output.

The TypeScript reference's numbers, strings and JSON are the compatibility
contract, so the few places where Python differs from JS are gathered here:
number formatting, ``toFixed``, ``Math.round``, ``parseInt``, ISO timestamps,
UTF-16 string lengths and JSON layout.
"""

from __future__ import annotations

import math
import os
import re
import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson

# ---------------------------------------------------------------- numbers


def js_number(x: float | int) -> str:
    """Format a number the way JS ``String(x)`` does (common cases).

    Integral values print without a decimal point, ``-0`` prints ``0``,
    NaN/Infinity print as in JS, other floats in shortest round-trip form.
    """
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e21:
        return str(int(x))
    r = repr(x)
    if "e" in r or "E" in r:
        mant, _, exp = r.partition("e")
        e = int(exp)
        if -7 < e < 21:
            # JS switches to exponent form only outside [1e-7, 1e21)
            return format(Decimal(r), "f")
        sign = "+" if e > 0 else "-"
        return f"{mant.rstrip('0').rstrip('.') if '.' in mant else mant}e{sign}{abs(e)}"
    return r


def to_fixed(x: float, digits: int) -> str:
    """JS ``Number.prototype.toFixed``: half away from zero on the exact value."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    q = Decimal(1).scaleb(-digits)
    d = Decimal(x).quantize(q, rounding=ROUND_HALF_UP)
    s = format(d, "f")
    if s.startswith("-") and Decimal(s) == 0:
        # (-0.0001).toFixed(2) is "-0.00" in JS; keep the sign like JS does
        return s
    return s


def js_round(x: float) -> int:
    """JS ``Math.round``: nearest integer, exact ties toward +infinity."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError("cannot round non-finite number")
    return math.floor(x + 0.5) if x - math.floor(x) != 0.5 else math.floor(x) + 1


_INT_PREFIX = re.compile(r"^[ \t\n\r\v\f\u00a0\ufeff]*([+-]?\d+)")


def parse_int(s: str | None) -> float:
    """JS ``Number.parseInt(s, 10)``; returns ``nan`` when no digits lead."""
    if s is None:
        return math.nan
    m = _INT_PREFIX.match(s)
    return float(int(m.group(1))) if m else math.nan


def parse_float(s: str | None) -> float:
    """JS ``Number.parseFloat`` (decimal prefix; ``nan`` when none)."""
    if s is None:
        return math.nan
    m = re.match(r"^[ \t\n\r\v\f\u00a0\ufeff]*([+-]?(?:Infinity|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))", s)
    if not m:
        return math.nan
    t = m.group(1)
    if t.endswith("Infinity"):
        return -math.inf if t.startswith("-") else math.inf
    return float(t)


# ---------------------------------------------------------------- time


def now_ms() -> int:
    """``Date.now()``: integer epoch milliseconds."""
    return time.time_ns() // 1_000_000


def iso_from_ms(ms: float) -> str:
    """``new Date(ms).toISOString()``: UTC, millisecond precision, ``Z``."""
    ms_i = math.floor(ms)
    dt = datetime.fromtimestamp(ms_i // 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms_i % 1000:03d}Z"


def iso_now() -> str:
    return iso_from_ms(now_ms())


_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:?\d{2})?)?$"
)


def parse_iso_ms(s: object) -> float:
    """Approximation of ``Date.parse`` for ISO strings; ``nan`` when unparsable.

    Date-only forms are UTC; date-times without an offset are local time, as
    in JS.
    """
    if not isinstance(s, str):
        return math.nan
    m = _ISO_RE.match(s.strip())
    if not m:
        return math.nan
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    try:
        ms = int((frac or "0")[:3].ljust(3, "0"))
        if hh is None:
            dt = datetime(int(y), int(mo), int(d), tzinfo=UTC)
            return dt.timestamp() * 1000
        naive = datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss or 0))
        if tz is None:
            return naive.timestamp() * 1000 + ms  # local time
        if tz == "Z":
            return naive.replace(tzinfo=UTC).timestamp() * 1000 + ms
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        off = sign * (int(digits[:2]) * 60 + int(digits[2:]))
        return (naive.replace(tzinfo=UTC).timestamp() - off * 60) * 1000 + ms
    except (ValueError, OverflowError):
        return math.nan


# ---------------------------------------------------------------- strings


def utf16_len(s: str) -> int:
    """Length in UTF-16 code units (JS ``.length``)."""
    n = len(s)
    if s.isascii():
        return n
    return n + sum(1 for ch in s if ord(ch) > 0xFFFF)


def utf16_slice(s: str, limit: int) -> str:
    """First ``limit`` UTF-16 code units of ``s`` (like ``s.slice(0, limit)``).

    When the cut would split a surrogate pair, the pair is dropped whole, so
    the result is always valid text.
    """
    if limit <= 0:
        return ""
    if s.isascii() or len(s) * 2 <= limit:
        return s[:limit]
    units = 0
    for i, ch in enumerate(s):
        w = 2 if ord(ch) > 0xFFFF else 1
        if units + w > limit:
            return s[:i]
        units += w
    return s


_JS_WS = " \t\n\r\v\f\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def js_trim(s: str) -> str:
    """JS ``String.prototype.trim`` (also strips U+FEFF)."""
    return s.strip(_JS_WS)


# ---------------------------------------------------------------- JSON


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(v: Any) -> Any:
    """Apply JS JSON rules orjson does not: NaN/Inf -> null, integral floats as ints."""
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return None
        if v.is_integer() and abs(v) < 2**53:
            return int(v)
        return v
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items() if x is not _UNDEFINED}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_clean(x) for x in v]
    return v


class _Undefined:
    """Marker for a key JS ``JSON.stringify`` would omit (value ``undefined``)."""

    _inst: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "UNDEFINED"


_UNDEFINED = _Undefined()
UNDEFINED: Any = _UNDEFINED


def dumps_compact(v: Any) -> str:
    """``JSON.stringify(v)``: no whitespace, raw UTF-8, undefined keys omitted."""
    return orjson.dumps(_clean(v), default=_default).decode("utf-8")


def dumps_pretty(v: Any) -> str:
    """``JSON.stringify(v, null, 2)`` with no trailing newline."""
    return _pretty(_clean(v), 0)


def _pretty(v: Any, level: int) -> str:
    pad = "  " * (level + 1)
    end = "  " * level
    if isinstance(v, dict):
        if not v:
            return "{}"
        parts = [f"{pad}{_scalar(str(k))}: {_pretty(x, level + 1)}" for k, x in v.items()]
        return "{\n" + ",\n".join(parts) + "\n" + end + "}"
    if isinstance(v, list):
        if not v:
            return "[]"
        return "[\n" + ",\n".join(pad + _pretty(x, level + 1) for x in v) + "\n" + end + "]"
    return _scalar(v)


def _scalar(v: Any) -> str:
    return orjson.dumps(v, default=_default).decode("utf-8")


def loads(data: str | bytes) -> Any:
    """Parse JSON (raises ``orjson.JSONDecodeError``, a ``ValueError``)."""
    return orjson.loads(data)


# ---------------------------------------------------------------- Node path semantics


def node_basename(p: str, ext: str = "") -> str:
    """POSIX ``path.basename(p[, ext])``: trailing slashes ignored."""
    s = p.rstrip("/")
    if not s:
        return ""
    base = s.rsplit("/", 1)[-1]
    if ext and base.endswith(ext) and base != ext:
        base = base[: -len(ext)]
    return base


def node_dirname(p: str) -> str:
    """POSIX ``path.dirname``: trailing slashes ignored, ``"."`` when there is no directory part."""
    if not p:
        return "."
    s = p.rstrip("/")
    if not s:
        return "/"
    idx = s.rfind("/")
    if idx < 0:
        return "."
    if idx == 0:
        return "/"
    return s[:idx].rstrip("/") or "/"


def node_extname(p: str) -> str:
    base = node_basename(p)
    idx = base.rfind(".")
    if idx <= 0:
        return ""
    return base[idx:]


def node_resolve(p: str) -> str:
    try:
        return os.path.abspath(p)
    except (OSError, ValueError):
        return ""
