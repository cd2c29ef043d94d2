"""Unit tests of the Hermes Agent adapter (no Hermes install needed).

Callbacks are driven with the kwarg shapes Hermes 0.19.0 uses at its real call
sites (spec host-hermes.md §1.7). A small fake PluginContext mimics Hermes'
``invoke_hook`` (synchronous, exceptions swallowed, ``telemetry_schema_version``
added, non-None results collected).
"""

from __future__ import annotations

import ast
import asyncio
import contextvars
import importlib
import importlib.metadata
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import token_optimizer
from token_optimizer import bounded
from token_optimizer.events import HookOutcome
from token_optimizer.hosts import hermes as hp
from token_optimizer.hosts import hermes_support
from token_optimizer.hosts.core_api import Core
from token_optimizer.hosts.hermes import (
    ContextWindows,
    HermesPlugin,
    StateDb,
    messages_from_history,
)
from token_optimizer.runtime import TokenOptimizer

PKG_DIR = Path(token_optimizer.__file__).parent
HERMES_SRC = Path(hp.__file__)

# hermes-agent 0.19.0 top-level modules (dist-info top_level.txt).
HERMES_TOP_LEVEL = frozenset({
    "acp_adapter", "agent", "batch_runner", "cli", "cron", "gateway", "hermes_bootstrap",
    "hermes_cli", "hermes_constants", "hermes_logging", "hermes_state", "hermes_time",
    "mcp_serve", "model_tools", "plugins", "providers", "run_agent", "tools",
    "toolset_distributions", "toolsets", "trajectory_compressor", "tui_gateway", "utils"})

NUDGE_MARK = "[Token Optimizer] This session is getting long"


# ---------------------------------------------------------------- fakes


class FakeCtx:
    """Just enough of Hermes' PluginContext + PluginManager.invoke_hook."""

    def __init__(self) -> None:
        self.hooks: dict[str, list[Callable[..., Any]]] = {}
        self.commands: dict[str, Callable[..., Any]] = {}
        self.errors: list[BaseException] = []

    def register_hook(self, name: str, fn: Callable[..., Any]) -> None:
        self.hooks.setdefault(name, []).append(fn)

    def register_command(self, name: str, handler: Callable[..., Any], description: str = "",
                         args_hint: str = "") -> None:
        self.commands[name] = handler

    def invoke(self, name: str, **kwargs: Any) -> list[Any]:
        out = []
        for cb in self.hooks.get(name, []):
            try:
                r = cb(**kwargs, telemetry_schema_version="hermes.observer.v1")
            except Exception as exc:  # Hermes logs and moves on; we record it
                self.errors.append(exc)
                continue
            if r is not None:
                out.append(r)
        return out


class Recorder:
    """A core stand-in that records the typed events it receives.

    It implements the :class:`~token_optimizer.hosts.core_api.Core` Protocol method by
    method (no ``__getattr__``), so a misspelt core call in the adapter fails here too.
    """

    def __init__(self, results: dict[str, Any] | None = None, raise_all: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.results = results or {}
        self.raise_all = raise_all
        self.lock = threading.Lock()

    def _rec(self, name: str, ev: Any = None) -> HookOutcome:
        with self.lock:
            self.calls.append((name, ev))
        if self.raise_all:
            raise RuntimeError("boom")
        return HookOutcome(result=self.results.get(name))

    def gateway_start(self) -> HookOutcome:
        return self._rec("gateway_start")

    def gateway_stop(self) -> HookOutcome:
        return self._rec("gateway_stop")

    def session_start(self, ident: Any) -> HookOutcome:
        return self._rec("session_start", ident)

    def session_end(self, ev: Any) -> HookOutcome:
        return self._rec("session_end", ev)

    def turn_prepare(self, ev: Any) -> HookOutcome:
        return self._rec("turn_prepare", ev)

    def tool_before(self, ev: Any) -> HookOutcome:
        return self._rec("tool_before", ev)

    def tool_after(self, ev: Any) -> HookOutcome:
        return self._rec("tool_after", ev)

    def compaction_before(self, ev: Any) -> HookOutcome:
        return self._rec("compaction_before", ev)

    def compaction_after(self, ev: Any) -> HookOutcome:
        return self._rec("compaction_after", ev)

    def usage(self, ev: Any) -> HookOutcome:
        return self._rec("usage", ev)

    def message(self, ev: Any) -> HookOutcome:
        return self._rec("message", ev)

    def history(self, ident: Any, messages: Any) -> HookOutcome:
        return self._rec("history", (ident, messages))

    def enqueue_result(self, session_key: str, idempotency_key: str, enqueued: bool) -> None:
        self._rec("enqueue_result", (session_key, idempotency_key, enqueued))

    def host_queued(self, session_key: str, queued: Any) -> None:
        self._rec("host_queued", (session_key, queued))

    def inherit_session(self, old_id: str, new_id: str) -> None:
        self._rec("inherit_session", (old_id, new_id))

    def has_pending_restore(self, session_key: str) -> bool:
        self._rec("has_pending_restore", session_key)
        return False

    def release(self, session_id: str, session_key: str | None = None) -> None:
        self._rec("release", (session_id, session_key))

    def status(self, session_id: str) -> dict[str, Any]:
        self._rec("status", session_id)
        return {"sessionId": session_id}

    def persisted_session(self, session_key: str | None) -> str | None:
        self._rec("persisted_session", session_key)
        return None

    def tracked_counts(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._rec("close")

    def named(self, name: str) -> list[Any]:
        return [ev for n, ev in self.calls if n == name]


def test_recorder_implements_the_core_protocol() -> None:
    core_methods = {n for n in dir(Core) if not n.startswith("_")}
    assert core_methods <= {n for n in dir(Recorder) if not n.startswith("_")}
    assert isinstance(Recorder(), Core)
    assert not hasattr(Recorder(), "misspelt_entry")


def turn_kwargs(sid: str, text: str, history: list[dict[str, Any]] | None = None,
                **extra: Any) -> dict[str, Any]:
    """pre_llm_call kwargs as agent/turn_context.py passes them."""
    hist = [*(history or []), {"role": "user", "content": text}]
    kw = {"session_id": sid, "task_id": "t1", "turn_id": "turn-1", "user_message": text,
          "conversation_history": hist, "is_first_turn": not history, "model": "stub-model",
          "platform": "telegram", "sender_id": "u1"}
    kw.update(extra)
    return kw


def usage_kwargs(sid: str, prompt_tokens: int, input_tokens: int | None = None,
                 model: str = "stub-model", n: int = 1) -> dict[str, Any]:
    """post_api_request kwargs as agent/conversation_loop.py passes them."""
    inp = prompt_tokens if input_tokens is None else input_tokens
    usage = {"input_tokens": inp, "output_tokens": 80,
             "cache_read_tokens": prompt_tokens - inp, "cache_write_tokens": 0,
             "reasoning_tokens": 0, "request_count": 1, "prompt_tokens": prompt_tokens,
             "total_tokens": prompt_tokens + 80}
    now = time.time()
    return {"task_id": "t1", "turn_id": "turn-1", "api_request_id": f"req-{n}",
            "session_id": sid, "platform": "telegram", "model": model, "provider": "custom",
            "base_url": "http://127.0.0.1:9/v1", "api_mode": "chat_completions",
            "api_call_count": n, "api_duration": 0.5, "started_at": now - 0.5, "ended_at": now,
            "finish_reason": "stop", "message_count": 4, "response_model": model,
            "response": {"usage": usage}, "usage": usage, "assistant_message": None,
            "assistant_content_chars": 1, "assistant_tool_call_count": 0}


def tool_kwargs(sid: str, name: str, args: dict[str, Any], post: bool = False) -> dict[str, Any]:
    kw: dict[str, Any] = {"tool_name": name, "args": args, "task_id": "t1", "session_id": sid,
                          "tool_call_id": "call_1", "turn_id": "turn-1",
                          "api_request_id": "req-1", "middleware_trace": []}
    if post:
        kw.update(result="ok", duration_ms=3, status="success", error_type=None,
                  error_message=None)
    return kw


class KeyVar:
    """Stand-in for gateway.session_context's HERMES_SESSION_KEY contextvar."""

    def __init__(self) -> None:
        self.var: contextvars.ContextVar[str] = contextvars.ContextVar("k", default="")

    def __call__(self) -> str:
        return self.var.get()


@pytest.fixture
def windows() -> ContextWindows:
    return ContextWindows(config=lambda: {"model": {"context_length": 200_000}}, table=dict)


@pytest.fixture
def rt(paths: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenOptimizer]:
    monkeypatch.setenv("TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS", "0")
    monkeypatch.setenv("TOKEN_OPTIMIZER_RUNTIME_EVALUATION_COOLDOWN_MS", "0")
    r = TokenOptimizer(paths.root, cwd=str(paths.root))
    yield r
    r.close()


_PLUGINS: list[HermesPlugin] = []


@pytest.fixture(autouse=True)
def _stop_workers() -> Iterator[None]:
    yield
    while _PLUGINS:
        _PLUGINS.pop().worker.stop()


def make(runtime: Any, windows: ContextWindows, tmp_path: Path, **kw: Any) -> HermesPlugin:
    kw.setdefault("state_db", StateDb(tmp_path / "no-state.db"))
    kw.setdefault("session_key", lambda: "")
    plugin = HermesPlugin(runtime, windows=windows, hermes_config=lambda: {}, **kw)
    _PLUGINS.append(plugin)
    return plugin


def attach(plugin: HermesPlugin) -> FakeCtx:
    ctx = FakeCtx()
    plugin.attach(ctx)
    assert plugin.worker.drain(10)
    return ctx


# ---------------------------------------------------------------- registration


def test_entry_point_is_a_module_with_register() -> None:
    eps = importlib.metadata.entry_points(group="hermes_agent.plugins")
    ep = next(e for e in eps if e.name == "token-optimizer")
    assert ep.value == "token_optimizer.hosts.hermes"  # a module, not "pkg:register"
    obj = ep.load()
    assert obj is hp and callable(obj.register)


def test_registers_hooks_and_command_not_on_session_end(windows: ContextWindows,
                                                        tmp_path: Path) -> None:
    ctx = attach(make(Recorder(), windows, tmp_path))
    assert set(ctx.hooks) == set(hp.HOOKS)
    assert "on_session_end" not in ctx.hooks
    assert "token-optimizer" in ctx.commands


def test_module_register_uses_singleton(monkeypatch: pytest.MonkeyPatch,
                                        windows: ContextWindows, tmp_path: Path) -> None:
    plugin = make(Recorder(), windows, tmp_path)
    monkeypatch.setattr(hp, "_PLUGIN", plugin)
    ctx = FakeCtx()
    hp.register(ctx)
    assert getattr(ctx.hooks["pre_llm_call"][0], "__self__", None) is plugin


def test_no_text_that_makes_hermes_reclassify_the_plugin() -> None:
    # Hermes scans a directory plugin's __init__.py for these; keep them out of
    # every module a shim could import first.
    for path in (HERMES_SRC, PKG_DIR / "__init__.py", PKG_DIR / "hosts" / "__init__.py"):
        text = path.read_text()
        for word in ("MemoryProvider", "register_memory_provider", "ProviderProfile",
                     "register_provider"):
            assert word not in text, (path, word)


# ---------------------------------------------------------------- mapping


def test_pre_llm_call_maps_to_turn_prepare(windows: ContextWindows, tmp_path: Path) -> None:
    rec = Recorder({"turn_prepare": {"prependContext": "HINT"}})
    ctx = attach(make(rec, windows, tmp_path))
    hist: list[dict[str, Any]] = [
            {"role": "user", "content": "hi", "_db_persisted": True},
            {"role": "assistant", "content": "hello", "api_content": "hello"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read_file"}}]},
            {"role": "tool", "content": [{"type": "text", "text": "file body"}]}]
    res = ctx.invoke("pre_llm_call", **turn_kwargs("S1", "what's 2+2?", hist))
    assert res == [{"context": "HINT"}]
    (ev,) = rec.named("turn_prepare")
    assert ev.ident.session_id == "S1" and ev.ident.session_key == "S1"
    assert ev.is_user_turn is True and ev.prompt == "what's 2+2?"
    assert [(m.role, m.content) for m in ev.messages] == [
        ("user", "hi"), ("assistant", "hello"), ("assistant", "[tool: read_file]"),
        ("tool", "file body"), ("user", "what's 2+2?")]


def test_injected_text_comes_from_content_not_api_content() -> None:
    msgs = messages_from_history([{"role": "user", "content": "q",
                                   "api_content": "q\n\n[Token Optimizer] old nudge"}])
    assert [m.content for m in msgs] == ["q"]


def test_same_block_is_never_handed_over_twice_in_a_row(windows: ContextWindows,
                                                        tmp_path: Path) -> None:
    rec = Recorder({"turn_prepare": {"prependContext": "SAME"}})
    ctx = attach(make(rec, windows, tmp_path))
    assert ctx.invoke("pre_llm_call", **turn_kwargs("S1", "a")) == [{"context": "SAME"}]
    assert ctx.invoke("pre_llm_call", **turn_kwargs("S1", "b")) == []


def test_gateway_key_is_used_when_bound(windows: ContextWindows, tmp_path: Path) -> None:
    rec = Recorder()
    key = KeyVar()
    ctx = attach(make(rec, windows, tmp_path, session_key=key))
    key.var.set("agent:main:telegram:dm:42")
    ctx.invoke("pre_llm_call", **turn_kwargs("S1", "a"))
    assert rec.named("turn_prepare")[0].ident.session_key == "agent:main:telegram:dm:42"


def test_post_api_request_maps_usage(windows: ContextWindows, tmp_path: Path) -> None:
    rec = Recorder()
    ctx = attach(make(rec, windows, tmp_path))
    ctx.invoke("post_api_request", **usage_kwargs("S1", 51_500, input_tokens=1_200))
    (u,) = rec.named("usage")
    assert (u.prompt_tokens, u.input_tokens, u.cache_read_tokens) == (51_500, 1_200, 50_300)
    assert u.context_budget == 200_000 and u.model == "stub-model"
    assert u.request_id == "req-1" and u.timestamp_ms and u.timestamp_ms > 1e12


def test_usage_without_prompt_tokens_sums_the_parts(windows: ContextWindows,
                                                    tmp_path: Path) -> None:
    rec = Recorder()
    ctx = attach(make(rec, windows, tmp_path))
    kw = usage_kwargs("S1", 0)
    kw["usage"] = {"input_tokens": 10, "cache_read_tokens": 20, "cache_write_tokens": 5}
    ctx.invoke("post_api_request", **kw)
    ctx.invoke("post_api_request", **{**kw, "usage": None})  # Hermes may send None
    (u,) = rec.named("usage")
    assert u.prompt_tokens == 35


def test_context_window_order() -> None:
    table = {"claude": 200_000, "claude-opus-4-7": 1_000_000, "gpt-5.5": 1_050_000}
    cfg: dict[str, Any] = {"model": {"context_length": 32_000}}
    w = ContextWindows(config=lambda: cfg, table=lambda: table)
    assert w.for_model("claude-opus-4-7") == 32_000  # config wins (as Hermes applies it)
    w = ContextWindows(config=lambda: {"model": {"default": "x"}}, table=lambda: table)
    assert w.for_model("anthropic/claude-opus-4-7-20260101") == 1_000_000  # longest key
    assert w.for_model("claude-3-haiku") == 200_000
    assert w.for_model("GPT-5.5") == 1_050_000
    w = ContextWindows(config=dict, table=dict)
    from token_optimizer.quality import context_window_for_model
    assert w.for_model("mistral-small") == context_window_for_model("mistral-small")
    assert w.for_model(None) == context_window_for_model(None)


def test_context_window_config_is_reread_after_ttl() -> None:
    now = [0.0]
    cfg: dict[str, Any] = {"model": {"context_length": 1000}}
    w = ContextWindows(config=lambda: cfg, table=dict, clock=lambda: now[0])
    assert w.for_model("m") == 1000
    cfg["model"]["context_length"] = 2000
    assert w.for_model("m") == 1000
    now[0] += hermes_support.CONFIG_TTL_S + 1
    assert w.for_model("m") == 2000
    cfg["model"]["context_length"] = "bad"
    now[0] += hermes_support.CONFIG_TTL_S + 1
    assert w.for_model("m") == 128_000 or w.for_model("m") > 0


def test_context_window_never_probes_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("network access on the hot path")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert ContextWindows().for_model("claude-opus-4-7") > 0


def test_tool_hooks_map_and_block(windows: ContextWindows, tmp_path: Path) -> None:
    rec = Recorder({"tool_before": {"block": True, "blockReason": "already read"}})
    ctx = attach(make(rec, windows, tmp_path))
    args = {"path": "/tmp/x.py", "offset": 1, "limit": 500}
    assert ctx.invoke("pre_tool_call", **tool_kwargs("S1", "read_file", args)) == [
        {"action": "block", "message": "already read"}]
    ctx.invoke("post_tool_call", **tool_kwargs("S1", "write_file", {"path": "/tmp/x.py"},
                                               post=True))
    (tb,) = rec.named("tool_before")
    (ta,) = rec.named("tool_after")
    assert (tb.tool_name, tb.params, tb.ident.session_id) == ("read_file", args, "S1")
    assert (ta.tool_name, ta.error) == ("write_file", None)
    kw = tool_kwargs("S1", "patch", {"path": "/tmp/x.py"}, post=True)
    kw.update(status="error", error_type="ValueError", error_message="no match")
    ctx.invoke("post_tool_call", **kw)
    assert rec.named("tool_after")[-1].error == "no match"


def test_hermes_file_tools_are_in_the_tool_table() -> None:
    from token_optimizer.tools import file_args, tool_concept

    assert tool_concept("read_file") == "read"
    assert tool_concept("write_file") == "write"
    assert tool_concept("patch") == "write"
    assert tool_concept("delegate_task") == "fanout"
    assert tool_concept("search_files") == "other"
    assert file_args({"path": "/a", "offset": 1, "limit": 500}).file_path == "/a"


# ---------------------------------------------------------------- robustness


def test_callbacks_accept_any_kwargs_and_never_raise(windows: ContextWindows,
                                                     tmp_path: Path) -> None:
    plugin = make(Recorder(raise_all=True), windows, tmp_path)
    ctx = attach(plugin)
    weird: list[dict[str, Any]] = [
        {}, {"session_id": None}, {"session_id": 5, "usage": "x", "args": 7},
        {"session_id": "S", "conversation_history": "notalist", "user_message": ["x"]},
        {"session_id": "S", "usage": {"prompt_tokens": float("nan")}, "tool_name": "read_file",
         "args": {"path": 3}, "event": object(), "session_store": object(),
         "child_session_id": "C", "reason": "shutdown", "future_kwarg": 1},
    ]
    for name in hp.HOOKS:
        for kw in weird:
            ctx.invoke(name, **kw)
    assert ctx.errors == []
    assert asyncio.run(ctx.commands["token-optimizer"](None)).startswith("[Token Optimizer]")


def test_thread_safety_ten_workers(rt: TokenOptimizer, windows: ContextWindows,
                                   tmp_path: Path) -> None:
    key = KeyVar()
    plugin = make(rt, windows, tmp_path, session_key=key)
    ctx = attach(plugin)

    def lane(i: int) -> None:
        key.var.set(f"agent:main:telegram:dm:{i}")
        sid = f"S{i}"
        hist: list[dict[str, Any]] = []
        for turn in range(4):
            ctx.invoke("pre_llm_call", **turn_kwargs(sid, f"msg {turn}", hist))
            ctx.invoke("post_api_request", **usage_kwargs(sid, 30_000 * (turn + 1), n=turn))
            ctx.invoke("pre_tool_call", **tool_kwargs(sid, "read_file", {"path": f"/f{i}"}))
            ctx.invoke("post_tool_call", **tool_kwargs(sid, "read_file", {"path": f"/f{i}"},
                                                       post=True))
            hist += [{"role": "user", "content": f"msg {turn}"},
                     {"role": "assistant", "content": f"reply {turn}"}]

    with ThreadPoolExecutor(max_workers=10, thread_name_prefix="hermes-gateway") as ex:
        for f in [ex.submit(contextvars.copy_context().run, lane, i) for i in range(40)]:
            f.result()
    assert ctx.errors == []
    for i in range(40):
        assert plugin.key_of.get(f"S{i}") == f"agent:main:telegram:dm:{i}"
        st = rt.status(f"S{i}")
        assert st["fillPct"] == pytest.approx(60.0)
    # no lane was mistaken for a compaction of another
    assert not list(rt.paths.checkpoints.glob("*/*-compact.md"))


# ---------------------------------------------------------------- reference defects


def test_defect1_on_session_end_is_not_a_session_end(rt: TokenOptimizer,
                                                     windows: ContextWindows,
                                                     tmp_path: Path) -> None:
    """The reference rolled up (and cleared) on on_session_end, which fires every turn."""
    rec_end: list[Any] = []
    orig = rt.session_end

    def spy_end(ev: Any) -> HookOutcome:
        rec_end.append(ev)
        return orig(ev)

    rt.session_end = spy_end  # type: ignore[method-assign]
    plugin = make(rt, windows, tmp_path)
    ctx = attach(plugin)
    for turn in range(3):
        ctx.invoke("pre_llm_call", **turn_kwargs("S1", f"turn {turn}"))
        ctx.invoke("post_api_request", **usage_kwargs("S1", 40_000 + turn))
        ctx.invoke("on_session_end", session_id="S1", task_id="t1", turn_id=f"turn-{turn}",
                   completed=True, interrupted=False, model="stub-model", platform="cli")
    assert rec_end == []
    assert rt.ledger.has("S1") and plugin.key_of.get("S1") == "S1"
    assert rt.status("S1")["fillPct"] == pytest.approx(20.0)
    # /new: Hermes fires finalize (old id) and reset (old + new ids): one end only.
    ctx.invoke("on_session_finalize", session_id="S1", platform="telegram",
               reason="new_session", old_session_id="S1", new_session_id="S2")
    ctx.invoke("on_session_reset", session_id="S2", platform="telegram", reason="new_session",
               old_session_id="S1", new_session_id="S2")
    assert plugin.worker.drain(10)
    assert [ev.ident.session_id for ev in rec_end] == ["S1"]
    assert rec_end[0].reason == "new_session"
    assert not rt.ledger.has("S1") and plugin.key_of.get("S1") is None


def test_defect2_fill_is_last_prompt_tokens_not_summed_input(rt: TokenOptimizer,
                                                             windows: ContextWindows,
                                                             tmp_path: Path) -> None:
    """The reference summed uncached input_tokens across calls."""
    ctx = attach(make(rt, windows, tmp_path))
    ctx.invoke("pre_llm_call", **turn_kwargs("S1", "go"))
    # three calls: mostly cache reads, a little fresh input each time
    for n, prompt in enumerate((90_000, 95_000, 100_000), start=1):
        ctx.invoke("post_api_request", **usage_kwargs("S1", prompt, input_tokens=2_000, n=n))
    st = rt.status("S1")
    assert st["fillPct"] == pytest.approx(50.0)        # 100_000 / 200_000
    assert st["fillPct"] != pytest.approx(3.0)         # sum(input_tokens) / window
    assert st["contextWindow"] == 200_000


def test_defect3_slash_command_needs_no_session_id(rt: TokenOptimizer,
                                                   windows: ContextWindows,
                                                   tmp_path: Path) -> None:
    """Hermes calls handler(raw_args) only; the reference read kwargs['session_id']."""
    key = KeyVar()
    plugin = make(rt, windows, tmp_path, session_key=key)
    ctx = attach(plugin)
    handler = ctx.commands["token-optimizer"]

    def turn(k: str, sid: str, prompt: int) -> None:
        key.var.set(k)
        ctx.invoke("pre_llm_call", **turn_kwargs(sid, "hi"))
        ctx.invoke("post_api_request", **usage_kwargs(sid, prompt))

    contextvars.copy_context().run(turn, "agent:main:telegram:dm:1", "A", 30_000)
    contextvars.copy_context().run(turn, "agent:main:telegram:dm:2", "B", 90_000)

    class Source:
        def __init__(self, chat: str) -> None:
            self.chat_id = chat

    class Entry:
        def __init__(self, sid: str) -> None:
            self.session_id = sid

    class Store:
        def __init__(self) -> None:
            self._entries = {"agent:main:telegram:dm:1": Entry("A"),
                             "agent:main:telegram:dm:2": Entry("B")}

        def _generate_session_key(self, source: Source) -> str:
            return f"agent:main:telegram:dm:{source.chat_id}"

    class Event:
        def __init__(self, chat: str) -> None:
            self.text = "/token-optimizer"
            self.source = Source(chat)

    async def gateway_message(chat: str) -> str:
        # gateway/run.py: pre_gateway_dispatch, then (same task) handler(raw_args)
        assert ctx.invoke("pre_gateway_dispatch", event=Event(chat), gateway=object(),
                          session_store=Store()) == []
        result = handler("")
        if asyncio.iscoroutine(result):
            result = await result
        return str(result)

    async def both() -> tuple[str, str]:
        return (await asyncio.create_task(gateway_message("1")),
                await asyncio.create_task(gateway_message("2")))

    out1, out2 = asyncio.run(both())
    assert "session A" in out1 and "15.0%" in out1
    assert "session B" in out2 and "45.0%" in out2
    # CLI: no dispatch hook, no gateway key -> the most recently active session
    out = asyncio.run(handler(""))
    assert "session B" in out and "quality" in out and "checkpoints" in out
    assert "session A" in asyncio.run(handler("A"))
    assert "/token-optimizer" in asyncio.run(handler("help"))


def _live_wal_db(path: Path) -> sqlite3.Connection:
    """A WAL-mode state.db with committed rows still only in the WAL."""
    con = sqlite3.connect(path, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, parent_session_id TEXT, "
                "end_reason TEXT)")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("INSERT INTO sessions VALUES ('P', NULL, 'compression')")
    con.execute("INSERT INTO sessions VALUES ('C', 'P', NULL)")
    con.commit()
    return con


def test_defect4_state_db_reader_sees_uncheckpointed_wal(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference opened state.db with immutable=1 and missed everything in the WAL."""
    db = tmp_path / "state.db"
    writer = _live_wal_db(db)
    try:
        assert Path(str(db) + "-wal").stat().st_size > 0  # the rows live in the WAL only
        uris: list[str] = []
        real_connect = sqlite3.connect

        def spy(database: Any, *a: Any, **k: Any) -> sqlite3.Connection:
            uris.append(str(database))
            con: sqlite3.Connection = real_connect(database, *a, **k)
            return con

        monkeypatch.setattr(sqlite3, "connect", spy)
        assert StateDb(db).lineage("C") == ("P", "compression")
        assert StateDb(db).lineage("P") == (None, None)
        assert StateDb(db).lineage("missing") is None
        assert uris and all("mode=ro" in u and "immutable" not in u for u in uris)
        # control: an immutable reader really is blind to these rows
        monkeypatch.setattr(sqlite3, "connect", real_connect)
        blind = real_connect(f"file:{db}?mode=ro&immutable=1", uri=True)
        try:
            assert blind.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
        finally:
            blind.close()
        # a read-only reader never writes: the writer can go on
        writer.execute("INSERT INTO sessions VALUES ('D', 'C', NULL)")
        writer.commit()
        assert StateDb(db).lineage("D") == ("C", None)
    finally:
        writer.close()
    # no code path builds an immutable URI (docstrings may explain why not)
    tree = ast.parse(HERMES_SRC.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                and isinstance(n.value, str) and id(n) not in docs]
    assert not [v for v in literals if "immutable" in v]


def test_defect5_no_module_shadows_hermes_top_level() -> None:
    """The reference shipped a sibling ``hermes_state.py`` and put its dir on sys.path."""
    dist = importlib.metadata.distribution("token-optimizer-gateway")
    top = {Path(str(f)).parts[0].removesuffix(".py") for f in (dist.files or [])
           if not str(f).startswith(("..", "/")) and ".dist-info" not in str(f)
           and not str(f).endswith(".pth")}
    top |= {"token_optimizer"}
    assert not (top & HERMES_TOP_LEVEL), top & HERMES_TOP_LEVEL
    own = {p.stem for p in PKG_DIR.rglob("*.py")} | {p.name for p in PKG_DIR.rglob("*")
                                                      if p.is_dir()}
    allowed_hermes = {"gateway", "hermes_cli", "agent"}
    for path in PKG_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                head = name.split(".")[0]
                # never a bare import of one of our own module names
                assert head not in own or head == "token_optimizer", (path, name)
                if head in HERMES_TOP_LEVEL:
                    assert path == HERMES_SRC and head in allowed_hermes, (path, name)
    text = HERMES_SRC.read_text()
    assert "sys.path" not in text
    # in-process, the Hermes modules we read are resolved as Hermes' own (never ours)
    for mod in ("hermes_state", "tools.process_registry"):
        assert f'import_module("{mod}")' in text


# ---------------------------------------------------------------- compaction


def _feed(ctx: FakeCtx, sid: str, turns: int, prompt: int = 50_000) -> list[dict[str, Any]]:
    hist: list[dict[str, Any]] = []
    for t in range(turns):
        ctx.invoke("pre_llm_call", **turn_kwargs(sid, f"Fix the parser in src/p{t}.py", hist))
        ctx.invoke("post_api_request", **usage_kwargs(sid, prompt, n=t))
        hist += [{"role": "user", "content": f"Fix the parser in src/p{t}.py"},
                 {"role": "assistant", "content": f"Decided to rewrite p{t}.py with a lexer."}]
    return hist


def test_rotation_under_gateway_key_is_compaction(rt: TokenOptimizer, windows: ContextWindows,
                                                  tmp_path: Path) -> None:
    key = KeyVar()
    key.var.set("agent:main:telegram:dm:7")
    plugin = make(rt, windows, tmp_path, session_key=key)
    ctx = attach(plugin)
    _feed(ctx, "OLD", 3)
    # Hermes rotated to a child id mid-conversation (no state.db available here)
    ctx.invoke("post_api_request", **usage_kwargs("NEW", 30_000))
    files = rt.policy.checkpoint_files("OLD")
    assert [f.trigger for f in files if f.trigger == "compact"] == ["compact"]
    res = ctx.invoke("pre_llm_call", **turn_kwargs("NEW", "continue please"))
    assert len(res) == 1 and "context" in res[0]
    text = res[0]["context"]
    assert "p2.py" in text  # the restored checkpoint
    # exactly once: the next turn carries nothing new
    assert ctx.invoke("pre_llm_call", **turn_kwargs("NEW", "and then?")) == []
    assert plugin.key_of.get("NEW") == "agent:main:telegram:dm:7"
    assert not rt.ledger.has("OLD")  # released once the restore went out


def test_rotation_detected_through_state_db_in_cli(rt: TokenOptimizer, windows: ContextWindows,
                                                   tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    writer = _live_wal_db(db)  # P ended with 'compression', C is its child
    try:
        writer.execute("INSERT INTO sessions VALUES ('X', NULL, NULL)")
        writer.execute("INSERT INTO sessions VALUES ('SUB', 'X', NULL)")
        writer.commit()
        plugin = make(rt, windows, tmp_path, state_db=StateDb(db))
        ctx = attach(plugin)
        _feed(ctx, "P", 2)
        res = ctx.invoke("pre_llm_call", **turn_kwargs("C", "continue"))
        assert res and "p1.py" in res[0]["context"]
        assert plugin.key_of.get("C") == "P"  # the chain keeps its first id as key
        # a child of a live session (delegation) is its own lane, not a compaction
        _feed(ctx, "X", 1)
        n_before = len(rt.policy.checkpoint_files("X"))
        ctx.invoke("pre_llm_call", **turn_kwargs("SUB", "subtask"))
        assert plugin.key_of.get("SUB") == "SUB"
        assert len(rt.policy.checkpoint_files("X")) == n_before
    finally:
        writer.close()


def test_in_place_compaction_is_detected(rt: TokenOptimizer, windows: ContextWindows,
                                         tmp_path: Path) -> None:
    """compression.in_place (0.19.0 default): same id, history restarts with a summary."""
    ctx = attach(make(rt, windows, tmp_path))
    hist = _feed(ctx, "S", 4)

    def summary(n: int) -> dict[str, Any]:
        return {"role": "user", "content": "[CONTEXT COMPACTION — REFERENCE ONLY] Earlier "
                f"turns were compacted (pass {n}) ..."}

    def compacts() -> int:
        return [f.trigger for f in rt.policy.checkpoint_files("S")].count("compact")

    compacted = [summary(1), *hist[-2:]]
    res = ctx.invoke("pre_llm_call", **turn_kwargs("S", "go on", compacted))
    assert compacts() == 1
    assert res and "p3.py" in res[0]["context"]
    # same summary again, or a rewind that keeps it: not a new compaction
    ctx.invoke("pre_llm_call", **turn_kwargs("S", "x", [*compacted, {"role": "assistant",
                                                                    "content": "ok"}]))
    ctx.invoke("pre_llm_call", **turn_kwargs("S", "y", compacted[:1]))
    assert compacts() == 1
    # a second compaction writes a new summary
    ctx.invoke("pre_llm_call", **turn_kwargs("S", "z", [summary(2)]))
    assert compacts() == 2


def test_subagent_under_parent_key_is_not_a_rotation(rt: TokenOptimizer,
                                                     windows: ContextWindows,
                                                     tmp_path: Path) -> None:
    key = KeyVar()
    key.var.set("agent:main:telegram:dm:9")
    plugin = make(rt, windows, tmp_path, session_key=key)
    ctx = attach(plugin)
    _feed(ctx, "PARENT", 2)
    ctx.invoke("subagent_start", parent_session_id="PARENT", parent_turn_id="t",
               parent_subagent_id=None, child_session_id="CHILD", child_subagent_id="s1",
               child_role="worker", child_goal="do it")
    ctx.invoke("pre_llm_call", **turn_kwargs("CHILD", "do it"))
    ctx.invoke("post_api_request", **usage_kwargs("CHILD", 1000))
    assert rt.policy.checkpoint_files("PARENT") == [] or all(
        f.trigger != "compact" for f in rt.policy.checkpoint_files("PARENT"))
    assert plugin.current_id.get("agent:main:telegram:dm:9") == "PARENT"
    ctx.invoke("subagent_stop", parent_session_id="PARENT", parent_turn_id="t",
               child_session_id="CHILD", child_role="worker", child_summary="done",
               child_status="ok", duration_ms=5)
    assert plugin.worker.drain(10)
    assert not rt.ledger.has("CHILD") and rt.ledger.has("PARENT")


def test_new_session_after_reset_is_not_a_compaction(rt: TokenOptimizer,
                                                     windows: ContextWindows,
                                                     tmp_path: Path) -> None:
    key = KeyVar()
    key.var.set("agent:main:telegram:dm:3")
    plugin = make(rt, windows, tmp_path, session_key=key)
    ctx = attach(plugin)
    _feed(ctx, "S1", 2)
    ctx.invoke("on_session_finalize", session_id="S1", platform="telegram",
               reason="session_expired")
    assert plugin.worker.drain(10)
    res = ctx.invoke("pre_llm_call", **turn_kwargs("S2", "new topic"))
    assert all("Session Checkpoint" not in r.get("context", "") for r in res)
    assert all(f.trigger != "compact" for f in rt.policy.checkpoint_files("S1"))


# ---------------------------------------------------------------- loop thread, worker


def test_loop_thread_hooks_do_not_block(rt: TokenOptimizer, windows: ContextWindows,
                                        tmp_path: Path) -> None:
    plugin = make(rt, windows, tmp_path)
    ctx = attach(plugin)
    _feed(ctx, "S1", 1)
    gate = threading.Event()
    plugin.worker.submit(gate.wait)  # the worker is busy with something slow

    async def on_loop() -> float:
        t0 = time.perf_counter()
        ctx.invoke("on_session_finalize", session_id="S1", platform="gateway", reason="shutdown")
        ctx.invoke("on_session_reset", session_id="S2", platform="telegram",
                   reason="new_session", old_session_id="S1", new_session_id="S2")
        coro = ctx.commands["token-optimizer"]("")
        dt = time.perf_counter() - t0
        gate.set()
        assert "[Token Optimizer]" in await coro
        return dt

    assert asyncio.run(on_loop()) < 0.2
    assert plugin.worker.drain(10)
    assert not rt.ledger.has("S1")
    seen = {plugin.worker.submit(threading.current_thread).result(5) for _ in range(5)}
    assert seen == {plugin.worker.thread}
    assert plugin.worker.thread is not None and plugin.worker.thread.daemon


# ---------------------------------------------------------------- bounds


def test_leak_bound_3000_sessions_never_finalized(rt: TokenOptimizer,
                                                  windows: ContextWindows,
                                                  tmp_path: Path) -> None:
    key = KeyVar()
    plugin = make(rt, windows, tmp_path, session_key=key)
    ctx = attach(plugin)
    cap = bounded.MAX_TRACKED_SESSIONS
    assert cap == 2000

    def lane(i: int) -> None:
        key.var.set(f"agent:main:discord:group:{i}:u{i}")
        sid = f"20260101_000000_{i:08x}"
        ctx.invoke("on_session_start", session_id=sid, model="stub-model", platform="discord")
        ctx.invoke("pre_llm_call", **turn_kwargs(sid, "hello"))
        ctx.invoke("post_api_request", **usage_kwargs(sid, 1000, input_tokens=100))
        ctx.invoke("pre_tool_call", **tool_kwargs(sid, "read_file", {"path": f"/f{i}"}))
        ctx.invoke("post_tool_call", **tool_kwargs(sid, "write_file", {"path": f"/f{i}"},
                                                   post=True))
        ctx.invoke("on_session_end", session_id=sid, completed=True, interrupted=False)

    for i in range(3000):
        contextvars.copy_context().run(lane, i)
    assert ctx.errors == []
    counts = plugin.tracked_counts()
    assert counts and max(counts.values()) <= cap, counts
    assert counts["hermes_key_of_session"] == cap
    assert plugin.key_of.get("20260101_000000_00000000") is None


# ---------------------------------------------------------------- host lookups


def test_operator_config_comes_from_plugins_entries(windows: ContextWindows,
                                                    tmp_path: Path) -> None:
    cfg = {"plugins": {"enabled": ["token-optimizer"],
                       "entries": {"token-optimizer": {"session_store_max_age_days": 30}}}}
    plugin = HermesPlugin(windows=windows, hermes_config=lambda: cfg,
                          state_db=StateDb(tmp_path / "none.db"), session_key=lambda: "")
    _PLUGINS.append(plugin)
    try:
        assert plugin.runtime.config.session_store_max_age_days == 30
    finally:
        plugin.shutdown()


def test_default_session_key_reads_the_gateway_contextvar(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    var: contextvars.ContextVar[str] = contextvars.ContextVar("HERMES_SESSION_KEY", default="")
    mod = types.ModuleType("gateway.session_context")

    def get_session_env(name: str, default: str = "") -> str:
        return var.get() if name == "HERMES_SESSION_KEY" else default

    setattr(mod, "get_session_env", get_session_env)  # noqa: B010
    monkeypatch.setitem(sys.modules, "gateway", types.ModuleType("gateway"))
    monkeypatch.setitem(sys.modules, "gateway.session_context", mod)
    assert hp._default_session_key() == ""
    var.set("agent:main:telegram:dm:42")
    assert hp._default_session_key() == "agent:main:telegram:dm:42"
    monkeypatch.setitem(sys.modules, "gateway.session_context", None)
    assert hp._default_session_key() == ""  # no gateway (CLI, or not Hermes): fall back


def test_unencodable_session_id_poisons_nothing(rt: TokenOptimizer, windows: ContextWindows,
                                                tmp_path: Path) -> None:
    """Issue 11 item 2: a lone surrogate from an in-process host is made encodable at the
    boundary; later sessions still reach the index and the stop path does not raise."""
    plugin = make(rt, windows, tmp_path)
    ctx = attach(plugin)
    bad = "chat-\ud800"
    ctx.invoke("pre_llm_call", **turn_kwargs(bad, "hello \udfff there"))
    ctx.invoke("post_api_request", **usage_kwargs(bad, 50_000))
    for i in range(5):
        ctx.invoke("pre_llm_call", **turn_kwargs(f"later-{i}", "a normal chat"))
    assert rt.status("chat-\\ud800")["fillPct"] == 25.0  # escaped, distinct, tracked
    rt.gateway_stop()  # must not raise
    for i in range(5):
        assert rt.index.get(f"later-{i}") is not None
    assert rt.index.get("chat-\\ud800") is not None


def test_unencodable_tool_path_does_not_break_the_sessions_checkpoints(
        rt: TokenOptimizer, windows: ContextWindows, tmp_path: Path) -> None:
    """A path decoded from a non-UTF-8 file name (lone surrogates) reaches the core cleaned:
    the session's decisions still reach policy-state.json."""
    plugin = make(rt, windows, tmp_path)
    ctx = attach(plugin)
    ctx.invoke("pre_llm_call", **turn_kwargs("S9", "Task: edit odd files"))
    for i in range(5):
        ctx.invoke("post_tool_call", session_id="S9", tool_name="write_file",
                   args={"path": f"bad\udc80-{i}.py", "content": "x"}, status="ok",
                   task_id="t1")
    state = rt.paths.checkpoints / "S9" / "policy-state.json"
    assert state.is_file(), "edit-batch decision never persisted"
    doc = json.loads(state.read_text())
    assert doc["editWriteCount"] >= 3 and doc["editBatchMarkerWrites"] >= 3  # edit-batch taken
    assert doc["editedFiles"] and all("\ufffd" in f for f in doc["editedFiles"])


def test_a_turn_converts_only_the_new_part_of_the_history(
        rt: TokenOptimizer, windows: ContextWindows, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Hermes hands over the whole conversation every turn; the cost of a turn must not grow
    with it (only the messages the ledger has not seen are converted)."""
    from token_optimizer.hosts import hermes as hmod

    calls = {"n": 0}
    real = hmod._to_message

    def counting(m: object) -> Any:
        calls["n"] += 1
        return real(m)

    monkeypatch.setattr(hmod, "_to_message", counting)
    plugin = make(rt, windows, tmp_path)
    ctx = attach(plugin)
    hist: list[dict[str, Any]] = []
    for i in range(2500):
        hist += [{"role": "user", "content": f"question {i}"},
                 {"role": "assistant", "content": f"answer {i}"}]
    ctx.invoke("pre_llm_call", **turn_kwargs("S7", "first turn here", hist))
    first = calls["n"]
    assert first >= 5000  # the first turn reads everything once
    calls["n"] = 0
    hist += [{"role": "user", "content": "first turn here"},
             {"role": "assistant", "content": "ok"}]
    ctx.invoke("pre_llm_call", **turn_kwargs("S7", "second turn", hist))
    assert calls["n"] <= 10, calls["n"]
    snap = rt.ledger.snapshot("S7")
    assert snap is not None and snap.run.message_count == 5003  # nothing lost or doubled
