"""Builders for OpenClaw JSONL transcript records, shared by the parser and ledger tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def ts(sec: int) -> str:
    """An ISO timestamp ``sec`` seconds into a fixed test hour."""
    return f"2026-08-01T10:{sec // 60:02d}:{sec % 60:02d}.000Z"


def user(text: str, sec: int = 0, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "timestamp": ts(sec),
            "message": {"role": "user", "content": [{"type": "text", "text": text}]}, **extra}


def assistant(usage: dict[str, Any] | None, sec: int = 0, model: str = "claude-opus-4-8",
              rid: str | None = None, tools: tuple[str, ...] = ()) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "ok"}]
    content += [{"type": "tool_use", "name": t, "input": {}} for t in tools]
    msg: dict[str, Any] = {"role": "assistant", "model": model, "content": content}
    if usage is not None:
        msg["usage"] = usage
    rec: dict[str, Any] = {"type": "message", "timestamp": ts(sec), "message": msg}
    if rid is not None:
        rec["requestId"] = rid
    return rec


def write_jsonl(path: Path, records: list[Any], trailing_newline: bool = True) -> Path:
    """One JSON document per line; a str record is written as is (for broken lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""))
    return path
