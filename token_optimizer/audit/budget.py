"""Spending limits: where they are read from, and the one-line warning for a session over them.

This module is safe for the hook path: it imports nothing else from
:mod:`token_optimizer.audit` (no readers, no SQLite), reads only the
environment and a plugin-config mapping, and never raises.

Settings (until the shared settings module exists):

* ``TOKEN_OPTIMIZER_BUDGET_DAILY_USD`` / ``TOKEN_OPTIMIZER_BUDGET_MONTHLY_USD``
  (environment, wins when set and non-empty);
* ``budgetDailyUsd`` / ``budgetMonthlyUsd`` (or ``budget_daily_usd`` /
  ``budget_monthly_usd``) in the plugin config.

A limit must be a finite number above 0. Anything else is rejected with one
warning naming the setting, the value given and the value used (the plugin
config's value when the environment's is bad, else no limit).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

log = logging.getLogger("token_optimizer")

ENV_DAILY = "TOKEN_OPTIMIZER_BUDGET_DAILY_USD"
ENV_MONTHLY = "TOKEN_OPTIMIZER_BUDGET_MONTHLY_USD"
CONFIG_DAILY = ("budget_daily_usd", "budgetDailyUsd")
CONFIG_MONTHLY = ("budget_monthly_usd", "budgetMonthlyUsd")


@dataclass(frozen=True)
class BudgetLimits:
    daily_usd: float | None = None
    monthly_usd: float | None = None
    daily_source: str | None = None
    """The setting the daily limit came from (env var or config key)."""
    monthly_source: str | None = None

    @property
    def any(self) -> bool:
        return self.daily_usd is not None or self.monthly_usd is not None


def _parse(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        x = float(raw)
    elif isinstance(raw, str):
        try:
            x = float(raw.strip().lstrip("$"))
        except ValueError:
            return None
    else:
        return None
    return x if math.isfinite(x) and x > 0 else None


def _fmt_used(v: float | None) -> str:
    return "no limit" if v is None else f"{v:g}"


@lru_cache(maxsize=64)
def _resolve(env_name: str, env_raw: str | None, cfg_name: str | None,
             cfg_raw: Any) -> tuple[float | None, str | None]:
    """Memoised on the raw inputs, so each bad value is warned about once per process."""
    value: float | None = None
    source: str | None = None
    if cfg_name is not None:
        value = _parse(cfg_raw)
        if value is None:
            log.warning("[token-optimizer] %s: %r is not a positive number of USD; using no limit",
                        cfg_name, cfg_raw)
        else:
            source = cfg_name
    if env_raw is not None and env_raw.strip() != "":
        env_value = _parse(env_raw)
        if env_value is None:
            log.warning("[token-optimizer] %s: %r is not a positive number of USD; using %s",
                        env_name, env_raw, _fmt_used(value))
        else:
            value, source = env_value, env_name
    return value, source


def _config_value(cfg: Mapping[str, Any] | None, keys: tuple[str, ...]) -> tuple[str | None, Any]:
    if not isinstance(cfg, Mapping):
        return None, None
    for k in keys:  # snake_case first, like Config.from_dict
        if k in cfg and cfg[k] is not None:
            v = cfg[k]
            return k, v if isinstance(v, (str, int, float, bool)) else repr(v)
    return None, None


def budget_limits(plugin_config: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None) -> BudgetLimits:
    """The daily and monthly limits (``None`` = no limit); the environment wins when set."""
    e = os.environ if env is None else env
    dname, draw = _config_value(plugin_config, CONFIG_DAILY)
    mname, mraw = _config_value(plugin_config, CONFIG_MONTHLY)
    daily, dsrc = _resolve(ENV_DAILY, e.get(ENV_DAILY), dname, draw)
    monthly, msrc = _resolve(ENV_MONTHLY, e.get(ENV_MONTHLY), mname, mraw)
    return BudgetLimits(daily, monthly, dsrc, msrc)


def budget_line(session_cost_usd: float | None, *, limits: BudgetLimits | None = None,
                plugin_config: Mapping[str, Any] | None = None,
                day_spent_usd: float | None = None,
                month_spent_usd: float | None = None) -> str | None:
    """One nudge line when a session is over a limit, else ``None``. Cheap; never raises.

    ``session_cost_usd`` is the session's running cost (the runtime ledger's
    ``snapshot.run.cost_usd``). Without ``day_spent_usd``/``month_spent_usd``
    (spend of earlier sessions, when the caller knows it) the session alone is
    compared with the limits. The daily limit is checked first.
    """
    try:
        if session_cost_usd is None or not math.isfinite(session_cost_usd) \
                or session_cost_usd <= 0:
            return None
        lim = limits if limits is not None else budget_limits(plugin_config)
        checks = ((lim.daily_usd, day_spent_usd, "daily", lim.daily_source),
                  (lim.monthly_usd, month_spent_usd, "monthly", lim.monthly_source))
        for limit, before, label, source in checks:
            if limit is None:
                continue
            prior = before if before is not None and math.isfinite(before) and before > 0 else 0.0
            spent = prior + session_cost_usd
            if spent > limit:
                what = (f"this session has cost ${session_cost_usd:.2f}" if not prior else
                        f"this session (${session_cost_usd:.2f}) brings {label} spend to "
                        f"${spent:.2f}")
                return (f"[Token Optimizer] Over budget: {what}, above the {label} limit of "
                        f"${limit:.2f} ({source}). Consider wrapping up or switching to a "
                        "cheaper model.")
        return None
    except Exception:  # hook-safe: a budget problem never breaks a turn
        log.debug("budget_line failed", exc_info=True)
        return None


__all__ = ["ENV_DAILY", "ENV_MONTHLY", "BudgetLimits", "budget_limits", "budget_line"]
