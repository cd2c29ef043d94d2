"""OpenClaw hook payloads -> the core's typed events.

OpenClaw (2026.9.6) calls typed hooks with an ``(event, ctx)`` pair of plain
objects; the shim in ``dist/index.js`` forwards them to the worker unchanged. This
module is the only place that knows those shapes: it turns each payload into the
:mod:`token_optimizer.events` type of the core entry that the hook table
(:mod:`token_optimizer.hooks`) names, and calls that entry. The core knows no host.

Payload facts that matter (from the host's own typings, ``PluginHookLlmOutputEvent``
and friends): ``llm_output.usage`` is the run's usage summed over its model calls,
while ``lastAssistant.usage`` is the latest call's own; tool-hook contexts carry no
``workspaceDir`` (the turn's context does); ``agent_end.messages`` is the
conversation so far, with tool calls as ``toolCall`` content blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from token_optimizer.events import (
    CompactionAfter,
    CompactionBefore,
    HookOutcome,
    Identity,
    LogLine,
    QueuedInjection,
    SessionEnd,
    ToolAfter,
    ToolBefore,
    TurnPrepare,
    Usage,
    clean_id,
    clean_params,
    clean_text,
    token_count,
)
from token_optimizer.hosts.core_api import Core
from token_optimizer.models import Message
from token_optimizer.tools import describe_call

log = logging.getLogger("token_optimizer.hosts.openclaw")

PREFIX = "[token-optimizer] "


def _str_or_none(v: object) -> str | None:
    return v if isinstance(v, str) else None


def identity_from_ctx(ctx: Mapping[str, Any], event: Mapping[str, Any] | None = None) -> Identity:
    """``sessionId ?? sessionKey`` (nullish, like the reference); empty stays empty."""
    sid = ctx.get("sessionId")
    key = ctx.get("sessionKey")
    if event is not None:
        if sid is None:
            sid = event.get("sessionId")
        if key is None:
            key = event.get("sessionKey")
    sid_s = _id_or_none(sid)
    key_s = _id_or_none(key)
    return Identity(session_id=sid_s if sid_s is not None else key_s, session_key=key_s,
                    agent_id=_id_or_none(ctx.get("agentId")))


def _id_or_none(v: object) -> str | None:
    """A host id made encodable at the boundary (``""`` stays ``""``: the core says so)."""
    if isinstance(v, str) and v:
        return clean_id(v)
    return _str_or_none(v)


_TOOL_CALL_BLOCKS = ("toolCall", "tool_use", "toolUse", "function_call")


def _openclaw_content_text(content: object) -> str:
    """Text of an OpenClaw message content; a tool call reads as what it did."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, Mapping) and block.get("type") == "text":
                t = block.get("text")
                if isinstance(t, str) and t:
                    parts.append(t)
            elif isinstance(block, Mapping) and block.get("type") in _TOOL_CALL_BLOCKS:
                args = block.get("arguments", block.get("input"))
                name = block.get("name")
                parts.append(f"[tool: {describe_call(name if isinstance(name, str) else None, args if isinstance(args, Mapping) else None)}]")
            elif isinstance(block, str) and block:
                parts.append(block)
        return "\n".join(parts)
    return ""


def messages_from_payload(raw: object) -> list[Message] | None:
    """Host message arrays → :class:`Message` (unknown shapes are skipped)."""
    if not isinstance(raw, list):
        return None
    out: list[Message] = []
    for m in raw:
        if not isinstance(m, Mapping):
            continue
        role = m.get("role")
        inner = m.get("message")
        if not isinstance(role, str) and isinstance(inner, Mapping):
            role = inner.get("role")
            m = inner
        if not isinstance(role, str):
            continue
        ts = m.get("timestamp")
        out.append(Message(role, clean_text(_openclaw_content_text(m.get("content"))),
                           ts if isinstance(ts, str) else None))
    return out


def _prompt_parts(u: Mapping[str, Any]) -> tuple[object, object, object]:
    """Raw fresh input, cache read and cache write of a usage object (either spelling)."""
    return (u.get("input", u.get("input_tokens", u.get("inputTokens"))),
            u.get("cacheRead", u.get("cache_read_input_tokens")),
            u.get("cacheWrite", u.get("cache_creation_input_tokens")))


def _prompt_of_call(usage: object) -> int | None:
    """Prompt size of one model call from its usage: fresh input + cache read + cache write."""
    if not isinstance(usage, Mapping):
        return None
    parts = _prompt_parts(usage)
    if all(p is None for p in parts):
        return None
    return sum(token_count(p) for p in parts)


def usage_from_payload(event: Mapping[str, Any], ident: Identity) -> Usage | None:
    """OpenClaw ``llm_output``: ``usage`` is the whole run's usage, summed over every
    model call of the run (the host's ``attemptUsage``); the latest call's own usage
    is on ``lastAssistant.usage``. Totals come from the first, the fill's prompt from
    the second (a run of six calls of ~15k tokens is a 15k prompt, not 90k)."""
    u = event.get("usage")
    if not isinstance(u, Mapping):
        return None
    budget = event.get("contextTokenBudget")
    last = event.get("lastAssistant")
    prompt = _prompt_of_call(last.get("usage")) if isinstance(last, Mapping) else None
    fresh, cache_read, cache_write = _prompt_parts(u)
    return Usage(
        ident=ident,
        model=_str_or_none(event.get("model")),
        input_tokens=token_count(fresh),
        output_tokens=token_count(u.get("output", u.get("output_tokens", u.get("outputTokens")))),
        cache_read_tokens=token_count(cache_read),
        cache_write_tokens=token_count(cache_write),
        prompt_tokens=prompt or None,
        context_budget=token_count(budget) or None,
    )


def _ts_gateway_start(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    return rt.gateway_start()


def _ts_gateway_stop(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    return rt.gateway_stop()


def _ts_session_start(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    return rt.session_start(identity_from_ctx(cx, ev))


def _ts_turn_prepare(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    ident = identity_from_ctx(cx)
    prompt = ev.get("prompt")
    queued = ev.get("queuedInjections")
    key = ident.session_key or ident.session_id
    if key and isinstance(queued, list):
        # what the host already holds for this turn: our restore is never added twice
        rt.host_queued(key, [_queued(q) for q in queued])
    return rt.turn_prepare(TurnPrepare(
        ident=ident,
        prompt=clean_text(prompt),
        is_user_turn=cx.get("trigger") == "user",
        job_id=str(cx["jobId"]) if cx.get("jobId") else None,
        messages=messages_from_payload(ev.get("messages")),
        cwd=_str_or_none(cx.get("workspaceDir")),
    ))


def _queued(q: object) -> QueuedInjection:
    if isinstance(q, Mapping):
        return QueuedInjection(_str_or_none(q.get("idempotencyKey")), _str_or_none(q.get("text")))
    return QueuedInjection(None, q if isinstance(q, str) else None)


def _ts_before_tool(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    name = _str_or_none(ev.get("toolName")) or _str_or_none(cx.get("toolName")) or ""
    params = ev.get("params")
    return rt.tool_before(ToolBefore(identity_from_ctx(cx), name,
                                     clean_params(params)))


def _ts_after_tool(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    name = _str_or_none(ev.get("toolName")) or _str_or_none(cx.get("toolName")) or ""
    params = ev.get("params")
    err = ev.get("error")
    return rt.tool_after(ToolAfter(identity_from_ctx(cx), name,
                                   clean_params(params),
                                   clean_text(str(err)) if err else None))


def _ts_before_compaction(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    mc = ev.get("messageCount")
    return rt.compaction_before(CompactionBefore(
        identity_from_ctx(cx), messages_from_payload(ev.get("messages")),
        mc if isinstance(mc, int) and not isinstance(mc, bool) else None))


def _ts_after_compaction(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    cc = ev.get("compactedCount")
    return rt.compaction_after(CompactionAfter(
        identity_from_ctx(cx),
        previous_session_id=_str_or_none(ev.get("previousSessionId")),
        compacted_count=cc if isinstance(cc, (int, float)) and not isinstance(cc, bool) else None,
        message_count=ev.get("messageCount"),
    ))


def _ts_session_end(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    return rt.session_end(SessionEnd(identity_from_ctx(cx, ev), _str_or_none(ev.get("reason"))))


def _ts_llm_output(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    ident = identity_from_ctx(cx, ev)
    usage = usage_from_payload(ev, ident)
    if usage is None:
        return HookOutcome()
    return rt.usage(usage)


def _ts_agent_end(rt: Core, ev: Mapping[str, Any], cx: Mapping[str, Any]) -> HookOutcome:
    msgs = messages_from_payload(ev.get("messages"))
    if not msgs:
        return HookOutcome()
    return rt.history(identity_from_ctx(cx, ev), msgs)


_TsHook = Callable[[Core, Mapping[str, Any], Mapping[str, Any]], HookOutcome]

_TS_HOOKS: dict[str, _TsHook] = {
    "gateway_start": _ts_gateway_start,
    "gateway_stop": _ts_gateway_stop,
    "session_start": _ts_session_start,
    "agent_turn_prepare": _ts_turn_prepare,
    "before_tool_call": _ts_before_tool,
    "after_tool_call": _ts_after_tool,
    "before_compaction": _ts_before_compaction,
    "after_compaction": _ts_after_compaction,
    "session_end": _ts_session_end,
    "llm_output": _ts_llm_output,
    "model_call_ended": _ts_llm_output,
    "agent_end": _ts_agent_end,
}

TS_HOOK_NAMES: tuple[str, ...] = tuple(_TS_HOOKS)


def handle(rt: Core, hook: str, event: Mapping[str, Any] | None,
           ctx: Mapping[str, Any] | None) -> HookOutcome:
    """Run one OpenClaw hook with its ``(event, ctx)`` payloads. Never raises."""
    try:
        ev = event if isinstance(event, Mapping) else {}
        cx = ctx if isinstance(ctx, Mapping) else {}
        fn = _TS_HOOKS.get(hook)
        if fn is None:
            return HookOutcome()
        return fn(rt, ev, cx)
    except Exception as exc:
        log.debug("handle(%s) failed", hook, exc_info=True)
        return HookOutcome(actions=[LogLine("error", f"{PREFIX}{hook} handler error: {exc}")])


class OpenClawEvents:
    """The core behind OpenClaw's hook shapes (what the worker and the demo drive)."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def handle(self, hook: str, event: Mapping[str, Any] | None,
               ctx: Mapping[str, Any] | None) -> HookOutcome:
        return handle(self.core, hook, event, ctx)

    # what the worker reports and forwards besides hooks
    def enqueue_result(self, session_key: str, idempotency_key: str, enqueued: bool) -> None:
        self.core.enqueue_result(session_key, idempotency_key, enqueued)

    def gateway_stop(self) -> HookOutcome:
        return self.core.gateway_stop()

    def status(self, session_id: str) -> dict[str, Any]:
        return self.core.status(session_id)

    def tracked_counts(self) -> dict[str, int]:
        return self.core.tracked_counts()

    def command(self, args: str, session_id: str | None, session_key: str | None) -> str:
        """``/token-optimizer`` typed in an OpenClaw chat: the report Hermes gives too."""
        from token_optimizer.status_report import render_status

        return render_status(self.core, args, session_id, session_key)

    def collections(self) -> dict[str, Any]:
        colls = getattr(self.core, "collections", None)
        return dict(colls()) if callable(colls) else {}

    @property
    def config(self) -> Any:
        return getattr(self.core, "config", None)

    def close(self) -> None:
        self.core.close()


