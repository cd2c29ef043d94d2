"""Spending limits: where they are read from, and the one-line warning for a session over them.

This module is safe for the hook path: it imports nothing else from
:mod:`token_optimizer.audit` (no readers, no SQLite), reads only the
environment and a plugin-config mapping, and never raises.

The limits are the settings ``TOKEN_OPTIMIZER_BUDGET_DAILY_USD`` /
``TOKEN_OPTIMIZER_BUDGET_MONTHLY_USD`` (environment) or ``budgetDailyUsd`` /
``budgetMonthlyUsd`` (plugin config), declared and parsed in
:mod:`token_optimizer.settings` like every other setting: the environment wins, a
bad value gets one warning and means no limit, and a limit is a number >= 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from token_optimizer import settings

log = logging.getLogger("token_optimizer")



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


def _named(r: settings.Resolved, plugin: Mapping[str, Any] | None) -> str | None:
    """The name of what set a limit: the variable, or the config key used."""
    if r.value is None:
        return None
    s = r.setting
    if r.source == settings.SOURCE_ENV:
        return s.env
    if plugin is not None and s.alias is not None and plugin.get(s.alias) is not None:
        return s.alias
    return s.key


def limits_from(sources: settings.Sources) -> BudgetLimits:
    """The limits as the settings module resolves them (environment over plugin config;
    a bad value warns once and means no limit; 0 is a limit of $0)."""
    daily = sources.get(settings.BUDGET_DAILY_USD)
    monthly = sources.get(settings.BUDGET_MONTHLY_USD)
    return BudgetLimits(daily.value, monthly.value, _named(daily, sources.plugin),
                        _named(monthly, sources.plugin))


def budget_limits(plugin_config: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None) -> BudgetLimits:
    """The daily and monthly limits (``None`` = no limit); the environment wins when set."""
    return limits_from(settings.Sources.current(plugin_config, env=env))


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


__all__ = ["BudgetLimits", "budget_limits", "budget_line", "limits_from"]
