"""What a checkpoint says about the *whole* session, kept up to date as it happens.

A checkpoint is rendered from the ledger's ring of recent messages, which on a
long session no longer holds the task the user started with, the decisions
made along the way or most of the files that were edited. :class:`SessionNotes`
keeps those sections running instead: every message and every tool call the
session produces is folded in as it arrives, in O(1) (each message is sampled
at :data:`~token_optimizer.checkpoints.SAMPLE_CAP` characters and every section
has a fixed size), so a capture at any moment covers the session from its first
instruction to its latest edit.

Sections:

* **task**: the first real user prompt of the session (our own injections and
  host-internal context blocks are skipped);
* **instructions** / **decisions** / **errors**: lines found with the same
  patterns the v2 checkpoint writer uses, keeping the first few and the most
  recent ones (duplicates are folded);
* **file changes**: one line per file written, edited or patched, with the tools
  that touched it, most recently touched last;
* **tool errors**: failed tool calls, as ``tool path: error``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from token_optimizer.checkpoints import extract_message_sections
from token_optimizer.jsutil import js_trim, utf16_len, utf16_slice
from token_optimizer.tools import describe_call, file_args, tool_concept

TASK_CAP = 600
"""UTF-16 code units of the first prompt kept as the session's task."""
FILE_CAP = 20
ERROR_LINE_CAP = 300
_SKIP_PREFIXES = ("[Token Optimizer]", "<!-- trust=", "<<<", "[RECOVERED DATA")


class FirstAndLatest:
    """Unique items: the first ``first`` ever seen plus the ``latest`` most recent others."""

    __slots__ = ("_first", "_latest", "first_cap", "latest_cap")

    def __init__(self, first: int, latest: int) -> None:
        self.first_cap = first
        self.latest_cap = latest
        self._first: list[str] = []
        self._latest: OrderedDict[str, None] = OrderedDict()

    def add(self, item: str) -> None:
        if not item or item in self._first:
            return
        if len(self._first) < self.first_cap:
            self._first.append(item)
            return
        self._latest[item] = None
        self._latest.move_to_end(item)
        while len(self._latest) > self.latest_cap:
            self._latest.popitem(last=False)

    def items(self) -> list[str]:
        return [*self._first, *self._latest]

    def __len__(self) -> int:
        return len(self._first) + len(self._latest)


@dataclass(frozen=True)
class NotesView:
    """A copy of the notes at one moment (what a capture renders)."""

    task: str | None = None
    instructions: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    file_changes: list[str] = field(default_factory=list)
    messages_seen: int = 0
    tool_calls: int = 0

    def fingerprint_parts(self) -> Iterable[str]:
        """What distinguishes two views for checkpoint de-duplication."""
        yield self.task or ""
        yield from self.instructions
        yield from self.decisions
        yield from self.errors
        yield from self.file_changes


def _own_or_host_block(text: str) -> bool:
    t = text.lstrip()
    return not t or t.startswith(_SKIP_PREFIXES)


def _task_text(text: str) -> str:
    """The prompt with host/plugin context blocks dropped, capped at :data:`TASK_CAP`."""
    kept = [ln for ln in text.split("\n") if not _own_or_host_block(ln) or not ln.strip()]
    task = js_trim("\n".join(kept))
    if utf16_len(task) > TASK_CAP:
        task = utf16_slice(task, TASK_CAP) + "…"
    return task


class SessionNotes:
    """Running, bounded checkpoint sections for one session. Not thread-safe on its own
    (the ledger calls it under the session entry's lock)."""

    __slots__ = ("_files", "decisions", "errors", "instructions", "messages_seen", "task",
                 "tool_calls")

    def __init__(self) -> None:
        self.task: str | None = None
        self.instructions = FirstAndLatest(5, 5)
        self.decisions = FirstAndLatest(3, 7)
        self.errors = FirstAndLatest(2, 3)
        self._files: OrderedDict[str, list[str]] = OrderedDict()
        self.messages_seen = 0
        self.tool_calls = 0

    def on_prompt(self, text: str) -> None:
        """A user prompt as the user typed it (before any plugin context is prepended)."""
        if self.task is None and isinstance(text, str) and not _own_or_host_block(text):
            task = _task_text(text)
            if task:
                self.task = task

    def on_message(self, role: str, content: str) -> None:
        if not isinstance(content, str) or not content:
            return
        self.messages_seen += 1
        if role == "user":
            if _own_or_host_block(content):
                return
            self.on_prompt(content)
        found = extract_message_sections(role, content)
        for line in found.instructions:
            self.instructions.add(line)
        for line in found.decisions:
            self.decisions.add(line)
        for line in found.errors:
            self.errors.add(line)

    def on_tool(self, tool_name: str, params: object, error: str | None = None,
                resolved_path: str | None = None) -> None:
        """A finished tool call; ``resolved_path`` is its file made absolute when known."""
        self.tool_calls += 1
        p = params if isinstance(params, dict) else {}
        path = resolved_path or file_args(p).file_path
        if tool_concept(tool_name) == "write" and path:
            tools = self._files.pop(path, None) or []
            if tool_name not in tools:
                tools = [*tools, tool_name][-3:]
            self._files[path] = tools
            while len(self._files) > FILE_CAP:
                self._files.popitem(last=False)
        if error:
            what = describe_call(tool_name, {"path": path} if path else None)
            line = js_trim(f"{what}: {error}".replace("\n", " "))
            self.errors.add(utf16_slice(line, ERROR_LINE_CAP))

    def view(self) -> NotesView:
        return NotesView(
            task=self.task,
            instructions=self.instructions.items(),
            decisions=self.decisions.items(),
            errors=self.errors.items(),
            file_changes=[f"{path} ({', '.join(tools)})" for path, tools in self._files.items()],
            messages_seen=self.messages_seen,
            tool_calls=self.tool_calls,
        )
