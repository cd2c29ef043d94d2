"""Drive token_optimizer inside a real Hermes Agent 0.19.0 (run with the Hermes venv's python).

Usage: ``<hermes-venv>/bin/python hermes_realhost_driver.py <result.json>``

The caller (tests/test_hermes_realhost.py) prepares the environment *before*
this process starts: ``HOME``, ``HERMES_HOME`` (with ``config.yaml`` enabling
``token-optimizer``), ``TOKEN_OPTIMIZER_HOME``, zero cooldowns, loopback-only
base URLs. Everything here talks to 127.0.0.1 only.

Phases (results go to the JSON file; the test asserts on them):

1. discovery: Hermes' own plugin manager loads ``token-optimizer`` from the
   ``hermes_agent.plugins`` entry point;
2. CLI-style turns with the real ``AIAgent.run_conversation`` against a stub
   OpenAI-compatible server whose ``usage.prompt_tokens`` is chosen per turn
   (the user message carries ``FILL=<n>``), including a real ``read_file``
   tool call; then the slash command and a finalize;
3. compaction through Hermes' own ``/compress`` path, once in place and once
   with session-id rotation;
4. gateway-style turns: 10 sessions at once on a ``hermes-gateway`` thread
   pool with the session-key contextvars bound.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import json
import re
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RESULT = Path(sys.argv[1])
OUT: dict[str, Any] = {"errors": []}
REQUESTS: list[dict[str, Any]] = []
REQ_LOCK = threading.Lock()
FILL_RE = re.compile(r"FILL=(\d+)")
SUMMARY_TEXT = "Summary: the user is fixing the tokenizer in src/lexer.py; decided on a table."


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class Stub(BaseHTTPRequestHandler):
    def log_message(self, *a: Any) -> None:
        pass

    def _send(self, obj: dict[str, Any]) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "stub-model", "object": "model",
                                                "context_length": 200000}]})

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        req = json.loads(self.rfile.read(n) or b"{}")
        msgs = req.get("messages") or []
        users = [_text(m.get("content")) for m in msgs if m.get("role") == "user"]
        last = msgs[-1] if msgs else {}
        has_tools = bool(req.get("tools"))
        with REQ_LOCK:
            REQUESTS.append({"thread": threading.current_thread().name, "users": users,
                             "last_role": last.get("role"), "tools": has_tools,
                             "n": len(msgs)})
        fills = FILL_RE.findall(users[-1]) if users else []
        # the first FILL= is the user's own; later ones can come from text a plugin appended
        prompt = int(fills[0]) if fills else 1000
        text: str | None = f"ok ({len(msgs)} messages)"
        tool_call = None
        if not has_tools:
            text = SUMMARY_TEXT  # auxiliary call (compression summary, titles)
            prompt = 5000
        elif last.get("role") == "user" and "READFILE" in _text(last.get("content")):
            path = FILL_RE.sub("", _text(last.get("content"))).split("READFILE", 1)[1].strip()
            tool_call = {"id": f"call_{len(REQUESTS)}", "type": "function",
                         "function": {"name": "read_file",
                                      "arguments": json.dumps({"path": path})}}
            text = None
        usage = {"prompt_tokens": prompt, "completion_tokens": 9,
                 "total_tokens": prompt + 9, "prompt_tokens_details": {"cached_tokens": 0}}
        finish = "tool_calls" if tool_call else "stop"
        created = int(time.time())
        if not req.get("stream"):
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if tool_call:
                msg["tool_calls"] = [tool_call]
            return self._send({"id": "c1", "object": "chat.completion", "created": created,
                               "model": req.get("model", "stub-model"),
                               "choices": [{"index": 0, "finish_reason": finish,
                                            "message": msg}], "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": "c1", "object": "chat.completion.chunk", "created": created,
                "model": req.get("model", "stub-model")}
        delta: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_call:
            delta["tool_calls"] = [{"index": 0, **tool_call}]
        for chunk in ({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                      {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
                      {**base, "choices": [], "usage": usage}):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def phase_discovery() -> Any:
    import hermes_cli.plugins as hp

    hp.discover_plugins()
    mgr = hp.get_plugin_manager()
    loaded = mgr._plugins.get("token-optimizer")
    OUT["plugin"] = {
        "loaded": loaded is not None,
        "enabled": bool(loaded and loaded.enabled),
        "error": str(getattr(loaded, "error", None)) if loaded else None,
        "source": getattr(getattr(loaded, "manifest", None), "source", None),
        "kind": getattr(getattr(loaded, "manifest", None), "kind", None),
        "module": getattr(getattr(loaded, "module", None), "__name__", None),
        "hooks": sorted(getattr(loaded, "hooks_registered", []) or []),
    }
    import hermes_state

    OUT["hermes_state_file"] = hermes_state.__file__
    # Observe our own callbacks as Hermes calls them (kwargs, result, duration).
    OUT["calls"] = CALLS
    for name, cbs in mgr._hooks.items():
        for i, cb in enumerate(cbs):
            if getattr(cb, "__module__", "") == "token_optimizer.hosts.hermes" or getattr(
                    getattr(cb, "__self__", None), "__module__", "") == "token_optimizer.hosts.hermes":
                cbs[i] = _observed(name, cb)
    return hp


CALLS: list[dict[str, Any]] = []


def _observed(name: str, cb: Any) -> Any:
    def wrapper(**kw: Any) -> Any:
        t0 = time.perf_counter()
        res = cb(**kw)
        CALLS.append({"hook": name, "ms": (time.perf_counter() - t0) * 1000,
                      "thread": threading.current_thread().name,
                      "session_id": kw.get("session_id"), "tool_name": kw.get("tool_name"),
                      "args": kw.get("args") if name == "pre_tool_call" else None,
                      "result": res})
        return res
    return wrapper


def new_agent(base_url: str, **kw: Any) -> Any:
    from hermes_state import SessionDB
    from run_agent import AIAgent

    return AIAgent(session_db=SessionDB(), base_url=base_url, api_key="sk-local-stub",
                   provider="custom", model="stub-model", quiet_mode=True,
                   enabled_toolsets=["file"], skip_context_files=True, skip_memory=True,
                   max_iterations=4, **kw)


def phase_cli(hp: Any, base_url: str, workdir: Path) -> None:
    from token_optimizer.hosts import hermes as plugin_mod

    plugin = plugin_mod.get_plugin()
    target = workdir / "notes.txt"
    target.write_text("alpha\nbeta\n")
    agent = new_agent(base_url, platform="cli")
    prompts = ["FILL=41000 hello, let us fix the tokenizer",
               "FILL=71000 decided: use a lookup table in src/lexer.py",
               f"FILL=101000 please READFILE {target}",
               "FILL=101000 next step",
               "FILL=101000 one more"]
    history: list[Any] | None = None
    turns = []
    for p in prompts:
        start = len(REQUESTS)
        r = agent.run_conversation(p, conversation_history=history, task_id="cli-task")
        history = r["messages"]
        turns.append({"prompt": p, "session_id": agent.session_id,
                      "requests": REQUESTS[start:]})
    sid = agent.session_id
    OUT["cli"] = {"session_id": sid, "turns": turns,
                  "status": plugin.runtime.status(sid),
                  "tracked_before_finalize": plugin.key_of.get(sid)}
    handler = hp.get_plugin_command_handler("token-optimizer")
    OUT["cli"]["command"] = str(hp.resolve_plugin_command_result(handler("")))
    # compaction through Hermes' own /compress path: in place, then rotating
    for mode, in_place in (("in_place", True), ("rotation", False)):
        agent.compression_in_place = in_place
        before = agent.session_id
        sys_prompt = getattr(agent, "_cached_system_prompt", None) or ""
        try:
            history, _ = agent._compress_context(history, sys_prompt, force=True,
                                                 task_id="cli-task")
        except Exception as exc:
            OUT["errors"].append(f"compress {mode}: {exc!r}")
        after_compress = agent.session_id
        start = len(REQUESTS)
        r = agent.run_conversation(f"FILL=30000 continue after {mode}",
                                   conversation_history=history, task_id="cli-task")
        history = r["messages"]
        OUT[f"compact_{mode}"] = {"before": before, "after": after_compress,
                                  "turn_session": agent.session_id,
                                  "requests": REQUESTS[start:],
                                  "key": plugin.key_of.get(agent.session_id)}
    last_id = agent.session_id
    hp.invoke_hook("on_session_finalize", session_id=last_id, platform="cli", reason="shutdown")
    plugin.worker.drain(10)
    OUT["cli"]["after_finalize"] = {
        "key_of": plugin.key_of.get(last_id),
        "ledger_has": plugin.runtime.ledger.has(last_id),
        "tracked": plugin.tracked_counts(),
    }


def phase_gateway(base_url: str) -> None:
    from gateway.session_context import clear_session_vars, set_session_vars

    from token_optimizer.hosts import hermes as plugin_mod

    plugin = plugin_mod.get_plugin()
    agents = {i: new_agent(base_url, platform="telegram",
                           gateway_session_key=f"agent:main:telegram:dm:{i}") for i in range(10)}
    histories: dict[int, Any] = {i: None for i in range(10)}
    seen_threads: set[str] = set()
    keys_seen: dict[int, str | None] = {}

    def one_turn(i: int, text: str) -> None:
        toks = set_session_vars(platform="telegram", chat_id=str(i), user_id=f"u{i}",
                                session_key=f"agent:main:telegram:dm:{i}")
        try:
            seen_threads.add(threading.current_thread().name)
            r = agents[i].run_conversation(text, conversation_history=histories[i],
                                           task_id=f"gw-{i}")
            histories[i] = r["messages"]
            keys_seen[i] = plugin.key_of.get(agents[i].session_id)
        finally:
            clear_session_vars(toks)

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=10,
                                               thread_name_prefix="hermes-gateway") as ex:
        for fill in (45000, 75000):
            futs = [ex.submit(contextvars.copy_context().run, one_turn, i,
                              f"FILL={fill + i * 100} gateway chat {i}") for i in range(10)]
            for f in futs:
                f.result()
    OUT["gateway"] = {
        "seconds": time.time() - t0,
        "threads": sorted(seen_threads),
        "keys": keys_seen,
        "status": {i: plugin.runtime.status(agents[i].session_id) for i in range(10)},
        "session_ids": {i: agents[i].session_id for i in range(10)},
    }


def main() -> None:
    workdir = RESULT.parent
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=srv.serve_forever, name="stub-llm", daemon=True).start()
    base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        hp = phase_discovery()
        if OUT["plugin"]["enabled"]:
            phase_cli(hp, base_url, workdir)
            phase_gateway(base_url)
    except Exception:
        OUT["errors"].append(traceback.format_exc())
    finally:
        srv.shutdown()
        RESULT.write_text(json.dumps(OUT, default=str))


if __name__ == "__main__":
    main()
