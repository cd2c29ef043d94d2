"""Time helpers for the audit: ISO output, ``--since/--until/--days`` and time zones."""

from __future__ import annotations

import datetime as _dt
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DATE_ONLY = re.compile(r"^\d{4}-?\d{2}-?\d{2}$")


def iso_ms(ms: float | None) -> str | None:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds and ``Z`` (the reference's format)."""
    if ms is None:
        return None
    try:
        d = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_iso_ms(value: object) -> float | None:
    """An ISO-8601 string (``Z`` or offset) as epoch ms; ``None`` when it does not parse."""
    if not isinstance(value, str) or not value:
        return None
    s = value.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.UTC)
    return d.timestamp() * 1000


def resolve_tz(name: str | None) -> _dt.tzinfo:
    """``--timezone``: an IANA name, ``UTC``, or the local zone when ``None``/``local``."""
    if not name or name.lower() == "local":
        local = _dt.datetime.now().astimezone().tzinfo
        return local if local is not None else _dt.UTC
    if name.upper() in ("UTC", "Z"):
        return _dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone: {name}") from exc


def parse_bound(value: str, tz: _dt.tzinfo, *, end: bool) -> float:
    """A ``--since``/``--until`` value as epoch ms.

    ``YYYY-MM-DD`` or ``YYYYMMDD`` (ccusage's form) is a whole day in ``tz``:
    ``--since`` starts at its midnight, ``--until`` includes the whole day.
    Anything else must be an ISO-8601 timestamp (naive ones are read in ``tz``).
    """
    s = value.strip()
    if _DATE_ONLY.match(s):
        digits = s.replace("-", "")
        day = _dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
        if end:
            day = day + _dt.timedelta(days=1)
        start = _dt.datetime(day.year, day.month, day.day, tzinfo=tz)
        return start.timestamp() * 1000 - (1 if end else 0)
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(s)
    except ValueError as exc:
        raise ValueError(f"not a date or ISO timestamp: {value}") from exc
    if d.tzinfo is None:
        d = d.replace(tzinfo=tz)
    return d.timestamp() * 1000


def local_day(ms: float, tz: _dt.tzinfo) -> _dt.date:
    return _dt.datetime.fromtimestamp(ms / 1000, tz=tz).date()
