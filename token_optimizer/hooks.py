"""The one hook table: which host hooks feed which core entry.

Every other list of hooks is derived from :data:`HOOK_TABLE` or checked against it
by a test: the OpenClaw shim's registration list (``dist/index.js``), the Hermes
adapter's registrations, the host tests and ``docs/architecture.md`` (a test fails
when a row is not documented there).

A row is one entry of the host-neutral core (:class:`token_optimizer.runtime.
TokenOptimizer`); a row whose ``entry`` is ``None`` is adapter bookkeeping that
reaches no core entry of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HookRow:
    entry: str | None
    """Core method (``TokenOptimizer.<entry>``), or ``None`` for adapter-only hooks."""
    event: str
    """The typed event it takes (``token_optimizer.events``)."""
    openclaw: tuple[str, ...]
    """OpenClaw 2026.9.6 typed hooks that feed it, in registration order."""
    hermes: tuple[str, ...]
    """Hermes Agent 0.19.0 hooks that feed it."""
    awaited: bool
    """The host waits for (and uses) the result."""
    result: str
    """What comes back to the host."""
    doc: str
    """What it does, in one line."""


HOOK_TABLE: tuple[HookRow, ...] = (
    HookRow("gateway_start", "-", ("gateway_start",), (), False, "none",
            "Start-up housekeeping: old checkpoint files, telemetry and leftovers are pruned."),
    HookRow("gateway_stop", "-", ("gateway_stop",), (), False, "none",
            "Flushes the session index before the process exits."),
    HookRow("session_start", "Identity", ("session_start",), ("on_session_start",), False,
            "none", "Notes a session; nothing is written until its first real message."),
    HookRow("session_end", "SessionEnd", ("session_end",),
            ("on_session_finalize", "on_session_reset", "subagent_stop"), False, "none",
            "Takes the decisions still due, then releases the session from every collection."),
    HookRow("turn_prepare", "TurnPrepare", ("agent_turn_prepare",), ("pre_llm_call",), True,
            "prependContext text (Hermes: context)",
            "User turn: restore fallback, continuity hint, fresh-session nudge, checkpoint "
            "evaluation."),
    HookRow("tool_before", "ToolBefore", ("before_tool_call",), ("pre_tool_call",), True,
            "block + blockReason (Hermes: action=block + message)",
            "Read cache (redundant or ignored reads) and the pre-fanout milestone."),
    HookRow("tool_after", "ToolAfter", ("after_tool_call",), ("post_tool_call",), False, "none",
            "Write bookkeeping, whole-session notes, edit-batch milestone and evaluation."),
    HookRow("compaction_before", "CompactionBefore", ("before_compaction",), (), False, "none",
            "Captures the compaction's checkpoint and remembers the active-read credit. "
            "Hermes: detected in pre_llm_call / post_api_request / pre_tool_call."),
    HookRow("compaction_after", "CompactionAfter", ("after_compaction",), (), False,
            "EnqueueInjection action",
            "Hands the host the compaction's checkpoint, behind the recovered-data marker."),
    HookRow("usage", "Usage", ("llm_output", "model_call_ended"), ("post_api_request",), False,
            "none", "A model call's token usage feeds the ledger (fill, quality, totals)."),
    HookRow("history", "list[Message]", ("agent_end",), (), False, "none",
            "The host's conversation so far feeds the ledger and the session notes."),
    HookRow(None, "-", (), ("subagent_start",), False, "none",
            "Hermes: a child session is addressed by its own id."),
    HookRow(None, "-", (), ("pre_gateway_dispatch",), False, "none",
            "Hermes: remembers the chat of an inbound message for /token-optimizer."),
)


def _ordered(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


OPENCLAW_HOOKS: tuple[str, ...] = _ordered([h for r in HOOK_TABLE for h in r.openclaw])
"""Every OpenClaw typed hook the shim registers, in registration order."""
OPENCLAW_AWAITED: tuple[str, ...] = _ordered(
    [h for r in HOOK_TABLE if r.awaited for h in r.openclaw])
HERMES_HOOKS: tuple[str, ...] = _ordered(
    [h for name in ("turn_prepare", "usage", "tool_before", "tool_after", "session_start",
                    "session_end", None)
     for r in HOOK_TABLE if r.entry == name for h in r.hermes])
"""Every Hermes hook the plugin registers (``on_session_end`` fires every turn: never)."""
