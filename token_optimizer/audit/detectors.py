"""Waste detectors over normalised sessions, and the de-duplicated savings total.

The registry holds the reference's fifteen detectors (spec ``cli.md`` §2, same
ids, thresholds, severities and evidence keys) followed by three host-aware
ones (``compaction_churn``, ``cold_cache``, ``rewind_churn``). Every detector
reads :class:`~token_optimizer.audit.model.SessionRow` only.

Differences from the reference (each listed in COMPAT.md):

* **Monthly normalisation.** The reference divides a detector's dollars by the
  time between the *flagged* runs (at least one day), so two wasteful runs on
  one afternoon of a 30-day scan count as thirty. Here every detector scales
  by the span of the whole audited window: ``factor = 30 / span_days`` with
  ``span_days`` = time between the first and last session start of all rows
  audited, at least one day. ``monthlyWasteTokens`` is scaled the same way and
  always an integer (the reference mixes raw, monthly and per-message figures).
* **Failure outcome.** The reference never produces ``failure``, so
  ``retry_churn`` and ``tool_cascade`` never fire. A session is a failure here
  when the host recorded a model-side error (an assistant turn with
  ``stopReason: error`` or an ``errorMessage``, Hermes ``finish_reason`` ``error``,
  an errored run status) or at least :data:`TOOL_ERROR_FAILURE` failed tool
  results (OpenClaw ``isError``, Claude-style ``is_error`` blocks, Hermes error
  payloads). ``retry_churn`` counts the model-side failures, ``tool_cascade``
  the tool-error ones; their other thresholds are the reference's.
* **Cron signal.** Heartbeat/cron runs are the ones the host marks
  (OpenClaw ``session_nodes.created_via = 'cron'``, ``agent:<id>:cron:…`` keys,
  ``heartbeat_outcomes``; Hermes ``source = 'cron'``), not agents named after
  files in ``<root>/cron/`` (which moved into SQLite).
* **Heartbeat frequency** is measured per (host, agent, cron job) rather than
  over all agents pooled, where two agents beating every ten minutes looked
  like one beating every five.
* **Stale cron.** Hooks are read from ``openclaw.json`` (a legacy
  ``config.json``'s hooks too); the commands and working directories of the
  *enabled* cron jobs in ``state/openclaw.sqlite`` (``command`` payloads,
  ``on-exit``/``stream`` schedules) are checked with the same path rule.

Every finding carries per-unit claims (a unit is a session, ``host:id``, or
for the one projection that is not a share of seen sessions the finding
itself): its ``monthlyWasteUsd`` is their sum. :func:`dedup_total` counts
each unit once, at the largest claim any finding makes on it.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from token_optimizer.audit.model import CronCommand, SessionRow
from token_optimizer.audit.money import Pricer
from token_optimizer.pricing import EXPENSIVE_MODELS, normalize_model_name

log = logging.getLogger("token_optimizer")

Severity = Literal["low", "medium", "high", "critical"]
Basis = Literal["measured", "estimated"]
Group = Literal["fix", "nudge", "keep"]
Outcome = Literal["success", "failure", "empty", "abandoned"]

DAY_MS = 86_400_000
CHEAP_MODELS = frozenset({
    "haiku", "gpt-5-mini", "gpt-5-nano", "gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano",
    "gemini-2.0-flash", "gemini-2.0-flash-lite", "gemini-flash-lite", "deepseek-v3",
    "qwen3-mini", "local",
})
HAIKU_MODEL = "claude-haiku-4-5"
"""Priced from the rate table's ``haiku`` card ($1 / $5 / $0.10 / $1.25 per 1M)."""

TOOL_ERROR_FAILURE = 3
"""Failed tool results that make a session a failure on their own."""
ERRORED_STATUSES = frozenset({"failed", "timeout", "error", "errored", "failure"})
"""Run statuses that mean the run failed (OpenClaw ``session_windows.status`` allows
``running``/``done``/``failed``/``killed``/``timeout``; ``killed`` is the operator's doing)."""

COLD_CACHE_RATIO = 0.30
"""``cold_cache`` fires below this cache-read share of the prompt (fresh input + cache
read + cache write). A multi-call agent session re-sends a growing prefix; with the
provider's prompt cache working most of each prompt is read from it (the generated and
real-host sessions here sit at 0.7-0.95). Under 0.30 over several calls the prefix is
changing between calls or the cache expires between them."""
COLD_CACHE_TARGET = 0.60
"""The share the savings estimate assumes a fixed session would reach (deliberately low)."""
COLD_CACHE_MIN_CALLS = 4
COLD_CACHE_MIN_PROMPT = 50_000
CHURN_COMPACTIONS = 3
"""OpenClaw: compactions (events plus compaction windows) per session that count as churn."""
CHURN_FALLBACK_STREAK = 2
"""Hermes: consecutive compression fallbacks (``compression_fallback_streak``) that count."""
CHURN_REWINDS = 2
CHURN_SHARE_PER_STEP = 0.10
"""Share of a churning session's cost assumed lost per extra compaction/rewind (max 5 steps)."""


@dataclass
class Finding:
    """One waste pattern (the reference's ``WasteFinding`` plus basis, group and claims)."""

    waste_type: str
    tier: int
    severity: Severity
    confidence: float
    description: str
    monthly_waste_usd: float
    monthly_waste_tokens: int
    recommendation: str
    fix_snippet: str
    evidence: dict[str, Any]
    basis: Basis
    group: Group
    agent_name: str = ""
    system: str = "openclaw"
    claims: dict[str, float] = field(default_factory=dict)
    """unit → monthly USD this finding claims on it (sums to ``monthly_waste_usd``)."""
    counted_usd: float = 0.0
    """This finding's part of the de-duplicated total."""

    def to_json(self) -> dict[str, Any]:
        sessions = sorted(u for u in self.claims if not u.startswith("finding:"))
        return {
            "system": self.system, "agentName": self.agent_name, "wasteType": self.waste_type,
            "tier": self.tier, "severity": self.severity, "confidence": self.confidence,
            "description": self.description, "monthlyWasteUsd": self.monthly_waste_usd,
            "monthlyWasteTokens": self.monthly_waste_tokens,
            "recommendation": self.recommendation, "fixSnippet": self.fix_snippet,
            "evidence": self.evidence, "basis": self.basis, "group": self.group,
            "countedUsd": self.counted_usd,
            "overlapUsd": max(0.0, self.monthly_waste_usd - self.counted_usd),
            "sessionCount": len(sessions), "sessions": sessions[:50],
        }


@dataclass
class Context:
    rows: Sequence[SessionRow]
    config: Mapping[str, Any]
    pricer: Pricer
    factor: float
    """30 / span of the audited window in days."""
    span_days: float
    cron: Sequence[CronCommand] = ()
    """Commands of the enabled OpenClaw cron jobs (``stale_cron``)."""


def unit(r: SessionRow) -> str:
    return f"{r.host}:{r.session_id}"


def span_days(rows: Sequence[SessionRow]) -> float:
    ts = [r.started_ms for r in rows if r.started_ms is not None]
    if len(ts) < 2:
        return 1.0
    return max(1.0, (max(ts) - min(ts)) / DAY_MS)


def family(r: SessionRow) -> str:
    return normalize_model_name(r.model) or r.model


def model_side_failure(r: SessionRow) -> bool:
    return (r.error_turns > 0 or (r.status or "").lower() in ERRORED_STATUSES
            or (r.end_reason or "").lower() in ERRORED_STATUSES)


def outcome(r: SessionRow) -> Outcome:
    """The reference's outcome rule with ``failure`` derived from the host's error signals."""
    if model_side_failure(r) or r.tool_errors >= TOOL_ERROR_FAILURE:
        return "failure"
    if r.message_count <= 2 and r.tokens.output < 200:
        return "abandoned"
    if r.tokens.output < 100 and r.tokens.input > 50_000:
        return "empty"
    return "success"


def _haiku_cost(ctx: Context, r: SessionRow) -> float:
    t = r.tokens
    p = ctx.pricer.price(HAIKU_MODEL, t.input, t.output, t.cache_read, t.cache_write,
                         per_call=False)
    return p or 0.0


def _system(rows: Sequence[SessionRow]) -> str:
    hosts = {r.host for r in rows}
    return hosts.pop() if len(hosts) == 1 else "all"


def _monthly_tokens(ctx: Context, n: float) -> int:
    return round(n * ctx.factor)


def _claims(ctx: Context, rows: Sequence[SessionRow],
            waste: Callable[[SessionRow], float] = lambda r: r.cost_usd) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in rows:
        w = max(0.0, waste(r)) * ctx.factor
        if w > 0:
            out[unit(r)] = out.get(unit(r), 0.0) + w
    return out


def _finding(ctx: Context, wt: str, tier: int, sev: Severity, conf: float, desc: str,
             claims: dict[str, float], tokens: float, rec: str, fix: str,
             evidence: dict[str, Any], basis: Basis, group: Group, rows: Sequence[SessionRow],
             agent: str = "") -> Finding:
    return Finding(wt, tier, sev, conf, desc, sum(claims.values()), round(tokens), rec, fix,
                   evidence, basis, group, agent, _system(rows), claims)


# ---------------------------------------------------------------- the reference's fifteen


def heartbeat_model_waste(ctx: Context) -> list[Finding]:
    hb = [r for r in ctx.rows if r.run_type in ("heartbeat", "cron")]
    exp = [r for r in hb if family(r) in EXPENSIVE_MODELS and r.cost_usd > 0]
    if not exp:
        return []
    claims = _claims(ctx, exp, lambda r: r.cost_usd - _haiku_cost(ctx, r))
    usd = sum(claims.values())
    if usd < 0.10:
        return []
    models = sorted({family(r) for r in exp})
    jobs = sorted({r.cron_job for r in exp if r.cron_job})
    return [_finding(
        ctx, "heartbeat_model_waste", 1, "high" if usd > 5 else "medium", 0.90,
        f"{len(exp)} scheduled (heartbeat/cron) runs used {'/'.join(models)}; a Haiku-class "
        "model handles routine checks like these.",
        claims, _monthly_tokens(ctx, sum(r.tokens.total for r in exp)),
        f"Route scheduled runs to Haiku: about ${usd:.2f}/month less.",
        "# the cron job / heartbeat agent's config (OpenClaw: `openclaw cron edit <job>`;"
        " Hermes: the job's model)\n"
        f'"model": "haiku"  // was: {", ".join(models)}',
        {"expensiveCount": len(exp), "modelsUsed": models, "cronJobs": jobs},
        "estimated", "fix", exp, exp[0].agent)]


def heartbeat_over_frequency(ctx: Context) -> list[Finding]:
    groups: dict[tuple[str, str, str], list[SessionRow]] = {}
    for r in ctx.rows:
        if r.run_type in ("heartbeat", "cron") and r.started_ms is not None:
            groups.setdefault((r.host, r.agent, r.cron_job or ""), []).append(r)
    claims: dict[str, float] = {}
    flagged: list[SessionRow] = []
    short_all: list[float] = []
    worst: list[dict[str, Any]] = []
    for (host, agent, job), runs in groups.items():
        if len(runs) < 3:
            continue
        runs.sort(key=lambda r: r.started_ms or 0.0)
        gaps = [((b.started_ms or 0.0) - (a.started_ms or 0.0)) / 1000
                for a, b in itertools.pairwise(runs)]
        short = [g for g in gaps if 0 < g < 300]
        if len(short) < 3:
            continue
        avg = sum(short) / len(short)
        extra = max(0.0, 3600 / avg - 12)
        mean_cost = sum(r.cost_usd for r in runs) / len(runs)
        usd = extra * 16 * 30 * mean_cost
        if usd <= 0:
            continue
        key = f"finding:heartbeat_over_frequency:{host}:{agent}:{job}"
        claims[key] = usd
        flagged.extend(runs)
        short_all.extend(short)
        worst.append({"host": host, "agent": agent, "cronJob": job or None,
                      "avgIntervalSeconds": round(avg), "shortCount": len(short),
                      "monthlyWasteUsd": usd})
    usd = sum(claims.values())
    if usd < 0.10 or not flagged:
        return []
    avg = round(sum(short_all) / len(short_all))
    return [_finding(
        ctx, "heartbeat_over_frequency", 1, "medium" if usd < 2 else "high", 0.70,
        f"Scheduled runs repeat every {avg} seconds on average ({len(short_all)} intervals "
        "under 5 minutes).",
        claims, 0, "Run the heartbeat every 5 minutes or less often.",
        '"interval": 300  // seconds between heartbeat runs',
        {"avgIntervalSeconds": avg, "shortCount": len(short_all), "groups": worst},
        "estimated", "fix", flagged, flagged[0].agent)]


def _on_disk(path: str) -> bool | None:
    """Whether ``path`` exists; ``None`` when it cannot be told (permission denied, NUL)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError):
        return None
    return True


def _missing_path(tok: str) -> bool:
    """The reference's rule: absolute, not under ``/usr`` or ``/bin``, and not on disk
    (a path that cannot be checked is not reported)."""
    return tok.startswith("/") and not tok.startswith(("/usr", "/bin")) \
        and _on_disk(tok) is False


def _cron_words(c: CronCommand) -> list[str]:
    if c.is_dir:
        return list(c.parts)
    words: list[str] = []
    for part in c.parts:
        # an argv element naming an existing path is one word ("/opt/my tools/run.sh")
        if part.startswith("/") and _on_disk(part):
            continue
        words.extend(part.split())
    return words


def stale_cron(ctx: Context) -> list[Finding]:
    """Hooks and enabled cron jobs that run a path which no longer exists.

    Hooks: ``config.hooks[<name>]`` lists of ``{command}`` (the reference's shape; the
    merged ``openclaw.json`` + legacy ``config.json`` view of :func:`load_openclaw_config`).
    OpenClaw 2026.9.6's own ``hooks`` section is the webhook ingress (``path``,
    ``mappings``, ``presets``, ``gmail``, ``internal``) and holds no command lists, so on
    today's hosts the commands come from the cron jobs (``ctx.cron``). One finding per
    missing path and hook command, or per missing path and cron job.
    """
    out: list[Finding] = []
    seen: set[tuple[str, ...]] = set()
    hooks = ctx.config.get("hooks")
    for name, items in (hooks.items() if isinstance(hooks, Mapping) else ()):
        if name in ("__proto__", "constructor", "prototype") or not isinstance(items, list):
            continue
        for item in items:
            cmd = item.get("command") if isinstance(item, Mapping) else None
            if not isinstance(cmd, str):
                continue
            for tok in cmd.split():
                key: tuple[str, ...] = ("hook", str(name), cmd, tok)
                if key in seen or not _missing_path(tok):
                    continue
                seen.add(key)
                out.append(Finding(
                    "stale_cron", 1, "low", 0.50,
                    f"Hook {name} points at {tok}, which does not exist.", 0.0, 0,
                    "Fix the path or remove the hook.", f"# {name}: {cmd}",
                    {"hook": name, "command": cmd, "missingPath": tok},
                    "measured", "fix", "", "openclaw"))
    for c in ctx.cron:
        for tok in _cron_words(c):
            key = ("cron", c.job_id, tok)
            if key in seen or not _missing_path(tok):
                continue
            seen.add(key)
            jid = shlex.quote(c.job_id)
            out.append(Finding(
                "stale_cron", 1, "low", 0.50,
                f"Cron job {c.job} ({c.field}) points at {tok}, which does not exist.", 0.0, 0,
                f"Fix the path (openclaw cron edit {jid}) or turn the job off "
                f"(openclaw cron disable {jid}).",
                # one comment line even when the job's shell script spans several
                f"# cron:{' '.join(c.job.split())}: {' '.join(c.command.split())}\n"
                f"openclaw cron disable {jid}",
                {"hook": f"cron:{c.job}", "command": c.command, "missingPath": tok,
                 "job": c.job, "jobId": c.job_id, "field": c.field},
                "measured", "fix", c.agent, "openclaw"))
    return out


def empty_runs(ctx: Context) -> list[Finding]:
    cand = [r for r in ctx.rows
            if r.tokens.total > 5000 and r.tokens.output < 100 and r.message_count <= 4]
    conf = [r for r in cand if r.tokens.total > 50_000 or outcome(r) == "empty"]
    if len(conf) < 2:
        return []
    claims = _claims(ctx, conf)
    usd = sum(claims.values())
    sev: Severity = "critical" if usd > 10 else "high" if usd > 2 else "medium"
    return [_finding(
        ctx, "empty_runs", 2, sev, 0.85,
        f"{len(conf)} runs loaded a large context and produced almost nothing.",
        claims, _monthly_tokens(ctx, sum(r.tokens.total for r in conf)),
        "Exit early when there is no work, and send idle checks to a small model.",
        "# at the top of the scheduled task\n"
        '[ -z "$(pending_work)" ] && exit 0  # nothing to do: skip the model call',
        {"emptyCount": len(conf),
         "avgInput": round(sum(r.tokens.input for r in conf) / len(conf)),
         "avgOutput": round(sum(r.tokens.output for r in conf) / len(conf))},
        "measured", "fix", conf, conf[0].agent)]


def session_history_bloat(ctx: Context) -> list[Finding]:
    long = [r for r in ctx.rows if r.message_count > 30 and r.tokens.total > 500_000]
    if not long:
        return []
    total_input = sum(r.tokens.input for r in long)
    return [_finding(
        ctx, "session_history_bloat", 2, "medium", 0.60,
        f"{len(long)} long sessions carry their whole history into every call.",
        {}, _monthly_tokens(ctx, 0.4 * total_input),
        "Compact at 50-70% fill (OpenClaw v2026.3.11+ prunes; Smart Compaction keeps the "
        "essentials).",
        "# keep long sessions lean\nopenclaw plugins install token-optimizer",
        {"longSessionCount": len(long), "totalInputTokens": total_input},
        "estimated", "nudge", long)]


def loop_detection(ctx: Context) -> list[Finding]:
    sus = [r for r in ctx.rows
           if r.message_count > 20 and r.tokens.output < 2 * r.message_count
           and r.tokens.total > 100_000 and outcome(r) not in ("empty", "abandoned")
           and r.run_type == "manual"]
    if len(sus) < 2:
        return []
    claims = _claims(ctx, sus)
    usd = sum(claims.values())
    if usd < 1.0:
        return []
    return [_finding(
        ctx, "loop_detection", 2, "medium" if usd < 10 else "high", 0.60,
        f"{len(sus)} sessions went round many turns with almost no output.",
        claims, _monthly_tokens(ctx, sum(r.tokens.total for r in sus)),
        "Stop a session that keeps calling the model without making progress.",
        "# stop when output/input stays under 0.01 for 5+ turns in a row",
        {"suspectCount": len(sus),
         "avgMessages": round(sum(r.message_count for r in sus) / len(sus)),
         "avgOutput": round(sum(r.tokens.output for r in sus) / len(sus))},
        "measured", "nudge", sus)]


def abandoned_sessions(ctx: Context) -> list[Finding]:
    ab = [r for r in ctx.rows
          if r.message_count <= 2 and r.tokens.total > 10_000 and r.run_type == "manual"]
    if len(ab) < 3:
        return []
    claims = _claims(ctx, ab)
    if sum(claims.values()) < 0.20:
        return []
    return [_finding(
        ctx, "abandoned_sessions", 2, "low", 0.70,
        f"{len(ab)} sessions were dropped after one exchange, each paying for the full "
        "start-up context.",
        claims, _monthly_tokens(ctx, sum(r.tokens.total for r in ab)),
        "Trim what every session loads at start.",
        "# run /token-optimizer to see and trim the context injected at start",
        {"abandonedCount": len(ab),
         "avgInputTokens": round(sum(r.tokens.input for r in ab) / len(ab))},
        "measured", "nudge", ab)]


def ghost_token_qjl(ctx: Context) -> list[Finding]:
    if len(ctx.rows) < 3:
        return []
    strategy = "simple"  # the sketch strategy (off by default in the reference) is not ported
    clusters: dict[tuple[str, str, str, str], list[SessionRow]] = {}
    for r in ctx.rows:
        clusters.setdefault((r.host, r.agent, family(r), r.run_type), []).append(r)
    ghosts: dict[tuple[str, float | None], SessionRow] = {}
    for runs in clusters.values():
        if len(runs) < 2:
            continue
        low = [r for r in runs if r.tokens.output < 100]
        if len(low) >= 2:
            for r in low:
                ghosts.setdefault((unit(r), r.started_ms), r)
    gl = list(ghosts.values())
    if len(gl) < 2:
        return []
    claims = _claims(ctx, gl)
    usd = sum(claims.values())
    wasted = sum(r.tokens.input for r in gl)
    sev: Severity = "critical" if usd > 10 else "high" if usd > 5 else "medium"
    return [_finding(
        ctx, "ghost_token_qjl", 2, sev, 0.90,
        f"{len(gl)} near-identical runs produced almost no output ({strategy} grouping by "
        "agent, model and run type).",
        claims, _monthly_tokens(ctx, wasted),
        "Guard repeated runs with an idempotency check or cache their result.",
        "# if this run matches a recent one (same agent, model, input): return the cached result",
        {"strategy": strategy, "ghostRunCount": len(gl), "totalInputTokensWasted": wasted,
         "avgInputPerGhost": round(wasted / len(gl))},
        "measured", "fix", gl, gl[0].agent)]


def tool_loading_overhead(ctx: Context) -> list[Finding]:
    heavy = [r for r in ctx.rows if len(r.tools) > 15 and r.tokens.total > 200_000]
    if len(heavy) < 3:
        return []
    avg_tools = sum(len(r.tools) for r in heavy) / len(heavy)
    per = round(avg_tools * 400)
    return [_finding(
        ctx, "tool_loading_overhead", 3, "medium", 0.50,
        f"{len(heavy)} sessions used more than 15 tools; every tool schema rides in each call.",
        {}, _monthly_tokens(ctx, per * len(heavy)),
        "Upgrade to OpenClaw v2026.3.24+ and use the compact /tools view; disable unused "
        "providers.",
        "openclaw tools --compact\nopenclaw config set providers.unused_provider.enabled false",
        {"heavySessionCount": len(heavy), "avgToolsPerSession": round(avg_tools, 1),
         "estimatedOverheadPerSession": per},
        "estimated", "fix", heavy)]


def retry_churn(ctx: Context) -> list[Finding]:
    ch = [r for r in ctx.rows if outcome(r) == "failure" and model_side_failure(r)
          and r.message_count > 10 and r.tokens.total > 50_000]
    if len(ch) < 2:
        return []
    claims = _claims(ctx, ch)
    usd = sum(claims.values())
    if usd < 0.50:
        return []
    return [_finding(
        ctx, "retry_churn", 2, "high" if usd > 5 else "medium", 0.70,
        f"{len(ch)} long sessions ended in model errors and were retried "
        f"({sum(r.error_turns for r in ch)} errored turns).",
        claims, _monthly_tokens(ctx, sum(r.tokens.total for r in ch)),
        "Cap retries and surface the error instead of re-sending the whole context.",
        '"maxRetries": 3',
        {"churningCount": len(ch), "errorTurns": sum(r.error_turns for r in ch)},
        "measured", "fix", ch)]


def tool_cascade(ctx: Context) -> list[Finding]:
    es = [r for r in ctx.rows if outcome(r) == "failure" and r.tool_errors >= TOOL_ERROR_FAILURE
          and len(r.tools) > 5 and r.tokens.total > 100_000]
    if len(es) < 2:
        return []
    claims = _claims(ctx, es)
    usd = sum(claims.values())
    if usd < 0.50:
        return []
    return [_finding(
        ctx, "tool_cascade", 2, "high" if usd > 5 else "medium", 0.60,
        f"{len(es)} sessions hit a chain of tool errors "
        f"({sum(r.tool_errors for r in es)} failed tool results).",
        claims, _monthly_tokens(ctx, sum(r.tokens.total for r in es)),
        "Stop after a few consecutive tool errors.", '"breakOnConsecutiveErrors": 3',
        {"errorSessionCount": len(es), "toolErrors": sum(r.tool_errors for r in es)},
        "measured", "fix", es)]


def overpowered_model(ctx: Context) -> list[Finding]:
    simple = [r for r in ctx.rows if family(r) in EXPENSIVE_MODELS and r.cost_usd > 0
              and r.tokens.output <= 5000 and r.message_count <= 10 and len(r.tools) <= 3]
    if len(simple) < 3:
        return []
    claims = _claims(ctx, simple, lambda r: r.cost_usd - _haiku_cost(ctx, r))
    usd = sum(claims.values())
    if usd < 0.50:
        return []
    models = sorted({family(r) for r in simple})
    return [_finding(
        ctx, "overpowered_model", 2, "high" if usd > 10 else "medium", 0.60,
        f"{len(simple)} short sessions (little output, few tools) ran on {'/'.join(models)}.",
        claims, _monthly_tokens(ctx, sum(r.tokens.total for r in simple)),
        f"Use Haiku for quick checks: about ${usd:.2f}/month less.",
        '"model": "haiku"  // for quick checks and short lookups',
        {"simpleCount": len(simple), "modelsUsed": models},
        "estimated", "fix", simple)]


def weak_model(ctx: Context) -> list[Finding]:
    cx = [r for r in ctx.rows
          if family(r) in CHEAP_MODELS and r.tokens.total >= 100_000 and len(r.tools) >= 10]
    if len(cx) < 2:
        return []
    return [_finding(
        ctx, "weak_model", 2, "low", 0.50,
        f"{len(cx)} complex sessions (10+ tools, 100K+ tokens) ran on a small model.",
        {}, 0, "Use Sonnet for complex sessions if they struggle.", '"model": "sonnet"',
        {"complexCount": len(cx)}, "estimated", "keep", cx)]


def bad_decomposition(ctx: Context) -> list[Finding]:
    mono = [r for r in ctx.rows if r.message_count >= 30 and r.tokens.total >= 200_000
            and r.tokens.output / max(r.tokens.input, 1) < 0.02]
    if len(mono) < 2:
        return []
    claims = _claims(ctx, mono)
    return [_finding(
        ctx, "bad_decomposition", 2, "medium", 0.50,
        f"{len(mono)} very long sessions read far more than they wrote.",
        claims, _monthly_tokens(ctx, sum(r.tokens.total for r in mono)),
        "Give each session one task.", "# chain smaller prompts instead of one long session",
        {"monolithicCount": len(mono)}, "measured", "nudge", mono)]


def output_waste(ctx: Context) -> list[Finding]:
    sus = [r for r in ctx.rows if r.tokens.total >= 50_000 and r.message_count > 5
           and r.tokens.output / r.tokens.total > 0.40]
    if len(sus) < 2:
        return []

    def excess(r: SessionRow) -> float:
        return max(0.0, r.tokens.output - 0.2 * r.tokens.total)

    claims = _claims(ctx, sus, lambda r: r.cost_usd * excess(r) / r.tokens.output
                     if r.tokens.output else 0.0)
    usd = sum(claims.values())
    if usd < 0.50:
        return []
    ex = sum(excess(r) for r in sus)
    ratio = round(100 * sum(r.tokens.output / r.tokens.total for r in sus) / len(sus))
    sev: Severity = "low" if usd < 5 else "medium" if usd < 20 else "high"
    return [_finding(
        ctx, "output_waste", 2, sev, 0.60,
        f"{len(sus)} sessions wrote {round(ex):,} more output tokens than a 20% share.",
        claims, _monthly_tokens(ctx, ex), "Ask for concise answers.",
        "# system prompt\nBe concise: answer directly, no restating the question.",
        {"suspectCount": len(sus), "avgOutputRatio": ratio}, "estimated", "nudge", sus)]


# ---------------------------------------------------------------- host-aware


def _churn_claim(steps: int) -> float:
    return min(steps, 5) * CHURN_SHARE_PER_STEP


def _churn_severity(usd: float) -> Severity:
    return "high" if usd >= 10 else "medium" if usd >= 1 else "low"


def compaction_churn(ctx: Context) -> list[Finding]:
    steps: dict[str, int] = {}
    flagged: list[SessionRow] = []
    for r in ctx.rows:
        k = 0
        if r.host == "openclaw" and r.compactions >= CHURN_COMPACTIONS:
            k = r.compactions - (CHURN_COMPACTIONS - 1)
        if r.compaction_fallback_streak >= CHURN_FALLBACK_STREAK:
            k = max(k, r.compaction_fallback_streak)
        if k:
            steps[unit(r)] = k
            flagged.append(r)
    if not flagged:
        return []
    claims = _claims(ctx, flagged, lambda r: r.cost_usd * _churn_claim(steps[unit(r)]))
    usd = sum(claims.values())
    return [_finding(
        ctx, "compaction_churn", 2, _churn_severity(usd), 0.60,
        f"{len(flagged)} sessions compacted over and over (or their compression kept "
        "falling back), re-paying for a rebuilt context each time.",
        claims, _monthly_tokens(ctx, sum(r.tokens.total for r in flagged)),
        "Start a fresh session with a short summary once a task has compacted twice; on "
        "Hermes check the compression model (a failing summariser falls back every time).",
        "# OpenClaw: /new with a short summary instead of a third compaction\n"
        "# Hermes: `hermes config` -> compression model that works for long contexts",
        {"sessionCount": len(flagged),
         "maxCompactions": max(r.compactions for r in flagged if r.host == "openclaw")
         if any(r.host == "openclaw" for r in flagged) else 0,
         "maxFallbackStreak": max(r.compaction_fallback_streak for r in flagged)},
        "estimated", "nudge", flagged)]


def cold_cache(ctx: Context) -> list[Finding]:
    flagged: list[SessionRow] = []
    saving: dict[str, float] = {}
    for r in ctx.rows:
        ratio = r.cache_read_ratio
        prompt = r.tokens.input + r.tokens.cache_read + r.tokens.cache_write
        if ratio is None or ratio >= COLD_CACHE_RATIO or r.api_calls < COLD_CACHE_MIN_CALLS \
                or prompt < COLD_CACHE_MIN_PROMPT or r.cost_basis == "unpriced":
            continue
        fresh = ctx.pricer.price(r.model, 1_000_000, 0, 0, 0, per_call=False)
        cached = ctx.pricer.price(r.model, 0, 0, 1_000_000, 0, per_call=False)
        if fresh is None or cached is None or cached >= fresh:
            continue
        moved = (COLD_CACHE_TARGET - ratio) * prompt
        saving[unit(r)] = moved * (fresh - cached) / 1_000_000
        flagged.append(r)
    if len(flagged) < 2:
        return []
    claims = _claims(ctx, flagged, lambda r: saving[unit(r)])
    usd = sum(claims.values())
    if usd <= 0:
        return []
    avg = sum(r.cache_read_ratio or 0.0 for r in flagged) / len(flagged)
    return [_finding(
        ctx, "cold_cache", 2, _churn_severity(usd), 0.60,
        f"{len(flagged)} multi-call sessions read only {round(avg * 100)}% of their prompt "
        f"from the provider's cache (under {round(COLD_CACHE_RATIO * 100)}%).",
        claims, _monthly_tokens(ctx, sum(r.tokens.input for r in flagged)),
        "Keep the start of the prompt stable between calls (no timestamps or shuffled tool "
        "lists in the system prompt) and keep the cache warm.",
        "# OpenClaw: agents.defaults.models[\"<provider/model>\"].params.cacheRetention: \"long\"\n"
        "# both hosts: nothing that changes per call (dates, counters) at the top of the "
        "system prompt",
        {"sessionCount": len(flagged), "avgCacheReadRatio": round(avg, 3),
         "threshold": COLD_CACHE_RATIO, "targetRatio": COLD_CACHE_TARGET},
        "estimated", "fix", flagged)]


def rewind_churn(ctx: Context) -> list[Finding]:
    flagged = [r for r in ctx.rows if r.rewinds >= CHURN_REWINDS]
    if not flagged:
        return []
    claims = _claims(ctx, flagged, lambda r: r.cost_usd * _churn_claim(r.rewinds))
    usd = sum(claims.values())
    return [_finding(
        ctx, "rewind_churn", 2, _churn_severity(usd), 0.50,
        f"{len(flagged)} sessions were rewound {sum(r.rewinds for r in flagged)} times; the "
        "turns after each rewind point were paid for and thrown away.",
        claims, _monthly_tokens(ctx, sum(r.tokens.total for r in flagged)),
        "Settle the plan before long tool runs; rewinding discards work already paid for.",
        "# state the goal and the constraints up front, then let the agent run",
        {"sessionCount": len(flagged), "rewinds": sum(r.rewinds for r in flagged)},
        "estimated", "nudge", flagged)]


Detector = Callable[[Context], list[Finding]]
REGISTRY: tuple[tuple[str, Detector], ...] = (
    ("heartbeat_model_waste", heartbeat_model_waste),
    ("heartbeat_over_frequency", heartbeat_over_frequency),
    ("stale_cron", stale_cron),
    ("empty_runs", empty_runs),
    ("session_history_bloat", session_history_bloat),
    ("loop_detection", loop_detection),
    ("abandoned_sessions", abandoned_sessions),
    ("ghost_token_qjl", ghost_token_qjl),
    ("tool_loading_overhead", tool_loading_overhead),
    ("retry_churn", retry_churn),
    ("tool_cascade", tool_cascade),
    ("overpowered_model", overpowered_model),
    ("weak_model", weak_model),
    ("bad_decomposition", bad_decomposition),
    ("output_waste", output_waste),
    ("compaction_churn", compaction_churn),
    ("cold_cache", cold_cache),
    ("rewind_churn", rewind_churn),
)


# ---------------------------------------------------------------- running and de-duplication


@dataclass
class AuditResult:
    findings: list[Finding]
    span_days: float
    monthly_savings_usd: float
    """De-duplicated: each unit counted once, at its largest claim."""
    gross_monthly_usd: float
    """The plain sum over findings (the reference's ``monthlySavingsUsd``)."""


def dedup_total(findings: Sequence[Finding]) -> float:
    """Σ over units of the largest claim any finding makes on it; sets ``counted_usd``.

    A unit goes to the finding with the largest claim on it (ties: the earlier
    finding in ``findings`` order); the others count nothing for it.
    """
    best: dict[str, tuple[float, int]] = {}
    for i, f in enumerate(findings):
        f.counted_usd = 0.0
        for u, usd in f.claims.items():
            cur = best.get(u)
            if cur is None or usd > cur[0]:
                best[u] = (usd, i)
    for usd, i in best.values():
        findings[i].counted_usd += usd
    return sum(usd for usd, _ in best.values())


def load_openclaw_config(root: Path | None) -> dict[str, Any]:
    """``<root>/openclaw.json`` (JSON with comments) plus a legacy ``<root>/config.json``'s hooks.

    OpenClaw 2026.9.x writes ``openclaw.json``; the reference reads ``config.json``, which
    older installs may still have: its ``hooks`` lists are added to the same names
    (``stale_cron`` drops the duplicate findings). ``{}`` when neither is usable; a bad
    ``openclaw.json`` gives one debug line, never an exception.
    """
    if root is None:
        return {}
    from token_optimizer.audit.context import load_json_config

    try:
        cfg, why = load_json_config(root / "openclaw.json")
    except OSError as exc:
        cfg, why = {}, str(exc)
    if why:
        log.debug("[token-optimizer] stale_cron: %s", why)
    try:
        legacy = orjson.loads((root / "config.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        legacy = None
    if not isinstance(legacy, dict):
        return cfg
    if not cfg:
        return legacy
    old = legacy.get("hooks")
    if not isinstance(old, dict):
        return cfg
    cur = cfg.get("hooks")
    hooks: dict[str, Any] = dict(cur) if isinstance(cur, dict) else {}
    for name, items in old.items():
        if isinstance(items, list):
            have = hooks.get(name)
            hooks[name] = (have if isinstance(have, list) else []) + items
    return {**cfg, "hooks": hooks}


def run_detectors(rows: Sequence[SessionRow], *, config: Mapping[str, Any] | None = None,
                  cron: Sequence[CronCommand] = (), pricer: Pricer | None = None,
                  registry: Sequence[tuple[str, Detector]] = REGISTRY) -> AuditResult:
    span = span_days(rows)
    ctx = Context(rows, config or {}, pricer or Pricer(None), 30 / span, span, cron)
    found: list[Finding] = []
    for name, det in registry:
        try:
            found.extend(det(ctx))
        except Exception as exc:  # one broken detector never sinks the audit
            log.warning("[token-optimizer] detector %s failed: %s", name, exc)
    for f in found:
        if not math.isfinite(f.monthly_waste_usd):
            f.monthly_waste_usd = 0.0
    found.sort(key=lambda f: -f.monthly_waste_usd)  # stable: registry order breaks ties
    total = dedup_total(found)
    return AuditResult(found, span, total, sum(f.monthly_waste_usd for f in found))


SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}

__all__ = ["REGISTRY", "AuditResult", "Finding", "dedup_total", "load_openclaw_config",
           "outcome", "run_detectors", "span_days"]
