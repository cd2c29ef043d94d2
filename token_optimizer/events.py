"""Typed, host-neutral events the core consumes and results it returns.

Host adapters (:mod:`token_optimizer.hosts`) translate their hook calls into
these; the core never sees a host-specific payload.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from token_optimizer.models import Message


@dataclass(frozen=True)
class Identity:
    """Who an event belongs to.

    ``session_id`` is the storage identity (``sessionId ?? sessionKey``);
    ``session_key`` is the host's stable routing key (used to address
    next-turn injections and to detect id rotation).
    """

    session_id: str | None
    session_key: str | None = None
    agent_id: str | None = None
    platform: str | None = None
    """Where the session lives (e.g. ``telegram``); recorded in the session index."""


@dataclass(frozen=True)
class QueuedInjection:
    """An injection the host already holds for a session's next turn."""

    idempotency_key: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class TurnPrepare:
    ident: Identity
    prompt: str
    is_user_turn: bool = True
    job_id: str | None = None
    messages: Sequence[Message] | None = None
    """Conversation so far when the host supplies it (fed to the ledger)."""
    cwd: str | None = None


def token_count(v: object) -> int:
    """A token count from a host payload: a non-negative int; anything else is 0."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return 0
    if v in (float("inf"), float("-inf")):
        return 0
    return max(0, int(v))


@dataclass(frozen=True)
class Usage:
    """Token usage of one model call."""

    ident: Identity
    model: str | None = None
    input_tokens: int = 0
    """Fresh (uncached) input."""
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    prompt_tokens: int | None = None
    """Full prompt size when the host reports it (else input + cache read + write)."""
    context_budget: int | None = None
    """Host-supplied context window; overrides the model table."""
    request_id: str | None = None
    timestamp_ms: float | None = None


@dataclass(frozen=True)
class MessageSeen:
    ident: Identity
    message: Message


ToolConcept = Literal["read", "write", "fanout", "other"]


@dataclass(frozen=True)
class ToolBefore:
    ident: Identity
    tool_name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolAfter:
    ident: Identity
    tool_name: str
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class CompactionBefore:
    ident: Identity
    messages: Sequence[Message] | None = None
    message_count: int | None = None


@dataclass(frozen=True)
class CompactionAfter:
    ident: Identity
    previous_session_id: str | None = None
    compacted_count: float | None = None
    message_count: Any = None
    """Raw host value: only a real number becomes the ``msg:`` discriminator."""


@dataclass(frozen=True)
class SessionEnd:
    ident: Identity
    reason: str | None = None


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class EnqueueInjection:
    """Ask the host to inject ``text`` into the session's next turn."""

    session_key: str
    session_id: str
    text: str
    idempotency_key: str
    placement: Literal["prepend_context", "append_context"] = "prepend_context"

    def to_action(self) -> dict[str, Any]:
        return {
            "type": "enqueue_next_turn_injection",
            "sessionKey": self.session_key,
            "sessionId": self.session_id,
            "text": self.text,
            "idempotencyKey": self.idempotency_key,
            "placement": self.placement,
        }


@dataclass(frozen=True)
class LogLine:
    level: Literal["debug", "info", "warn", "error"]
    message: str

    def to_action(self) -> dict[str, Any]:
        return {"type": "log", "level": self.level, "message": self.message}


Action = EnqueueInjection | LogLine


@dataclass
class HookOutcome:
    """What a hook produced: the TS-shaped return value and host-side actions."""

    result: dict[str, Any] | None = None
    actions: list[Action] = field(default_factory=list)

    def actions_json(self) -> list[dict[str, Any]]:
        return [a.to_action() for a in self.actions]


# ---------------------------------------------------------------- boundary hygiene

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_ID_CHARS = 1024
"""Longer host ids are refused: no real session key or id comes near it."""


def clean_id(value: object) -> str | None:
    """A host-supplied id (session key, session id, agent, platform) made safe to store.

    Returns ``None`` for anything that is not a non-empty ``str`` of at most
    ``MAX_ID_CHARS`` characters. A lone surrogate (an in-process Python host can
    pass ``"\\ud800"``; it cannot be encoded as UTF-8, so JSON, SQLite and file
    names would all fail on it) is replaced by its escape text ``\\ud800``, so the
    result is encodable. Well-formed text, including astral characters, is
    returned unchanged, byte for byte (checkpoint directory names and stored
    keys depend on it).

    The mapping is therefore *not* injective: an id holding a lone surrogate
    becomes the same as the well-formed id spelling its escape literally
    (``"\\ud800"`` and the six characters ``\\ud800`` both give ``\\ud800``).
    No escaping can avoid that without changing some well-formed ids (those
    containing a backslash), which would move existing state; lone surrogates
    only come from buggy in-process callers, so the merge is accepted.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        return None
    if _LONE_SURROGATE.search(value) is None:
        return value
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", value)


def clean_text(value: object) -> str:
    """Host text (prompts, message bodies) made encodable: lone surrogates become U+FFFD.

    Non-``str`` values give ``""``. Unlike :func:`clean_id` this may merge
    different inputs, which is harmless for text that is only read.
    """
    if not isinstance(value, str):
        return ""
    if _LONE_SURROGATE.search(value) is None:
        return value
    return _LONE_SURROGATE.sub("\ufffd", value)


def clean_params(params: object) -> dict[str, Any]:
    """Tool parameters from a host, with every string made encodable (:func:`clean_text`).

    A path decoded from a non-UTF-8 file name carries lone surrogates on Linux; stored
    as is, it would make every later JSON write of the session fail.
    """
    if not isinstance(params, Mapping):
        return {}
    return {str(k): _clean_value(v) for k, v in params.items()}


def _clean_value(v: object, depth: int = 0) -> Any:
    if isinstance(v, str):
        return clean_text(v)
    if depth < 3 and isinstance(v, Mapping):
        return {str(k): _clean_value(x, depth + 1) for k, x in v.items()}
    if depth < 3 and isinstance(v, list):
        return [_clean_value(x, depth + 1) for x in v]
    return v
