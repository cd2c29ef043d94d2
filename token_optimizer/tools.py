"""The one table that maps host tool names onto the concepts the core uses.

The TypeScript reference only knows Claude-style names (``Read``, ``Edit``,
``Agent`` ...). OpenClaw 2026.9.6 sends canonical lowercase ids (``read``,
``edit``, ``apply_patch``, ``sessions_spawn`` ...) and Hermes has its own
(``read_file``, ``write_file``, ``patch``, ``delegate_task`` ...). All are
understood here; nothing else in the package compares tool names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from token_optimizer.events import ToolConcept

TOOL_CONCEPTS: Mapping[str, ToolConcept] = {
    # reference (Claude Code style)
    "Read": "read",
    "Edit": "write",
    "Write": "write",
    "MultiEdit": "write",
    "NotebookEdit": "write",
    "Agent": "fanout",
    "Task": "fanout",
    # OpenClaw 2026.9.6 canonical ids
    "read": "read",
    "write": "write",
    "edit": "write",
    "apply_patch": "write",
    "sessions_spawn": "fanout",
    # Hermes Agent 0.19.0
    "read_file": "read",
    "write_file": "write",
    "patch": "write",
    "delegate_task": "fanout",
}

_PATH_KEYS = ("file_path", "path", "filePath", "file", "notebook_path")


def tool_concept(name: str | None) -> ToolConcept:
    if not name:
        return "other"
    return TOOL_CONCEPTS.get(name, "other")


@dataclass(frozen=True)
class FileArgs:
    file_path: str | None
    offset: int | None = None
    limit: int | None = None


def file_args(params: Mapping[str, Any] | None) -> FileArgs:
    """Extract the target path and read window from a tool's parameters.

    Non-string paths and non-numeric offsets are ignored rather than raising.
    """
    if not isinstance(params, Mapping):
        return FileArgs(None)
    path: str | None = None
    for k in _PATH_KEYS:
        v = params.get(k)
        if isinstance(v, str) and v:
            path = v
            break
    return FileArgs(path, _num(params.get("offset")), _num(params.get("limit")))


def _num(v: object) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if v != v or v in (float("inf"), float("-inf")):
        return None
    return int(v)


def describe_call(name: str | None, params: Mapping[str, Any] | None) -> str:
    """One short line saying what a tool call did: ``edit src/retry.py``, ``sessions_spawn``."""
    tool = name if isinstance(name, str) and name else "tool"
    path = file_args(params).file_path
    return f"{tool} {path}" if path else tool
