"""The normalised data model of the audit: one :class:`SessionRow` per host session.

Both readers produce the same shape, so every command (``scan``, ``report``)
and every later detector is fed from one place. The fields a detector needs are
first-class: tokens by kind, cost with its basis, per-model splits, tool calls
and tool errors, stop reasons, the cron/heartbeat flag, compaction and rewind
counts, and the cache-read ratio.

Rows are plain data; :meth:`SessionRow.to_json` gives the ``scan --json``
element (camelCase keys, like the reference's ``AgentRun`` where the meaning is
the same, plus the new fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Host = Literal["openclaw", "hermes"]
RunType = Literal["manual", "heartbeat", "cron"]
CostBasis = Literal["recorded", "estimated", "included", "table", "unpriced", "none"]
"""Where a cost figure came from.

* ``recorded``: the host recorded what the call cost (OpenClaw ``usage.cost.total``,
  Hermes ``actual_cost_usd``).
* ``estimated``: the host recorded its own estimate (Hermes ``estimated_cost_usd``).
* ``included``: the host says the usage is covered by a plan (Hermes ``cost_status='included'``).
* ``table``: priced here from a rate table.
* ``unpriced``: tokens that no source could price (reported, never counted as $0).
* ``none``: no tokens at all.
"""



@dataclass
class Tokens:
    """Token counts by kind. ``input`` is fresh input (cache reads/writes are separate)."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_write

    def add(self, other: Tokens) -> None:
        self.input += other.input
        self.output += other.output
        self.cache_read += other.cache_read
        self.cache_write += other.cache_write

    def to_json(self) -> dict[str, int]:
        return {"input": self.input, "output": self.output,
                "cacheRead": self.cache_read, "cacheWrite": self.cache_write}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Tokens:
        """From :meth:`to_json`'s dict (whose values are ints already)."""
        return cls(d["input"], d["output"], d["cacheRead"], d["cacheWrite"])


@dataclass
class ModelSplit:
    """One model's share of a session, with its money broken down by basis."""

    model: str
    """The model id as the host recorded it (provider prefix kept)."""
    calls: int = 0
    tokens: Tokens = field(default_factory=Tokens)
    cost_usd: float = 0.0
    """Priced part only: recorded + estimated + table (``unpriced_tokens`` are not in it)."""
    recorded_usd: float = 0.0
    estimated_usd: float = 0.0
    table_usd: float = 0.0
    unpriced_tokens: int = 0
    basis: CostBasis = "none"
    price_source: str | None = None
    """Which table priced the ``table_usd`` part: ``token-optimizer`` (the built-in table),
    ``genai-prices-table`` (the bundled table generated from genai-prices' data) or
    ``genai-prices`` (the optional library)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "calls": self.calls, "tokens": self.tokens.to_json(),
            "totalTokens": self.tokens.total, "costUsd": self.cost_usd,
            "recordedUsd": self.recorded_usd, "estimatedUsd": self.estimated_usd,
            "tableUsd": self.table_usd, "unpricedTokens": self.unpriced_tokens,
            "costBasis": self.basis, "priceSource": self.price_source,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelSplit:
        t = d["tokens"]
        # positional, in field order: a warm scan builds five of these per session
        return cls(d["model"], d["calls"],
                   Tokens(t["input"], t["output"], t["cacheRead"], t["cacheWrite"]),
                   d["costUsd"], d["recordedUsd"], d["estimatedUsd"], d["tableUsd"],
                   d["unpricedTokens"], d["costBasis"], d["priceSource"])


@dataclass
class SessionRow:
    """One host session, normalised."""

    host: Host
    session_id: str
    agent: str
    """OpenClaw agent id, or the Hermes profile (``default`` for ``$HERMES_HOME``)."""
    project: str
    """OpenClaw ``project_id`` when set, else the agent; Hermes ``git_repo_root``/``cwd`` else the profile."""
    started_ms: float | None
    ended_ms: float | None
    source: str
    """Where it was read from: a store path (plus ``#table``) or a JSONL file path."""
    session_key: str | None = None
    tokens: Tokens = field(default_factory=Tokens)
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    cost_basis: CostBasis = "none"
    """The dominant basis of the session's money (``unpriced`` when any tokens are unpriced)."""
    unpriced_tokens: int = 0
    unpriced_models: list[str] = field(default_factory=list)
    models: list[ModelSplit] = field(default_factory=list)
    model: str = "unknown"
    """The model with the most tokens (host spelling)."""
    run_type: RunType = "manual"
    cron_job: str | None = None
    message_count: int = 0
    user_messages: int = 0
    assistant_messages: int = 0
    api_calls: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    tools: list[str] = field(default_factory=list)
    stop_reasons: dict[str, int] = field(default_factory=dict)
    error_turns: int = 0
    """Assistant turns that ended in an error (stopReason ``error``/errorMessage, Hermes finish ``error``)."""
    compactions: int = 0
    """Compactions inside the session (OpenClaw compaction events/windows, Hermes compressed rows)."""
    compaction_fallback_streak: int = 0
    rewinds: int = 0
    status: str | None = None
    end_reason: str | None = None
    platform: str | None = None
    topic: str | None = None
    heartbeat_outcomes: int = 0

    @property
    def duration_seconds(self) -> float:
        if self.started_ms is None or self.ended_ms is None:
            return 0.0
        return max(0.0, (self.ended_ms - self.started_ms) / 1000)

    @property
    def cache_read_ratio(self) -> float | None:
        """Cache reads ÷ (fresh input + cache reads + cache writes); ``None`` with no prompt tokens."""
        prompt = self.tokens.input + self.tokens.cache_read + self.tokens.cache_write
        if prompt <= 0:
            return None
        return self.tokens.cache_read / prompt

    def to_json(self) -> dict[str, Any]:
        from token_optimizer.audit.timeutil import iso_ms

        return {
            "system": self.host,
            "sessionId": self.session_id,
            "agentName": self.agent,
            "project": self.project,
            "sessionKey": self.session_key,
            "timestamp": iso_ms(self.started_ms),
            "endedAt": iso_ms(self.ended_ms),
            "durationSeconds": self.duration_seconds,
            "tokens": self.tokens.to_json(),
            "totalTokens": self.tokens.total,
            "reasoningTokens": self.reasoning_tokens,
            "costUsd": self.cost_usd,
            "costBasis": self.cost_basis,
            "unpricedTokens": self.unpriced_tokens,
            "unpricedModels": list(self.unpriced_models),
            "model": self.model,
            "models": [m.to_json() for m in self.models],
            "runType": self.run_type,
            "cronJob": self.cron_job,
            "messageCount": self.message_count,
            "userMessages": self.user_messages,
            "assistantMessages": self.assistant_messages,
            "apiCalls": self.api_calls,
            "toolCalls": self.tool_calls,
            "toolErrors": self.tool_errors,
            "toolsUsed": list(self.tools),
            "stopReasons": dict(self.stop_reasons),
            "errorTurns": self.error_turns,
            "compactions": self.compactions,
            "compactionFallbackStreak": self.compaction_fallback_streak,
            "rewinds": self.rewinds,
            "cacheReadRatio": self.cache_read_ratio,
            "status": self.status,
            "endReason": self.end_reason,
            "platform": self.platform,
            "heartbeatOutcomes": self.heartbeat_outcomes,
            "topic": self.topic,
            "sourcePath": self.source,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], started_ms: float | None,
                  ended_ms: float | None) -> SessionRow:
        """The row :meth:`to_json` gave ``d`` for (the times are passed exactly: the JSON
        holds them as ISO strings)."""
        return cls(
            host=d["system"], session_id=d["sessionId"], agent=d["agentName"],
            project=d["project"], started_ms=started_ms, ended_ms=ended_ms,
            source=d["sourcePath"], session_key=d["sessionKey"],
            tokens=Tokens.from_json(d["tokens"]), reasoning_tokens=d["reasoningTokens"],
            cost_usd=d["costUsd"], cost_basis=d["costBasis"],
            unpriced_tokens=d["unpricedTokens"], unpriced_models=list(d["unpricedModels"]),
            models=[ModelSplit.from_json(m) for m in d["models"]], model=d["model"],
            run_type=d["runType"], cron_job=d["cronJob"], message_count=d["messageCount"],
            user_messages=d["userMessages"], assistant_messages=d["assistantMessages"],
            api_calls=d["apiCalls"], tool_calls=d["toolCalls"], tool_errors=d["toolErrors"],
            tools=list(d["toolsUsed"]), stop_reasons=dict(d["stopReasons"]),
            error_turns=d["errorTurns"], compactions=d["compactions"],
            compaction_fallback_streak=d["compactionFallbackStreak"], rewinds=d["rewinds"],
            status=d["status"], end_reason=d["endReason"], platform=d["platform"],
            topic=d["topic"], heartbeat_outcomes=d["heartbeatOutcomes"],
        )


@dataclass(frozen=True)
class CronCommand:
    """One command line or working directory an enabled OpenClaw cron job runs.

    Read from ``state/openclaw.sqlite`` ``cron_jobs.job_json`` (see
    :func:`token_optimizer.audit.openclaw.read_cron_commands`).
    """

    job_id: str
    job: str
    """The job's ``name``."""
    agent: str
    """``cron_jobs.agent_id`` (``""`` when unset: the default agent)."""
    field: str
    """Where in the job it sits: ``payload.argv``, ``payload.cwd``, ``schedule.command``
    or ``schedule.cwd``."""
    command: str
    """The command line (argv joined by spaces) or the directory, as shown to the user."""
    parts: tuple[str, ...]
    """The argv elements (a shell string is one element), or the directory alone."""
    is_dir: bool = False
    """``parts`` is one working directory: checked whole, never split on whitespace."""
