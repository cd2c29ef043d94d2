"""Event-fed per-session accounting (analysis.md sections 2-4, runtime.md section 4.5).

The reference re-parses the whole transcript on every hook to learn a
session's tokens, cost, fill and quality. The :class:`Ledger` keeps those
figures running instead: host events (model-call usage, messages, tool calls)
update one entry per session in O(1), and :meth:`Ledger.snapshot` turns the
entry into the reference's :class:`~token_optimizer.models.AgentRun` plus the
fill/quality pair the checkpoint policy consumes. The arithmetic is the
transcript parser's own (:class:`~token_optimizer.transcripts.RunAccumulator`),
so cumulative tokens, cost, duration and message count equal a parse of the
same records.

Deliberate difference (COMPAT.md): fill is the *latest* request's prompt size
(the host's ``prompt_tokens`` when reported, else fresh input + cache read +
cache write of the last usage) over the window (the host's context budget when
reported, else the table window of the latest request's model). The reference
divides the session's *cumulative fresh* input by the dominant model's window,
which overstates fill when the cache misses and understates it when it hits.

Memory: entries live in one :class:`~token_optimizer.bounded.BoundedMap`;
each entry keeps a bounded ring of recent messages, a bounded memory of recent
request ids and a capped tool-name set. Nothing grows with session length.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from token_optimizer.bounded import BoundedMap, _Bounded
from token_optimizer.events import Usage
from token_optimizer.jsutil import js_trim, now_ms
from token_optimizer.models import AgentRun, Message
from token_optimizer.pricing import normalize_model_name
from token_optimizer.quality import context_window_for_model, score_session_quality
from token_optimizer.session_notes import NotesView, SessionNotes
from token_optimizer.transcripts import (
    IncrementalTranscript,
    RunAccumulator,
    UsageFields,
    non_neg,
    timestamp_ms,
)

log = logging.getLogger("token_optimizer")

DEFAULT_RING_SIZE = 20
MAX_REMEMBERED_REQUESTS = 256
"""Request ids remembered per session for de-duplication (streaming repeats are adjacent)."""
MAX_TOOL_NAMES = 256
HISTORY_RESYNC_SCAN = 64
"""How far back a rewritten host history is searched for the last message already seen."""


@dataclass
class LedgerSnapshot:
    """A session's figures at one moment."""

    fill_pct: float
    """Latest prompt / window x 100, capped at 100."""
    quality_score: int
    context_window: int
    model: str
    """Normalised dominant model (the reference's ``run.model``)."""
    run: AgentRun
    prompt_tokens: int = 0
    """The fill numerator: size of the latest prompt."""
    tool_calls: int = 0
    """Tool calls reported through :meth:`Ledger.on_tool`."""


class _Entry:
    __slots__ = ("acc", "agent_name", "context_budget", "hist_last", "hist_len", "host_prompt",
                 "latest_model", "lock", "notes", "ring", "tool_calls", "transcript")

    def __init__(self, ring_size: int, openclaw_dir: str | os.PathLike[str] | None) -> None:
        self.lock = threading.Lock()
        self.acc = RunAccumulator(openclaw_dir, max_requests=MAX_REMEMBERED_REQUESTS,
                                  max_tools=MAX_TOOL_NAMES)
        self.agent_name = "unknown"
        self.ring: deque[Message] = deque(maxlen=ring_size)
        self.tool_calls = 0
        self.hist_len = 0
        self.hist_last: Message | None = None
        self.host_prompt: float | None = None
        self.latest_model: str | None = None
        self.context_budget = 0
        self.transcript: IncrementalTranscript | None = None
        self.notes = SessionNotes()


def _count(v: object) -> float:
    """A host-reported token count as a non-negative number (junk becomes 0)."""
    return non_neg(v)


class Ledger:
    """Per-session running accounting fed by host events. Thread-safe; never raises."""

    def __init__(self, *, ring_size: int = DEFAULT_RING_SIZE,
                 openclaw_dir: str | os.PathLike[str] | None = None) -> None:
        self.ring_size = max(1, int(ring_size))
        self.openclaw_dir = openclaw_dir
        """Where ``openclaw.json`` pricing overrides and the pricing tier are read."""
        self._entries: BoundedMap[str, _Entry] = BoundedMap("ledger")

    # ------------------------------------------------------------ entries

    def _new_entry(self) -> _Entry:
        return _Entry(self.ring_size, self.openclaw_dir)

    def _entry(self, session_id: str) -> _Entry:
        """The session's entry, created when absent; touching it marks it recently used."""
        return self._entries.update_with(
            session_id, lambda old: old if old is not None else self._new_entry())

    def has(self, session_id: str) -> bool:
        return session_id in self._entries

    def has_figures(self, session_id: str) -> bool:
        """Has the session reported usage or messages (or a transcript) yet?"""
        e = self._entries.get(session_id)
        if e is None:
            return False
        return bool(e.transcript is not None or e.acc.request_count or e.acc.message_count)

    def release(self, session_id: str) -> None:
        self._entries.discard(session_id)

    def __len__(self) -> int:
        return len(self._entries)

    def collections(self) -> dict[str, _Bounded]:
        """Per-session collections owned here (for the runtime's bounds report)."""
        return {"ledger_sessions": self._entries}

    # ------------------------------------------------------------ events

    def on_usage(self, ev: Usage) -> None:
        """One model call's token usage (repeats of a ``request_id`` are merged)."""
        try:
            sid = ev.ident.session_id
            if not sid:
                return
            fields = UsageFields(_count(ev.input_tokens), _count(ev.output_tokens),
                                 _count(ev.cache_read_tokens), _count(ev.cache_write_tokens))
            model = ev.model if isinstance(ev.model, str) and ev.model else "unknown"
            ts = ev.timestamp_ms
            ts_ms = timestamp_ms(ts) if ts is not None else float(now_ms())
            host_prompt = _count(ev.prompt_tokens) if ev.prompt_tokens is not None else 0.0
            budget = _count(ev.context_budget) if ev.context_budget is not None else 0.0
            e = self._entry(sid)
            with e.lock:
                if ev.ident.agent_id:
                    e.agent_name = ev.ident.agent_id
                acc = e.acc
                acc.note_timestamp(ts_ms)
                before = acc.request_count
                if acc.add_usage(ev.request_id, fields, model):
                    repeat = acc.request_count == before
                    if host_prompt > 0:
                        e.host_prompt = max(host_prompt, e.host_prompt or 0.0) if repeat else host_prompt
                    elif not repeat:
                        e.host_prompt = None
                    if model != "unknown":
                        e.latest_model = model
                if budget > 0 and math.isfinite(budget):
                    e.context_budget = int(budget)
        except Exception as exc:
            log.warning("[token-optimizer] ledger: usage event ignored: %s", exc)

    def _apply_message(self, e: _Entry, msg: Message) -> None:
        role = getattr(msg, "role", None)
        content = getattr(msg, "content", None)
        ts = getattr(msg, "timestamp", None)
        e.acc.note_timestamp(timestamp_ms(ts) if ts else None)
        # a whitespace-only user text gives no topic (as the transcript parser trims a
        # content list's text); the next user message with text does
        text = content if role == "user" and isinstance(content, str) and js_trim(content) else None
        if e.acc.note_message(role, text):
            e.ring.append(msg)
            if isinstance(role, str) and isinstance(content, str):
                e.notes.on_message(role, content)

    def on_message(self, session_id: str, msg: Message) -> None:
        """One message seen live (user and assistant messages are counted)."""
        try:
            if not session_id:
                return
            e = self._entry(session_id)
            with e.lock:
                self._apply_message(e, msg)
        except Exception as exc:
            log.warning("[token-optimizer] ledger: message ignored: %s", exc)

    def on_messages(self, session_id: str, msgs: Sequence[Message]) -> None:
        """The host's whole conversation so far; only messages not seen before are counted.

        Replays of the same history change nothing. When the history was
        rewritten (compaction shrinks it), counting resumes after the last
        message already seen if it is still there, else from the next call on.
        """
        try:
            if not session_id or msgs is None:
                return
            e = self._entry(session_id)
            n = len(msgs)
            with e.lock:
                if n == 0:
                    e.hist_len, e.hist_last = 0, None
                    return
                seen = e.hist_len
                if seen <= n and (seen == 0 or msgs[seen - 1] == e.hist_last):
                    start = seen
                else:
                    start = n
                    if e.hist_last is not None:
                        for j in range(n - 1, max(-1, n - 1 - HISTORY_RESYNC_SCAN), -1):
                            if msgs[j] == e.hist_last:
                                start = j + 1
                                break
                for i in range(start, n):
                    self._apply_message(e, msgs[i])
                e.hist_len, e.hist_last = n, msgs[n - 1]
        except Exception as exc:
            log.warning("[token-optimizer] ledger: history ignored: %s", exc)

    def on_tool(self, session_id: str, tool_name: str, params: object = None,
                error: str | None = None, resolved_path: str | None = None) -> None:
        """A finished tool call (its file and error feed the whole-session notes)."""
        try:
            if not session_id:
                return
            e = self._entry(session_id)
            with e.lock:
                e.tool_calls += 1
                e.acc.note_tool(tool_name)
                e.notes.on_tool(tool_name, params, error, resolved_path)
        except Exception as exc:
            log.warning("[token-optimizer] ledger: tool event ignored: %s", exc)

    def on_prompt(self, session_id: str, text: str) -> None:
        """A user prompt as typed (the first one becomes the session's task)."""
        try:
            if not session_id:
                return
            e = self._entry(session_id)
            with e.lock:
                e.notes.on_prompt(text)
        except Exception as exc:
            log.warning("[token-optimizer] ledger: prompt ignored: %s", exc)

    def notes(self, session_id: str) -> NotesView | None:
        """The session's whole-session checkpoint sections, or ``None`` when unknown."""
        try:
            e = self._entries.get(session_id)
            if e is None:
                return None
            with e.lock:
                return e.notes.view()
        except Exception as exc:
            log.warning("[token-optimizer] ledger: notes unavailable: %s", exc)
            return None

    def ingest_transcript(self, session_id: str, path: Path, agent_name: str) -> None:
        """Follow a legacy ``.jsonl`` transcript: each call reads only what was appended.

        While a transcript is attached, its figures (not events') make the run.
        """
        try:
            if not session_id:
                return
            e = self._entry(session_id)
            with e.lock:
                p = Path(path)
                if e.transcript is None or e.transcript.path != p:
                    e.transcript = IncrementalTranscript(p, agent_name, self.openclaw_dir,
                                                         ring_size=self.ring_size)
                e.transcript.agent_name = agent_name
                e.agent_name = agent_name
                e.transcript.update()
        except Exception as exc:
            log.warning("[token-optimizer] ledger: transcript %s not read: %s", path, exc)

    # ------------------------------------------------------------ reads

    def snapshot(self, session_id: str) -> LedgerSnapshot | None:
        """Fill, quality, window, model and run; ``None`` when nothing is known yet."""
        try:
            e = self._entries.get(session_id)
            if e is None:
                return None
            with e.lock:
                return self._snapshot(session_id, e)
        except Exception as exc:
            log.warning("[token-optimizer] ledger: snapshot failed for %s: %s", session_id, exc)
            return None

    def _snapshot(self, session_id: str, e: _Entry) -> LedgerSnapshot | None:
        t = e.transcript
        from_events = t is None or not t.available
        if from_events:
            acc = e.acc
            if acc.message_count == 0 and acc.request_count == 0:
                return None
            run = acc.build_run(session_id, e.agent_name, allow_empty=True)
            prompt = e.host_prompt if e.host_prompt is not None else acc.last_prompt
            raw_model = e.latest_model
        else:
            assert t is not None
            acc = t.view
            run = acc.build_run(session_id, e.agent_name, os.fspath(t.path))
            prompt = acc.last_prompt
            raw_model = acc.last_model
        if run is None:
            return None
        if e.context_budget > 0:
            window = e.context_budget
        elif raw_model and raw_model != "unknown" and normalize_model_name(raw_model) is not None:
            window = context_window_for_model(raw_model)
        else:
            window = context_window_for_model(run.model)
        fill = min(100.0, prompt / window * 100) if window > 0 else 0.0
        quality = score_session_quality(run, fill_ratio=fill / 100).score
        return LedgerSnapshot(fill, quality, window, run.model, run,
                              prompt_tokens=int(prompt), tool_calls=e.tool_calls)

    def recent_messages(self, session_id: str) -> list[Message]:
        """The last ``ring_size`` user/assistant messages (oldest first)."""
        try:
            e = self._entries.get(session_id)
            if e is None:
                return []
            with e.lock:
                t = e.transcript
                if t is not None and t.available:
                    return list(t.recent)
                return list(e.ring)
        except Exception as exc:
            log.warning("[token-optimizer] ledger: recent messages unavailable: %s", exc)
            return []
