"""Operator configuration shared by both host adapters.

One :class:`Config` dataclass carries the settings the session index uses, and the
:class:`~token_optimizer.settings.Sources` it was read from (so the runtime reads every
other setting from the same environment and plugin config). The declarations, the parse
rules and the precedence live in :mod:`token_optimizer.settings`:

* the OpenClaw plugin config dict (camelCase keys, e.g. ``sessionStoreMaxAgeDays``);
* the Hermes plugin config (the same keys; snake_case ``session_store_max_age_days`` too);
* environment variables (``TOKEN_OPTIMIZER_SESSION_STORE_MAX_AGE_DAYS``).

:meth:`Config.from_dict` accepts both spellings (snake_case wins when both are
present). :meth:`Config.merged` layers the environment over a plugin config:
an environment variable that is set (and non-empty) overrides the plugin
config, so an operator can change a deployed gateway without editing its
config file.

Bad values never raise: they are replaced by the default, with one warning in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from token_optimizer import settings as st

log = logging.getLogger("token_optimizer")

DEFAULT_SESSION_STORE_MAX_AGE_DAYS: int = st.SESSION_STORE_MAX_AGE_DAYS.default
ENV_SESSION_STORE_MAX_AGE_DAYS: str = st.SESSION_STORE_MAX_AGE_DAYS.env or ""

_MISSING = object()


def coerce_max_age_days(value: object, *, source: str = "config") -> int:
    """Normalise a ``session_store_max_age_days`` value.

    * missing (``None``) -> 90;
    * an int, an integral-or-not finite float, or a string holding an integer
      -> that number (floats are truncated toward zero);
    * negative -> 0 (pruning disabled);
    * anything else (bool, NaN/inf, list, dict, non-numeric string) -> 90.

    A rejected or negative value is logged once (setting, value given, value used).
    """
    if value is None or value is _MISSING:
        return DEFAULT_SESSION_STORE_MAX_AGE_DAYS
    setting = st.SESSION_STORE_MAX_AGE_DAYS
    try:
        n: int = setting.parse(value)
    except st.Invalid as exc:
        st.warn_invalid(st.Resolved(setting, DEFAULT_SESSION_STORE_MAX_AGE_DAYS, source, value,
                                    f"expected {exc}"))
        return DEFAULT_SESSION_STORE_MAX_AGE_DAYS
    if n == 0 and isinstance(value, (int, float, str)) and _negative(value):
        st.warn_invalid(st.Resolved(setting, 0, source, value,
                                    "negative: pruning disabled"))
    return n


def _negative(value: int | float | str) -> bool:
    try:
        return float(value) < 0
    except ValueError:
        return False


@dataclass
class Config:
    """Operator settings. Construct with :meth:`from_dict`, :meth:`from_env` or :meth:`merged`."""

    session_store_max_age_days: int = DEFAULT_SESSION_STORE_MAX_AGE_DAYS
    """Session-index entries idle longer than this are pruned; 0 disables pruning."""

    sources: st.Sources | None = field(default=None, compare=False, repr=False)
    """The environment and plugin config this was read from (``None``: the process
    environment, no plugin config). The runtime reads its other settings from it."""

    def __post_init__(self) -> None:
        self.session_store_max_age_days = coerce_max_age_days(
            self.session_store_max_age_days, source="Config"
        )

    @property
    def host(self) -> str | None:
        return self.sources.host if self.sources is not None else None

    def settings_sources(self) -> st.Sources:
        return self.sources if self.sources is not None else st.Sources.current()

    def to_dict(self) -> dict[str, Any]:
        """Snake_case dict; :meth:`from_dict` reads it back unchanged."""
        return {"session_store_max_age_days": self.session_store_max_age_days}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, host: str | None = None) -> Config:
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
        source = st.HOST_SOURCES.get(host or "", "plugin config")
        return cls(session_store_max_age_days=coerce_max_age_days(raw, source=source))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read the environment (default ``os.environ``); unset or empty variables give defaults."""
        return cls().with_env(env)

    def with_env(self, env: Mapping[str, str] | None = None) -> Config:
        """A copy with every *set, non-empty* environment variable applied over this config."""
        days = self.session_store_max_age_days
        raw = st.env_raw(st.SESSION_STORE_MAX_AGE_DAYS, env)
        if raw is not None:
            days = coerce_max_age_days(raw, source=st.SOURCE_ENV)
        old = self.sources
        sources = st.Sources.current(old.plugin if old else None, old.host if old else None, env)
        return Config(session_store_max_age_days=days, sources=sources)

    @classmethod
    def merged(
        cls, plugin_config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
        *, host: str | None = None,
    ) -> Config:
        """Plugin config first, then the environment on top (env wins when set)."""
        base = cls.from_dict(plugin_config, host=host)
        plugin = plugin_config if isinstance(plugin_config, Mapping) else None
        base.sources = st.Sources.current(plugin, host)
        return base.with_env(env)
