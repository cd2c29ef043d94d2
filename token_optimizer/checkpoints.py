"""Checkpoint store and smart compaction (spec runtime.md section 5).

A checkpoint is a small markdown file that preserves what a session was doing
so the context can be re-seeded after compaction. Two writers exist:

* v1 -- header plus the last ``max_messages`` messages (2000 code units each);
* v2 -- header, sections distilled from *all* messages (user instructions,
  decisions, errors, file changes) and the last ``max_recent`` messages
  (1500 code units each).

Files live in ``<state root>/checkpoints/<sanitised id>/`` next to an
append-only ``manifest.jsonl``. Capturing the same content with the same
trigger twice writes nothing the second time (the decision is still recorded
with the policy, so it stops re-proposing it). Restoring picks the newest
checkpoint, trigger priority breaking ties (the reference ranks by priority
first), capped at 4000 UTF-16 code units.

Everything that must match the TypeScript plugin (headers, section titles,
caps, file names, manifest keys, digest) is byte-compatible; the only free
text is the "no transcript" sentence.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, Unpack

from token_optimizer import fsutil
from token_optimizer.bounded import StripedLocks
from token_optimizer.jsutil import (
    dumps_compact,
    iso_from_ms,
    js_number,
    js_round,
    js_trim,
    now_ms,
    parse_int,
    to_fixed,
    utf16_len,
    utf16_slice,
)
from token_optimizer.models import Message

if TYPE_CHECKING:
    from token_optimizer.fsutil import StatePaths
    from token_optimizer.policy import CheckpointPolicy

log = logging.getLogger("token_optimizer.checkpoints")

__all__ = [
    "DIGEST_WINDOW",
    "NO_TRANSCRIPT_NOTE",
    "RESTORE_CAP",
    "CaptureResult",
    "CheckpointStore",
    "semantic_digest",
    "trigger_priority",
]

# ---------------------------------------------------------------- constants

MANIFEST_NAME = "manifest.jsonl"
DEFAULT_TRIGGER = "compact"
V1_MAX_MESSAGES = 20
V2_MAX_RECENT = 10

DIGEST_WINDOW = 10
"""Messages that feed the content digest (fixed, whatever the writer renders)."""
DIGEST_CONTENT_CAP = 600
V1_CONTENT_CAP = 2000
V2_CONTENT_CAP = 1500
CAPTURE_TRUNCATION_MARK = "\n\n[...truncated]"
RESTORE_CAP = 4000
RESTORE_TRUNCATION_MARK = "\n[... truncated]"
_RESTORE_READ_BYTES = 64 * 1024
"""Enough bytes to know whether a file exceeds the restore cap (<= 3 bytes per unit)."""
_MANIFEST_READ_BYTES = 32 * 1024 * 1024
_LOCK_STRIPES = 64

SAMPLE_CAP = 3000
DECISION_CAP, ERROR_CAP, FILE_CHANGE_CAP, INSTRUCTION_CAP = 10, 5, 10, 10

NO_TRANSCRIPT_NOTE = "No conversation messages were available when this checkpoint was captured."
"""Our own wording; the reference's sentence is not part of the contract."""

# ---------------------------------------------------------------- v2 patterns

_F = re.ASCII | re.IGNORECASE
_DECISION = [re.compile(p, _F) for p in (
    r"\bI'll\b", r"\bLet's\b", r"\bdecided\b", r"\bchoosing\b",
    r"\bgoing with\b", r"\busing\b", r"\bswitching to\b",
)]
_ERROR = [
    re.compile(r"\bError[:!]", _F),
    re.compile(r"\bfailed\b", _F),
    re.compile(r"\bexception\b", _F),
    re.compile(r"\bstack trace\b", _F),
    re.compile(r"\btraceback\b", _F),
    re.compile(r"\bTypeError\b", re.ASCII),
    re.compile(r"\bSyntaxError\b", re.ASCII),
    re.compile(r"\bReferenceError\b", re.ASCII),
    re.compile(r"\bENOENT\b", re.ASCII),
    re.compile(r"\bEACCES\b", re.ASCII),
    re.compile(r"\bconnection refused\b", _F),
]
_FILE_CHANGE = [
    re.compile(r"\bwrit(?:e|ing|ten)\b", _F),
    re.compile(r"\bedit(?:ed|ing)?\b", _F),
    re.compile(r"\bcreated?\b", _F),
    re.compile(r"\bmodif(?:y|ied|ying)\b", _F),
    re.compile(r"\btool_use\b", re.ASCII),
]
_INSTRUCTION = [re.compile(p, _F) for p in (
    r"\balways\b", r"\bnever\b", r"\bmake sure\b", r"\bdon't\b",
    r"\bdo not\b", r"\bmust\b", r"\bshould\b", r"\bprefer\b",
)]


def _matches(text: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    return any(p.search(text) for p in patterns)


# ---------------------------------------------------------------- text helpers

_SURROGATE = re.compile("[\ud800-\udfff]")


def _well_formed(s: str) -> str:
    """Pair up surrogate code points and turn lone ones into U+FFFD.

    Node encodes a lone surrogate as U+FFFD when writing UTF-8 (files and
    hash input), so doing it up front keeps lengths and bytes identical.
    """
    if not _SURROGATE.search(s):
        return s
    return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _checkpoint_sid(session_id: object) -> str:
    """The checkpoint-rule directory name for any session id value."""
    return fsutil.sanitize_checkpoint_id(_well_formed(str(session_id)))


def _js_cut(s: str, limit: int) -> str:
    """``s.slice(0, limit)`` as the reference's UTF-8 output would contain it.

    A cut through a surrogate pair leaves a lone high surrogate in JS, which
    becomes U+FFFD once encoded; reproduce that so files and digests match.
    """
    cut = utf16_slice(s, limit)
    if len(cut) < len(s) and utf16_len(cut) < limit:
        return cut + "\ufffd"
    return cut


def _cap(s: str, limit: int, mark: str) -> str:
    return _js_cut(s, limit) + mark if utf16_len(s) > limit else s


def _coerce_text(value: object) -> str:
    """Best-effort text of a message's content (the reference assumes a string)."""
    if isinstance(value, str):
        return _well_formed(value)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        parts: list[str] = []
        for block in value:
            if isinstance(block, str):
                text = block
            elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
                text = block["text"]
            else:
                continue
            if text:
                parts.append(text)
        return _well_formed("\n".join(parts))
    if isinstance(value, (bool, int, float)):
        return js_number(value)
    try:
        return _well_formed(dumps_compact(value))
    except Exception:
        return _well_formed(str(value))


def _num(value: object) -> float | None:
    """A JS ``typeof x === "number"`` test: real numbers only, bools excluded."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _js_round_text(x: float) -> str:
    return js_number(x) if math.isnan(x) or math.isinf(x) else str(js_round(x))


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class _Msg:
    role: str
    content: str
    timestamp: str | None


def _normalise_messages(messages: Iterable[object] | None) -> list[_Msg]:
    """Accept ``Message`` objects (or plain mappings) with any role or content type."""
    out: list[_Msg] = []
    if messages is None:
        return out
    for m in messages:
        if isinstance(m, Message):
            role: object = m.role
            content: object = m.content
            ts: object = m.timestamp
        elif isinstance(m, Mapping):
            role, content, ts = m.get("role"), m.get("content"), m.get("timestamp")
        else:
            role = getattr(m, "role", None)
            content = getattr(m, "content", None)
            ts = getattr(m, "timestamp", None)
        out.append(_Msg(
            role=_well_formed(role if isinstance(role, str) else ("" if role is None else str(role))),
            content=_coerce_text(content),
            timestamp=_well_formed(ts) if isinstance(ts, str) else None,
        ))
    return out


def _role_title(role: str) -> str:
    return "User" if role == "user" else "Assistant"


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class _Options:
    trigger: str = DEFAULT_TRIGGER
    reason: str | None = None
    fill_pct: float | None = None
    quality_score: float | None = None
    tool_name: str | None = None
    event_kind: str | None = None
    active_agents: float | None = None
    write_count: float | None = None
    write_burst_count: float | None = None
    context_window: float | None = None
    model: str | None = None


def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    return _well_formed(value if isinstance(value, str) else str(value))


class CaptureFields(TypedDict, total=False):
    """The optional keyword fields of a capture (spec 5.4/5.5); all may be None."""

    trigger: str | None
    reason: str | None
    fill_pct: float | None
    quality_score: float | None
    tool_name: str | None
    event_kind: str | None
    active_agents: float | None
    write_count: float | None
    write_burst_count: float | None
    context_window: float | None
    model: str | None


def _make_options(
    *,
    trigger: object = None,
    reason: object = None,
    fill_pct: object = None,
    quality_score: object = None,
    tool_name: object = None,
    event_kind: object = None,
    active_agents: object = None,
    write_count: object = None,
    write_burst_count: object = None,
    context_window: object = None,
    model: object = None,
) -> _Options:
    return _Options(
        trigger=DEFAULT_TRIGGER if trigger is None else _well_formed(str(trigger)),
        reason=_opt_str(reason),
        fill_pct=_num(fill_pct),
        quality_score=_num(quality_score),
        tool_name=_opt_str(tool_name),
        event_kind=_opt_str(event_kind),
        active_agents=_num(active_agents),
        write_count=_num(write_count),
        write_burst_count=_num(write_burst_count),
        context_window=_num(context_window),
        model=_opt_str(model),
    )


# ---------------------------------------------------------------- digest


def _fingerprint(parts: Iterable[str]) -> str:
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()


def _num_part(x: float | None) -> str:
    return "" if x is None else js_number(x)


def _semantic_digest(sid: str, msgs: Sequence[_Msg], o: _Options,
                     notes: NotesLike | None = None) -> str:
    flat: list[str] = []
    for m in msgs[-DIGEST_WINDOW:]:
        flat += [m.role, m.timestamp or "", _js_cut(m.content, DIGEST_CONTENT_CAP)]
    if notes is not None:
        # whole-session sections (ours): a new edit is new content even when the
        # recent window did not change
        flat += ["notes", *notes.fingerprint_parts()]
    content_digest = _fingerprint(flat)
    return _fingerprint([
        sid,
        o.trigger,
        o.reason or "",
        "" if o.fill_pct is None else to_fixed(o.fill_pct, 3),
        "" if o.quality_score is None else to_fixed(o.quality_score, 0),
        o.tool_name or "",
        o.event_kind or "",
        _num_part(o.active_agents),
        _num_part(o.write_count),
        _num_part(o.write_burst_count),
        _num_part(o.context_window),
        o.model or "",
        content_digest,
    ])


def semantic_digest(
    session_id: str,
    messages: Sequence[Message] | None = None,
    **fields: Unpack[CaptureFields],
) -> str:
    """The 64-hex digest the manifest stores (spec section 5.3)."""
    o = _make_options(**fields)
    sid = _checkpoint_sid(session_id)
    return _semantic_digest(sid, _normalise_messages(messages), o)


# ---------------------------------------------------------------- ranking


def trigger_priority(trigger: str | None) -> int:
    """Restore priority of a trigger (higher wins; spec section 5.7)."""
    if not trigger:
        return 100
    if trigger == "milestone-pre-fanout":
        return 1000
    if trigger == "milestone-edit-batch":
        return 950
    for prefix, base, fallback in (("quality-", 900, 900), ("progressive-", 800, 700)):
        if trigger.startswith(prefix):
            n = parse_int(trigger.split("-")[1])
            return fallback if math.isnan(n) else int(base - n)
    return {
        "compact": 400,
        "session-end": 300,
        "end": 300,
        "session-start": 250,
        "stop": 200,
        "stop-failure": 175,
    }.get(trigger, 100)


# ---------------------------------------------------------------- rendering


def _header(first_line: str, sid: str, captured_at: str, total: int, o: _Options) -> list[str]:
    lines = [first_line, f"> Captured at {captured_at}", f"> Session: {sid}", f"> Trigger: {o.trigger}"]
    if o.reason:
        lines.append(f"> Reason: {o.reason}")
    if o.fill_pct is not None:
        lines.append(f"> Fill: {to_fixed(o.fill_pct, 0)}%")
    if o.quality_score is not None:
        lines.append(f"> Quality: {_js_round_text(o.quality_score)}/100")
    for label, value in (
        ("Active agents", o.active_agents),
        ("Writes seen", o.write_count),
        ("Write burst", o.write_burst_count),
        ("Context window", o.context_window),
    ):
        if value is not None:
            lines.append(f"> {label}: {js_number(value)}")
    if o.model:
        lines.append(f"> Model: {o.model}")
    lines.append(f"> Messages preserved: {total}")
    lines.append("")
    return lines


class NotesLike(Protocol):
    """Whole-session sections (:class:`token_optimizer.session_notes.NotesView`)."""

    @property
    def task(self) -> str | None: ...
    @property
    def instructions(self) -> list[str]: ...
    @property
    def decisions(self) -> list[str]: ...
    @property
    def errors(self) -> list[str]: ...
    @property
    def file_changes(self) -> list[str]: ...
    @property
    def messages_seen(self) -> int: ...
    def fingerprint_parts(self) -> Iterable[str]: ...


TASK_HEADING = "## Session Task"
"""Ours: the first instruction of the session. Readers that do not know it skip it."""


@dataclass
class _Extracted:
    decisions: list[str]
    errors: list[str]
    file_changes: list[str]
    instructions: list[str]


def _first_line(lines: Sequence[str], patterns: Sequence[re.Pattern[str]], max_len: int) -> str | None:
    for line in lines:
        if 10 < utf16_len(line) < max_len and _matches(line, patterns):
            return js_trim(line)
    return None


def _unique(items: list[str], limit: int) -> list[str]:
    return list(dict.fromkeys(items))[:limit]


def extract_message_sections(role: str, content: str) -> _Extracted:
    """The v2 section lines one message contributes (decisions, errors, file changes,
    instructions), in the writer's own order. O(1): the message is sampled."""
    out = _Extracted([], [], [], [])
    if not content:
        return out
    sample = _js_cut(content, SAMPLE_CAP)
    lines = sample.split("\n")
    if role == "assistant":
        if _matches(sample, _DECISION):
            found = _first_line(lines, _DECISION, 500)
            if found is not None:
                out.decisions.append(found)
        if _matches(sample, _ERROR):
            hits: list[str] = []
            for line in lines:
                if utf16_len(line) < 300 and _matches(line, _ERROR):
                    hits.append(js_trim(line))
                    if len(hits) >= 3:
                        break
            if hits:
                out.errors.append("\n".join(hits))
        if _matches(sample, _FILE_CHANGE):
            found = _first_line(lines, _FILE_CHANGE, 300)
            if found is not None:
                out.file_changes.append(found)
    elif role == "user" and _matches(sample, _INSTRUCTION):
        found = _first_line(lines, _INSTRUCTION, 500)
        if found is not None:
            out.instructions.append(found)
    return out


def _extract(msgs: Sequence[_Msg]) -> _Extracted:
    decisions: list[str] = []
    errors: list[str] = []
    changes: list[str] = []
    instructions: list[str] = []
    for m in msgs:
        found = extract_message_sections(m.role, m.content)
        decisions += found.decisions
        errors += found.errors
        changes += found.file_changes
        instructions += found.instructions
    return _Extracted(
        decisions=_unique(decisions, DECISION_CAP),
        errors=_unique(errors, ERROR_CAP),
        file_changes=_unique(changes, FILE_CHANGE_CAP),
        instructions=_unique(instructions, INSTRUCTION_CAP),
    )


def _merge(whole: list[str], recent: list[str], cap: int) -> list[str]:
    """Whole-session items first, then recent ones not already listed, capped."""
    return _unique([*whole, *recent], cap)


def _sections(msgs: Sequence[_Msg], notes: NotesLike | None) -> _Extracted:
    ex = _extract(msgs)
    if notes is None:
        return ex
    return _Extracted(
        decisions=_merge(notes.decisions, ex.decisions, DECISION_CAP),
        errors=_merge(notes.errors, ex.errors, ERROR_CAP),
        # tool-recorded changes name the files; the prose lines are kept after them
        file_changes=_merge(notes.file_changes, ex.file_changes, 2 * FILE_CHANGE_CAP),
        instructions=_merge(notes.instructions, ex.instructions, INSTRUCTION_CAP),
    )


def _render_v1(sid: str, captured_at: str, msgs: Sequence[_Msg], max_messages: int, o: _Options) -> str:
    lines = _header("# Session Checkpoint", sid, captured_at, len(msgs), o)
    recent = msgs[-max_messages:]  # like JS slice(-n): 0 selects everything
    if not recent:
        lines += ["## Checkpoint Summary", "", NO_TRANSCRIPT_NOTE, ""]
    else:
        for m in recent:
            ts = f" ({m.timestamp})" if m.timestamp else ""
            lines += [f"## {_role_title(m.role)}{ts}", "", _cap(m.content, V1_CONTENT_CAP, CAPTURE_TRUNCATION_MARK), ""]
    return "\n".join(lines)


def _render_v2(sid: str, captured_at: str, msgs: Sequence[_Msg], max_recent: int, o: _Options,
               notes: NotesLike | None = None) -> str:
    ex = _sections(msgs, notes)
    total = len(msgs) if notes is None else max(len(msgs), notes.messages_seen)
    lines = _header("# Session Checkpoint (v2)", sid, captured_at, total, o)
    if notes is not None and notes.task:
        # Ours: the session's first instruction, which the recent window has often lost.
        lines += [TASK_HEADING, "", notes.task, ""]
    for title, items in (("## User Instructions", ex.instructions), ("## Key Decisions", ex.decisions)):
        if items:
            lines += [title, "", *(f"- {i}" for i in items), ""]
    if ex.errors:
        lines += ["## Errors Encountered", ""]
        for err in ex.errors:
            lines += ["```", err, "```", ""]
    if ex.file_changes:
        lines += ["## File Changes", "", *(f"- {i}" for i in ex.file_changes), ""]
    lines += ["## Recent Messages", ""]
    recent = msgs[-max_recent:]
    for m in recent:
        ts = f" ({m.timestamp})" if m.timestamp else ""
        lines += [f"### {_role_title(m.role)}{ts}", "", _cap(m.content, V2_CONTENT_CAP, CAPTURE_TRUNCATION_MARK), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- store


@dataclass(frozen=True)
class CaptureResult:
    """Outcome of a capture: the artifact path (an earlier one on a dedup hit)."""

    path: Path
    trigger: str
    deduplicated: bool
    version: int
    """1 or 2: the format of the file written (on a dedup hit: the writer that ran)."""


class CheckpointStore:
    """Writes, deduplicates, ranks and restores checkpoint artifacts."""

    def __init__(
        self,
        paths: StatePaths,
        policy: CheckpointPolicy,
        *,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.paths = paths
        self.policy = policy
        self._clock: Callable[[], int] = clock or now_ms
        # Striped (not per-session) locks: the dedup check, the artifact write
        # and the manifest append of one session must not interleave.
        self._stripes = StripedLocks(_LOCK_STRIPES)

    def _lock(self, sid: str) -> threading.RLock:
        return self._stripes.for_key(sid)

    # -------------------------------------------------------------- paths

    @property
    def root(self) -> Path:
        return self.paths.checkpoints

    def session_dir(self, session_id: str) -> Path:
        """Unresolved ``<root>/<sanitised id>`` (no I/O)."""
        return self.root / _checkpoint_sid(session_id)

    def _session_dir_for_writes(self, sid: str) -> fsutil.CheckedDir:
        """The session dir (created 0700), reached from the state root without following a symlink."""
        with fsutil.open_checked_dir(self.paths.root, self.root, create=True) as root:
            return root.subdir(sid, create=True)

    # -------------------------------------------------------------- manifest

    @staticmethod
    def _manifest_rows(d: fsutil.CheckedDir) -> list[dict[str, Any]]:
        try:
            return d.read_jsonl(MANIFEST_NAME, _MANIFEST_READ_BYTES)
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("[token-optimizer] checkpoint manifest unreadable: %s", exc)
            return []

    @staticmethod
    def _append_manifest(d: fsutil.CheckedDir, entry: dict[str, Any]) -> None:
        try:
            d.append(MANIFEST_NAME, dumps_compact(entry) + "\n", fsutil.FILE_MODE)
        except Exception as exc:  # best effort: an unregistered artifact is a harmless orphan
            log.warning("[token-optimizer] checkpoint manifest append failed: %s", exc)

    # -------------------------------------------------------------- writing

    def _write(
        self,
        d: fsutil.CheckedDir,
        sid: str,
        msgs: Sequence[_Msg],
        body: str,
        o: _Options,
        version: int,
        notes: NotesLike | None = None,
    ) -> CaptureResult | None:
        """Dedup check, artifact write, manifest row, policy registration.

        Runs under the session's stripe lock and its cross-process directory
        lock. Order, for crash safety: the artifact goes to a temp file
        (fsynced), then the manifest row is appended (the commit point), then
        the temp file is renamed into place, then the decision is recorded. A
        process killed after the manifest row leaves a capture that the next
        process counts as taken (the policy reconciles from the manifest) and
        whose temp file the start-up cleanup renames into place; killed before
        it, nothing is registered and only a temp file remains, which the
        cleanup removes. No empty or torn ``.md`` is ever visible.
        """
        with self._lock(sid), d.lock():
            return self._write_locked(d, sid, msgs, body, o, version, notes)

    def _write_locked(
        self,
        d: fsutil.CheckedDir,
        sid: str,
        msgs: Sequence[_Msg],
        body: str,
        o: _Options,
        version: int,
        notes: NotesLike | None = None,
    ) -> CaptureResult | None:
        digest = _semantic_digest(sid, msgs, o, notes)
        rows = self._manifest_rows(d)
        last = rows[-1] if rows else None
        if last is not None and last.get("semanticDigest") == digest and last.get("trigger") == o.trigger:
            self.policy.record_decision(sid, o.trigger, now_ms=self._clock())
            previous = last.get("file")
            if not isinstance(previous, str):
                return None
            return CaptureResult(Path(previous), o.trigger, True, version)

        stamp = iso_from_ms(self._clock()).replace(":", "-").replace(".", "-")
        filename = f"{stamp}-{fsutil.sanitize_trigger(o.trigger)}.md"
        try:
            existing = d.lstat(filename)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(existing.st_mode):
                raise fsutil.UnsafePathError(f"checkpoint file unsafe: {d.path / filename}")
        settings = getattr(self.policy, "settings", None)
        durable = bool(getattr(settings, "durable", True))
        tmp = fsutil.temp_name(filename)
        try:
            d.write(tmp, body, fsutil.FILE_MODE, exclusive=True, durable=durable)
        except OSError as exc:
            with contextlib.suppress(OSError):
                d.unlink(tmp)
            log.warning("[token-optimizer] checkpoint write failed for %s: %s", sid, exc)
            return None
        target = d.realpath / filename
        self._append_manifest(d, {
            "file": str(target),
            "filename": filename,
            "trigger": o.trigger,
            "reason": o.reason,
            "semanticDigest": digest,
            "fillPct": o.fill_pct,
            "qualityScore": o.quality_score,
            "messageCount": len(msgs),
            "createdAt": iso_from_ms(self._clock()),
        })
        try:
            d.rename(tmp, filename)
            if durable:
                d.fsync()
        except OSError as exc:
            with contextlib.suppress(OSError):
                d.unlink(tmp)
            log.warning("[token-optimizer] checkpoint write failed for %s: %s", sid, exc)
            return None
        telemetry: dict[str, Any] = {"sessionId": sid}
        for key, value in (
            ("fillPct", o.fill_pct),
            ("qualityScore", o.quality_score),
            ("toolName", o.tool_name),
            ("eventKind", o.event_kind),
            ("activeAgents", o.active_agents),
            ("writeCount", o.write_count),
            ("writeBurstCount", o.write_burst_count),
            ("contextWindow", o.context_window),
            ("model", o.model),
        ):
            if value is not None:
                telemetry[key] = value
        self.policy.register_capture(sid, o.trigger, telemetry)
        return CaptureResult(target, o.trigger, False, version)

    def capture_v1(
        self,
        session_id: str,
        messages: Sequence[Message] | None,
        max_messages: int = V1_MAX_MESSAGES,
        **fields: Unpack[CaptureFields],
    ) -> CaptureResult | None:
        """The v1 writer (spec 5.4). Raises on unsafe paths or a policy persistence error."""
        o = _make_options(**fields)
        return self._capture_v1(session_id, _normalise_messages(messages), max_messages, o)

    def _capture_v1(self, session_id: str, msgs: list[_Msg], max_messages: int, o: _Options) -> CaptureResult | None:
        sid = _checkpoint_sid(session_id)
        with self._session_dir_for_writes(sid) as d:
            body = _render_v1(sid, iso_from_ms(self._clock()), msgs, max_messages, o)
            return self._write(d, sid, msgs, body, o, 1)

    def capture_v2(
        self,
        session_id: str,
        messages: Sequence[Message] | None,
        max_recent: int = V2_MAX_RECENT,
        **fields: Unpack[CaptureFields],
    ) -> CaptureResult | None:
        """The v2 writer (spec 5.5); without messages it delegates to the v1 writer."""
        o = _make_options(**fields)
        return self._capture_v2(session_id, _normalise_messages(messages), max_recent, o)

    def _capture_v2(self, session_id: str, msgs: list[_Msg], max_recent: int, o: _Options,
                    notes: NotesLike | None = None) -> CaptureResult | None:
        if not msgs and (notes is None or not (notes.task or notes.file_changes)):
            return self._capture_v1(session_id, msgs, max_recent, o)
        sid = _checkpoint_sid(session_id)
        try:
            d = self._session_dir_for_writes(sid)
        except OSError as exc:
            log.warning("[token-optimizer] checkpoint directory unusable for %s: %s", sid, exc)
            return None
        with d:
            body = _render_v2(sid, iso_from_ms(self._clock()), msgs, max_recent, o, notes)
            return self._write(d, sid, msgs, body, o, 2, notes)

    def capture(
        self,
        session_id: str,
        messages: Sequence[Message] | None,
        *,
        trigger: str = DEFAULT_TRIGGER,
        fill_pct: float | None = None,
        quality_score: float | None = None,
        tool_name: str | None = None,
        event_kind: str | None = None,
        model: str | None = None,
        context_window: float | None = None,
        notes: NotesLike | None = None,
    ) -> CaptureResult | None:
        """v2 (10 recent messages), falling back to v1 (20). Never raises.

        ``notes`` (ours) are whole-session sections: the task, instructions,
        decisions, errors and file changes of everything the session did, not
        only of the recent window.
        """
        try:
            msgs = _normalise_messages(messages)
            o = _make_options(trigger=trigger, fill_pct=fill_pct, quality_score=quality_score,
                              tool_name=tool_name, event_kind=event_kind, model=model,
                              context_window=context_window)
        except Exception as exc:
            log.warning("[token-optimizer] checkpoint capture skipped (bad input): %s", exc)
            return None
        result: CaptureResult | None = None
        try:
            result = self._capture_v2(session_id, msgs, V2_MAX_RECENT, o, notes)
        except Exception as exc:
            log.warning("[token-optimizer] v2 checkpoint capture failed: %s", exc)
        if result is None:
            try:
                result = self._capture_v1(session_id, msgs, V1_MAX_MESSAGES, o)
            except Exception as exc:
                log.warning("[token-optimizer] v1 checkpoint capture failed: %s", exc)
        return result

    # -------------------------------------------------------------- restore

    def restore(self, session_id: str, prefer: str | os.PathLike[str] | None = None) -> str | None:
        """Checkpoint text for the session, capped at :data:`RESTORE_CAP`. Never raises.

        ``prefer`` names the checkpoint to use (the one captured for the
        compaction being restored); it must be one of the session's own. Else the
        newest checkpoint wins, trigger priority breaking ties. The reference
        ranks by trigger priority regardless of age, so after a compaction it
        restored an early milestone or band from before most of the work
        (COMPAT.md).
        """
        try:
            entries = list(self.policy.checkpoint_files(session_id))
            if not entries:
                return None
            ranked = sorted(entries, key=lambda e: (-e.created_at_ms, -trigger_priority(e.trigger)))
            if prefer is not None:
                want = os.fspath(prefer)
                ranked.sort(key=lambda e: os.fspath(e.path) != want)  # stable: preferred first
            for entry in ranked:
                try:
                    text = fsutil.read_text_no_follow(Path(entry.path), max_bytes=_RESTORE_READ_BYTES)
                except OSError:
                    continue
                if utf16_len(text) > RESTORE_CAP:
                    text = utf16_slice(text, RESTORE_CAP) + RESTORE_TRUNCATION_MARK
                return text
            return None
        except Exception as exc:
            log.warning("[token-optimizer] checkpoint restore failed: %s", exc)
            return None

    # -------------------------------------------------------------- cleanup

    def cleanup(self, max_age_days: int = 7) -> int:
        """Delete checkpoint-area files older than ``max_age_days`` (by mtime)."""
        return self.policy.cleanup_artifacts(max_age_days)


# ---------------------------------------------------------------- per-session files


class CheckpointFiles:
    """What the checkpoint store keeps on disk for a session: ``checkpoints/<sid>/``
    (its ``.md`` files, ``manifest.jsonl`` and ``policy-state.json``), and how it
    goes away. The session index calls this when it prunes a session."""

    column = "ck"
    """The session index column that holds :meth:`disk_name` for each entry."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths

    @staticmethod
    def disk_name(session_id: str) -> str:
        return _checkpoint_sid(session_id)

    def session_files(self, session_id: str, agents: Iterable[str] = ()) -> list[str]:
        name = self.disk_name(session_id)
        return [] if name == "invalid-session" else [name]

    def remove(self, names: Iterable[str]) -> int:
        """Delete the named session directories (no symlink followed); returns the count."""
        root = self.paths.checkpoints
        n = 0
        for name in names:
            if not name or "/" in name or name in (".", ".."):
                continue
            if not os.path.lexists(root / name):
                continue
            try:
                fsutil.remove_tree_safely(root / name, root)
                n += 1
            except (OSError, fsutil.UnsafePathError) as exc:
                log.debug("[token-optimizer] kept checkpoints of %s: %s", name, exc)
        return n

    def size(self, names: Iterable[str]) -> int:
        """Bytes of regular files under the named session directories."""
        total = 0
        for name in names:
            d = self.paths.checkpoints / name
            if not fsutil.safe_dir(d, self.paths.root):
                continue
            for dirpath, _dirs, files in os.walk(d, followlinks=False):
                for f in files:
                    with contextlib.suppress(OSError):
                        st = os.lstat(os.path.join(dirpath, f))
                        if stat.S_ISREG(st.st_mode):
                            total += st.st_size
        return total

    def idle_files(self, cutoff: float) -> list[tuple[str, list[str]]]:
        """None: checkpoint files are bounded by the store's own 7-day cleanup."""
        return []


# ---------------------------------------------------------------- listing


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint of a session as its manifest row describes it."""

    path: Path
    trigger: str
    created_at: str
    created_at_ms: float
    fill_pct: float | None
    quality_score: float | None
    message_count: int | None

    @property
    def filename(self) -> str:
        return self.path.name

    def to_dict(self, session: str) -> dict[str, Any]:
        return {"session": session, "file": self.path.name, "path": str(self.path),
                "trigger": self.trigger, "createdAt": self.created_at, "fillPct": self.fill_pct,
                "qualityScore": self.quality_score, "messageCount": self.message_count}


def list_checkpoints(policy: CheckpointPolicy, session_id: str) -> list[CheckpointInfo]:
    """The session's checkpoints whose file exists, oldest first, with the fill and
    quality recorded when each was taken. Never raises (``[]``)."""
    try:
        files = policy.checkpoint_files(session_id)
        if not files:
            return []
        with policy.session_dir_checked(session_id) as d:
            rows = d.read_jsonl(MANIFEST_NAME, _MANIFEST_READ_BYTES)
        by_name: dict[str, dict[str, Any]] = {}
        for row in rows:
            f = row.get("file")
            if isinstance(f, str):
                by_name[os.path.basename(f)] = row
        out: list[CheckpointInfo] = []
        for cf in files:
            row = by_name.get(cf.path.name, {})
            mc = row.get("messageCount")
            out.append(CheckpointInfo(
                cf.path, cf.trigger, str(row.get("createdAt") or ""), cf.created_at_ms,
                _num(row.get("fillPct")), _num(row.get("qualityScore")),
                mc if isinstance(mc, int) and not isinstance(mc, bool) else None))
        return out
    except Exception as exc:
        log.debug("[token-optimizer] checkpoint listing failed: %s", exc)
        return []
