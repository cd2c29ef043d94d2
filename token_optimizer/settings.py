"""Every setting token-optimizer reads, declared once.

A :class:`Setting` names its environment variable, its plugin-config key (camelCase, the
spelling OpenClaw's ``plugins.entries.<id>.config`` and Hermes'
``plugins.entries.token-optimizer`` give), its type, default, accepted values and meaning.
The rest of the package reads settings through this module only (a test fails on a
``TOKEN_OPTIMIZER_*`` name that is not declared here).

Where a value comes from, first match wins:

1. the environment variable, when set (an empty value counts as unset, except for the two
   read-cache switches, where the reference treats a set-but-empty variable as set);
2. the host's plugin config (OpenClaw ``plugins.entries.token-optimizer-openclaw.config``,
   or Hermes ``plugins.entries.token-optimizer`` in ``config.yaml``); a snake_case alias of
   the key is read too and wins over the camelCase key when both are given;
3. for the two read-cache switches only, ``<state root>/read-cache/config.json``
   (``read_cache_enabled``, ``read_cache_mode``: the reference's file);
4. the default.

The environment wins because that is what the reference reads (it has no plugin config at
all) and because it lets an operator change one deployed gateway without editing its config
file. The OpenClaw shim's own keys (``pythonPath``, ``timeoutMs``) are the exception: the
shim (``dist/index.js``) reads its plugin config first and the environment second, and the
declarations below say so (``config_first``).

A value that does not parse is *rejected*: the default is used (not the next source), and
one warning per process names the setting, the value given and the value used.

Parse rules:

* integers: an optional sign and decimal digits, surrounded by optional whitespace; a JSON
  number that is integral. The value is what the reference's ``parseInt`` gives for such a
  string, so every value the reference reads as meant ("90000") reads the same. Strings the
  reference would cut to a prefix ("90s" -> 90, "1e3" -> 1) or read as ``NaN`` ("abc") are
  rejected, as are values outside the setting's range;
* decimals: a plain decimal or exponent number, finite, in range;
* switches: ``1 true yes on`` and ``0 false no off`` (case-insensitive, trimmed) or a JSON
  boolean;
* choices: the listed words (case-insensitive).

``PolicySettings.from_env`` and ``Continuity``'s own environment reading keep the
reference's raw ``parseInt``/``NaN`` reading (the spec pins it); the runtime reads through
:func:`resolve` instead.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("token_optimizer")

SOURCE_DEFAULT = "default"
SOURCE_ENV = "env"
SOURCE_OPENCLAW = "OpenClaw plugin config"
SOURCE_HERMES = "Hermes plugin config"
SOURCE_READ_CACHE_FILE = "read-cache/config.json"

HOST_SOURCES = {"openclaw": SOURCE_OPENCLAW, "hermes": SOURCE_HERMES}

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_JS_WS = " \t\n\r\v\f\u00a0\ufeff\u2028\u2029"


class Invalid(ValueError):
    """A value a setting does not accept; the message says what it accepts."""


# ---------------------------------------------------------------- parsers


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def int_parser(lo: int | None = 0, hi: int | None = None) -> Callable[[object], int]:
    def parse(v: object) -> int:
        n: int
        if _is_number(v):
            f = float(v)  # type: ignore[arg-type]
            if not math.isfinite(f) or not f.is_integer():
                raise Invalid("a whole number")
            n = int(f)
        elif isinstance(v, str) and _INT_RE.fullmatch(v.strip(_JS_WS)):
            n = int(v.strip(_JS_WS))
        else:
            raise Invalid("a whole number (digits only, no unit)")
        if lo is not None and n < lo:
            raise Invalid(f"a whole number >= {lo}")
        if hi is not None and n > hi:
            raise Invalid(f"a whole number <= {hi}")
        return n

    return parse


def float_parser(lo: float | None = 0.0, hi: float | None = None) -> Callable[[object], float]:
    def parse(v: object) -> float:
        if _is_number(v):
            f = float(v)  # type: ignore[arg-type]
        elif isinstance(v, str) and _FLOAT_RE.fullmatch(v.strip(_JS_WS)):
            f = float(v.strip(_JS_WS))
        else:
            raise Invalid("a number")
        if not math.isfinite(f):
            raise Invalid("a finite number")
        if lo is not None and f < lo:
            raise Invalid(f"a number >= {lo:g}")
        if hi is not None and f > hi:
            raise Invalid(f"a number <= {hi:g}")
        return f

    return parse


def parse_switch(v: object) -> bool:
    if isinstance(v, bool):
        return v
    if _is_number(v) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        w = v.strip(_JS_WS).lower()
        if w in TRUE_WORDS:
            return True
        if w in FALSE_WORDS:
            return False
    raise Invalid("one of 1/true/yes/on or 0/false/no/off")


def choice_parser(*words: str, upper: bool = False) -> Callable[[object], str]:
    def parse(v: object) -> str:
        if isinstance(v, str):
            w = v.strip(_JS_WS).upper() if upper else v.lower()
            if w in words:
                return w
        raise Invalid("one of " + "|".join(words))

    return parse


def parse_read_cache_mode(v: object) -> str:
    """Lower-cased, *not* trimmed (the reference compares the raw lower-cased text)."""
    if isinstance(v, str) and v.lower() in ("warn", "block"):
        return v.lower()
    raise Invalid("warn or block")


def parse_text(v: object) -> str:
    if isinstance(v, str) and v.strip():
        return v.strip()
    raise Invalid("a non-empty text")


def parse_date(v: object) -> str:
    if isinstance(v, str) and _DATE_RE.fullmatch(v.strip()):
        return v.strip()
    raise Invalid("a date YYYY-MM-DD")


def parse_max_age_days(v: object) -> int:
    """``sessionStoreMaxAgeDays``: an integer (a float is truncated); negative means 0."""
    if _is_number(v):
        f = float(v)  # type: ignore[arg-type]
        if not math.isfinite(f):
            raise Invalid("a whole number of days")
        return max(0, int(f))
    if isinstance(v, str):
        try:
            return max(0, int(v.strip()))
        except ValueError:
            pass
    raise Invalid("a whole number of days")


# ---------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Setting:
    env: str | None
    """The environment variable (``None``: plugin config only)."""
    key: str | None
    """The plugin-config key, camelCase (``None``: environment only)."""
    type: str
    default: Any
    accepted: str
    meaning: str
    parse: Callable[[object], Any]
    scope: str = "runtime"
    """``runtime`` (the Python core), ``shim`` (OpenClaw's ``dist/index.js``), ``worker``
    (the OpenClaw worker process), ``cli`` (commands only) or ``internal`` (tests/debug)."""
    alias: str | None = None
    """A snake_case plugin-config key also read (wins over ``key``)."""
    read: str = "at start"
    empty_is_unset: bool = True
    config_first: bool = False
    """The plugin config wins over the environment (the shim's own keys)."""

    @property
    def name(self) -> str:
        return self.env or f"config.{self.key}"

    @property
    def internal(self) -> bool:
        return self.scope == "internal"


def _s(*args: Any, **kw: Any) -> Setting:
    return Setting(*args, **kw)


HOME = _s("TOKEN_OPTIMIZER_HOME", None, "path", None,
          "a directory", "state root (default `$OPENCLAW_STATE_DIR/token-optimizer`, i.e. "
          "`~/.openclaw/token-optimizer`; on Hermes `<HERMES_HOME>/token-optimizer`)",
          parse_text)
CHECKPOINT_COOLDOWN_MS = _s("TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS", "checkpointCooldownMs", "int",
                            90_000, "whole ms >= 0",
                            "minimum time between recorded checkpoints", int_parser(0))
EVALUATION_COOLDOWN_MS = _s("TOKEN_OPTIMIZER_RUNTIME_EVALUATION_COOLDOWN_MS",
                            "runtimeEvaluationCooldownMs", "int", 30_000, "whole ms >= 0",
                            "minimum time between fill/quality evaluations", int_parser(0))
EDIT_BATCH_WRITE_THRESHOLD = _s("TOKEN_OPTIMIZER_EDIT_BATCH_WRITE_THRESHOLD",
                                "editBatchWriteThreshold", "int", 4, "whole number >= 0",
                                "writes since the last edit-batch checkpoint that trigger one",
                                int_parser(0))
EDIT_BATCH_FILE_THRESHOLD = _s("TOKEN_OPTIMIZER_EDIT_BATCH_FILE_THRESHOLD",
                               "editBatchFileThreshold", "int", 3, "whole number >= 0",
                               "new files since the last edit-batch checkpoint that trigger one",
                               int_parser(0))
CHECKPOINT_TELEMETRY = _s("TOKEN_OPTIMIZER_CHECKPOINT_TELEMETRY", "checkpointTelemetry", "bool",
                          False, "1/true/yes/on, 0/false/no/off",
                          "write `checkpoints/checkpoint-events.jsonl` (what `checkpoint-stats` "
                          "and the doctor's last trigger read)", parse_switch)
READ_CACHE = _s("TOKEN_OPTIMIZER_READ_CACHE", "readCache", "bool", True,
                "1/true/yes/on, 0/false/no/off",
                "the read cache (redundant-read warnings, delta reads); also "
                "`read_cache_enabled` in `read-cache/config.json`", parse_switch,
                read="every read", empty_is_unset=False)
READ_CACHE_MODE = _s("TOKEN_OPTIMIZER_READ_CACHE_MODE", "readCacheMode", "choice", "warn",
                     "warn or block (case-insensitive)",
                     "`block` blocks redundant full re-reads; also `read_cache_mode` in "
                     "`read-cache/config.json`", parse_read_cache_mode,
                     read="every read", empty_is_unset=False)
RELEVANCE_THRESHOLD = _s("TOKEN_OPTIMIZER_RELEVANCE_THRESHOLD", "relevanceThreshold", "float",
                         0.3, "number >= 0", "continuity hint threshold (topic overlap score)",
                         float_parser(0.0))
CONTINUITY_MAX_AGE_DAYS = _s("TOKEN_OPTIMIZER_CONTINUITY_MAX_AGE_DAYS", "continuityMaxAgeDays",
                             "int", 7, "whole days >= 0",
                             "continuity look-back: older checkpoints are not offered",
                             int_parser(0))
RESUME_TOPIC_BAR = _s("TOKEN_OPTIMIZER_RESUME_TOPIC_BAR", "resumeTopicBar", "float", 0.22,
                      "number >= 0",
                      "score a prior session's topic needs before a resume block names it",
                      float_parser(0.0))
SESSION_STORE_MAX_AGE_DAYS = _s("TOKEN_OPTIMIZER_SESSION_STORE_MAX_AGE_DAYS",
                                "sessionStoreMaxAgeDays", "int", 90,
                                "whole days (negative means 0)",
                                "session index TTL (0 disables pruning)", parse_max_age_days,
                                alias="session_store_max_age_days")
PRICING_AS_OF = _s("TOKEN_OPTIMIZER_PRICING_AS_OF", "pricingAsOf", "date", None,
                   "YYYY-MM-DD (UTC)",
                   "the date prices are chosen for (default: today); pins the Sonnet card",
                   parse_date)
BUDGET_DAILY_USD = _s("TOKEN_OPTIMIZER_BUDGET_DAILY_USD", "budgetDailyUsd", "float", None,
                      "USD >= 0", "daily spend limit: `budget --check`, and one line in a session "
                      "over it (default: none)", float_parser(0.0),
                      alias="budget_daily_usd")
BUDGET_MONTHLY_USD = _s("TOKEN_OPTIMIZER_BUDGET_MONTHLY_USD", "budgetMonthlyUsd", "float", None,
                        "USD >= 0", "monthly spend limit: `budget --check`, and one line in a "
                        "session over it (default: none)", float_parser(0.0),
                        alias="budget_monthly_usd")
LOG_LEVEL = _s("TOKEN_OPTIMIZER_LOG_LEVEL", None, "choice", "INFO",
               "DEBUG, INFO, WARNING or ERROR (case-insensitive)",
               "log level of the OpenClaw worker (its stderr, which the gateway logs)",
               choice_parser("DEBUG", "INFO", "WARNING", "ERROR", upper=True), scope="worker")
OPENCLAW_TRACE = _s("TOKEN_OPTIMIZER_OPENCLAW_TRACE", None, "path", None, "a file path",
                    "debug aid: the OpenClaw worker appends one JSON line per message there",
                    parse_text, scope="worker")
PYTHON = _s("TOKEN_OPTIMIZER_PYTHON", "pythonPath", "path", "python3",
            "an interpreter (name on PATH or path)",
            "the Python the OpenClaw shim starts the worker with (`pythonPath` wins)",
            parse_text, scope="shim", config_first=True)
TIMEOUT_MS = _s("TOKEN_OPTIMIZER_TIMEOUT_MS", "timeoutMs", "int", 1500, "whole ms, 10-14000",
                "how long the OpenClaw shim waits for an awaited hook's answer "
                "(`timeoutMs` wins)", int_parser(10, 14_000), scope="shim", config_first=True)
STARTUP_TIMEOUT_MS = _s(None, "startupTimeoutMs", "int", 5000, "whole ms, 0-60000",
                        "how long the OpenClaw shim waits for the worker to start",
                        int_parser(0, 60_000), scope="shim")
MAX_MESSAGES = _s(None, "maxMessages", "int", 200, "whole number, 0-100000",
                  "messages of the conversation the OpenClaw shim forwards per `agent_end`",
                  int_parser(0, 100_000), scope="shim")
AUDIT_WORKERS = _s("TOKEN_OPTIMIZER_AUDIT_WORKERS", None, "int", None, "whole number >= 1",
                   "processes a cold `scan` of many transcript files or events parses them on "
                   "(default: the cores, up to 8, for large cold scans)", int_parser(1, 64),
                   scope="cli")
OPENCLAW_RUNTIME = _s("TOKEN_OPTIMIZER_OPENCLAW_RUNTIME", None, "text", None, "module:attr",
                      "debug: a stand-in runtime factory for the OpenClaw worker", parse_text,
                      scope="internal")
REQUIRE_HOSTS = _s("TOKEN_OPTIMIZER_REQUIRE_HOSTS", None, "bool", False, "1/0",
                   "tests: fail, not skip, when a real host is missing", parse_switch,
                   scope="internal")
TEST_CACHE = _s("TOKEN_OPTIMIZER_CACHE", None, "path", None, "a directory",
                "tests: where host installs are cached", parse_text, scope="internal")

SETTINGS: tuple[Setting, ...] = (
    HOME, CHECKPOINT_COOLDOWN_MS, EVALUATION_COOLDOWN_MS, EDIT_BATCH_WRITE_THRESHOLD,
    EDIT_BATCH_FILE_THRESHOLD, CHECKPOINT_TELEMETRY, READ_CACHE, READ_CACHE_MODE,
    RELEVANCE_THRESHOLD, CONTINUITY_MAX_AGE_DAYS, RESUME_TOPIC_BAR, SESSION_STORE_MAX_AGE_DAYS,
    PRICING_AS_OF, BUDGET_DAILY_USD, BUDGET_MONTHLY_USD, LOG_LEVEL, OPENCLAW_TRACE, PYTHON,
    TIMEOUT_MS, STARTUP_TIMEOUT_MS, MAX_MESSAGES, AUDIT_WORKERS, OPENCLAW_RUNTIME, REQUIRE_HOSTS,
    TEST_CACHE,
)
BY_ENV: dict[str, Setting] = {s.env: s for s in SETTINGS if s.env}


def user_facing() -> list[Setting]:
    return [s for s in SETTINGS if not s.internal]


# ---------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolved:
    setting: Setting
    value: Any
    source: str
    raw: object = None
    problem: str | None = None
    """Why ``raw`` was rejected (``value`` is then the default)."""

    @property
    def valid(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        s = self.setting
        return {"name": s.name, "env": s.env, "key": s.key, "value": self.value,
                "default": s.default, "source": self.source, "given": self.raw,
                "valid": self.valid, "problem": self.problem, "scope": s.scope}


@dataclass(frozen=True)
class Sources:
    """Where settings are read from: an environment and (at most) one host's plugin config."""

    env: Mapping[str, str]
    plugin: Mapping[str, Any] | None = None
    host: str | None = None
    """``openclaw`` or ``hermes``: names the plugin config's source."""

    @classmethod
    def current(cls, plugin: Mapping[str, Any] | None = None, host: str | None = None,
                env: Mapping[str, str] | None = None) -> Sources:
        return cls(os.environ if env is None else env,
                   plugin if isinstance(plugin, Mapping) else None, host)

    def get(self, setting: Setting, file_value: object = None, *, warn: bool = True) -> Resolved:
        r = resolve(setting, self, file_value)
        if warn and r.problem is not None:
            warn_invalid(r)
        return r

    def value(self, setting: Setting) -> Any:
        return self.get(setting).value


_UNSET = object()


def _env_raw(setting: Setting, env: Mapping[str, str]) -> str | None:
    if setting.env is None:
        return None
    raw = env.get(setting.env)
    if raw is None or (setting.empty_is_unset and raw.strip() == ""):
        return None
    return raw


def _plugin_raw(setting: Setting, plugin: Mapping[str, Any] | None) -> object:
    if plugin is None:
        return _UNSET
    for k in (setting.alias, setting.key):
        if k is not None and k in plugin and plugin[k] is not None:
            return plugin[k]
    return _UNSET


def resolve(setting: Setting, sources: Sources, file_value: object = None) -> Resolved:
    """The effective value of ``setting`` and where it came from (no warning)."""
    layers: list[tuple[str, object]] = []
    env_raw = _env_raw(setting, sources.env)
    if env_raw is not None:
        layers.append((SOURCE_ENV, env_raw))
    plug = _plugin_raw(setting, sources.plugin)
    if plug is not _UNSET:
        layers.append((HOST_SOURCES.get(sources.host or "", "plugin config"), plug))
    if setting.config_first:
        layers.reverse()
    if file_value is not None:
        layers.append((SOURCE_READ_CACHE_FILE, file_value))
    if not layers:
        return Resolved(setting, setting.default, SOURCE_DEFAULT)
    source, raw = layers[0]
    try:
        return Resolved(setting, setting.parse(raw), source, raw)
    except Invalid as exc:
        return Resolved(setting, setting.default, source, raw, f"expected {exc}")


def env_value(setting: Setting, env: Mapping[str, str] | None = None) -> Any:
    """The setting from the environment alone (for settings no plugin config carries)."""
    return Sources.current(env=env).value(setting)


def env_raw(setting: Setting, env: Mapping[str, str] | None = None) -> str | None:
    """The raw environment text of ``setting`` (``None`` when unset); no validation."""
    return _env_raw(setting, os.environ if env is None else env)


# ---------------------------------------------------------------- warnings

_warned: set[tuple[str, str, str]] = set()
_warned_lock = threading.Lock()
_WARNED_CAP = 512


def warn_invalid(r: Resolved) -> bool:
    """Log one warning per process for this setting, source and value; True when logged."""
    key = (r.setting.name, r.source, repr(r.raw))
    with _warned_lock:
        if key in _warned or len(_warned) >= _WARNED_CAP:
            return False
        _warned.add(key)
    where = r.setting.env if r.source == SOURCE_ENV else f"{r.source} {r.setting.key or ''}".strip()
    log.warning("[token-optimizer] invalid setting %s (%s) = %r: %s; using %r",
                r.setting.name, where, r.raw, r.problem, r.value)
    return True


def reset_warnings() -> None:
    """Forget which warnings were logged (tests)."""
    with _warned_lock:
        _warned.clear()
