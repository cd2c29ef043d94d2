"""Data model shared by the transcript parser, the ledger and quality scoring.

Field meanings follow the reference's ``AgentRun`` (spec analysis.md section 2),
in snake_case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RunType = Literal["manual", "heartbeat", "cron"]
Outcome = Literal["success", "failure", "empty", "abandoned"]


@dataclass
class TokenBreakdown:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_write


@dataclass
class AgentRun:
    """One session's figures, as the reference parser computes them."""

    session_id: str
    agent_name: str
    timestamp_ms: float
    """First valid timestamp (epoch ms), else the parse time."""
    duration_seconds: float = 0.0
    tokens: TokenBreakdown = field(default_factory=TokenBreakdown)
    cost_usd: float = 0.0
    model: str = ""
    run_type: RunType = "manual"
    outcome: Outcome = "empty"
    message_count: int = 0
    tools_used: list[str] = field(default_factory=list)
    source_path: str = ""
    cache_write_1h_tokens: int = 0
    cache_write_5m_tokens: int = 0
    topic: str | None = None
    system: str = "openclaw"

    @property
    def project(self) -> str:
        return self.agent_name


@dataclass(frozen=True)
class Message:
    """A transcript message as checkpoint capture consumes it."""

    role: str
    content: str
    timestamp: str | None = None
