"""The ``/token-optimizer`` chat report, shared by both hosts.

Hermes answers its slash command with :func:`render_status` on its worker thread;
the OpenClaw worker answers the shim's ``command`` message with it. The report
is built from the core's :meth:`~token_optimizer.runtime.TokenOptimizer.status`;
when this process has not seen the session (a resumed chat before its first
message, a restarted gateway) the session comes from the session index and the
figures from the session's newest checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger("token_optimizer")

COMMAND = "token-optimizer"
TITLE = "[Token Optimizer]"
HELP_TEXT = (
    f"/{COMMAND}            status of this chat: context fill, quality, checkpoints, evictions\n"
    f"/{COMMAND} <id>       status of one session id"
)


class StatusSource(Protocol):
    def status(self, session_id: str) -> dict[str, Any]: ...
    def persisted_session(self, session_key: str | None) -> str | None: ...


def render_status(core: StatusSource, arg: str, session_id: str | None,
                  session_key: str | None) -> str:
    """The report for one chat (``session_key``) or session. Never raises."""
    try:
        return _render(core, arg.strip() if isinstance(arg, str) else "", session_id, session_key)
    except Exception as exc:
        log.debug("[token-optimizer] status report failed", exc_info=True)
        return f"{TITLE} status unavailable: {type(exc).__name__}"


def _render(core: StatusSource, arg: str, session_id: str | None, session_key: str | None) -> str:
    if arg == "help":
        return HELP_TEXT
    sid = session_id
    on_record = False
    if sid is None:
        sid = core.persisted_session(session_key)
        on_record = sid is not None
    if sid is None:
        return f"{TITLE} No session seen yet in this chat."
    st: Mapping[str, Any] = core.status(sid)
    lines = [f"{TITLE} session {sid}"]
    if session_key and session_key != sid:
        lines.append(f"  chat: {session_key}")
    if on_record and st.get("figuresFrom") != "live":
        lines.append("  (not active in this process yet: figures from the state on disk)")
    fill = st.get("fillPct")
    window = st.get("contextWindow")
    if fill is None:
        lines.append("  context fill: no model call measured yet")
    else:
        w = f" of {window:,} tokens" if isinstance(window, int) else ""
        when = ""
        if st.get("figuresFrom") == "checkpoint":
            when = f" (at the checkpoint of {st.get('figuresAt') or 'unknown time'})"
        lines.append(f"  context fill: {fill}%{w}{when}")
    q = st.get("qualityScore")
    lines.append(f"  quality: {q}/100" if q is not None else "  quality: unknown")
    cps = st.get("checkpoints") or []
    if cps:
        triggers = ", ".join(str(c.get("trigger")) for c in cps if isinstance(c, Mapping))
        lines.append(f"  checkpoints: {len(cps)} ({triggers})")
    else:
        lines.append("  checkpoints: none")
    ev = st.get("evictions")
    total = sum(v for v in ev.values() if isinstance(v, int)) if isinstance(ev, Mapping) else 0
    lines.append(f"  evictions (all sessions): {total}")
    if st.get("error"):
        lines.append(f"  note: {st['error']}")
    return "\n".join(lines)
