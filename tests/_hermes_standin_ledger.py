"""TEMPORARY stand-in for token_optimizer.ledger until the real module lands.

Only installed into sys.modules by tests/test_hermes_plugin.py when
``import token_optimizer.ledger`` fails. Delete once the real ledger exists.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from token_optimizer.bounded import BoundedMap
from token_optimizer.events import Usage
from token_optimizer.models import AgentRun, Message
from token_optimizer.quality import context_window_for_model, score_session_quality


@dataclass
class LedgerSnapshot:
    fill_pct: float
    quality_score: int
    context_window: int
    model: str
    run: AgentRun


@dataclass
class _S:
    run: AgentRun
    prompt: int = 0
    window: int = 0
    msgs: list[Message] | None = None


class Ledger:
    def __init__(self, *, ring_size: int = 20) -> None:
        self.ring = ring_size
        self.s: BoundedMap[str, _S] = BoundedMap("ledger_sessions")

    def _get(self, sid: str) -> _S:
        return self.s.get_or_create(sid, lambda: _S(AgentRun(sid, "x", time.time() * 1000)))

    def on_usage(self, ev: Usage) -> None:
        sid = ev.ident.session_id
        if not sid:
            return
        st = self._get(sid)
        st.run.tokens.input += ev.input_tokens
        st.run.tokens.output += ev.output_tokens
        st.prompt = ev.prompt_tokens if ev.prompt_tokens is not None else (
            ev.input_tokens + ev.cache_read_tokens + ev.cache_write_tokens)
        st.run.model = ev.model or st.run.model
        st.window = ev.context_budget or context_window_for_model(st.run.model)

    def on_message(self, session_id: str, msg: Message) -> None:
        st = self._get(session_id)
        st.msgs = ([*(st.msgs or []), msg])[-self.ring:]

    def on_messages(self, session_id: str, msgs: Sequence[Message]) -> None:
        st = self._get(session_id)
        st.msgs = list(msgs)[-self.ring:]
        st.run.message_count = len(msgs)

    def on_tool(self, session_id: str, tool_name: str) -> None:
        self._get(session_id).run.tools_used.append(tool_name)

    def snapshot(self, session_id: str) -> LedgerSnapshot | None:
        st = self.s.get(session_id)
        if st is None or not st.window:
            return None
        ratio = st.prompt / st.window
        q = score_session_quality(st.run, fill_ratio=ratio)
        return LedgerSnapshot(ratio * 100, q.score, st.window, st.run.model, st.run)

    def recent_messages(self, session_id: str) -> list[Message]:
        st = self.s.get(session_id)
        return list(st.msgs or []) if st else []

    def ingest_transcript(self, session_id: str, path: Path, agent_name: str) -> None:
        return None

    def release(self, session_id: str) -> None:
        self.s.discard(session_id)

    def has(self, session_id: str) -> bool:
        return session_id in self.s

    def collections(self) -> dict[str, Any]:
        return {"ledger_sessions": self.s}
