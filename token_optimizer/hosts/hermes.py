"""Native Hermes Agent plugin (``hermes-agent`` 0.19.0).

Installed as a pip entry point in the group ``hermes_agent.plugins``::

    token-optimizer = "token_optimizer.hosts.hermes"

The value is this *module*: Hermes calls ``getattr(module, "register")(ctx)``.
Like every user or pip plugin it is opt-in: ``hermes plugins enable
token-optimizer`` adds it to ``plugins.enabled`` in ``$HERMES_HOME/config.yaml``.

Hook mapping (Hermes hook -> core event):

* ``pre_llm_call`` -> :class:`~token_optimizer.events.TurnPrepare` (a user
  turn; ``conversation_history`` feeds the ledger). Contributions go back as
  ``{"context": text}``, which Hermes appends to the user message and replays
  on every later request, so the core only ever contributes each piece once.
* ``post_api_request`` -> :class:`~token_optimizer.events.Usage`. The fill
  numerator is that call's ``usage.prompt_tokens`` (uncached input + cache
  read + cache write); the window comes from ``model.context_length`` in
  Hermes' config, else Hermes' offline model table, else our own table.
* ``pre_tool_call`` / ``post_tool_call`` -> ``ToolBefore`` / ``ToolAfter``;
  a block becomes ``{"action": "block", "message": ...}``.
* Compaction. Hermes has no compaction hook. It compacts either by rotating
  to a child session id (``end_reason='compression'``, ``parent_session_id``)
  or in place (same id, shorter history that starts with a summary). Both are
  detected here; the checkpoint is captured from what the ledger saw before
  (``CompactionBefore``), and the restore is handed back to the core, which
  delivers it as context on the next user turn of the same session *key*.
* ``on_session_finalize`` / ``on_session_reset`` end a session.
  ``on_session_end`` is not registered: Hermes fires it after every turn.
* ``subagent_start`` / ``subagent_stop`` keep delegated child sessions on
  their own lane (they run with the parent's gateway session key).
* ``pre_gateway_dispatch`` remembers which chat an inbound message belongs to,
  so ``/token-optimizer`` (whose handler only receives the raw argument
  string) can report on the chat it was typed in.

Threading: per-turn hooks run concurrently on up to ten gateway worker
threads; every piece of shared state here is a bounded, locked collection.
Hooks that Hermes runs on its asyncio loop (finalize, reset, slash commands)
never do disk work inline: it goes to one daemon worker thread. No callback
ever raises.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import functools
import importlib
import logging
import os
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import orjson

from token_optimizer import fsutil
from token_optimizer.bounded import BoundedMap, BoundedSet
from token_optimizer.config import Config
from token_optimizer.events import (
    CompactionAfter,
    CompactionBefore,
    EnqueueInjection,
    HookOutcome,
    Identity,
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
from token_optimizer.hooks import HERMES_HOOKS
from token_optimizer.hosts import hermes_home
from token_optimizer.hosts.core_api import Core
from token_optimizer.hosts.hermes_support import BackgroundWorker, ContextWindows, StateDb
from token_optimizer.models import Message
from token_optimizer.status_report import render_status
from token_optimizer.tools import describe_call

log = logging.getLogger("token_optimizer.hosts.hermes")

PLUGIN_NAME = "token-optimizer"
COMMAND_NAME = "token-optimizer"
AGENT_ID = "hermes"
"""Agent id handed to the core for every Hermes session (read cache, index)."""


COMMAND_TIMEOUT_S = 10.0
SHUTDOWN_DRAIN_S = 3.0
INLINE_WAIT_S = 5.0

# Markers Hermes 0.19.0 puts on the summary of a compacted history.
_SUMMARY_MARKERS = ("[CONTEXT COMPACTION", "[CONTEXT SUMMARY]",
                    "[END OF PRIOR CONTEXT — COMPACTION SUMMARY BELOW]")

HOOKS = HERMES_HOOKS
"""Hook names this plugin registers (``on_session_end`` deliberately absent)."""


def _p(msg: str) -> str:
    return "[token-optimizer] " + msg


_R = TypeVar("_R")


def never_raises(fn: Callable[..., _R]) -> Callable[..., _R | None]:
    """A Hermes hook: an error is logged with the hook's name and ``None`` returned,
    so nothing ever raises into Hermes' agent loop."""
    @functools.wraps(fn)
    def hook(*args: Any, **kwargs: Any) -> _R | None:
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.warning(_p(f"{fn.__name__} failed"), exc_info=True)
            return None
    return hook


# ---------------------------------------------------------------- small helpers


def _nonempty_str(v: object) -> str | None:
    return v if isinstance(v, str) and v else None


def _openai_content_text(content: object) -> str:
    """Text of an OpenAI-style message content (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping):
                t = part.get("text")
                if isinstance(t, str):
                    parts.append(t)
        return "\n".join(parts)
    return ""


_CWD_SENTINELS = frozenset({"", ".", "./", "auto", "cwd"})


def session_cwd() -> str:
    """Where Hermes' file tools resolve relative paths: an absolute ``TERMINAL_CWD``
    (Hermes ignores its placeholder values), else the process's working directory."""
    raw = os.path.expanduser(os.environ.get("TERMINAL_CWD", "").strip())
    if raw.lower() not in _CWD_SENTINELS and os.path.isabs(raw):
        return raw
    return os.getcwd()


def _call_args(fn: object) -> Mapping[str, Any] | None:
    """The arguments of an OpenAI-style function call (a JSON string or an object)."""
    raw = fn.get("arguments") if isinstance(fn, Mapping) else None
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    return raw if isinstance(raw, Mapping) else None


def _to_message(m: object) -> Message | None:
    """One Hermes message as a core message; ``None`` when it has no text (or is the
    system prompt).

    Uses the message's own ``content`` (never ``api_content``, which holds the text
    plugins injected: re-capturing our own injections into checkpoints would
    snowball). Internal ``_``-prefixed keys are ignored.
    """
    if not isinstance(m, Mapping):
        return None
    role = m.get("role")
    if not isinstance(role, str) or role == "system":
        return None
    text = _openai_content_text(m.get("content"))
    if not text:
        calls = m.get("tool_calls")
        if isinstance(calls, Sequence) and calls and not isinstance(calls, str):
            done = []
            for c in calls:
                fn = c.get("function") if isinstance(c, Mapping) else None
                name = fn.get("name") if isinstance(fn, Mapping) else None
                if isinstance(name, str):
                    done.append(f"[tool: {describe_call(name, _call_args(fn))}]")
            text = "\n".join(done)
    if not text:
        return None
    ts = m.get("timestamp")
    return Message(role, clean_text(text), ts if isinstance(ts, str) else None)


_NO_MESSAGE = Message("", "", None)
"""Stands in for a history entry without text: the ledger counts only user and
assistant messages, so it is ignored there."""


class HistoryView(Sequence[Message]):
    """Hermes' ``conversation_history`` as core messages, converted on access.

    The ledger reads only what it has not seen yet (and one message to check the
    history was not rewritten), so a turn converts O(new messages), not the whole
    history (which Hermes hands over in full on every turn).
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: Sequence[Any]) -> None:
        self._raw = raw

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, i: int) -> Message: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Message]: ...

    def __getitem__(self, i: int | slice) -> Message | Sequence[Message]:
        if isinstance(i, slice):
            return [_to_message(m) or _NO_MESSAGE for m in self._raw[i]]
        return _to_message(self._raw[i]) or _NO_MESSAGE


def history_view(history: object) -> HistoryView:
    if not isinstance(history, Sequence) or isinstance(history, (str, bytes)):
        return HistoryView(())
    return HistoryView(history)


def messages_from_history(history: object) -> list[Message]:
    """Hermes' ``conversation_history`` as core messages, those without text left out."""
    return [m for m in history_view(history) if m.role]


SUMMARY_SCAN = 64
"""Hermes puts its compaction summary after the protected first messages
(``protect_first_n``, 3 by default): only the head of a history is searched."""


def summary_digest(history: object) -> int:
    """Digest of the compaction summary inside a history (0 when there is none).

    Hermes marks a standalone summary message with ``_compressed_summary`` and
    starts it with a ``[CONTEXT COMPACTION ...]`` prefix, or merges the summary
    into the first kept message. Every compaction writes a new summary, so a
    changed digest for the same session id means Hermes compacted in place; a
    rewind keeps the old one.
    """
    if not isinstance(history, Sequence) or isinstance(history, (str, bytes)):
        return 0
    for m in history[:SUMMARY_SCAN]:
        if not isinstance(m, Mapping):
            continue
        text = _openai_content_text(m.get("content"))
        if m.get("_compressed_summary") or any(p in text for p in _SUMMARY_MARKERS):
            return zlib.crc32(text.encode("utf-8", "replace")) or 1
    return 0


# ---------------------------------------------------------------- host lookups


def _default_session_key() -> str:
    """The gateway's session key for the current turn ('' in the CLI)."""
    try:
        from gateway.session_context import get_session_env

        value = get_session_env("HERMES_SESSION_KEY", "")
        return value if isinstance(value, str) else ""
    except Exception:
        return ""


def _default_hermes_config() -> Mapping[str, Any]:
    """Hermes' raw ``config.yaml`` (cached by Hermes on mtime/size)."""
    try:
        from hermes_cli.config import read_raw_config

        cfg = read_raw_config()
        return cfg if isinstance(cfg, Mapping) else {}
    except Exception:
        return {}


def _default_state_db_path() -> Path | None:
    """Where Hermes keeps ``state.db`` (resolved by Hermes at import time)."""
    try:
        p = getattr(importlib.import_module("hermes_state"), "DEFAULT_DB_PATH", None)
        if p:
            return Path(p)
    except Exception:
        pass
    home = os.environ.get("HERMES_HOME")
    if home:
        return Path(home) / "state.db"
    h = os.environ.get("HOME")
    return Path(h) / ".hermes" / "state.db" if h else None


def _hermes_offline_table() -> Mapping[str, int]:
    try:
        from agent.model_metadata import DEFAULT_CONTEXT_LENGTHS

        if isinstance(DEFAULT_CONTEXT_LENGTHS, Mapping):
            return DEFAULT_CONTEXT_LENGTHS
    except Exception:
        pass
    return {}


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


# ---------------------------------------------------------------- the plugin


@dataclass(frozen=True)
class _Target:
    """The chat a slash command was typed in."""

    session_key: str | None
    session_id: str | None


_DISPATCH_TARGET: contextvars.ContextVar[_Target | None] = contextvars.ContextVar(
    "token_optimizer_hermes_dispatch_target", default=None)


class HermesPlugin:
    """Adapter between Hermes' hooks and :class:`~token_optimizer.runtime.TokenOptimizer`.

    Everything host-specific is injectable for tests: the runtime, the
    gateway session-key lookup, Hermes' config reader, the ``state.db`` path
    and the worker.
    """

    def __init__(
        self,
        runtime: Core | None = None,
        *,
        session_key: Callable[[], str] = _default_session_key,
        hermes_config: Callable[[], Mapping[str, Any]] = _default_hermes_config,
        windows: ContextWindows | None = None,
        state_db: StateDb | None = None,
        worker: BackgroundWorker | None = None,
        active_work: Callable[[str], bool] | None = None,
    ) -> None:
        self._hermes_config = hermes_config
        self._session_key = session_key
        self.windows = windows or ContextWindows(config=hermes_config,
                                                 table=_hermes_offline_table)
        self.state_db = state_db or StateDb(_default_state_db_path)
        self.worker = worker or BackgroundWorker()
        self._runtime: Core | None = runtime
        self._runtime_lock = threading.Lock()
        self._active_work = active_work
        self._lock = threading.RLock()
        # Per-session bookkeeping; every collection is bounded (MAX_TRACKED_SESSIONS).
        self.key_of: BoundedMap[str, str] = BoundedMap("hermes_key_of_session")
        """session id -> the session key it is addressed by."""
        self.current_id: BoundedMap[str, str] = BoundedMap("hermes_current_id")
        """session key -> the last session id seen under it."""
        self.summaries: BoundedMap[str, int] = BoundedMap("hermes_summary_digest")
        """session id -> digest of the compaction summary its history started with."""
        self.ended: BoundedSet[str] = BoundedSet("hermes_ended_sessions")
        self.subagents: BoundedSet[str] = BoundedSet("hermes_subagent_sessions")
        self.last_injected: BoundedMap[str, int] = BoundedMap("hermes_last_injection")
        """session key -> hash of the last text handed to ``pre_llm_call``."""
        self.deferred_release: BoundedMap[str, tuple[str, ...]] = BoundedMap(
            "hermes_deferred_release")
        """session key -> rotated-away ids to release once the restore went out."""
        self._last_active: tuple[str, str] | None = None
        self._registered = False

    # ------------------------------------------------------------ runtime

    @property
    def runtime(self) -> Core:
        rt = self._runtime
        if rt is not None:
            return rt
        with self._runtime_lock:
            if self._runtime is None:
                from token_optimizer.runtime import TokenOptimizer

                root = hermes_home.state_root()
                if root is not None:
                    # once: what Hermes sessions left under the OpenClaw root moves here
                    hermes_home.adopt_legacy_state(
                        fsutil.openclaw_state_dir() / hermes_home.STATE_DIR_NAME, root,
                        lambda: hermes_home.hermes_session_ids(self.state_db.path()))
                core: Core = TokenOptimizer(root, config=self._config(),
                                            active_work=self._active_work)
                self._runtime = core
            return self._runtime

    def _config(self) -> Config:
        """Operator settings from ``plugins.entries.token-optimizer`` + environment."""
        entry: Any = None
        try:
            plugins = self._hermes_config().get("plugins")
            entries = plugins.get("entries") if isinstance(plugins, Mapping) else None
            entry = entries.get(PLUGIN_NAME) if isinstance(entries, Mapping) else None
        except Exception:
            entry = None
        return Config.merged(entry if isinstance(entry, Mapping) else None, host="hermes")

    # ------------------------------------------------------------ registration

    def attach(self, ctx: Any) -> None:
        """Register hooks and the slash command on a Hermes PluginContext."""
        for name in HOOKS:
            ctx.register_hook(name, getattr(self, name))
        try:
            ctx.register_command(
                COMMAND_NAME, self.command,
                description="Token Optimizer: context fill, quality, checkpoints for this chat",
                args_hint="[status|help|<session id>]",
            )
        except Exception:
            log.warning(_p("could not register /%s"), COMMAND_NAME, exc_info=True)
        if not self._registered:
            self._registered = True
            # Startup housekeeping (old checkpoint files, telemetry) off the caller's thread.
            self.worker.submit(self._startup)

    def _startup(self) -> None:
        self.runtime.gateway_start()

    # ------------------------------------------------------------ identity

    def _resolve(self, session_id: str) -> tuple[str, str | None]:
        """Session key for ``session_id`` and, on a compaction rotation, the old id.

        Called from agent threads. A session id seen for the first time is
        checked once against ``state.db``: a row whose parent ended with
        ``end_reason='compression'`` is a compaction child and inherits its
        parent's key. Without ``state.db`` information, a new id under a gateway
        session key whose previous id is still live is treated as a rotation.
        """
        known = self.key_of.get(session_id)
        gw_key = ""
        with contextlib.suppress(Exception):
            gw_key = self._session_key() or ""
        if known is not None:
            if session_id in self.ended:
                self.ended.discard(session_id)  # a resumed session is live again
            self._note_active(known, session_id)
            return known, None
        if session_id in self.subagents:
            self._bind(session_id, session_id)
            return session_id, None
        lineage = self.state_db.lineage(session_id)
        with self._lock:
            known = self.key_of.get(session_id)
            if known is not None:
                return known, None
            rotated_from: str | None = None
            key = gw_key or session_id
            parent = lineage[0] if lineage is not None else None
            if lineage is not None and parent is not None:
                reason = lineage[1]
                if reason == "compression":
                    key = self.key_of.get(parent) or gw_key or parent
                    if parent not in self.ended and self.key_of.get(parent) is not None:
                        rotated_from = parent
                else:
                    key = session_id  # a child of a live session (delegation, branch)
            elif gw_key:
                prev = self.current_id.get(gw_key)
                if (prev is not None and prev != session_id and prev not in self.ended
                        and prev not in self.subagents):
                    if lineage is None:
                        rotated_from = prev  # no state.db: an id change under a key = compaction
                    else:
                        # state.db says this is a fresh session (reset without a hook).
                        self._end_later(prev, gw_key, "rotated")
            self._bind(session_id, key)
            return key, rotated_from

    def _bind(self, session_id: str, key: str) -> None:
        self.key_of.set(session_id, key)
        if key != session_id or session_id not in self.subagents:
            self.current_id.set(key, session_id)
        self._note_active(key, session_id)

    def _note_active(self, key: str, session_id: str) -> None:
        if session_id not in self.subagents:
            self._last_active = (key, session_id)

    def _ident(self, session_id: str, key: str) -> Identity:
        return Identity(session_id=session_id, session_key=key, agent_id=AGENT_ID)

    # ------------------------------------------------------------ compaction

    def _compacted(self, key: str, old_id: str, new_id: str,
                   message_count: int | None = None) -> None:
        """A compaction happened: capture from the ledger, queue the restore."""
        rt = self.runtime
        rt.compaction_before(CompactionBefore(self._ident(old_id, key), messages=None))
        out: HookOutcome = rt.compaction_after(CompactionAfter(
            self._ident(new_id, key),
            previous_session_id=old_id if old_id != new_id else None,
            message_count=message_count,
        ))
        self._apply_actions(out)
        # What was injected before may have been compacted away: allow it again.
        self.last_injected.discard(key)
        if old_id != new_id:
            self._inherit(old_id, new_id)
            prev = self.deferred_release.get(key) or ()
            self.deferred_release.set(key, (*prev, old_id)[-8:])
        log.info(_p("compaction detected (%s): %s -> %s"),
                 "rotation" if old_id != new_id else "in place", old_id, new_id)

    def _apply_actions(self, out: HookOutcome | None) -> None:
        if out is None:
            return
        for action in out.actions:
            if isinstance(action, EnqueueInjection):
                # Hermes has no next-turn injection queue: the core delivers the
                # text itself on the session key's next user turn.
                self.runtime.enqueue_result(action.session_key, action.idempotency_key, False)

    def _inherit(self, old_id: str, new_id: str) -> None:
        """A compaction child continues its parent: first-turn hints must not repeat."""
        self.runtime.inherit_session(old_id, new_id)

    def _release_deferred(self, key: str) -> None:
        """Free the rotated-away ids of ``key`` once its restore has gone out."""
        if key not in self.deferred_release:
            return
        if self.runtime.has_pending_restore(key):
            return  # not delivered yet (e.g. an empty prompt): keep the old state
        for old in self.deferred_release.pop(key) or ():
            with contextlib.suppress(Exception):
                self.runtime.release(old, None)
                self.summaries.discard(old)
                self.key_of.discard(old)

    # ------------------------------------------------------------ hooks: turn

    @never_raises
    def pre_llm_call(self, **kwargs: Any) -> dict[str, str] | None:
        return self._pre_llm_call(kwargs)

    def _pre_llm_call(self, kw: Mapping[str, Any]) -> dict[str, str] | None:
        sid = clean_id(kw.get("session_id"))
        if sid is None:
            return None
        key, rotated_from = self._resolve(sid)
        history = kw.get("conversation_history")
        n = len(history) if isinstance(history, Sequence) and not isinstance(history, str) else 0
        digest = summary_digest(history)
        if rotated_from is not None:
            self._compacted(key, rotated_from, sid)
        else:
            prev = self.summaries.get(sid)
            if prev is not None and digest and digest != prev:
                self._compacted(key, sid, sid, message_count=n)
        self.summaries.set(sid, digest)
        prompt = kw.get("user_message")
        prompt_text = clean_text(prompt if isinstance(prompt, str) else _openai_content_text(prompt))
        out: HookOutcome = self.runtime.turn_prepare(TurnPrepare(
            ident=self._ident(sid, key),
            prompt=prompt_text,
            is_user_turn=True,
            messages=history_view(history),
            cwd=session_cwd(),
        ))
        self._apply_actions(out)
        self._release_deferred(key)
        text = (out.result or {}).get("prependContext") if out is not None else None
        if not isinstance(text, str) or not text.strip():
            return None
        block = zlib.crc32(text.encode("utf-8", "replace"))
        if self.last_injected.get(key) == block:
            return None  # never hand Hermes the same block twice in a row
        self.last_injected.set(key, block)
        return {"context": text}

    @never_raises
    def post_api_request(self, **kwargs: Any) -> None:
        self._post_api_request(kwargs)

    def _post_api_request(self, kw: Mapping[str, Any]) -> None:
        sid = clean_id(kw.get("session_id"))
        usage = kw.get("usage")
        if sid is None or not isinstance(usage, Mapping):
            return
        key, rotated_from = self._resolve(sid)
        if rotated_from is not None:
            self._compacted(key, rotated_from, sid)
        model = _nonempty_str(kw.get("model")) or _nonempty_str(kw.get("response_model"))
        fresh = token_count(usage.get("input_tokens"))
        cache_read = token_count(usage.get("cache_read_tokens"))
        cache_write = token_count(usage.get("cache_write_tokens"))
        raw_prompt = usage.get("prompt_tokens")
        prompt = token_count(raw_prompt) if raw_prompt is not None else fresh + cache_read + cache_write
        ended = kw.get("ended_at")
        ts = float(ended) * 1000.0 if isinstance(ended, (int, float)) and not isinstance(
            ended, bool) else None
        self.runtime.usage(Usage(
            ident=self._ident(sid, key),
            model=model,
            input_tokens=fresh,
            output_tokens=token_count(usage.get("output_tokens")),
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            prompt_tokens=prompt,
            context_budget=self.windows.for_model(model),
            request_id=_nonempty_str(kw.get("api_request_id")),
            timestamp_ms=ts,
        ))

    # ------------------------------------------------------------ hooks: tools

    @never_raises
    def pre_tool_call(self, **kwargs: Any) -> dict[str, str] | None:
        sid = clean_id(kwargs.get("session_id"))
        name = _nonempty_str(kwargs.get("tool_name"))
        if name is None:
            return None
        params = clean_params(kwargs.get("args"))
        key = sid
        if sid is not None:
            key, rotated_from = self._resolve(sid)
            if rotated_from is not None:
                self._compacted(key, rotated_from, sid)
        out: HookOutcome = self.runtime.tool_before(
            ToolBefore(Identity(sid, key, AGENT_ID), name, params))
        res = out.result if out is not None else None
        if isinstance(res, Mapping) and res.get("block"):
            reason = res.get("blockReason")
            return {"action": "block",
                    "message": reason if isinstance(reason, str) and reason else
                    "Blocked by token-optimizer."}
        return None

    @never_raises
    def post_tool_call(self, **kwargs: Any) -> None:
        sid = clean_id(kwargs.get("session_id"))
        name = _nonempty_str(kwargs.get("tool_name"))
        if name is None:
            return
        params = clean_params(kwargs.get("args"))
        key = self.key_of.get(sid) if sid is not None else None
        if sid is not None and key is None:
            key, _ = self._resolve(sid)
        status = kwargs.get("status")
        error = _nonempty_str(kwargs.get("error_message"))
        if error is None and isinstance(status, str) and status not in ("ok", "success",
                                                                         "completed"):
            error = _nonempty_str(kwargs.get("error_type")) or status
        self.runtime.tool_after(ToolAfter(Identity(sid, key, AGENT_ID), name, params,
                                          clean_text(error) if error else None))

    # ------------------------------------------------------------ hooks: lifecycle

    @never_raises
    def on_session_start(self, **kwargs: Any) -> None:
        sid = clean_id(kwargs.get("session_id"))
        if sid is None:
            return
        key, rotated_from = self._resolve(sid)
        if rotated_from is not None:
            self._compacted(key, rotated_from, sid)
        self.runtime.session_start(self._ident(sid, key))

    @never_raises
    def on_session_finalize(self, **kwargs: Any) -> None:
        """The real end of a session (shutdown, expiry, /new, CLI boundary)."""
        reason = _nonempty_str(kwargs.get("reason"))
        ids = [clean_id(kwargs.get("session_id")), clean_id(kwargs.get("old_session_id"))]
        targets = [s for s in dict.fromkeys(ids) if s is not None]
        for sid in targets:
            self._end_later(sid, self.key_of.get(sid) or sid, reason)
        if reason == "shutdown":
            self.worker.submit(self._flush)
        self._maybe_wait()

    @never_raises
    def on_session_reset(self, **kwargs: Any) -> None:
        """``/new`` or ``/reset``: the old id ends, the new one starts fresh."""
        old = clean_id(kwargs.get("old_session_id"))
        new = clean_id(kwargs.get("new_session_id")) or clean_id(kwargs.get("session_id"))
        key = (self.key_of.get(old) if old else None) or None
        if old is not None and old != new:
            self._end_later(old, key or old, _nonempty_str(kwargs.get("reason")) or "reset")
        if new is not None and key is not None:
            with self._lock:
                self.key_of.set(new, key)
                self.current_id.set(key, new)
        self._maybe_wait()

    @never_raises
    def subagent_start(self, **kwargs: Any) -> None:
        child = clean_id(kwargs.get("child_session_id"))
        if child is not None:
            self.subagents.add(child)
            self.key_of.set(child, child)

    @never_raises
    def subagent_stop(self, **kwargs: Any) -> None:
        child = clean_id(kwargs.get("child_session_id"))
        if child is not None:
            self._end_later(child, child, "subagent_stop")

    def pre_gateway_dispatch(self, **kwargs: Any) -> None:
        """Remember the chat of the inbound message for ``/token-optimizer``.

        Runs on the gateway loop in the same task that later dispatches plugin
        slash commands, so a ContextVar set here is visible to the handler.
        Never changes the dispatch (returns None).
        """
        try:
            event = kwargs.get("event")
            store = kwargs.get("session_store")
            source = getattr(event, "source", None)
            gen = getattr(store, "_generate_session_key", None)
            if source is None or not callable(gen):
                return None
            key = gen(source)
            if not isinstance(key, str) or not key:
                return None
            sid: str | None = None
            entries = getattr(store, "_entries", None)
            entry = entries.get(key) if isinstance(entries, Mapping) else None
            if entry is not None:
                sid = _nonempty_str(getattr(entry, "session_id", None))
            _DISPATCH_TARGET.set(_Target(key, sid))
        except Exception:
            log.debug(_p("pre_gateway_dispatch failed"), exc_info=True)
        return None

    # ------------------------------------------------------------ session end

    def _end_later(self, session_id: str, key: str, reason: str | None) -> None:
        if not self.ended.add(session_id):
            return  # already ended (finalize and reset both fire for /new)
        self.worker.submit(lambda: self._end_now(session_id, key, reason))

    def _end_now(self, session_id: str, key: str, reason: str | None) -> None:
        rt = self.runtime
        # A key whose current id is another (newer) session keeps its key-scoped
        # state (a pending restore belongs to the new id).
        current = self.current_id.get(key)
        scoped_key = key if current in (None, session_id) else session_id
        rt.session_end(SessionEnd(Identity(session_id, scoped_key, AGENT_ID), reason))
        self.summaries.discard(session_id)
        self.key_of.discard(session_id)
        self.subagents.discard(session_id)
        if current == session_id:
            self.current_id.discard(key)
            self.last_injected.discard(key)
            self.deferred_release.discard(key)

    def _flush(self) -> None:
        self.runtime.gateway_stop()

    def _maybe_wait(self) -> None:
        """Off the event loop (CLI exit, tests) wait briefly for the end to land."""
        if not _on_event_loop() and not self.worker.is_worker_thread():
            self.worker.drain(INLINE_WAIT_S)

    def shutdown(self) -> None:
        """atexit: let queued session ends finish, then flush the core."""
        try:
            self.worker.stop(SHUTDOWN_DRAIN_S)
            rt = self._runtime
            if rt is not None:
                rt.close()
        except Exception:
            log.debug(_p("shutdown failed"), exc_info=True)

    # ------------------------------------------------------------ slash command

    def command(self, raw_args: str = "", **kwargs: Any) -> Any:
        """``/token-optimizer [status|help|<session id>]``.

        Hermes passes only the raw argument string. The chat is taken from the
        target remembered by :meth:`pre_gateway_dispatch` (gateway), else the
        gateway session key of the current context, else the session most
        recently active in this process (CLI). The report is built on the
        worker thread; the returned coroutine only awaits it.
        """
        try:
            arg = raw_args.strip() if isinstance(raw_args, str) else ""
            target = self._command_target(arg)
        except Exception:
            arg, target = "", _Target(None, None)
        return self._command_async(arg, target)

    async def _command_async(self, arg: str, target: _Target) -> str:
        try:
            fut = self.worker.submit(lambda: self.render_status(arg, target))
            return str(await asyncio.wait_for(asyncio.wrap_future(fut), COMMAND_TIMEOUT_S))
        except Exception as exc:
            return f"[Token Optimizer] status unavailable: {type(exc).__name__}"

    def _command_target(self, arg: str) -> _Target:
        if arg and arg not in ("status", "help"):
            key = self.key_of.get(arg)
            if key is not None:
                return _Target(key, arg)
            cur = self.current_id.get(arg)
            if cur is not None:
                return _Target(arg, cur)
            return _Target(None, arg)
        t = _DISPATCH_TARGET.get()
        if t is not None:
            return t
        gw_key = ""
        with contextlib.suppress(Exception):
            gw_key = self._session_key() or ""
        if gw_key:
            return _Target(gw_key, self.current_id.get(gw_key))
        last = self._last_active
        if last is not None:
            return _Target(last[0], last[1])
        return _Target(None, None)

    def render_status(self, arg: str, target: _Target) -> str:
        """The shared report (:func:`token_optimizer.status_report.render_status`)."""
        sid = target.session_id
        if sid is None and target.session_key is not None:
            sid = self.current_id.get(target.session_key)
        return render_status(self.runtime, arg, sid, target.session_key)

    # ------------------------------------------------------------ introspection

    def collections(self) -> dict[str, Any]:
        return {
            "hermes_key_of_session": self.key_of,
            "hermes_current_id": self.current_id,
            "hermes_summary_digest": self.summaries,
            "hermes_ended_sessions": self.ended,
            "hermes_subagent_sessions": self.subagents,
            "hermes_last_injection": self.last_injected,
            "hermes_deferred_release": self.deferred_release,
        }

    def tracked_counts(self) -> dict[str, int]:
        """Sizes of every per-session collection: the core's and this adapter's."""
        counts: dict[str, int] = {}
        with contextlib.suppress(Exception):
            counts.update(self.runtime.tracked_counts())
        counts.update({n: len(c) for n, c in self.collections().items()})
        return counts


# ---------------------------------------------------------------- entry point

_PLUGIN: HermesPlugin | None = None
_PLUGIN_LOCK = threading.Lock()


def get_plugin() -> HermesPlugin:
    """The process-wide plugin instance (created on first use)."""
    global _PLUGIN
    with _PLUGIN_LOCK:
        if _PLUGIN is None:
            _PLUGIN = HermesPlugin(active_work=_hermes_active_work)
            atexit.register(_PLUGIN.shutdown)
        return _PLUGIN


def _hermes_active_work(session_key: str) -> bool:
    """Hermes' own "has live background processes" check, by session key."""
    registry = importlib.import_module("tools.process_registry").process_registry
    return bool(registry.has_active_for_session(session_key, max_active_age=24 * 3600))


def register(ctx: Any) -> None:
    """Hermes plugin entry: called once per discovery with a PluginContext."""
    get_plugin().attach(ctx)
