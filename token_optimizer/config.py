"""Operator configuration shared by both host adapters.

One :class:`Config` dataclass carries the settings an operator may change.
It can be filled from three sources:

* the OpenClaw plugin config dict (camelCase keys, e.g. ``sessionStoreMaxAgeDays``);
* the Hermes plugin config (snake_case keys, e.g. ``session_store_max_age_days``);
* environment variables (``TOKEN_OPTIMIZER_SESSION_STORE_MAX_AGE_DAYS``).

:meth:`Config.from_dict` accepts both spellings (snake_case wins when both are
present). :meth:`Config.merged` layers the environment over a plugin config:
an environment variable that is set (and non-empty) overrides the plugin
config, so an operator can change a deployed gateway without editing its
config file.

Bad values never raise: they are coerced or replaced by the default, with a
warning in the log.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("token_optimizer")

DEFAULT_SESSION_STORE_MAX_AGE_DAYS = 90
ENV_SESSION_STORE_MAX_AGE_DAYS = "TOKEN_OPTIMIZER_SESSION_STORE_MAX_AGE_DAYS"

_MISSING = object()


def coerce_max_age_days(value: object, *, source: str = "config") -> int:
    """Normalise a ``session_store_max_age_days`` value.

    * missing (``None``) -> 90;
    * an int, an integral-or-not finite float, or a string holding an integer
      -> that number (floats are truncated toward zero);
    * negative -> 0 (pruning disabled);
    * anything else (bool, NaN/inf, list, dict, non-numeric string) -> 90.
    """
    if value is None or value is _MISSING:
        return DEFAULT_SESSION_STORE_MAX_AGE_DAYS
    n: int | None = None
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, float):
        n = int(value) if math.isfinite(value) else None
    elif isinstance(value, str):
        try:
            n = int(value.strip())
        except ValueError:
            n = None
    if n is None:
        log.warning(
            "[token-optimizer] %s: session_store_max_age_days must be an integer, got %r; using %d",
            source,
            value,
            DEFAULT_SESSION_STORE_MAX_AGE_DAYS,
        )
        return DEFAULT_SESSION_STORE_MAX_AGE_DAYS
    if n < 0:
        log.warning(
            "[token-optimizer] %s: negative session_store_max_age_days %d treated as 0 (pruning disabled)",
            source,
            n,
        )
        return 0
    return n


@dataclass
class Config:
    """Operator settings. Construct with :meth:`from_dict`, :meth:`from_env` or :meth:`merged`."""

    session_store_max_age_days: int = DEFAULT_SESSION_STORE_MAX_AGE_DAYS
    """Session-index entries idle longer than this are pruned; 0 disables pruning."""

    def __post_init__(self) -> None:
        self.session_store_max_age_days = coerce_max_age_days(
            self.session_store_max_age_days, source="Config"
        )

    def to_dict(self) -> dict[str, Any]:
        """Snake_case dict; :meth:`from_dict` reads it back unchanged."""
        return {"session_store_max_age_days": self.session_store_max_age_days}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Config:
        """Read a plugin config dict (snake_case or camelCase keys; unknown keys ignored)."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            log.warning(
                "[token-optimizer] plugin config is not an object (%s); using defaults",
                type(d).__name__,
            )
            return cls()
        raw = d.get("session_store_max_age_days", _MISSING)
        if raw is _MISSING:
            raw = d.get("sessionStoreMaxAgeDays", _MISSING)
        return cls(session_store_max_age_days=coerce_max_age_days(raw, source="plugin config"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read the environment (default ``os.environ``); unset or empty variables give defaults."""
        return cls().with_env(env)

    def with_env(self, env: Mapping[str, str] | None = None) -> Config:
        """A copy with every *set, non-empty* environment variable applied over this config."""
        e = os.environ if env is None else env
        days = self.session_store_max_age_days
        raw = e.get(ENV_SESSION_STORE_MAX_AGE_DAYS)
        if raw is not None and raw.strip() != "":
            days = coerce_max_age_days(raw, source=ENV_SESSION_STORE_MAX_AGE_DAYS)
        return Config(session_store_max_age_days=days)

    @classmethod
    def merged(
        cls, plugin_config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Config:
        """Plugin config first, then the environment on top (env wins when set)."""
        return cls.from_dict(plugin_config).with_env(env)
